//! `floyd run` as the chart runs it: the real binary, started with exactly
//! the environment the rendered Deployment gives it (only paths, the port
//! and the pod name replaced), against the fake API server through a
//! kubeconfig file. Checks that what the chart sets reaches the runtime
//! (install identity, Lease name and duration) and that the controls are
//! guarded (token, Origin).

use super::chart::{env_of, one, render};
use super::fake_api::{FakeApi, FakeNode};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SIGTERM: the graceful path (releases the Lease), then reap.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .expect("git");
    assert!(st.success(), "git {args:?}");
}

#[tokio::test]
async fn floyd_run_with_the_charts_environment_syncs_into_the_cluster_as_its_install() {
    let Some(objs) = render(
        "default-values.yaml",
        &[
            "--set",
            "instance=shop",
            "--set",
            "leaderElection.leaseDurationSeconds=20",
        ],
    ) else {
        return;
    };
    let env = env_of(one(&objs, "Deployment"));
    let ns = env["FLOYD_NAMESPACE"].as_str().unwrap().to_string();
    let fake = FakeApi::start(vec![FakeNode::cpu("node-1")]).await;

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("config");
    std::fs::create_dir_all(repo.join("services")).unwrap();
    std::fs::write(
        repo.join("services/web.yaml"),
        "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: 2\n  template: { image: ghcr.io/acme/web:1 }\n  ports: [{ name: http, port: 8080 }]\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "web"]);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: floyd, namespace: {ns}}}\ncurrent-context: fake\nusers:\n- name: floyd\n  user: {{}}\n",
            fake.addr
        ),
    )
    .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_floyd"));
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "floyd-7d9f-abcde")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in &env {
        let Some(v) = v.as_str() else {
            continue; // valueFrom (the downward API): POD_NAME above
        };
        let v = match k.as_str() {
            "FLOYD_REPO" => repo.to_str().unwrap().to_string(),
            "FLOYD_STATE_DIR" => dir.path().join("state").to_str().unwrap().to_string(),
            "FLOYD_API_TOKEN_FILE" => token_file.to_str().unwrap().to_string(),
            // Same address, a free port: tests run side by side.
            "FLOYD_LISTEN" => {
                assert!(v.starts_with("0.0.0.0:"), "{v}");
                format!("0.0.0.0:{port}")
            }
            _ => v.to_string(),
        };
        cmd.env(k, v);
    }
    let _floyd = Killed(cmd.spawn().expect("start floyd run"));

    // It leads (the chart's Lease name and duration), and deploys web as
    // install `shop`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let rs = loop {
        let found = fake
            .list("replicasets")
            .into_iter()
            .find(|r| r["metadata"]["labels"]["floyd.dev/service"] == "web");
        if let Some(rs) = found
            && rs["status"]["readyReplicas"] == 2
        {
            break rs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "floyd run did not deploy web; requests: {:#?}",
            fake.requests().iter().rev().take(20).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rs["metadata"]["namespace"], ns.as_str());
    assert_eq!(rs["metadata"]["labels"]["floyd.dev/instance"], "shop");
    let lease = fake
        .get("leases", &ns, env["FLOYD_LEASE_NAME"].as_str().unwrap())
        .expect("the chart's Lease name");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 20);
    assert_eq!(lease["spec"]["holderIdentity"], "floyd-7d9f-abcde");
    assert_eq!(lease["metadata"]["labels"]["floyd.dev/instance"], "shop");
    let svc = fake.get("services", &ns, "web").expect("Service");
    assert_eq!(svc["spec"]["selector"]["floyd.dev/instance"], "shop");

    // The controls: the chart always sets a token; a foreign web page is
    // refused even with it.
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/services/web/pause");
    let no_token = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let cross = http
        .post(&url)
        .bearer_auth("t0ken")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let ok = http.post(&url).bearer_auth("t0ken").send().await.unwrap();
    assert!(ok.status() == 202 || ok.status() == 409, "{}", ok.status());
}
