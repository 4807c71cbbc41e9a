//! Desired release vs observed state, per service: create, scale, new
//! revision (rollout), delete (prune), unchanged. Pure.
