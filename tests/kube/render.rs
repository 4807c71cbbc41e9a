//! `floyd render --objects`: the objects the kube runtime would apply for
//! the examples repo's `k8s` environment, printed by the real binary as
//! YAML, each one valid for Kubernetes 1.35 (`kubernetes-validate --strict`).

use super::validate::validate_objects_for;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn floyd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(args)
        .env_remove("FLOYD_OUTPUT")
        .env_remove("FLOYD_NAMESPACE")
        .env_remove("FLOYD_INSTANCE")
        .output()
        .expect("run floyd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples-repo")
        .display()
        .to_string()
}

/// The YAML documents of `text`, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).expect("floyd printed YAML")
}

#[test]
fn objects_of_the_k8s_environment_validate_for_1_35() {
    let dir = examples();
    let (ok, out, err) = floyd(&["render", "--objects", "-e", "k8s", &dir]);
    assert!(ok, "{err}");
    let objs = documents(&out);
    let kinds = |k: &str| objs.iter().filter(|o| o["kind"] == k).count();
    // One ReplicaSet, Service and state ConfigMap per service.
    assert_eq!(
        (kinds("ReplicaSet"), kinds("Service"), kinds("ConfigMap")),
        (4, 4, 4),
        "{out}"
    );
    for o in &objs {
        assert_eq!(o["metadata"]["namespace"], "default");
        assert_eq!(o["metadata"]["labels"]["floyd.dev/instance"], "floyd");
    }
    let rs = |name: &str| {
        objs.iter()
            .find(|o| {
                o["kind"] == "ReplicaSet" && o["metadata"]["labels"]["floyd.dev/service"] == name
            })
            .unwrap_or_else(|| panic!("no ReplicaSet for {name}"))
    };
    // web is autoscaled there: its HPA scales its revision's ReplicaSet.
    let hpas: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "HorizontalPodAutoscaler")
        .collect();
    assert_eq!(hpas.len(), 1, "{out}");
    assert_eq!(
        hpas[0]["spec"]["scaleTargetRef"]["name"],
        rs("web")["metadata"]["name"]
    );
    assert_eq!(hpas[0]["spec"]["maxReplicas"], 6);
    let web = &rs("web")["spec"]["template"]["spec"];
    assert_eq!(
        web["containers"][0]["image"],
        "ghcr.io/floyd-dev/floyd:0.1.0"
    );
    assert_eq!(web["containers"][0]["command"][0], "/usr/local/bin/floyd");
    assert_eq!(web["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        web["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    // The release's revision names the ReplicaSet, and its replicas are the environment's.
    let (ok, release, err) = floyd(&["render", "-e", "k8s", "-o", "json", &dir]);
    assert!(ok, "{err}");
    let release: Value = serde_json::from_str(&release).unwrap();
    for s in release["services"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let r = rs(name);
        assert_eq!(
            r["metadata"]["name"],
            format!("{name}-{}", s["revision"].as_str().unwrap())
        );
        assert_eq!(r["spec"]["replicas"], s["spec"]["replicas"]);
    }
    // A blue-green Service selects the active revision; a rolling one every revision.
    let svc = |name: &str| {
        objs.iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == name)
            .unwrap()
    };
    assert!(svc("api")["spec"]["selector"]["floyd.dev/revision"].is_string());
    assert!(svc("web")["spec"]["selector"]["floyd.dev/revision"].is_null());
    assert_eq!(
        validate_objects_for("render --objects -e k8s", &objs, "1.35.0"),
        if super::validate::tool("kubernetes-validate").is_some() {
            objs.len()
        } else {
            0
        }
    );

    // JSON: the same objects in a List; flags name the namespace and install.
    let (ok, json, err) = floyd(&[
        "render",
        "--objects",
        "-e",
        "k8s",
        "-o",
        "json",
        "--namespace",
        "apps",
        "--instance",
        "blue",
        &dir,
    ]);
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), objs.len());
    assert!(items.iter().all(|o| o["metadata"]["namespace"] == "apps"
        && o["metadata"]["labels"]["floyd.dev/instance"] == "blue"));

    // A local-only environment has no image: a message, not objects.
    let (ok, _, err) = floyd(&["render", "--objects", &dir]);
    assert!(!ok);
    assert!(err.contains("spec.template.image is required"), "{err}");
}

/// `floyd diff --objects` against the fake API server through a kubeconfig:
/// everything to create on an empty namespace, a leftover service of this
/// install to delete (another install's objects not even seen), nothing
/// once the cluster holds exactly what `floyd render --objects` prints, and
/// the changed field when the cluster differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_objects_compares_with_the_cluster_through_a_kubeconfig() {
    use super::fake_api::{FakeApi, FakeNode};
    use serde_json::json;
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: u, namespace: apps}}\ncurrent-context: fake\nusers:\n- name: u\n  user: {{}}\n",
            fake.addr
        ),
    )
    .unwrap();
    let repo = dir.path().join("config");
    std::fs::create_dir_all(repo.join("services")).unwrap();
    std::fs::write(
        repo.join("services/web.yaml"),
        "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: 2\n  template: { image: ghcr.io/acme/web:1 }\n  ports: [{ name: http, port: 8080 }]\n",
    )
    .unwrap();
    let repo_s = repo.display().to_string();
    let diff = |json_out: bool| {
        let kubeconfig = kubeconfig.clone();
        let repo_s = repo_s.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut args = vec![
                    "diff",
                    "--objects",
                    "--namespace",
                    "apps",
                    "--instance",
                    "a",
                ];
                if json_out {
                    args.extend(["-o", "json"]);
                }
                args.push(&repo_s);
                let out = Command::new(env!("CARGO_BIN_EXE_floyd"))
                    .args(&args)
                    .env("KUBECONFIG", &kubeconfig)
                    .env_remove("FLOYD_OUTPUT")
                    .env_remove("FLOYD_NAMESPACE")
                    .env_remove("FLOYD_INSTANCE")
                    .output()
                    .expect("run floyd");
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };

    // Another install's Service and a leftover of this install's.
    let labels = |instance: &str, service: &str| {
        json!({"app.kubernetes.io/managed-by": "floyd", "floyd.dev/instance": instance,
               "floyd.dev/service": service})
    };
    fake.insert(
        "services",
        "apps",
        json!({"metadata": {"name": "other", "labels": labels("b", "other")},
               "spec": {"ports": [{"port": 80}]}}),
    );
    fake.insert(
        "services",
        "apps",
        json!({"metadata": {"name": "old", "labels": labels("a", "old")},
               "spec": {"ports": [{"port": 80}]}}),
    );
    let (code, out, err) = diff(false).await;
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("+ ReplicaSet web-") && l.ends_with("(create)")),
        "{out}"
    );
    assert!(lines.contains(&"+ Service web (create)"), "{out}");
    assert!(
        lines.contains(&"+ ConfigMap floyd-state-web (create)"),
        "{out}"
    );
    assert!(lines.contains(&"- Service old (delete)"), "{out}");
    assert!(
        !out.contains("other"),
        "another install's objects are not ours: {out}"
    );

    // The cluster holds exactly what render prints: no changes.
    let rendered = Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args([
            "render",
            "--objects",
            "--namespace",
            "apps",
            "--instance",
            "a",
            &repo_s,
        ])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    for o in documents(&String::from_utf8_lossy(&rendered.stdout)) {
        let resource = match o["kind"].as_str().unwrap() {
            "ReplicaSet" => "replicasets",
            "Service" => "services",
            "ConfigMap" => "configmaps",
            other => panic!("unexpected {other}"),
        };
        fake.insert(resource, "apps", o);
    }
    let svcs: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(fake.client_as("apps", "kubectl"), "apps");
    svcs.delete("old", &Default::default()).await.unwrap();
    let (code, out, err) = diff(false).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("no changes"), "{out}");

    // A Service changed in the cluster: the field, as JSON too.
    let mut web = fake.get("services", "apps", "web").unwrap();
    web["spec"]["ports"][0]["port"] = json!(9090);
    fake.insert("services", "apps", web);
    let (code, out, _) = diff(true).await;
    assert_eq!(code, Some(1));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["objects"][0]["kind"], "Service");
    assert_eq!(v["objects"][0]["change"], "update");
    assert!(
        v["objects"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("spec.ports[0].port: 8080 (applied) != 9090 (live)"),
        "{out}"
    );
}
