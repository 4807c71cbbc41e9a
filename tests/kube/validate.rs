//! Runs `kubernetes-validate --strict` (Kubernetes 1.33, the chart's
//! target) over objects: what passes here is what a real API server accepts
//! schema-wise. The tool comes from `./.tools/bin` (`scripts/test.sh`
//! installs it); without it the check is skipped with a message, unless `CI`
//! is set, where a missing tool fails the test.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

pub const K8S_VERSION: &str = "1.33.0";

/// `./.tools/bin/<name>` when it exists, otherwise `None` (or a panic under CI).
pub fn tool(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing; under CI it is required (run scripts/install-k8s-tools.sh with PREFIX=$PWD/.tools)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found; run `PREFIX=$PWD/.tools bash scripts/install-k8s-tools.sh` to enable this check",
        p.display()
    );
    None
}

/// Validates each object strictly; panics with the tool's output on failure.
/// Returns how many objects were validated (0 when the tool is absent).
pub fn validate_objects(label: &str, objects: &[Value]) -> usize {
    validate_objects_for(label, objects, K8S_VERSION)
}

/// [`validate_objects`] against Kubernetes `version` (e.g. `1.35.0`).
pub fn validate_objects_for(label: &str, objects: &[Value], version: &str) -> usize {
    let Some(kv) = tool("kubernetes-validate") else {
        return 0;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let kind = o["kind"].as_str().unwrap_or("unknown").to_lowercase();
        let f = dir.path().join(format!("{i:03}-{kind}.json"));
        std::fs::write(&f, serde_json::to_vec_pretty(o).expect("json")).expect("write object");
        files.push(f);
    }
    if files.is_empty() {
        return 0;
    }
    let out = Command::new(&kv)
        .args(["--strict", "--no-warn", "-k", version])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        // Keep the files for a person to look at.
        let kept = dir.keep();
        panic!(
            "{label}: kubernetes-validate --strict -k {version} failed (objects kept in {}):\n{text}",
            kept.display()
        );
    }
    files.len()
}

/// Validates HTTPRoutes (gateway.networking.k8s.io/v1) against the Gateway
/// API CRD schema with `./.tools/bin/validate-httproute` (node and the npm
/// package @kubernetes-models/gateway-api; kubernetes-validate knows built-in
/// kinds only). Panics with the tool's output on failure; returns how many
/// were validated (0 when the tool is absent outside CI).
pub fn validate_http_routes(label: &str, routes: &[Value]) -> usize {
    let Some(tool) = tool("validate-httproute") else {
        return 0;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = Vec::new();
    for (i, o) in routes.iter().enumerate() {
        let f = dir.path().join(format!("{i:03}-httproute.json"));
        std::fs::write(&f, serde_json::to_vec_pretty(o).expect("json")).expect("write route");
        files.push(f);
    }
    if files.is_empty() {
        return 0;
    }
    let out = Command::new(&tool)
        .args(&files)
        .output()
        .expect("run validate-httproute (needs node)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let kept = dir.keep();
        panic!(
            "{label}: validate-httproute failed (routes kept in {}):\n{text}",
            kept.display()
        );
    }
    files.len()
}
