//! Evaluates a service's configured gates (`spec.gates`) for the revision
//! being rolled out and hands the results to the engine through
//! `observed.gates` (spec order). The engine decides what they mean
//! (`onNoData`, which results are too old); this module only measures.
//!
//! - `successRate`: from the runtime's per-revision response counters (the
//!   local runtime's load balancers count them): the share of non-5xx
//!   responses over the last `window`, once a whole window has been
//!   observed since the rollout (or the blue-green promotion) began. No
//!   requests in the window is no data, not failure. Counters that go down
//!   (the controller restarted, the runtime's counters started over) start
//!   a new measurement instead of giving a negative count.
//! - `prometheus`: an instant query (`GET <address>/api/v1/query`) with
//!   `{{ service }}` and `{{ revision }}` filled in; one series or a scalar
//!   must lie within [min, max].
//! - `webhook`: a JSON description of the step is POSTed; 2xx passes, any
//!   other status fails, no answer (unreachable, timeout) is no data.
//!
//! Network gates run in the background (a slow webhook never holds up a
//! step): a step reads the latest result and starts a new evaluation when
//! that one is older than [`REFRESH`] or older than the measurement start.
//! URLs are shown without their credentials.

use crate::engine::gates::gate_name;
use crate::manifest::{Gate, Revision, ServiceName, ServiceSpec};
use crate::runtime::{GateResult, GateVerdict, Observed};
use crate::source::redact_url;
use crate::time::Time;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A network gate's result is re-evaluated when older than this.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long a Prometheus query may take.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Samples kept per revision beyond the longest window.
const MAX_SAMPLES: usize = 4096;

/// Cumulative counters of one revision at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Time,
    pub requests: u64,
    pub errors: u64,
}

/// What a gate is evaluated for.
#[derive(Debug, Clone)]
pub struct Step {
    pub service: ServiceName,
    pub revision: Revision,
    /// The revision serving before this rollout, if any.
    pub stable: Option<Revision>,
    /// The rollout's phase, as the API shows it.
    pub phase: String,
    /// Data from before this time does not count (rollout start, or the
    /// blue-green promotion for post-promotion gates).
    pub since: Time,
}

type Key = (ServiceName, Revision, usize);

/// The gates' memory: counter samples and the latest network results.
pub struct GateRunner {
    http: reqwest::Client,
    /// `--prometheus-url`: for prometheus gates without an `address`.
    prometheus: Option<String>,
    samples: Mutex<HashMap<(ServiceName, Revision), VecDeque<Sample>>>,
    results: Arc<Mutex<HashMap<Key, GateResult>>>,
    running: Arc<Mutex<HashSet<Key>>>,
}

impl GateRunner {
    pub fn new(prometheus: Option<String>) -> GateRunner {
        GateRunner {
            // Capped answers, no redirects to other hosts (see `net`).
            http: crate::net::gate_client(Duration::from_secs(5)),
            prometheus,
            samples: Mutex::new(HashMap::new()),
            results: Arc::default(),
            running: Arc::default(),
        }
    }

    /// The results of `spec.gates` for `step` (spec order). Records a
    /// counter sample; starts background evaluations of network gates.
    pub fn evaluate(
        &self,
        spec: &ServiceSpec,
        observed: &Observed,
        step: &Step,
        now: Time,
    ) -> Vec<GateResult> {
        if spec.gates.is_empty() {
            return Vec::new();
        }
        let samples = if spec
            .gates
            .iter()
            .any(|g| matches!(g, Gate::SuccessRate { .. }))
        {
            self.record(step, observed, now)
        } else {
            Vec::new()
        };
        spec.gates
            .iter()
            .enumerate()
            .map(|(i, gate)| {
                let name = gate_name(&spec.gates, i);
                match gate {
                    Gate::SuccessRate {
                        min,
                        window_seconds,
                        ..
                    } => GateResult {
                        verdict: success_rate(
                            &samples,
                            &step.revision,
                            step.since,
                            now,
                            Duration::from_secs((*window_seconds).into()),
                            *min,
                        ),
                        name,
                        at: now,
                    },
                    _ => self.network(gate, i, name, step, now),
                }
            })
            .collect()
    }

    /// Forgets a service's samples and results (it left Git).
    pub fn forget(&self, service: &ServiceName) {
        lock(&self.samples).retain(|(s, _), _| s != service);
        lock(&self.results).retain(|(s, _, _), _| s != service);
    }

    /// Adds a sample of the revision's counters; returns its samples.
    fn record(&self, step: &Step, observed: &Observed, now: Time) -> Vec<Sample> {
        let mut all = lock(&self.samples);
        // Only the revision being rolled out is measured.
        all.retain(|(s, r), _| s != &step.service || r == &step.revision);
        let key = (step.service.clone(), step.revision.clone());
        let Some(t) = observed
            .traffic
            .iter()
            .find(|t| t.revision == step.revision)
        else {
            all.remove(&key);
            return Vec::new();
        };
        let v = all.entry(key).or_default();
        let s = Sample {
            at: now,
            requests: t.requests,
            errors: t.errors,
        };
        if v.back()
            .is_some_and(|l| s.requests < l.requests || s.errors < l.errors || s.at < l.at)
        {
            // Counters started over: so does the measurement.
            v.clear();
        }
        v.push_back(s);
        while v.len() > MAX_SAMPLES {
            v.pop_front();
        }
        v.iter().copied().collect()
    }

    /// The latest result of a network gate; starts a new evaluation when it
    /// is missing or stale.
    fn network(&self, gate: &Gate, i: usize, name: String, step: &Step, now: Time) -> GateResult {
        let key = (step.service.clone(), step.revision.clone(), i);
        let last = lock(&self.results).get(&key).cloned();
        // A result taken at the very start of the measurement may predate it
        // (taken in the step that promoted): only later ones are reused.
        let stale = last
            .as_ref()
            .is_none_or(|r| r.at <= step.since || now.since(r.at) >= REFRESH);
        if stale && lock(&self.running).insert(key.clone()) {
            let (http, gate, step, name) =
                (self.http.clone(), gate.clone(), step.clone(), name.clone());
            let prometheus = self.prometheus.clone();
            let (results, running) = (self.results.clone(), self.running.clone());
            tokio::spawn(async move {
                let verdict = match &gate {
                    Gate::Prometheus {
                        query,
                        address,
                        min,
                        max,
                        ..
                    } => match address.as_ref().or(prometheus.as_ref()) {
                        Some(a) => prometheus_gate(&http, a, query, &step, *min, *max).await,
                        None => GateVerdict::Pending(
                            "no Prometheus address: set the gate's address or floyd run --prometheus-url".into(),
                        ),
                    },
                    Gate::Webhook {
                        url,
                        timeout_seconds,
                        ..
                    } => {
                        webhook_gate(
                            &http,
                            url,
                            Duration::from_secs((*timeout_seconds).into()),
                            &step,
                            &name,
                        )
                        .await
                    }
                    Gate::SuccessRate { .. } => GateVerdict::Pending("not a network gate".into()),
                };
                lock(&results).insert(
                    key.clone(),
                    GateResult {
                        name,
                        verdict,
                        at: now,
                    },
                );
                lock(&running).remove(&key);
            });
        }
        match last {
            Some(r) => r,
            None => GateResult {
                name,
                verdict: GateVerdict::Pending("evaluating".into()),
                at: now,
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The success-rate verdict over `window` ending at `now`, from samples of
/// one revision's cumulative counters (oldest first). Only samples taken at
/// or after `since` count, and a verdict needs a whole window of them.
pub fn success_rate(
    samples: &[Sample],
    revision: &Revision,
    since: Time,
    now: Time,
    window: Duration,
    min: f64,
) -> GateVerdict {
    let secs = window.as_secs();
    let usable: Vec<&Sample> = samples.iter().filter(|s| s.at >= since).collect();
    let (Some(first), Some(last)) = (usable.first(), usable.last()) else {
        return GateVerdict::Pending(format!("no requests to {revision} counted yet"));
    };
    // The newest sample at least a window old is the baseline.
    let Some(base) = usable.iter().rev().find(|s| now.since(s.at) >= window) else {
        return GateVerdict::Pending(format!(
            "measuring: {} of {secs} s observed",
            now.since(first.at).as_secs()
        ));
    };
    let requests = last.requests.saturating_sub(base.requests);
    let errors = last.errors.saturating_sub(base.errors).min(requests);
    if requests == 0 {
        return GateVerdict::Pending(format!("no requests to {revision} in the last {secs} s"));
    }
    let rate = (requests - errors) as f64 / requests as f64;
    if rate >= min {
        GateVerdict::Pass
    } else {
        GateVerdict::Fail(format!(
            "success rate {:.1}% ({errors} errors in {requests} requests over the last {secs} s) is below {:.1}%",
            rate * 100.0,
            min * 100.0
        ))
    }
}

/// A gate URL for messages: no credentials, no query string (tokens often
/// ride there).
fn shown(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{}?…", redact_url(base)),
        None => redact_url(url),
    }
}

/// A request error with its causes ("connection refused"), without the URL.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        source = s.source();
    }
    msg
}

/// `{{ service }}` and `{{ revision }}` filled in (the manifest renderer
/// leaves them for this).
fn fill(query: &str, step: &Step) -> String {
    query
        .replace("{{ service }}", step.service.as_str())
        .replace("{{service}}", step.service.as_str())
        .replace("{{ revision }}", step.revision.as_str())
        .replace("{{revision}}", step.revision.as_str())
}

#[derive(serde::Deserialize)]
struct PromAnswer {
    status: String,
    #[serde(default)]
    data: Option<PromData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct PromData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// The number in a `[<time>, "<value>"]` pair.
fn sample_value(v: &serde_json::Value) -> Option<f64> {
    v.get(1)?.as_str()?.parse().ok()
}

/// The verdict of a Prometheus answer (already parsed) against the bounds.
pub fn prometheus_verdict(
    answer: &serde_json::Value,
    min: Option<f64>,
    max: Option<f64>,
) -> GateVerdict {
    let a: PromAnswer = match serde_json::from_value(answer.clone()) {
        Ok(a) => a,
        Err(e) => return GateVerdict::Pending(format!("not a Prometheus answer: {e}")),
    };
    if a.status != "success" {
        return GateVerdict::Fail(format!(
            "query failed: {}",
            a.error.unwrap_or_else(|| a.status.clone())
        ));
    }
    let Some(data) = a.data else {
        return GateVerdict::Pending("the answer has no data".into());
    };
    let value = match data.result_type.as_str() {
        "scalar" => sample_value(&data.result),
        "vector" => {
            let series = data.result.as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => return GateVerdict::Pending("the query returned no series".into()),
                [one] => one.get("value").and_then(sample_value),
                many => {
                    return GateVerdict::Fail(format!(
                        "the query returned {} series; aggregate it to one (for example with sum(...))",
                        many.len()
                    ));
                }
            }
        }
        other => {
            return GateVerdict::Fail(format!(
                "the query returns a {other}; it must return a scalar or one series"
            ));
        }
    };
    let Some(v) = value else {
        return GateVerdict::Pending("the answer's value is not a number".into());
    };
    if !v.is_finite() {
        // Typically a ratio over no requests: 0/0.
        return GateVerdict::Pending(format!("the query's value is {v}"));
    }
    if let Some(lo) = min
        && v < lo
    {
        return GateVerdict::Fail(format!("query result {v} is below min {lo}"));
    }
    if let Some(hi) = max
        && v > hi
    {
        return GateVerdict::Fail(format!("query result {v} is above max {hi}"));
    }
    GateVerdict::Pass
}

async fn prometheus_gate(
    http: &reqwest::Client,
    address: &str,
    query: &str,
    step: &Step,
    min: Option<f64>,
    max: Option<f64>,
) -> GateVerdict {
    let shown = shown(address);
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let resp = match http
        .get(&url)
        .query(&[("query", fill(query, step))])
        .timeout(PROMETHEUS_TIMEOUT)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            return GateVerdict::Pending(format!(
                "Prometheus at {shown} did not answer: {}",
                describe(e)
            ));
        }
    };
    let status = resp.status();
    // 400 (bad query) and 422 (cannot execute) carry an error answer.
    if !(status.is_success() || status.as_u16() == 400 || status.as_u16() == 422) {
        return GateVerdict::Pending(format!("Prometheus at {shown} answered {status}"));
    }
    match crate::net::json_capped::<serde_json::Value>(resp, crate::net::MAX_GATE_BODY_BYTES).await
    {
        Ok(v) => prometheus_verdict(&v, min, max),
        Err(e) => GateVerdict::Pending(format!(
            "Prometheus at {shown}: unreadable answer ({status}): {e}"
        )),
    }
}

/// The JSON a webhook gate receives.
pub fn webhook_payload(step: &Step, gate: &str) -> serde_json::Value {
    serde_json::json!({
        "service": step.service.as_str(),
        "revision": step.revision.as_str(),
        "stableRevision": step.stable.as_ref().map(|r| r.as_str()),
        "phase": step.phase,
        "gate": gate,
    })
}

async fn webhook_gate(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    step: &Step,
    gate: &str,
) -> GateVerdict {
    let shown = shown(url);
    match http
        .post(url)
        .json(&webhook_payload(step, gate))
        .timeout(timeout)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => GateVerdict::Pass,
        Ok(r) => {
            let status = r.status();
            let body = crate::net::text_capped(r, 4096).await.unwrap_or_default();
            let body: String = body.trim().chars().take(200).collect();
            GateVerdict::Fail(if body.is_empty() {
                format!("{shown} answered {status}")
            } else {
                format!("{shown} answered {status}: {body}")
            })
        }
        Err(e) => GateVerdict::Pending(format!("{shown} did not answer: {}", describe(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{InstanceTemplate, OnNoData};
    use crate::runtime::RevisionTraffic;
    use serde_json::json;

    fn rev() -> Revision {
        Revision("abcdef0123".into())
    }

    fn at(s: u64) -> Time {
        Time::from_secs(1_000 + s)
    }

    fn smp(t: u64, requests: u64, errors: u64) -> Sample {
        Sample {
            at: at(t),
            requests,
            errors,
        }
    }

    /// (samples, since, now, min, expected verdict kind, text in the reason)
    type RateCase = (Vec<Sample>, u64, u64, f64, &'static str, &'static str);
    /// (answer, min, max, expected verdict kind, text in the reason)
    type PromCase = (
        serde_json::Value,
        Option<f64>,
        Option<f64>,
        &'static str,
        &'static str,
    );

    fn verdict_kind(v: &GateVerdict) -> (&'static str, &str) {
        match v {
            GateVerdict::Pass => ("pass", ""),
            GateVerdict::Fail(r) => ("fail", r.as_str()),
            GateVerdict::Pending(r) => ("pending", r.as_str()),
        }
    }

    #[test]
    fn success_rate_over_the_last_whole_window() {
        let w = Duration::from_secs(10);
        let cases: Vec<RateCase> = vec![
            (
                vec![],
                0,
                20,
                0.9,
                "pending",
                "no requests to abcdef0123 counted yet",
            ),
            (
                vec![smp(0, 0, 0), smp(5, 50, 0)],
                0,
                5,
                0.9,
                "pending",
                "measuring: 5 of 10 s",
            ),
            (vec![smp(0, 0, 0), smp(10, 100, 5)], 0, 10, 0.9, "pass", ""),
            (vec![smp(0, 0, 0), smp(10, 100, 10)], 0, 10, 0.9, "pass", ""),
            (
                vec![smp(0, 0, 0), smp(10, 100, 11)],
                0,
                10,
                0.9,
                "fail",
                "success rate 89.0% (11 errors in 100 requests over the last 10 s) is below 90.0%",
            ),
            // Only the last window counts: early errors age out.
            (
                vec![
                    smp(0, 0, 0),
                    smp(5, 100, 100),
                    smp(15, 200, 100),
                    smp(25, 300, 100),
                ],
                0,
                25,
                0.99,
                "pass",
                "",
            ),
            // No requests in the window: no data, even with traffic before.
            (
                vec![
                    smp(0, 0, 0),
                    smp(5, 100, 0),
                    smp(15, 100, 0),
                    smp(20, 100, 0),
                ],
                0,
                20,
                0.9,
                "pending",
                "no requests to abcdef0123 in the last 10 s",
            ),
            // Samples from before `since` (pre-promotion) do not count.
            (
                vec![smp(0, 0, 0), smp(10, 100, 50), smp(12, 110, 50)],
                10,
                15,
                0.9,
                "pending",
                "measuring: 5 of 10 s",
            ),
            (
                vec![smp(0, 0, 0), smp(10, 100, 50), smp(20, 200, 50)],
                10,
                20,
                0.9,
                "pass",
                "",
            ),
        ];
        for (i, (samples, since, now, min, kind, text)) in cases.into_iter().enumerate() {
            let v = success_rate(&samples, &rev(), at(since), at(now), w, min);
            let (k, reason) = verdict_kind(&v);
            assert_eq!(k, kind, "case {i}: {v:?}");
            assert!(reason.contains(text), "case {i}: {reason:?} lacks {text:?}");
        }
    }

    #[test]
    fn prometheus_answers() {
        let vector = |vals: &[&str]| {
            json!({"status": "success", "data": {"resultType": "vector", "result":
                vals.iter().map(|v| json!({"metric": {}, "value": [1.7e9, v]})).collect::<Vec<_>>()}})
        };
        let cases: Vec<PromCase> = vec![
            (vector(&["0.004"]), None, Some(0.01), "pass", ""),
            (
                vector(&["0.02"]),
                None,
                Some(0.01),
                "fail",
                "query result 0.02 is above max 0.01",
            ),
            (
                vector(&["3"]),
                Some(5.0),
                None,
                "fail",
                "query result 3 is below min 5",
            ),
            (vector(&[]), None, Some(0.01), "pending", "no series"),
            (vector(&["NaN"]), None, Some(0.01), "pending", "NaN"),
            (
                vector(&["1", "2"]),
                None,
                Some(0.01),
                "fail",
                "returned 2 series; aggregate",
            ),
            (
                json!({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "7"]}}),
                Some(5.0),
                Some(10.0),
                "pass",
                "",
            ),
            (
                json!({"status": "success", "data": {"resultType": "matrix", "result": []}}),
                None,
                Some(1.0),
                "fail",
                "returns a matrix",
            ),
            (
                json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}),
                None,
                Some(1.0),
                "fail",
                "query failed: parse error at char 5",
            ),
            (
                json!({"hello": 1}),
                None,
                Some(1.0),
                "pending",
                "not a Prometheus answer",
            ),
        ];
        for (i, (answer, min, max, kind, text)) in cases.into_iter().enumerate() {
            let v = prometheus_verdict(&answer, min, max);
            let (k, reason) = verdict_kind(&v);
            assert_eq!(k, kind, "case {i}: {v:?}");
            assert!(reason.contains(text), "case {i}: {reason:?} lacks {text:?}");
        }
    }

    fn step(since: Time) -> Step {
        Step {
            service: ServiceName::parse("web").unwrap(),
            revision: rev(),
            stable: Some(Revision("0000000001".into())),
            phase: "Progressing".into(),
            since,
        }
    }

    fn spec(gates: Vec<Gate>) -> ServiceSpec {
        let mut s = ServiceSpec::with_defaults(1, InstanceTemplate::command(["x".to_string()]));
        s.gates = gates;
        s
    }

    fn traffic(requests: u64, errors: u64) -> Observed {
        Observed {
            traffic: vec![RevisionTraffic {
                revision: rev(),
                requests,
                errors,
            }],
            ..Observed::default()
        }
    }

    #[test]
    fn counters_that_start_over_start_a_new_measurement() {
        let g = GateRunner::new(None);
        let s = spec(vec![Gate::SuccessRate {
            min: 0.9,
            window_seconds: 10,
            on_no_data: OnNoData::Wait,
        }]);
        let st = step(at(0));
        let v = |r: Vec<GateResult>| r[0].verdict.clone();
        assert!(matches!(
            v(g.evaluate(&s, &traffic(0, 0), &st, at(0))),
            GateVerdict::Pending(_)
        ));
        assert_eq!(
            v(g.evaluate(&s, &traffic(1000, 0), &st, at(10))),
            GateVerdict::Pass
        );
        // The runtime's counters restarted (say, after a controller restart):
        // not 1000 requests gone missing, a new measurement.
        match v(g.evaluate(&s, &traffic(5, 5), &st, at(12))) {
            GateVerdict::Pending(r) => assert!(r.contains("measuring: 0 of 10 s"), "{r}"),
            other => panic!("{other:?}"),
        }
        match v(g.evaluate(&s, &traffic(100, 50), &st, at(22))) {
            GateVerdict::Fail(r) => assert!(r.contains("45 errors in 95 requests"), "{r}"),
            other => panic!("{other:?}"),
        }
        // A runtime without counters for the revision (kube): no data.
        match v(g.evaluate(&s, &Observed::default(), &st, at(30))) {
            GateVerdict::Pending(r) => assert!(r.contains("no requests"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    /// A Prometheus and a webhook receiver on loopback that record what they get.
    async fn receivers(
        webhook_status: u16,
    ) -> (
        String,
        String,
        Arc<Mutex<Vec<String>>>,
        Arc<Mutex<Vec<serde_json::Value>>>,
    ) {
        use axum::extract::{Json, Query, State};
        use axum::routing::{get, post};
        let queries: Arc<Mutex<Vec<String>>> = Arc::default();
        let bodies: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let prom = axum::Router::new()
            .route(
                "/api/v1/query",
                get(
                    |State(q): State<Arc<Mutex<Vec<String>>>>,
                     Query(p): Query<HashMap<String, String>>| async move {
                        let query = p.get("query").cloned().unwrap_or_default();
                        lock(&q).push(query);
                        Json(json!({"status": "success", "data": {"resultType": "vector",
                            "result": [{"metric": {}, "value": [1.7e9, "0.25"]}]}}))
                    },
                ),
            )
            .with_state(queries.clone());
        let hook = axum::Router::new()
            .route(
                "/gate",
                post(
                    move |State(b): State<Arc<Mutex<Vec<serde_json::Value>>>>,
                          Json(v): Json<serde_json::Value>| async move {
                        lock(&b).push(v);
                        (
                            axum::http::StatusCode::from_u16(webhook_status).unwrap(),
                            "not approved by the release manager",
                        )
                    },
                ),
            )
            .with_state(bodies.clone());
        let mut urls = Vec::new();
        for app in [prom, hook] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", l.local_addr().unwrap()));
            tokio::spawn(async move { axum::serve(l, app).await });
        }
        let hook_url = format!("{}/gate", urls[1]);
        (urls[0].clone(), hook_url, queries, bodies)
    }

    /// Evaluates until no result says "evaluating".
    async fn settled(g: &GateRunner, s: &ServiceSpec, st: &Step, now: Time) -> Vec<GateResult> {
        for _ in 0..200 {
            let r = g.evaluate(s, &Observed::default(), st, now);
            if !r
                .iter()
                .any(|r| r.verdict == GateVerdict::Pending("evaluating".into()))
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gates still evaluating after 2 s");
    }

    #[tokio::test]
    async fn prometheus_and_webhook_gates_over_real_http() {
        for (status, webhook_verdict) in [
            (200, GateVerdict::Pass),
            (409, GateVerdict::Fail(String::new())),
        ] {
            let (prom, hook, queries, bodies) = receivers(status).await;
            let g = GateRunner::new(Some(prom.clone()));
            let s = spec(vec![
                Gate::Prometheus {
                    query:
                        "sum(rate(errors{service=\"{{ service }}\",revision=\"{{revision}}\"}[1m]))"
                            .into(),
                    address: None,
                    min: None,
                    max: Some(0.5),
                    on_no_data: OnNoData::Wait,
                },
                Gate::Prometheus {
                    query: "x".into(),
                    address: Some(prom.replace("http://", "http://user:hunter2@")),
                    min: Some(1.0),
                    max: None,
                    on_no_data: OnNoData::Wait,
                },
                Gate::Webhook {
                    url: hook.clone(),
                    timeout_seconds: 5,
                    on_no_data: OnNoData::Wait,
                },
            ]);
            let st = step(at(0));
            let r = settled(&g, &s, &st, at(1)).await;
            assert_eq!(
                r.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
                ["prometheus[0]", "prometheus[1]", "webhook"]
            );
            assert_eq!(r[0].verdict, GateVerdict::Pass);
            assert_eq!(
                r[1].verdict,
                GateVerdict::Fail("query result 0.25 is below min 1".into())
            );
            match (&r[2].verdict, &webhook_verdict) {
                (GateVerdict::Pass, GateVerdict::Pass) => {}
                (GateVerdict::Fail(m), GateVerdict::Fail(_)) => {
                    assert!(
                        m.contains("409 Conflict: not approved by the release manager"),
                        "{m}"
                    )
                }
                other => panic!("{other:?}"),
            }
            assert!(
                lock(&queries).contains(
                    &"sum(rate(errors{service=\"web\",revision=\"abcdef0123\"}[1m]))".to_string()
                ),
                "{:?}",
                lock(&queries)
            );
            let b = lock(&bodies)[0].clone();
            assert_eq!(b["service"], "web");
            assert_eq!(b["revision"], "abcdef0123");
            assert_eq!(b["stableRevision"], "0000000001");
            assert_eq!(b["gate"], "webhook");
            // Within REFRESH the latest results are reused: no new requests.
            let n = lock(&queries).len();
            let again = g.evaluate(&s, &Observed::default(), &st, at(2));
            assert_eq!(again[0].at, at(1));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(lock(&queries).len(), n);
            // Results from before the measurement start are not reused.
            g.evaluate(&s, &Observed::default(), &step(at(3)), at(4));
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(lock(&queries).len() > n, "re-evaluated after a new start");
        }
    }

    #[tokio::test]
    async fn unreachable_targets_are_no_data_and_hide_credentials() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let g = GateRunner::new(None);
        let s = spec(vec![
            Gate::Prometheus {
                query: "up".into(),
                address: None,
                min: Some(1.0),
                max: None,
                on_no_data: OnNoData::Wait,
            },
            Gate::Webhook {
                url: format!("http://user:hunter2@127.0.0.1:{closed}/gate?token=hunter2"),
                timeout_seconds: 1,
                on_no_data: OnNoData::Wait,
            },
        ]);
        let r = settled(&g, &s, &step(at(0)), at(0)).await;
        match &r[0].verdict {
            GateVerdict::Pending(m) => assert!(m.contains("--prometheus-url"), "{m}"),
            other => panic!("{other:?}"),
        }
        match &r[1].verdict {
            GateVerdict::Pending(m) => {
                assert!(m.contains("did not answer"), "{m}");
                assert!(m.to_lowercase().contains("refused"), "{m}");
                assert!(m.contains(&format!("127.0.0.1:{closed}")), "{m}");
                assert!(!m.contains("hunter2"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
