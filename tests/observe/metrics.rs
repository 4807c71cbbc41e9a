//! `/metrics` read back with a real exposition-format parser.

use crate::fixture::*;
use floyd::engine::Phase;
use floyd::telemetry::metrics::*;
use prometheus_parse::{Scrape, Value};

/// Every metric name of CONTRACT.md, as samples are named.
pub const CONTRACT: [&str; 12] = [
    "floyd_sync_total",
    "floyd_sync_duration_seconds",
    "floyd_git_fetch_duration_seconds",
    "floyd_git_fetch_total",
    "floyd_webhook_requests_total",
    "floyd_rollout_total",
    "floyd_rollout_duration_seconds",
    "floyd_rollout_phase",
    "floyd_revert_commits_total",
    "floyd_instances",
    "floyd_gpu_capacity",
    "floyd_gpu_allocated",
];

pub fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses")
}

/// What the controller records for one sync with one finished rollout.
fn record_one_rollout(m: &Metrics) {
    let r = |s: &str| ResultLabel { result: s.into() };
    m.sync_total.get_or_create(&r("success")).inc();
    m.sync_duration_seconds.observe(0.042);
    m.git_fetch_duration_seconds.observe(0.013);
    m.git_fetch_total.get_or_create(&r("success")).inc();
    m.rollout_total
        .get_or_create(&RolloutLabels {
            service: "web".into(),
            strategy: "RollingUpdate".into(),
            result: "Complete".into(),
        })
        .inc();
    m.rollout_duration_seconds
        .get_or_create(&StrategyLabel {
            strategy: "RollingUpdate".into(),
        })
        .observe(37.0);
    m.revert_commits_total.get_or_create(&r("success")).inc();
    m.instances
        .get_or_create(&InstanceLabels {
            service: "web".into(),
            revision: "bbbbbbbbbb".into(),
            state: "ready".into(),
        })
        .set(4);
    let p = ProductLabel {
        product: "NVIDIA-A100-SXM4-80GB".into(),
    };
    m.gpu_capacity.get_or_create(&p).set(8);
    m.gpu_allocated.get_or_create(&p).set(4);
}

#[tokio::test]
async fn every_contract_metric_is_scraped() {
    let s = Server::start().await;
    record_one_rollout(&s.hub.metrics);
    // floyd_rollout_phase comes from the hub; the webhook counter from the route.
    s.hub.set_service(complete("web"));
    let c = client();
    let res = c
        .post(s.at("/hooks/gitlab"))
        .body("{}")
        .send()
        .await
        .expect("webhook");
    assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);

    let res = c.get(s.at("/metrics")).send().await.expect("metrics");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = res.text().await.expect("body");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics must end with # EOF"
    );
    let scrape = parse(&text);
    for name in CONTRACT {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "{name} missing from /metrics:\n{text}"
        );
    }
    let phase = |p: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "floyd_rollout_phase"
                    && s.labels.get("service") == Some("web")
                    && s.labels.get("phase") == Some(p)
            })
            .map(|s| s.value.clone())
    };
    assert!(matches!(phase("Complete"), Some(Value::Gauge(v)) if v == 1.0));
    assert!(matches!(phase("Failed"), Some(Value::Gauge(v)) if v == 0.0));
    // Every provider × result exists from start-up (at 0); the refused
    // gitlab delivery is the one counted.
    let counted: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "floyd_webhook_requests_total")
        .filter(|s| !matches!(s.value, Value::Counter(v) | Value::Untyped(v) if v == 0.0))
        .collect();
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counted[0].labels.get("provider"), Some("gitlab"));
    assert_eq!(counted[0].labels.get("result"), Some("unauthorized"));
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "floyd_rollout_duration_seconds")
        .expect("histogram");
    match &hist.value {
        Value::Histogram(buckets) => {
            assert!(buckets.len() >= 10, "too few buckets: {}", buckets.len());
            let le64 = buckets
                .iter()
                .find(|b| b.less_than == 64.0)
                .expect("a 64 s bucket");
            assert_eq!(le64.count, 1.0, "37 s falls in le=64");
        }
        other => panic!("rollout duration is not a histogram: {other:?}"),
    }
    // No commit sha as a label value anywhere.
    for s in &scrape.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                !(v.len() >= 40 && v.chars().all(|c| c.is_ascii_hexdigit())),
                "{}: label {k}={v} looks like a commit sha",
                s.metric
            );
        }
    }
    let _ = Phase::Complete;
    s.shutdown().await;
}

/// docs/operations.md's alert table is the canonical list; the chart's
/// PrometheusRule must ship exactly the same alerts and expressions.
#[test]
fn alerts_match_the_chart() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/operations.md")).expect("operations.md");
    let chart = std::fs::read_to_string(root.join("charts/floyd/templates/prometheusrule.yaml"))
        .expect("prometheusrule.yaml");
    let mut from_doc = std::collections::BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `Floyd")) {
        // | `Name` | `expr` | for | severity | what to do |
        let cells: Vec<&str> = line.split(" | ").collect();
        let name = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_string();
        let expr = cells[1].trim_matches('`').replace("\\|", "|");
        from_doc.insert(name, expr);
    }
    let mut from_chart = std::collections::BTreeMap::new();
    let mut name = None;
    for line in chart.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = Some(n.to_string());
        } else if let Some(e) = line.strip_prefix("expr: ")
            && let Some(n) = name.take()
        {
            from_chart.insert(n, e.to_string());
        }
    }
    assert!(from_doc.len() >= 10, "alert table not found: {from_doc:?}");
    pretty_assertions::assert_eq!(from_doc, from_chart);
    // Every metric an expression names is a contract metric.
    for (n, e) in &from_doc {
        for (i, _) in e.match_indices("floyd_") {
            let ident: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ident
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                CONTRACT.contains(&base),
                "{n}: {ident} is not a contract metric"
            );
        }
    }
}

/// `floyd_canary_weight{service}`: 0 from the first view of every service,
/// the weight while a canary is in flight, 0 again once it ended.
#[test]
fn canary_weight_per_service() {
    let hub = floyd::hub::Hub::new();
    let weight = |hub: &floyd::hub::Hub, service: &str| {
        parse(&hub.metrics.encode())
            .samples
            .into_iter()
            .find(|s| s.metric == "floyd_canary_weight" && s.labels.get("service") == Some(service))
            .map(|s| match s.value {
                Value::Gauge(v) | Value::Untyped(v) => v,
                other => panic!("{other:?}"),
            })
    };
    assert_eq!(weight(&hub, "web"), None);
    hub.set_service(view("web", Phase::Progressing));
    assert_eq!(weight(&hub, "web"), Some(0.0), "known services start at 0");
    let mut shop = view("shop", Phase::Progressing);
    shop.strategy = "Canary".into();
    shop.canary = Some(floyd::engine::CanaryStatus {
        step: 2,
        steps: 6,
        current: "setWeight 25".into(),
        weight: 25,
    });
    hub.set_service(shop.clone());
    assert_eq!(weight(&hub, "shop"), Some(25.0));
    shop.phase = Phase::Failed;
    hub.set_service(shop.clone());
    assert_eq!(
        weight(&hub, "shop"),
        Some(0.0),
        "a failed canary gets nothing"
    );
    let mut done = complete("shop");
    done.strategy = "Canary".into();
    hub.set_service(done);
    assert_eq!(weight(&hub, "shop"), Some(0.0));
}
