//! Durable controller state (redb, one file in the state directory): last
//! synced commit per service, rollout history, revert records, webhook
//! delivery ids.
