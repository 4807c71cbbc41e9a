//! Canary traffic through a Gateway API HTTPRoute
//! (`trafficRouting.gatewayAPI.httpRoute`), decided by the real engine and
//! carried out by the kube runtime against the fake API server: the route's
//! backend weights at every step, the stable and canary Services behind
//! them, the exact requests on the route (get and JSON Patch only: the route
//! is the user's), and a missing route as a clear error with nothing written.
//!
//! The Services Floyd sends are checked with `kubernetes-validate --strict`.
//! kubernetes-validate knows built-in kinds only, so the HTTPRoute after
//! every patch is validated against the Gateway API CRD schema by
//! `.tools/bin/validate-httproute` (node + the npm package
//! @kubernetes-models/gateway-api, installed by scripts/install-k8s-tools.sh),
//! and the fake API server's admission checks the structure that schema
//! demands ([`check_http_route`]) on every write.

use super::fake_api::{FakeApi, FakeNode, check_http_route};
use super::support::*;
use super::validate::{validate_http_routes, validate_objects};
use floyd::engine::{self, Phase, RolloutState};
use floyd::manifest::{
    CanaryAnalysis, CanaryParams, CanaryStep, GatewayApiRouting, ServiceName, ServiceSpec,
    Strategy, TrafficRouting,
};
use floyd::runtime::kube::KubeRuntime;
use floyd::runtime::kube::gateway::{canary_service_name, stable_service_name};
use floyd::runtime::{Action, Runtime};
use floyd::time::Time;
use serde_json::{Value, json};
use std::time::Duration;

const NS: &str = "apps";
const ROUTE: &str = "shop-route";
const ROUTE_PATH: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/shop-route";

fn canary_spec(image: &str) -> ServiceSpec {
    let mut s = spec(4, template(image));
    s.strategy = Strategy::Canary {
        canary: CanaryParams {
            steps: vec![
                CanaryStep::SetWeight(25),
                CanaryStep::Analysis(CanaryAnalysis {}),
                CanaryStep::SetWeight(50),
                CanaryStep::Analysis(CanaryAnalysis {}),
            ],
            matches: Vec::new(),
            mirror: false,
            traffic_routing: Some(TrafficRouting {
                gateway_api: GatewayApiRouting {
                    http_route: ROUTE.into(),
                },
            }),
        },
    };
    s
}

/// The user's route: the shop behind `shop-stable`, and an unrelated rule.
fn user_route() -> Value {
    json!({
        "metadata": {"name": ROUTE, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "public-gateway"}],
            "hostnames": ["shop.example.com"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"name": "shop-stable", "port": 8080}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                 "backendRefs": [{"name": "admin", "port": 80}]}
            ]
        }
    })
}

/// (stable weight, canary weight) of the shop's rule; `None` for a ref
/// without a weight (the Gateway API default, 1), 0 for an absent ref.
fn weights(fake: &FakeApi) -> (Option<i64>, Option<i64>) {
    let r = fake.get("httproutes", NS, ROUTE).expect("the route exists");
    let refs = r["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .clone();
    let w = |n: &str| {
        refs.iter()
            .find(|b| b["name"] == n)
            .map(|b| b["weight"].as_i64())
    };
    (
        w("shop-stable").expect("the stable ref stays"),
        w("shop-canary").unwrap_or(Some(0)),
    )
}

/// The `floyd.dev/revision` a Floyd Service selects (`None`: every revision).
fn selects(fake: &FakeApi, svc: &str) -> Option<String> {
    let s = fake.get("services", NS, svc).expect(svc);
    s["spec"]["selector"]["floyd.dev/revision"]
        .as_str()
        .map(str::to_string)
}

/// Steps, applies, samples the route after every apply; continues a few
/// steps after Complete (the settled traffic).
async fn drive(
    fake: &FakeApi,
    rt: &KubeRuntime,
    service: &ServiceName,
    spec: &ServiceSpec,
    previous: Option<&RolloutState>,
    sample: &mut Vec<(i64, i64, Option<String>, Option<String>)>,
) -> RolloutState {
    let mut state = engine::next_rollout(previous, rev(&spec.template), Time::now_wall());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut after = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not end: {state:#?}"
        );
        let now = Time::now_wall();
        let observed = rt.observe(service, Some(spec), now).await.expect("observe");
        let d = engine::step(spec, &observed, &state, now);
        rt.apply(service, spec, &d.actions).await.expect("apply");
        state = d.state;
        if fake.get("httproutes", NS, ROUTE).is_some()
            && fake.get("services", NS, "shop-canary").is_some()
        {
            let (s, c) = weights(fake);
            let row = (
                s.unwrap_or(1),
                c.unwrap_or(1),
                selects(fake, "shop-stable"),
                selects(fake, "shop-canary"),
            );
            if sample.last() != Some(&row) {
                sample.push(row);
            }
        }
        assert_ne!(state.phase, Phase::Failed, "{state:#?}");
        if state.phase == Phase::Complete {
            after += 1;
            if after > 3 {
                return state;
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn canary_writes_the_http_route_weights_at_each_step() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    fake.insert("httproutes", NS, user_route());
    let rt = KubeRuntime::new(fake.client(NS), NS);
    let shop = name("shop");
    assert_eq!(stable_service_name(&shop), "shop-stable");
    assert_eq!(canary_service_name(&shop), "shop-canary");
    let s1 = canary_spec("ghcr.io/acme/shop:1");
    let s2 = canary_spec("ghcr.io/acme/shop:2");
    let (r1, r2) = (rev(&s1.template).to_string(), rev(&s2.template).to_string());

    // A first deployment has nothing to compare against: in full. The
    // stable Service exists from then on (every revision); the route is
    // not touched.
    let mut sample = Vec::new();
    let done = drive(&fake, &rt, &shop, &s1, None, &mut sample).await;
    assert_eq!(selects(&fake, "shop-stable"), None);
    assert_eq!(
        fake.get("httproutes", NS, ROUTE).unwrap()["spec"],
        user_route()["spec"]
    );
    let before = fake.requests().len();

    // The canary: every sample is (stable weight, canary weight, stable
    // Service's revision, canary Service's revision).
    let done2 = drive(&fake, &rt, &shop, &s2, Some(&done), &mut sample).await;
    assert_eq!(done2.phase, Phase::Complete);
    let r1s = Some(r1.clone());
    let r2s = Some(r2.clone());
    assert_eq!(
        sample[..3],
        [
            (100, 0, r1s.clone(), r2s.clone()),
            (75, 25, r1s.clone(), r2s.clone()),
            (50, 50, r1s.clone(), r2s.clone()),
        ],
        "{sample:#?}"
    );
    let last = sample.last().unwrap();
    assert_eq!(*last, (100, 0, None, r2s.clone()), "settled: {sample:#?}");
    // In between: the promotion raises the canary's weight to 100, never
    // lowering it, with the Services on the stable and canary revisions.
    let promo = &sample[2..sample.len() - 1];
    assert!(promo.windows(2).all(|w| w[0].1 <= w[1].1), "{sample:#?}");
    assert_eq!(promo.last().unwrap().1, 100, "{sample:#?}");
    for (s, c, st, ca) in &sample[..sample.len() - 1] {
        assert_eq!(s + c, 100, "{sample:#?}");
        assert_eq!((st, ca), (&r1s, &r2s), "{sample:#?}");
    }

    // The route: the other rule and the rest untouched, the canary ref
    // added beside the stable one with its port.
    let route = fake.get("httproutes", NS, ROUTE).unwrap();
    assert_eq!(route["spec"]["rules"][1], user_route()["spec"]["rules"][1]);
    assert_eq!(
        route["spec"]["parentRefs"],
        user_route()["spec"]["parentRefs"]
    );
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"],
        json!([
            {"name": "shop-stable", "port": 8080, "weight": 100},
            {"name": "shop-canary", "port": 8080, "weight": 0}
        ])
    );

    // The exact requests on the route: reads and JSON Patches, one patch
    // per weight change, each testing the list it replaces.
    let on_route: Vec<String> = fake.requests()[before..]
        .iter()
        .filter(|r| r.contains("/httproutes"))
        .cloned()
        .collect();
    assert!(
        on_route.iter().all(|r| *r == format!("GET {ROUTE_PATH}?")
            || *r == format!("PATCH {ROUTE_PATH}?&fieldManager=floyd")
            || *r == format!("PATCH {ROUTE_PATH}?fieldManager=floyd")),
        "{on_route:#?}"
    );
    let patches: Vec<Value> = fake
        .sent()
        .into_iter()
        .filter(|s| s.path == ROUTE_PATH)
        .map(|s| {
            assert_eq!(s.method, "PATCH");
            s.body
        })
        .collect();
    let mut wseq: Vec<(i64, i64)> = sample.iter().map(|(s, c, _, _)| (*s, *c)).collect();
    wseq.dedup();
    assert_eq!(patches.len(), wseq.len(), "{patches:#?}\n{sample:#?}");
    let mut route = user_route();
    route["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    route["kind"] = json!("HTTPRoute");
    let mut routes = vec![route.clone()];
    for (p, (s, c)) in patches.iter().zip(&wseq) {
        let ops = p.as_array().expect("a JSON Patch");
        assert_eq!(ops.len(), 2, "{p}");
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["path"], "/spec/rules/0/backendRefs");
        assert_eq!(ops[0]["value"], route["spec"]["rules"][0]["backendRefs"]);
        assert_eq!(ops[1]["op"], "replace");
        assert_eq!(ops[1]["path"], "/spec/rules/0/backendRefs");
        assert_eq!(
            ops[1]["value"],
            json!([
                {"name": "shop-stable", "port": 8080, "weight": s},
                {"name": "shop-canary", "port": 8080, "weight": c}
            ])
        );
        route["spec"]["rules"][0]["backendRefs"] = ops[1]["value"].clone();
        check_http_route(&route).expect("the patched route fits the HTTPRoute schema");
        routes.push(route.clone());
    }
    // Every state of the route, against the Gateway API CRD schema.
    let n = validate_http_routes("HTTPRoute after each patch", &routes);
    assert!(n == 0 || n == routes.len());
    assert!(
        !fake.requests().iter().any(|r| r.contains("/httproutes")
            && (r.starts_with("POST") || r.starts_with("PUT") || r.starts_with("DELETE"))),
        "the route is never created, replaced or deleted"
    );

    // The Services Floyd sent: its identity, and valid.
    for svc in ["shop-stable", "shop-canary"] {
        let s = fake.get("services", NS, svc).unwrap();
        assert_eq!(
            s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "floyd"
        );
        assert_eq!(s["metadata"]["labels"]["floyd.dev/instance"], "floyd");
        assert_eq!(s["metadata"]["labels"]["floyd.dev/service"], "shop");
        assert_eq!(
            s["metadata"]["annotations"]["floyd.dev/role"],
            svc.trim_start_matches("shop-")
        );
    }
    let services: Vec<Value> = fake
        .sent()
        .into_iter()
        .filter(|s| s.path.contains("/services/"))
        .map(|s| s.body)
        .collect();
    validate_objects("canary Services", &services);

    // Removing the service removes Floyd's Services, never the route.
    rt.delete_service(&shop).await.expect("delete");
    assert!(fake.get("services", NS, "shop-stable").is_none());
    assert!(fake.get("services", NS, "shop-canary").is_none());
    assert!(fake.get("httproutes", NS, ROUTE).is_some());
}

#[tokio::test]
async fn a_missing_http_route_is_a_clear_error_and_nothing_is_written() {
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let rt = KubeRuntime::new(fake.client(NS), NS);
    let shop = name("shop");
    let s = canary_spec("ghcr.io/acme/shop:2");
    let before = fake.requests().len();
    let err = rt
        .apply(
            &shop,
            &s,
            &[Action::SetWeight {
                canary: rev(&s.template),
                stable: Some(rev(&template("ghcr.io/acme/shop:1"))),
                weight: 5,
            }],
        )
        .await
        .expect_err("no route");
    let msg = err.to_string();
    assert!(
        msg.contains("HTTPRoute apps/shop-route")
            && msg.contains("does not exist")
            && msg.contains("shop-stable")
            && msg.contains("trafficRouting"),
        "{msg}"
    );
    let reqs = &fake.requests()[before..];
    assert_eq!(reqs, [format!("GET {ROUTE_PATH}?")], "{reqs:#?}");

    // A route without a ref to the stable Service: the same, with the fix.
    let mut route = user_route();
    route["spec"]["rules"][0]["backendRefs"] = json!([{"name": "shop", "port": 8080}]);
    fake.insert("httproutes", NS, route);
    let err = rt
        .apply(
            &shop,
            &s,
            &[Action::SetWeight {
                canary: rev(&s.template),
                stable: None,
                weight: 5,
            }],
        )
        .await
        .expect_err("no stable ref");
    assert!(
        err.to_string()
            .contains("no rule of the HTTPRoute has a backendRef to Service \"shop-stable\""),
        "{err}"
    );
    assert!(fake.get("services", NS, "shop-canary").is_none());
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.starts_with("PATCH") || r.starts_with("POST")),
        "{:#?}",
        fake.requests()
    );
}

/// The schema check can fail: a negative weight is refused.
#[test]
fn the_http_route_schema_check_refuses_a_negative_weight() {
    let mut bad = user_route();
    bad["apiVersion"] = json!("gateway.networking.k8s.io/v1");
    bad["kind"] = json!("HTTPRoute");
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(-1);
    assert!(check_http_route(&bad).is_err());
    let r = std::panic::catch_unwind(|| validate_http_routes("negative weight", &[bad]));
    match r {
        Ok(n) => assert_eq!(n, 0, "validated a route with a negative weight"),
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("weight must be >= 0"), "{msg}");
        }
    }
}
