//! The API clients' pure parts: the diff adapter and labels, tables, the
//! event-stream parser, exit codes.

use super::diff::{change_line, plan_diff};
use super::format::status_table;
use super::watch::{SseParser, exit_for, watch_line};
use crate::engine::Phase;
use crate::engine::RevisionCounts;
use crate::hub::ServiceView;
use crate::manifest::Release;
use crate::manifest::{InstanceTemplate, Revision, Service, ServiceName, ServiceSpec};
use crate::time::Time;

fn live(name: &str, rev: &str, replicas: u32) -> ServiceView {
    ServiceView {
        name: name.into(),
        strategy: "RollingUpdate".into(),
        replicas,
        phase: Phase::Complete,
        reason: String::new(),
        current_revision: Some(Revision::from(rev)),
        target_revision: Some(Revision::from(rev)),
        commit: None,
        revisions: vec![RevisionCounts {
            revision: Revision::from(rev),
            desired: replicas,
            live: replicas,
            ready: replicas,
            available: replicas,
            terminating: 0,
        }],
        gates: vec![],
        gpu: None,
        active: None,
        preview: None,
        updated_at: Time::ZERO,
        canary: None,
        drift: Vec::new(),
    }
}

fn desired(name: &str, rev: &str, replicas: u32) -> Service {
    Service {
        name: ServiceName::parse(name).expect("name"),
        revision: Revision::from(rev),
        spec: ServiceSpec::with_defaults(replicas, InstanceTemplate::default()),
        file: None,
    }
}

#[test]
fn diff_table() {
    let release = Release {
        services: vec![
            desired("same", "r1", 2),
            desired("rolled", "r2", 2),
            desired("scaled", "r1", 5),
            desired("both", "r9", 1),
            desired("new", "r3", 3),
        ],
        prune: true,
        ..Release::default()
    };
    let live_now = vec![
        live("same", "r1", 2),
        live("rolled", "r1", 2),
        live("scaled", "r1", 2),
        live("both", "r1", 2),
        live("gone", "r1", 1),
    ];
    let got: Vec<(String, String)> = plan_diff(&release, &live_now)
        .into_iter()
        .map(|c| (c.service, c.change))
        .collect();
    let want: Vec<(String, String)> = [
        ("both", "rollout+scale"),
        ("gone", "removed"),
        ("new", "added"),
        ("rolled", "rollout"),
        ("scaled", "scale"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);

    let keep = Release {
        prune: false,
        ..release
    };
    let gone = plan_diff(&keep, &live_now)
        .into_iter()
        .find(|c| c.service == "gone")
        .expect("gone");
    assert_eq!(gone.change, "orphaned");
}

#[test]
fn diff_counts_gpu_units() {
    let mut s = desired("llm", "r1", 3);
    s.spec.template.resources.gpu = Some(crate::manifest::GpuRequest {
        count: 2,
        product: Some("NVIDIA-A100-SXM4-80GB".into()),
        memory_mib: None,
        sharing: crate::manifest::GpuSharing::Exclusive,
        allow_in_place: true,
    });
    let release = Release {
        services: vec![s],
        ..Release::default()
    };
    let c = &plan_diff(&release, &[])[0];
    assert_eq!(c.gpu_units, Some(6));
    assert!(change_line(c).contains("needs 6 GPU unit(s) of NVIDIA-A100-SXM4-80GB"));
}

#[test]
fn sse_parser_handles_split_chunks() {
    let mut p = SseParser::default();
    assert!(p.feed(b"event: service\ndata: {\"a\"").is_empty());
    let got = p.feed(b":1}\n\n: keep-alive\n\nevent: x\r\ndata: 2\r\n\r\n");
    assert_eq!(
        got,
        vec![
            ("service".to_string(), "{\"a\":1}".to_string()),
            ("x".to_string(), "2".to_string())
        ]
    );
}

#[test]
fn canary_step_and_weight_in_status_and_watch() {
    let mut v = live("shop", "bbbbbbbbbb", 4);
    v.strategy = "Canary".into();
    v.phase = Phase::Progressing;
    v.canary = Some(crate::engine::CanaryStatus {
        step: 1,
        steps: 6,
        current: "pause 60s".into(),
        weight: 5,
    });
    let t = status_table(std::slice::from_ref(&v));
    assert!(t.contains("Canary (step 2/6 pause 60s, weight 5%)"), "{t}");
    assert!(
        watch_line(&v).contains(" canary step 2/6 pause 60s, weight 5%"),
        "{}",
        watch_line(&v)
    );
    v.canary = Some(crate::engine::CanaryStatus {
        step: 6,
        steps: 6,
        current: "promoting".into(),
        weight: 60,
    });
    assert!(watch_line(&v).contains("canary promoting, weight 60%"));
}

#[test]
fn status_table_columns() {
    let mut v = live("web", "aaaaaaaaaa", 4);
    v.phase = Phase::Progressing;
    v.target_revision = Some(Revision::from("bbbbbbbbbb"));
    v.revisions.insert(
        0,
        RevisionCounts {
            revision: Revision::from("bbbbbbbbbb"),
            desired: 4,
            live: 3,
            ready: 1,
            available: 1,
            terminating: 0,
        },
    );
    let t = status_table(&[v.clone()]);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("SERVICE"));
    assert!(lines[1].contains("Progressing"));
    assert!(lines[1].contains("aaaaaaaa → bbbbbbbb"));
    assert!(lines[1].contains("1/4"));
    let w = watch_line(&v);
    assert!(w.contains("bbbbbbbb: 1/4 ready, 2 starting"), "{w}");
}

#[test]
fn exit_codes() {
    assert_eq!(exit_for(Phase::Complete), 0);
    for p in [Phase::Failed, Phase::Degraded, Phase::RolledBack] {
        assert_eq!(exit_for(p), 1, "{p:?}");
    }
}

/// The adapter from the API's service views to the planner's input, and the
/// labels `floyd diff` gives the planner's answers: one row per situation.
#[test]
fn diff_adapter_table() {
    use super::diff::observed_from_views;
    // (what, desired (name, revision, replicas, autoscaled), live, want (label, from rev, to rev, from replicas, to replicas))
    type Want = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<u32>,
        Option<u32>,
    );
    type Case = (
        &'static str,
        Option<(&'static str, u32, bool)>,
        Option<ServiceView>,
        Option<Want>,
    );
    let cases: Vec<Case> = vec![
        (
            "same revision and count: no line",
            Some(("r1", 2, false)),
            Some(live("s", "r1", 2)),
            None,
        ),
        (
            "new service",
            Some(("r1", 3, false)),
            None,
            Some(("added", None, Some("r1"), None, Some(3))),
        ),
        (
            "new revision",
            Some(("r2", 2, false)),
            Some(live("s", "r1", 2)),
            Some(("rollout", Some("r1"), Some("r2"), Some(2), Some(2))),
        ),
        (
            "new revision and count",
            Some(("r2", 5, false)),
            Some(live("s", "r1", 2)),
            Some(("rollout+scale", Some("r1"), Some("r2"), Some(2), Some(5))),
        ),
        (
            "an autoscaled service's count is its autoscaler's: a rollout only",
            Some(("r2", 5, true)),
            Some(live("s", "r1", 2)),
            Some(("rollout", Some("r1"), Some("r2"), Some(2), Some(5))),
        ),
        (
            "an autoscaled service at another count: nothing",
            Some(("r1", 5, true)),
            Some(live("s", "r1", 2)),
            None,
        ),
        (
            "count only",
            Some(("r1", 4, false)),
            Some(live("s", "r1", 2)),
            Some(("scale", Some("r1"), Some("r1"), Some(2), Some(4))),
        ),
        (
            "mid-rollout towards the same revision: the target counts, not the current",
            Some(("r2", 2, false)),
            Some(ServiceView {
                target_revision: Some(Revision::from("r2")),
                ..live("s", "r1", 2)
            }),
            None,
        ),
        (
            "mid-rollout, half-way: nothing (the rollout goes on)",
            Some(("r2", 2, false)),
            Some({
                let mut v = live("s", "r1", 2);
                v.target_revision = Some(Revision::from("r2"));
                v.revisions.push(RevisionCounts {
                    revision: Revision::from("r2"),
                    desired: 1,
                    live: 1,
                    ready: 1,
                    available: 1,
                    terminating: 0,
                });
                v
            }),
            None,
        ),
        (
            "mid-rollout, then the count changes: a scale",
            Some(("r2", 3, false)),
            Some({
                let mut v = live("s", "r1", 2);
                v.target_revision = Some(Revision::from("r2"));
                v
            }),
            Some(("scale", Some("r2"), Some("r2"), Some(2), Some(3))),
        ),
        (
            "the runtime lost everything: created again",
            Some(("r1", 2, false)),
            Some(ServiceView {
                revisions: Vec::new(),
                ..live("s", "r1", 2)
            }),
            Some(("added", None, Some("r1"), None, Some(2))),
        ),
        (
            "gone from Git",
            None,
            Some(live("s", "r1", 2)),
            Some(("removed", Some("r1"), None, Some(2), None)),
        ),
    ];
    for (what, want_svc, live_svc, want) in cases {
        let mut services = Vec::new();
        if let Some((rev, replicas, autoscaled)) = want_svc {
            let mut s = desired("s", rev, replicas);
            if autoscaled {
                s.spec.autoscaling = Some(crate::manifest::Autoscaling {
                    min_replicas: 1,
                    max_replicas: 10,
                    target_cpu_utilization_percentage: Some(80),
                    metric: None,
                });
            }
            services.push(s);
        }
        let release = Release {
            services,
            prune: true,
            ..Release::default()
        };
        let live_now: Vec<ServiceView> = live_svc.into_iter().collect();
        let got: Vec<_> = plan_diff(&release, &live_now)
            .into_iter()
            .map(|c| {
                (
                    c.change,
                    c.from_revision,
                    c.to_revision,
                    c.from_replicas,
                    c.to_replicas,
                )
            })
            .collect();
        let want: Vec<_> = want
            .into_iter()
            .map(|(l, f, t, fr, tr)| {
                (
                    l.to_string(),
                    f.map(String::from),
                    t.map(String::from),
                    fr,
                    tr,
                )
            })
            .collect();
        assert_eq!(got, want, "{what}");
    }

    // The views' revisions keep the API's order (oldest first) and the
    // target is what the controller aims at.
    let mut v = live("s", "r1", 2);
    v.revisions.push(RevisionCounts {
        revision: Revision::from("r2"),
        desired: 1,
        live: 1,
        ready: 0,
        available: 0,
        terminating: 0,
    });
    v.target_revision = Some(Revision::from("r2"));
    let (observed, target) = observed_from_views(&[v]);
    let name = ServiceName::parse("s").expect("name");
    let o = &observed[&name];
    let order: Vec<(&str, u32)> = o
        .revisions
        .iter()
        .map(|r| (r.revision.as_str(), r.desired))
        .collect();
    // The target's count is the one aimed at (2), not the one reached (1).
    assert_eq!(order, vec![("r1", 2), ("r2", 2)]);
    assert!(o.revisions[0].created_at < o.revisions[1].created_at);
    assert_eq!(target[&name].as_str(), "r2");
}
