//! The Helm chart `charts/floyd`: lint, render with default and full values,
//! validate every rendered object with `kubernetes-validate --strict`
//! (Kubernetes 1.33), check the Prometheus Operator objects (unknown to the
//! validator) structurally, and check that the RBAC grants exactly what the
//! kube runtime needs and nothing beyond.

use super::validate::{tool, validate_objects};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/floyd")
}

/// Runs helm; `None` when helm is absent (skipped outside CI).
fn helm(args: &[&str]) -> Option<(bool, String)> {
    let helm = tool("helm")?;
    let out = Command::new(helm)
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("floyd-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("floyd-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("floyd-helm-data"),
        )
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// `helm template` with a values file from `charts/floyd/ci`, as objects.
pub fn render(values: &str, extra: &[&str]) -> Option<Vec<Value>> {
    let chart = chart();
    let values = chart.join("ci").join(values);
    let mut args = vec![
        "template",
        "floyd",
        chart.to_str().unwrap(),
        "--namespace",
        "floyd-system",
        "-f",
        values.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, text) = helm(&args)?;
    assert!(ok, "helm template failed:\n{text}");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rendered YAML parses");
    Some(docs.into_iter().filter(|d| d.is_object()).collect())
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .filter_map(|o| o["kind"].as_str().map(String::from))
        .collect()
}

pub fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objs.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// Prometheus Operator kinds: not in the Kubernetes schema, checked here instead.
const OPERATOR_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule"];

/// Validates the core objects strictly; returns the operator ones.
fn validate_rendered(label: &str, objs: &[Value]) -> Vec<Value> {
    let (operator, core): (Vec<Value>, Vec<Value>) = objs
        .iter()
        .cloned()
        .partition(|o| OPERATOR_KINDS.contains(&o["kind"].as_str().unwrap_or("")));
    for o in &operator {
        assert_eq!(o["apiVersion"], "monitoring.coreos.com/v1", "{label}: {o}");
    }
    validate_objects(label, &core);
    operator
}

pub fn env_of(deploy: &Value) -> BTreeMap<String, Value> {
    deploy["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value")
                    .cloned()
                    .unwrap_or_else(|| e["valueFrom"].clone()),
            )
        })
        .collect()
}

fn mounts_of(deploy: &Value) -> BTreeMap<String, String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn volume<'a>(deploy: &'a Value, name: &str) -> &'a Value {
    deploy["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("volume {name}"))
}

#[test]
fn chart_lints_strictly_with_default_and_ci_values() {
    let chart = chart();
    let c = chart.to_str().unwrap();
    let Some((ok, text)) = helm(&["lint", "--strict", c]) else {
        return;
    };
    assert!(ok, "helm lint --strict (chart defaults):\n{text}");
    for f in ["default-values.yaml", "full-values.yaml"] {
        let v = chart.join("ci").join(f);
        let (ok, text) = helm(&["lint", "--strict", c, "-f", v.to_str().unwrap()]).unwrap();
        assert!(ok, "helm lint --strict -f {f}:\n{text}");
    }
}

#[test]
fn default_values_render_a_hardened_controller_that_validates() {
    let Some(objs) = render("default-values.yaml", &[]) else {
        return;
    };
    let want: BTreeSet<String> = [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "Secret",        // the generated API token
        "NetworkPolicy", // only scraper and ingress reach the port
        "Pod",           // the `helm test` hook
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(kinds(&objs), want);
    assert!(validate_rendered("default values", &objs).is_empty());

    let d = one(&objs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["args"], serde_json::json!(["run"]));
    let env = env_of(d);
    assert_eq!(env["FLOYD_RUNTIME"], "kube");
    assert_eq!(env["FLOYD_LISTEN"], "0.0.0.0:9180");
    assert_eq!(
        env["FLOYD_REPO"],
        "https://git.example.com/acme/deploy-config.git"
    );
    assert_eq!(env["FLOYD_BRANCH"], "main");
    assert_eq!(env["FLOYD_NAMESPACE"], "floyd-system");
    assert_eq!(env["POD_NAME"]["fieldRef"]["fieldPath"], "metadata.name");
    // State on an emptyDir (the root filesystem is read-only).
    assert_eq!(env["FLOYD_STATE_DIR"], "/var/lib/floyd");
    let mounts = mounts_of(d);
    assert!(volume(d, &mounts["/var/lib/floyd"])["emptyDir"].is_object());
    assert!(volume(d, &mounts["/tmp"])["emptyDir"].is_object());
    // No secrets configured: no webhook secret; the API token is generated
    // (Floyd listens on 0.0.0.0 in the pod: controls always need a token)
    // and the deployment reads it from the generated Secret.
    assert!(!env.contains_key("FLOYD_WEBHOOK_SECRET_FILE"));
    let secret = one(&objs, "Secret");
    assert_eq!(secret["metadata"]["name"], "floyd-api-token");
    let token = secret["data"]["token"].as_str().expect("token");
    assert!(token.len() >= 40, "a random token: {token}");
    assert_eq!(env["FLOYD_API_TOKEN_FILE"], "/etc/floyd/api/token");
    assert_eq!(
        volume(d, &mounts["/etc/floyd/api"])["secret"]["secretName"],
        "floyd-api-token"
    );
    // Install identity and leader-election timings reach the binary.
    assert_eq!(env["FLOYD_INSTANCE"], "floyd");
    assert_eq!(env["FLOYD_LEASE_NAME"], "floyd");
    assert_eq!(env["FLOYD_LEASE_DURATION"], "15s");
    assert_eq!(env["FLOYD_LEASE_RENEW_DEADLINE"], "10s");
    assert_eq!(env["FLOYD_LEASE_RETRY_PERIOD"], "2s");
    // The NetworkPolicy admits only the scraper and the ingress controller.
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let from = np["spec"]["ingress"][0]["from"].as_array().unwrap();
    let namespaces: Vec<&str> = from
        .iter()
        .map(|p| {
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(namespaces, vec!["monitoring", "ingress-nginx"]);
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], "http");
    for (k, v) in np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&d["spec"]["template"]["metadata"]["labels"][k], v);
    }
    // Service for webhooks and metrics selects the controller pods.
    let svc = one(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k}");
    }
}

#[test]
fn full_values_render_ha_ingress_and_monitoring_that_validate() {
    let Some(objs) = render("full-values.yaml", &[]) else {
        return;
    };
    for k in [
        "PodDisruptionBudget",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds(&objs).contains(k), "{k} rendered");
    }
    assert!(
        !kinds(&objs).contains("Secret"),
        "given secrets are referenced, never inlined or generated"
    );
    let operator = validate_rendered("full values", &objs);
    assert_eq!(operator.len(), 2);

    let d = one(&objs, "Deployment");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod_labels = d["spec"]["template"]["metadata"]["labels"].clone();
    let selects = |sel: &Value| {
        sel.as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &pod_labels[k] == v)
    };
    let pdb = one(&objs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));

    // Secrets are mounted where the env says.
    let env = env_of(d);
    let mounts = mounts_of(d);
    for (var, dir, secret) in [
        (
            "FLOYD_WEBHOOK_SECRET_FILE",
            "/etc/floyd/webhook",
            "floyd-webhook",
        ),
        ("FLOYD_API_TOKEN_FILE", "/etc/floyd/api", "floyd-api"),
        ("FLOYD_GIT_SSH_KEY", "/etc/floyd/git", "floyd-git"),
        ("FLOYD_GIT_KNOWN_HOSTS", "/etc/floyd/git", "floyd-git"),
    ] {
        let path = env[var].as_str().unwrap_or_else(|| panic!("{var}"));
        assert!(path.starts_with(dir), "{var}={path}");
        assert_eq!(volume(d, &mounts[dir])["secret"]["secretName"], secret);
    }
    assert!(
        !env.contains_key("FLOYD_GIT_TOKEN_FILE"),
        "ssh credentials only"
    );
    assert_eq!(env["FLOYD_NAMESPACE"], "apps");
    assert_eq!(env["FLOYD_PATH"], "clusters/eu-1");
    assert_eq!(env["FLOYD_ENVIRONMENT"], "prod");

    // Ingress routes webhooks to the Service's named port.
    let svc = one(&objs, "Service");
    let ing = one(&objs, "Ingress");
    let paths = ing["spec"]["rules"][0]["http"]["paths"].as_array().unwrap();
    assert!(paths.iter().any(|p| p["path"] == "/hooks"));
    for p in paths {
        assert_eq!(p["backend"]["service"]["name"], svc["metadata"]["name"]);
        assert_eq!(p["backend"]["service"]["port"]["name"], "http");
    }

    // ServiceMonitor: selects the Service, scrapes its named port.
    let sm = operator
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");

    // PrometheusRule: the four alerts of the issue, on the contract metrics.
    let pr = operator
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    let rules = pr["spec"]["groups"][0]["rules"].as_array().unwrap();
    let expr_of = |alert: &str| -> String {
        let r = rules
            .iter()
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("alert {alert}"));
        assert!(r["annotations"]["summary"].is_string() && r["labels"]["severity"].is_string());
        r["expr"].as_str().unwrap().to_string()
    };
    assert!(expr_of("FloydRolloutFailed").contains(r#"floyd_rollout_total{result="Failed"}"#));
    assert!(expr_of("FloydRevertPushed").contains("floyd_revert_commits_total"));
    assert!(expr_of("FloydSyncFailing").contains(r#"floyd_sync_total{result="error"}"#));
    assert!(expr_of("FloydGitUnreachable").contains(r#"floyd_git_fetch_total{result="error"}"#));
    for r in rules {
        // `{{ $labels.x }}` must survive Helm's own templating.
        let d = r["annotations"]["description"].as_str().unwrap_or("");
        assert!(!d.contains("<no value>"), "{d}");
    }
}

/// (apiGroup, resource) → verbs.
type Grants = BTreeMap<(String, String), BTreeSet<String>>;

fn grants(rules: &Value) -> Grants {
    let mut g = Grants::new();
    for r in rules.as_array().expect("rules") {
        assert!(
            r.get("nonResourceURLs").is_none(),
            "no non-resource URLs: {r}"
        );
        assert!(r.get("resourceNames").is_none() || r["resourceNames"].is_array());
        for group in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                let e = g
                    .entry((group.as_str().unwrap().into(), res.as_str().unwrap().into()))
                    .or_default();
                for v in r["verbs"].as_array().unwrap() {
                    e.insert(v.as_str().unwrap().into());
                }
            }
        }
    }
    g
}

fn spec(list: &[(&str, &str, &[&str])]) -> Grants {
    list.iter()
        .map(|(g, r, vs)| {
            (
                (g.to_string(), r.to_string()),
                vs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

fn assert_within(label: &str, granted: &Grants, allowed: &Grants, needed: &Grants) {
    for (k, verbs) in granted {
        let ok = allowed
            .get(k)
            .unwrap_or_else(|| panic!("{label}: grants {k:?}, which is not on the list"));
        let extra: Vec<&String> = verbs.difference(ok).collect();
        assert!(
            extra.is_empty(),
            "{label}: {k:?} grants {extra:?} beyond {ok:?}"
        );
    }
    for (k, verbs) in needed {
        let have = granted.get(k).cloned().unwrap_or_default();
        let missing: Vec<&String> = verbs.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{label}: {k:?} lacks {missing:?} that the kube runtime uses"
        );
    }
}

#[test]
fn rbac_grants_nothing_beyond_the_list() {
    const RW: &[&str] = &[
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let role_allowed = spec(&[
        ("apps", "replicasets", RW),
        ("apps", "replicasets/scale", &["get", "update", "patch"]),
        // patch: only with adoptUnlabelled (checked below).
        ("", "pods", &["get", "list", "watch", "delete", "patch"]),
        ("", "services", RW),
        ("", "configmaps", RW),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        (
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ),
        ("gateway.networking.k8s.io", "httproutes", &["get", "patch"]),
        (
            "autoscaling",
            "horizontalpodautoscalers",
            &["get", "create", "patch", "delete"],
        ),
    ]);
    // What the runtime's requests need (see the fake-API and tower tests).
    let role_needed = spec(&[
        (
            "apps",
            "replicasets",
            &["get", "list", "create", "patch", "delete"],
        ),
        ("apps", "replicasets/scale", &["patch"]),
        ("", "pods", &["get", "list", "watch", "delete"]),
        ("", "services", &["get", "create", "patch", "delete"]),
        ("", "configmaps", &["get", "create", "patch", "delete"]),
        ("events.k8s.io", "events", &["create"]),
        (
            "coordination.k8s.io",
            "leases",
            &["get", "create", "update"],
        ),
        // Canary weights through a Gateway API HTTPRoute (tests/kube/gateway.rs).
        ("gateway.networking.k8s.io", "httproutes", &["get", "patch"]),
        // spec.autoscaling (tests/kube/autoscaling.rs); apply creates.
        (
            "autoscaling",
            "horizontalpodautoscalers",
            &["get", "create", "patch", "delete"],
        ),
    ]);
    let nodes_only = spec(&[("", "nodes", &["get", "list", "watch"])]);
    let nodes_needed = spec(&[("", "nodes", &["list"])]);
    let with_pods = spec(&[
        ("", "nodes", &["get", "list", "watch"]),
        ("", "pods", &["list", "watch"]),
    ]);
    let with_pods_needed = spec(&[("", "nodes", &["list"]), ("", "pods", &["list"])]);

    for (values, cluster_allowed, cluster_needed) in [
        ("default-values.yaml", &nodes_only, &nodes_needed),
        ("full-values.yaml", &with_pods, &with_pods_needed),
    ] {
        let Some(objs) = render(values, &[]) else {
            return;
        };
        let role = one(&objs, "Role");
        assert_within(values, &grants(&role["rules"]), &role_allowed, &role_needed);
        // Pods are patched only to adopt unlabelled objects, when asked to.
        let adopting = values == "full-values.yaml";
        assert_eq!(
            grants(&role["rules"])
                .get(&("".to_string(), "pods".to_string()))
                .is_some_and(|v| v.contains("patch")),
            adopting,
            "{values}: pods patch only with adoptUnlabelled"
        );
        let cr = one(&objs, "ClusterRole");
        assert_within(
            values,
            &grants(&cr["rules"]),
            cluster_allowed,
            cluster_needed,
        );
        // Only these two roles, bound to the chart's ServiceAccount only.
        let sa = one(&objs, "ServiceAccount");
        for (binding, role) in [("RoleBinding", role), ("ClusterRoleBinding", cr)] {
            let b = one(&objs, binding);
            assert_eq!(b["roleRef"]["name"], role["metadata"]["name"]);
            let subjects = b["subjects"].as_array().unwrap();
            assert_eq!(subjects.len(), 1);
            assert_eq!(subjects[0]["kind"], "ServiceAccount");
            assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
            assert_eq!(subjects[0]["namespace"], "floyd-system");
        }
        // The Role lives where Floyd deploys.
        let target = if values == "full-values.yaml" {
            "apps"
        } else {
            "floyd-system"
        };
        assert_eq!(role["metadata"]["namespace"], target);
    }
}

#[test]
fn leader_election_timings_that_could_split_do_not_render() {
    let c = chart();
    let c = c.to_str().unwrap();
    let Some((ok, text)) = helm(&[
        "template",
        "floyd",
        c,
        "--set",
        "git.repo=https://x/y.git",
        "--set",
        "leaderElection.renewDeadlineSeconds=15",
    ]) else {
        return;
    };
    assert!(!ok, "renew deadline = lease duration renders:\n{text}");
    assert!(
        text.contains("retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds"),
        "{text}"
    );
    // An explicit install identity is used instead of the release name.
    let Some(objs) = render("default-values.yaml", &["--set", "instance=prod-eu"]) else {
        return;
    };
    assert_eq!(
        env_of(one(&objs, "Deployment"))["FLOYD_INSTANCE"],
        "prod-eu"
    );
}

#[test]
fn missing_repo_and_misspelled_values_fail_with_a_message() {
    let c = chart();
    let c = c.to_str().unwrap();
    let Some((ok, text)) = helm(&["template", "floyd", c]) else {
        return;
    };
    assert!(!ok);
    assert!(text.contains("git.repo is required"), "{text}");
    let (ok, text) = helm(&[
        "template",
        "floyd",
        c,
        "--set",
        "git.repo=x",
        "--set",
        "git.branhc=dev",
    ])
    .unwrap();
    assert!(!ok, "a misspelled key is rejected by values.schema.json");
    assert!(text.contains("branhc"), "{text}");
    let (ok, text) = helm(&[
        "template",
        "floyd",
        c,
        "--set",
        "git.repo=x",
        "--set",
        "logFormat=xml",
    ])
    .unwrap();
    assert!(!ok && text.contains("logFormat"), "{text}");
}

#[test]
fn https_credentials_come_from_the_secret_as_files() {
    let Some(objs) = render(
        "default-values.yaml",
        &["--set", "git.credentialsSecret=floyd-git"],
    ) else {
        return;
    };
    let d = one(&objs, "Deployment");
    let env = env_of(d);
    assert_eq!(env["FLOYD_GIT_TOKEN_FILE"], "/etc/floyd/git/password");
    let user = &env["FLOYD_GIT_USER"]["secretKeyRef"];
    assert_eq!(
        (user["name"].as_str(), user["key"].as_str()),
        (Some("floyd-git"), Some("username"))
    );
    assert!(!env.contains_key("FLOYD_GIT_SSH_KEY"));
    assert_eq!(
        volume(d, &mounts_of(d)["/etc/floyd/git"])["secret"]["secretName"],
        "floyd-git"
    );
    validate_rendered("https credentials", &objs);
}

#[test]
fn single_replica_has_no_disruption_budget_and_two_do() {
    let Some(one_replica) = render("default-values.yaml", &[]) else {
        return;
    };
    assert!(!kinds(&one_replica).contains("PodDisruptionBudget"));
    let two = render("default-values.yaml", &["--set", "replicaCount=2"]).unwrap();
    assert!(kinds(&two).contains("PodDisruptionBudget"));
    let d = one(&two, "Deployment");
    assert!(d["spec"]["template"]["spec"]["topologySpreadConstraints"].is_array());
}

/// The chart and the binary agree: every `FLOYD_*` variable the chart can
/// set (rendered with every value set, each credentials type, and every
/// name written in its templates) is one `floyd run` reads, according to
/// the binary's own flag definitions. A chart value that sets a variable
/// nothing reads would be silently ignored.
#[test]
fn every_floyd_variable_the_chart_sets_is_read_by_floyd_run() {
    let read = floyd::cli::run::environment_variables();
    assert!(read.contains("FLOYD_REPO") && read.contains("FLOYD_LOG_FORMAT"));
    assert!(
        read.contains("FLOYD_GIT_TOKEN_FILE"),
        "credentials from the environment"
    );

    // Every name written in the templates, rendered or not.
    let mut written = BTreeSet::new();
    let mut dirs = vec![chart().join("templates")];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p)
            } else {
                files.push(p)
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("FLOYD_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            written.insert(name);
            rest = &rest[i + 6..];
        }
    }
    assert!(written.len() > 10, "{written:?}");

    let mut rendered = BTreeSet::new();
    for (values, extra) in [
        ("default-values.yaml", &[][..]),
        ("full-values.yaml", &[][..]),
        (
            "full-values.yaml",
            &["--set", "git.credentialsType=https"][..],
        ),
        (
            "default-values.yaml",
            &["--set", "git.credentialsSecret=floyd-git"][..],
        ),
    ] {
        let Some(objs) = render(values, extra) else {
            return;
        };
        let d = one(&objs, "Deployment");
        for c in ["containers", "initContainers"] {
            for c in d["spec"]["template"]["spec"][c]
                .as_array()
                .into_iter()
                .flatten()
            {
                for e in c["env"].as_array().into_iter().flatten() {
                    rendered.insert(e["name"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert!(
        rendered.contains("FLOYD_CLUSTER_GPU_ACCOUNTING") && rendered.contains("FLOYD_GIT_USER"),
        "every value set: {rendered:?}"
    );
    let unread: Vec<&String> = written
        .iter()
        .chain(&rendered)
        .filter(|n| n.starts_with("FLOYD_") && !read.contains(*n))
        .collect();
    assert!(
        unread.is_empty(),
        "the chart sets variables floyd run never reads: {unread:?} (floyd run reads {read:?})"
    );
}
