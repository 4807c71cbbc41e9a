//! Every metric of the contract (prefix `floyd_`), registered once. Labels
//! have bounded cardinality: service, strategy, result, phase, provider,
//! revision (bounded by the revision history limit), GPU product. Never a commit sha.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub provider: String,
    pub result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub service: String,
    pub strategy: String,
    pub result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StrategyLabel {
    pub strategy: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub service: String,
    pub phase: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub service: String,
    pub revision: String,
    pub state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub service: String,
    pub revision: String,
}
/// `floyd_drift_total{service,kind}`: kind is the drifted object's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    pub service: String,
    pub kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProductLabel {
    pub product: String,
}

/// `floyd_sync_total{result}` values.
pub const SYNC_RESULTS: &[&str] = &["ok", "error"];
/// `floyd_git_fetch_total{result}` values.
pub const GIT_FETCH_RESULTS: &[&str] = &["changed", "unchanged", "error"];
/// `floyd_revert_commits_total{result}` values (controller/failure.rs).
pub const REVERT_RESULTS: &[&str] = &["pushed", "already", "skipped", "retry", "error"];
/// `floyd_webhook_requests_total{provider}` values.
pub const WEBHOOK_PROVIDERS: &[&str] = &["github", "gitlab", "gitea", "bitbucket", "generic"];
/// `floyd_webhook_requests_total{result}` values (server/hooks.rs).
pub const WEBHOOK_RESULTS: &[&str] = &[
    "accepted",
    "ignored",
    "duplicate",
    "unauthorized",
    "malformed",
    "too_large",
    "disabled",
];

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}
fn rollout_histogram() -> Histogram {
    // 1 s .. ~4.5 h
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// The registry and every contract metric. Cheap to clone (handles are shared).
#[derive(Clone)]
pub struct Metrics {
    pub registry: std::sync::Arc<Registry>,
    pub sync_total: Family<ResultLabel, Counter>,
    pub sync_duration_seconds: Histogram,
    pub git_fetch_duration_seconds: Histogram,
    pub git_fetch_total: Family<ResultLabel, Counter>,
    pub webhook_requests_total: Family<WebhookLabels, Counter>,
    pub rollout_total: Family<RolloutLabels, Counter>,
    pub rollout_duration_seconds: Family<StrategyLabel, Histogram>,
    /// 1 for the service's current phase, 0 for the others.
    pub rollout_phase: Family<PhaseLabels, Gauge>,
    pub revert_commits_total: Family<ResultLabel, Counter>,
    pub instances: Family<InstanceLabels, Gauge>,
    pub gpu_capacity: Family<ProductLabel, Gauge>,
    pub gpu_allocated: Family<ProductLabel, Gauge>,
    /// Requests the runtime's load balancers sent to each revision.
    pub lb_requests_total: Family<RevisionLabels, Counter>,
    /// Of those, 5xx answers and requests the instance failed.
    pub lb_errors_total: Family<RevisionLabels, Counter>,
    /// Percent of the requests for each service's canary; 0 when none is in flight.
    pub canary_weight: Family<ServiceLabel, Gauge>,
    /// Live objects found changed behind Floyd's back (each drift once).
    pub drift_total: Family<DriftLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("floyd");
        let sync_total = Family::<ResultLabel, Counter>::default();
        r.register("sync", "Syncs of a commit, by result", sync_total.clone());
        let sync_duration_seconds = seconds_histogram();
        r.register(
            "sync_duration_seconds",
            "Time to render, diff and start rollouts for one commit",
            sync_duration_seconds.clone(),
        );
        let git_fetch_duration_seconds = seconds_histogram();
        r.register(
            "git_fetch_duration_seconds",
            "Time of one remote check/fetch",
            git_fetch_duration_seconds.clone(),
        );
        let git_fetch_total = Family::<ResultLabel, Counter>::default();
        r.register(
            "git_fetch",
            "Remote checks/fetches, by result",
            git_fetch_total.clone(),
        );
        let webhook_requests_total = Family::<WebhookLabels, Counter>::default();
        r.register(
            "webhook_requests",
            "Webhook deliveries, by provider and result",
            webhook_requests_total.clone(),
        );
        let rollout_total = Family::<RolloutLabels, Counter>::default();
        r.register(
            "rollout",
            "Finished rollouts, by service, strategy and result",
            rollout_total.clone(),
        );
        let rollout_duration_seconds = Family::<StrategyLabel, Histogram>::new_with_constructor(
            rollout_histogram as fn() -> Histogram,
        );
        r.register(
            "rollout_duration_seconds",
            "Duration of finished rollouts",
            rollout_duration_seconds.clone(),
        );
        let rollout_phase = Family::<PhaseLabels, Gauge>::default();
        r.register(
            "rollout_phase",
            "1 for each service's current rollout phase",
            rollout_phase.clone(),
        );
        let revert_commits_total = Family::<ResultLabel, Counter>::default();
        r.register(
            "revert_commits",
            "Revert commits, by result",
            revert_commits_total.clone(),
        );
        let instances = Family::<InstanceLabels, Gauge>::default();
        r.register(
            "instances",
            "Instances by service, revision and state",
            instances.clone(),
        );
        let gpu_capacity = Family::<ProductLabel, Gauge>::default();
        r.register(
            "gpu_capacity",
            "GPU units that exist, by product",
            gpu_capacity.clone(),
        );
        let gpu_allocated = Family::<ProductLabel, Gauge>::default();
        r.register(
            "gpu_allocated",
            "GPU units held by instances, by product",
            gpu_allocated.clone(),
        );
        let lb_requests_total = Family::<RevisionLabels, Counter>::default();
        r.register(
            "lb_requests",
            "Requests the local runtime's load balancers sent to each revision",
            lb_requests_total.clone(),
        );
        let lb_errors_total = Family::<RevisionLabels, Counter>::default();
        r.register(
            "lb_errors",
            "Requests of a revision answered 5xx or failed by the instance",
            lb_errors_total.clone(),
        );
        let canary_weight = Family::<ServiceLabel, Gauge>::default();
        r.register(
            "canary_weight",
            "Percent of the requests routed to each service's canary (0 when no canary is in flight)",
            canary_weight.clone(),
        );
        let drift_total = Family::<DriftLabels, Counter>::default();
        r.register(
            "drift",
            "Live objects found different from what Floyd applied (hand edits, deletions), by service and object kind",
            drift_total.clone(),
        );
        // Counters exist at 0 from start-up for every known label value, so
        // that `increase(...)` and `rate(...)` see the first event (a series
        // born at 1 has no earlier sample to increase from).
        let zero = |family: &Family<ResultLabel, Counter>, results: &[&str]| {
            for r in results {
                family
                    .get_or_create(&ResultLabel {
                        result: (*r).to_string(),
                    })
                    .inc_by(0);
            }
        };
        zero(&sync_total, SYNC_RESULTS);
        zero(&git_fetch_total, GIT_FETCH_RESULTS);
        zero(&revert_commits_total, REVERT_RESULTS);
        for provider in WEBHOOK_PROVIDERS {
            for result in WEBHOOK_RESULTS {
                webhook_requests_total
                    .get_or_create(&WebhookLabels {
                        provider: (*provider).to_string(),
                        result: (*result).to_string(),
                    })
                    .inc_by(0);
            }
        }
        Metrics {
            canary_weight,
            drift_total,
            lb_requests_total,
            lb_errors_total,
            registry: std::sync::Arc::new(r),
            sync_total,
            sync_duration_seconds,
            git_fetch_duration_seconds,
            git_fetch_total,
            webhook_requests_total,
            rollout_total,
            rollout_duration_seconds,
            rollout_phase,
            revert_commits_total,
            instances,
            gpu_capacity,
            gpu_allocated,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets `floyd_canary_weight{service}` (creating it at 0 for a service first seen).
    pub fn set_canary_weight(&self, service: &str, weight: u32) {
        self.canary_weight
            .get_or_create(&ServiceLabel {
                service: service.to_string(),
            })
            .set(i64::from(weight));
    }

    /// Sets `floyd_rollout_phase{service}` to 1 for `phase` and 0 for every other phase.
    pub fn set_phase(&self, service: &str, phase: crate::engine::Phase) {
        use crate::engine::Phase::*;
        for p in [
            Progressing,
            Paused,
            AwaitingPromotion,
            Complete,
            Failed,
            Degraded,
            RolledBack,
        ] {
            self.rollout_phase
                .get_or_create(&PhaseLabels {
                    service: service.to_string(),
                    phase: p.as_str().to_string(),
                })
                .set(i64::from(p == phase));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_exist_at_zero_for_every_known_label_value() {
        let text = Metrics::new().encode();
        let mut want: Vec<String> = Vec::new();
        for r in SYNC_RESULTS {
            want.push(format!("floyd_sync_total{{result=\"{r}\"}} 0"));
        }
        for r in GIT_FETCH_RESULTS {
            want.push(format!("floyd_git_fetch_total{{result=\"{r}\"}} 0"));
        }
        for r in REVERT_RESULTS {
            want.push(format!("floyd_revert_commits_total{{result=\"{r}\"}} 0"));
        }
        for p in WEBHOOK_PROVIDERS {
            for r in WEBHOOK_RESULTS {
                want.push(format!(
                    "floyd_webhook_requests_total{{provider=\"{p}\",result=\"{r}\"}} 0"
                ));
            }
        }
        for line in want {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }

    /// The lists follow the code that counts: every result string the
    /// controller and the webhook route use is initialised.
    #[test]
    fn known_label_values_match_the_code_that_counts() {
        let failure = include_str!("../controller/failure.rs");
        let used: Vec<&str> = failure
            .split("count(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect();
        assert!(!used.is_empty());
        for r in used {
            assert!(
                REVERT_RESULTS.contains(&r),
                "revert result {r:?} not initialised"
            );
        }
        let hooks = include_str!("../server/hooks.rs");
        let used: Vec<&str> = hooks
            .split("name, \"")
            .skip(1)
            .chain(hooks.split(" (\"").skip(1))
            .filter_map(|s| s.split('"').next())
            .collect();
        assert!(used.len() >= 5, "{used:?}");
        for r in used {
            assert!(
                WEBHOOK_RESULTS.contains(&r),
                "webhook result {r:?} not initialised"
            );
        }
    }
}
