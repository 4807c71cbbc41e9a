//! `floyd diff --objects`: what the kube runtime would apply for the config
//! repository, object by object, against what the cluster holds now (read
//! with the kubeconfig: `KUBECONFIG`, else `~/.kube/config`, else the pod's
//! service account). Read-only: nothing is written to the cluster.
//!
//! The comparison ([`object_changes`]) is pure: Floyd's fields compared the
//! way drift is (fields the API server fills in are not differences; see
//! [`crate::runtime::kube::observe::first_difference`]), the volatile
//! annotations (`floyd.dev/created-at`, `floyd.dev/commit`) left out.

use crate::runtime::kube::objects::{self, ANN_COMMIT, ANN_CREATED_AT, LABEL_SERVICE};
use crate::runtime::kube::observe::first_difference;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;

/// One object that applying the config repository would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectChange {
    pub kind: String,
    pub name: String,
    /// `create`, `update`, `scale-down` (an older revision that the next
    /// rollout scales to 0) or `delete` (a service no longer in the repo).
    pub change: String,
    /// For `update`: the first field that differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn key(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap_or("").to_string(),
        o["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

/// `wanted`: the objects Floyd would apply (settled, every service of the
/// release); `live`: this install's objects in the cluster; `services`: the
/// services of the release. Ordered as `wanted`, then what only lives.
pub fn object_changes(
    wanted: &[Value],
    live: &[Value],
    services: &BTreeSet<String>,
) -> Vec<ObjectChange> {
    let change = |o: &Value, what: &str, detail: Option<String>| {
        let (kind, name) = key(o);
        ObjectChange {
            kind,
            name,
            change: what.to_string(),
            detail,
        }
    };
    let mut out = Vec::new();
    for w in wanted {
        let mut w = w.clone();
        if let Some(a) = w["metadata"]["annotations"].as_object_mut() {
            a.remove(ANN_CREATED_AT);
            a.remove(ANN_COMMIT);
        }
        match live.iter().find(|l| key(l) == key(&w)) {
            None => out.push(change(&w, "create", None)),
            Some(l) => {
                if let Some(d) = first_difference(&w, l, "") {
                    out.push(change(&w, "update", Some(d)));
                }
            }
        }
    }
    let wanted_keys: BTreeSet<(String, String)> = wanted.iter().map(key).collect();
    for l in live.iter().filter(|l| !wanted_keys.contains(&key(l))) {
        let service = l["metadata"]["labels"][LABEL_SERVICE]
            .as_str()
            .unwrap_or("");
        if !services.contains(service) {
            out.push(change(l, "delete", None));
        } else if l["kind"] == "ReplicaSet" && l["spec"]["replicas"].as_i64().unwrap_or(0) > 0 {
            out.push(change(l, "scale-down", None));
        }
    }
    out
}

/// One line per change, as `floyd diff` prints them.
pub fn change_line(c: &ObjectChange) -> String {
    let sign = match c.change.as_str() {
        "create" => '+',
        "delete" => '-',
        _ => '~',
    };
    match &c.detail {
        Some(d) => format!("{sign} {} {}: {d}", c.kind, c.name),
        None => format!("{sign} {} {} ({})", c.kind, c.name, c.change),
    }
}

/// This install's objects of the kinds Floyd applies, from the cluster.
async fn live_objects(
    client: kube::Client,
    namespace: &str,
    instance: &str,
) -> anyhow::Result<Vec<Value>> {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use kube::api::{Api, ListParams};
    let lp = ListParams::default().labels(&objects::managed_selector(instance));
    let mut out = Vec::new();
    macro_rules! list {
        ($k:ty) => {
            let api: Api<$k> = Api::namespaced(client.clone(), namespace);
            let items = api.list(&lp).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot list {} in namespace {namespace}: {e}",
                    <$k as k8s_openapi::Resource>::KIND
                )
            })?;
            for o in items.items {
                out.push(serde_json::to_value(&o)?);
            }
        };
    }
    list!(ReplicaSet);
    list!(Service);
    list!(HorizontalPodAutoscaler);
    list!(ConfigMap);
    Ok(out)
}

/// `floyd diff --objects`: prints the object changes; exit 1 when there are
/// any, 0 when the cluster already holds what the repository says.
pub fn run(
    release: &crate::manifest::Release,
    namespace: &str,
    instance: &str,
    json: bool,
) -> anyhow::Result<u8> {
    use crate::runtime::kube::objects::{Install, RevisionMeta, settled_objects};
    let install = Install {
        namespace,
        instance,
    };
    let meta = RevisionMeta {
        created_at: crate::time::Time::now_wall(),
        commit: None,
        gpu: None,
    };
    let mut wanted = Vec::new();
    for s in &release.services {
        wanted.extend(settled_objects(
            install,
            &s.name,
            &s.revision,
            &s.spec,
            &meta,
        )?);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let live = rt.block_on(async {
        let client = kube::Client::try_default().await.map_err(|e| {
            super::CliError::unreachable(format!(
                "cannot reach the cluster (KUBECONFIG or ~/.kube/config): {e}"
            ))
        })?;
        live_objects(client, namespace, instance).await
    })?;
    let services: BTreeSet<String> = release
        .services
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    let changes = object_changes(&wanted, &live, &services);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "objects": changes }))?
        );
    } else if changes.is_empty() {
        println!(
            "no changes: namespace {namespace} holds what the repository says (install {instance})"
        );
    } else {
        for c in &changes {
            println!("{}", change_line(c));
        }
    }
    Ok(u8::from(!changes.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(name: &str, service: &str, replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": name, "labels": {"floyd.dev/service": service},
                            "annotations": {"floyd.dev/created-at": "2026-12-02T00:00:00Z"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})
    }

    fn svc(name: &str, service: &str, port: i64) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "labels": {"floyd.dev/service": service}},
               "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn object_changes_table() {
        let services: BTreeSet<String> = ["web".to_string()].into();
        let mut live_rs = rs("web-a", "web", 2, "web:1");
        // Fields the API server fills in are no difference.
        live_rs["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("IfNotPresent");
        live_rs["metadata"]["annotations"]["floyd.dev/created-at"] = json!("2026-01-01T00:00:00Z");
        // (case, wanted, live, want)
        type Case = (
            &'static str,
            Vec<Value>,
            Vec<Value>,
            Vec<(&'static str, &'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "in sync",
                vec![rs("web-a", "web", 2, "web:1")],
                vec![live_rs.clone()],
                vec![],
            ),
            (
                "new revision: created, the running one scaled down",
                vec![rs("web-b", "web", 2, "web:2")],
                vec![live_rs.clone()],
                vec![
                    ("ReplicaSet", "web-b", "create"),
                    ("ReplicaSet", "web-a", "scale-down"),
                ],
            ),
            (
                "replicas changed",
                vec![rs("web-a", "web", 3, "web:1")],
                vec![live_rs.clone()],
                vec![("ReplicaSet", "web-a", "update")],
            ),
            (
                "an old revision at 0 stays as history",
                vec![rs("web-a", "web", 2, "web:1")],
                vec![live_rs.clone(), rs("web-0", "web", 0, "web:0")],
                vec![],
            ),
            (
                "a service gone from the repo is deleted",
                vec![rs("web-a", "web", 2, "web:1")],
                vec![
                    live_rs.clone(),
                    rs("api-a", "api", 1, "api:1"),
                    svc("api", "api", 80),
                ],
                vec![
                    ("ReplicaSet", "api-a", "delete"),
                    ("Service", "api", "delete"),
                ],
            ),
            (
                "a Service port changed",
                vec![svc("web", "web", 8080)],
                vec![svc("web", "web", 80)],
                vec![("Service", "web", "update")],
            ),
        ];
        for (case, wanted, live, want) in cases {
            let got: Vec<(String, String, String)> = object_changes(&wanted, &live, &services)
                .into_iter()
                .map(|c| (c.kind, c.name, c.change))
                .collect();
            let want: Vec<(String, String, String)> = want
                .into_iter()
                .map(|(a, b, c)| (a.into(), b.into(), c.into()))
                .collect();
            assert_eq!(got, want, "{case}");
        }
        let c = &object_changes(
            &[svc("web", "web", 8080)],
            &[svc("web", "web", 80)],
            &services,
        )[0];
        assert_eq!(
            change_line(c),
            "~ Service web: spec.ports[0].port: 8080 (applied) != 80 (live)"
        );
    }
}
