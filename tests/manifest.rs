//! Manifests: loading, validation (exact positions and field paths),
//! rendering, revisions, and the `floyd validate` / `floyd render` CLI.

use floyd::manifest::{self, ConfigRepo, Error, Release};
use pretty_assertions::assert_eq;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch config repository, deleted on drop.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn with(files: &[(&str, &str)]) -> Repo {
        let r = Repo::new();
        std::fs::create_dir_all(r.path().join("services")).unwrap();
        for (p, text) in files {
            r.write(p, text.as_bytes());
        }
        r
    }
    fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn load(&self, env: Option<&str>) -> Result<Release, Vec<String>> {
        manifest::load_release(self.path(), env).map_err(|e| match e {
            Error::Invalid(d) => d.iter().map(|d| d.to_string()).collect(),
            other => vec![other.to_string()],
        })
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples-repo")
}

const HEAD: &str = "apiVersion: floyd.dev/v1
kind: Service
metadata: { name: web }
spec:
  template:
    command: [app]
";

/// (what, services/web.yaml after HEAD's 6 lines, expected diagnostics)
const SPEC_CASES: &[(&str, &str, &[&str])] = &[
    (
        "negative replicas",
        "  replicas: -1\n",
        &["services/web.yaml:7:13: spec.replicas: must be at least 0 (is -1)"],
    ),
    (
        "quoted replicas",
        "  replicas: \"3\"\n",
        &[
            "services/web.yaml:7:13: spec.replicas: expected an integer, found a string (hint: remove the quotes)",
        ],
    ),
    (
        "unknown field with a close name",
        "  replcas: 3\n",
        &["services/web.yaml:7:3: spec.replcas: unknown field (hint: did you mean `replicas`?)"],
    ),
    (
        "surge not int or percent",
        "  strategy: { rollingUpdate: { maxSurge: 25 percent } }\n",
        &[
            "services/web.yaml:7:42: spec.strategy.rollingUpdate.maxSurge: \"25 percent\" is neither an integer nor a percentage (hint: write a count (`1`) or a percentage (`25%`))",
        ],
    ),
    (
        "surge and unavailable both zero",
        "  strategy:\n    type: RollingUpdate\n    rollingUpdate: { maxSurge: 0%, maxUnavailable: 0 }\n",
        &[
            "services/web.yaml:9:52: spec.strategy.rollingUpdate.maxUnavailable: maxSurge and maxUnavailable must not both be 0: the rollout could never replace an instance (hint: allow a surge (maxSurge: 1) or some unavailability (maxUnavailable: 1))",
        ],
    ),
    (
        "unavailable over 100%",
        "  strategy: { rollingUpdate: { maxUnavailable: 150% } }\n",
        &[
            "services/web.yaml:7:48: spec.strategy.rollingUpdate.maxUnavailable: must be at most 100% (is 150%)",
        ],
    ),
    (
        "unknown strategy",
        "  strategy: { type: Linear }\n",
        &[
            "services/web.yaml:7:21: spec.strategy.type: unknown strategy type \"Linear\" (hint: use RollingUpdate, Recreate, BlueGreen or Canary)",
        ],
    ),
    (
        "canary without steps",
        "  strategy: { type: Canary }\n",
        &[
            "services/web.yaml:7:13: spec.strategy.canary.steps: Canary needs steps (hint: add canary: { steps: [{ setWeight: 10 }, { pause: { duration: 60s } }] })",
        ],
    ),
    (
        "canary weight above 100",
        "  strategy: { type: Canary, canary: { steps: [{ setWeight: 150 }] } }\n",
        &[
            "services/web.yaml:7:60: spec.strategy.canary.steps[0].setWeight: must be at most 100 (is 150)",
        ],
    ),
    (
        "parameters of another strategy",
        "  strategy: { type: Recreate, rollingUpdate: { maxSurge: 1 } }\n",
        &[
            "services/web.yaml:7:46: spec.strategy.rollingUpdate: rollingUpdate parameters given, but the strategy type is Recreate (hint: set type: RollingUpdate, or remove rollingUpdate)",
        ],
    ),
    (
        "probe period zero and unknown port name",
        "  ports: [{ name: http, port: 18080 }]\n  health:\n    readiness: { http: { path: /healthz, port: htp }, periodSeconds: 0 }\n",
        &[
            "services/web.yaml:9:48: spec.health.readiness.http.port: no port named \"htp\" in spec.ports (hint: did you mean `http`?)",
            "services/web.yaml:9:70: spec.health.readiness.periodSeconds: must be at least 1 (is 0)",
        ],
    ),
    (
        "probe with two actions",
        "  health:\n    liveness: { tcp: { port: 8080 }, exec: { command: [true] } }\n",
        &[
            "services/web.yaml:8:44: spec.health.liveness.exec: a probe has exactly one of http, tcp or exec (found tcp and exec)",
        ],
    ),
    (
        "liveness success threshold",
        "  health:\n    liveness: { tcp: { port: 8080 }, successThreshold: 2 }\n",
        &[
            "services/web.yaml:8:56: spec.health.liveness.successThreshold: must be 1 for liveness and startup probes (one success is enough to stop restarting)",
        ],
    ),
    (
        "ports out of range and duplicated",
        "  ports:\n    - { name: http, port: 70000 }\n    - { name: admin, port: 18080 }\n    - { name: admin, port: 18080 }\n",
        &[
            "services/web.yaml:8:27: spec.ports[0].port: must be at most 65535 (is 70000)",
            "services/web.yaml:10:15: spec.ports[2].name: duplicate port name \"admin\" (first at line 9)",
            "services/web.yaml:10:28: spec.ports[2].port: duplicate port 18080 (first at line 9)",
        ],
    ),
    (
        "blue-green without preview port",
        "  strategy: { type: BlueGreen }\n",
        &[
            "services/web.yaml:7:13: spec.strategy.blueGreen.previewPort: BlueGreen needs a previewPort (hint: add blueGreen: { previewPort: 18081 } (where the new revision is served before promotion))",
        ],
    ),
    (
        "preview port equal to a service port",
        "  ports: [{ name: http, port: 18080 }]\n  strategy: { type: BlueGreen, blueGreen: { previewPort: 18080 } }\n",
        &[
            "services/web.yaml:8:58: spec.strategy.blueGreen.previewPort: previewPort 18080 is also a service port (hint: preview traffic needs a port of its own)",
        ],
    ),
    (
        "gates: min out of range, bad window, two kinds, unknown kind",
        "  gates:\n    - successRate: { min: 1.5, window: 30 seconds }\n    - { successRate: { min: 0.9 }, webhook: { url: \"http://127.0.0.1:1/x\" } }\n    - datadog: { query: x }\n",
        &[
            "services/web.yaml:8:27: spec.gates[0].successRate.min: must be in (0, 1] (is 1.5) (hint: a share of successful requests, e.g. 0.99)",
            "services/web.yaml:8:40: spec.gates[0].successRate.window: expected a duration (hint: write seconds (`30`) or a duration like `30s`, `2m`, `1h`, `1m30s`)",
            "services/web.yaml:9:45: spec.gates[1].webhook: a list item is one gate (found successRate and webhook) (hint: write each gate as its own `- ` item)",
            "services/web.yaml:10:7: spec.gates[2].datadog: unknown field (hint: known fields here: successRate, prometheus, webhook)",
        ],
    ),
    (
        "prometheus gate without bounds, webhook not http",
        "  gates:\n    - prometheus: { query: \"up\" }\n    - webhook: { url: \"ftp://x\" }\n",
        &[
            "services/web.yaml:8:19: spec.gates[0].prometheus: needs min, max or both (hint: e.g. max: 0.01 for an error ratio)",
            "services/web.yaml:9:23: spec.gates[1].webhook.url: must be an http:// or https:// URL with a host (hint: e.g. http://127.0.0.1:9090)",
        ],
    ),
    (
        "deadline not above minReadySeconds",
        "  minReadySeconds: 30\n  progressDeadlineSeconds: 30\n",
        &[
            "services/web.yaml:8:28: spec.progressDeadlineSeconds: must be greater than minReadySeconds (30 <= 30): no instance could become available in time",
        ],
    ),
    (
        "env: reserved and invalid names, float value",
        "    env: { PORT: 1, 9LIVES: x, RATIO: 1.10, OK: 2, FLAG: true }\n",
        &[
            "services/web.yaml:7:12: spec.template.env.PORT: PORT is assigned by the runtime to each instance (hint: refer to it as ${PORT} in the command instead)",
            "services/web.yaml:7:21: spec.template.env.9LIVES: invalid environment variable name (hint: use letters, digits and '_', not starting with a digit)",
            "services/web.yaml:7:39: spec.template.env.RATIO: expected a string, found a number (hint: quote the value)",
        ],
    ),
];

#[test]
fn broken_specs_report_exact_positions_and_paths() {
    let mut failed = Vec::new();
    for (what, extra, want) in SPEC_CASES {
        let repo = Repo::with(&[("services/web.yaml", &format!("{HEAD}{extra}"))]);
        let got = match repo.load(None) {
            Ok(_) => Vec::new(),
            Err(d) => d,
        };
        if got != *want {
            failed.push(format!("case {what}:\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

type Files<'a> = &'a [(&'a str, &'a str)];

/// (what, files, environment, expected diagnostics): whole repositories.
const REPO_CASES: &[(&str, Files, Option<&str>, &[&str])] = &[
    (
        "gpu: count zero, unknown sharing; quantities; no command or image",
        &[(
            "services/gpu.yaml",
            "apiVersion: floyd.dev/v1
kind: Service
metadata: { name: gpu }
spec:
  template:
    resources:
      cpu: lots
      memory: 256MB
      gpu: { count: 0, sharing: shard }
",
        )],
        None,
        &[
            "services/gpu.yaml:6:5: spec.template: needs `command` (local runtime) or `image` (kube runtime) (hint: e.g. command: [\"${FLOYD_BIN}\", \"sample-app\"])",
            "services/gpu.yaml:7:12: spec.template.resources.cpu: invalid quantity \"lots\" (hint: use a Kubernetes quantity such as \"500m\", \"2\", \"256Mi\" or \"1Gi\")",
            "services/gpu.yaml:8:15: spec.template.resources.memory: invalid quantity \"256MB\" (hint: use a Kubernetes quantity such as \"500m\", \"2\", \"256Mi\" or \"1Gi\")",
            "services/gpu.yaml:9:21: spec.template.resources.gpu.count: must be at least 1 (is 0)",
            "services/gpu.yaml:9:33: spec.template.resources.gpu.sharing: unknown sharing mode \"shard\" (hint: use exclusive, time-sliced or mig)",
        ],
    ),
    (
        "mig without profile, invalid profile, profile without mig",
        &[(
            "services/gpu.yaml",
            "apiVersion: floyd.dev/v1
kind: Service
metadata: { name: gpu }
spec:
  template:
    command: [x]
    resources: { gpu: { sharing: mig } }
---
apiVersion: floyd.dev/v1
kind: Service
metadata: { name: gpu2 }
spec:
  template:
    command: [x]
    resources: { gpu: { sharing: mig, profile: 10gb } }
---
apiVersion: floyd.dev/v1
kind: Service
metadata: { name: gpu3 }
spec:
  template:
    command: [x]
    resources: { gpu: { profile: 1g.10gb } }
",
        )],
        None,
        &[
            "services/gpu.yaml:7:34: spec.template.resources.gpu.profile: sharing: mig needs a profile (hint: e.g. profile: 1g.10gb)",
            "services/gpu.yaml:15:48: spec.template.resources.gpu.profile: invalid MIG profile \"10gb\" (hint: use an NVIDIA profile name such as 1g.10gb, 2g.20gb or 3g.40gb)",
            "services/gpu.yaml:23:34: spec.template.resources.gpu.profile: profile applies only to `sharing: mig` (sharing is exclusive) (hint: remove it or set sharing: mig)",
        ],
    ),
    (
        "identity: name, kind, apiVersion, top-level typo",
        &[(
            "services/a.yaml",
            "apiVersion: floyd.dev/v2
kind: Deployment
metadata: { name: Web-App }
spec: { template: { command: [x] } }
statuss: {}
",
        )],
        None,
        &[
            "services/a.yaml:1:13: apiVersion: unsupported apiVersion \"floyd.dev/v2\" (hint: use `apiVersion: floyd.dev/v1`)",
            "services/a.yaml:2:7: kind: unknown kind \"Deployment\" (hint: Floyd manifests have `kind: Service`)",
            "services/a.yaml:3:19: metadata.name: invalid service name \"Web-App\": invalid character 'W': a DNS-1123 label has only lowercase letters, digits and '-' (hint: use a DNS-1123 label such as `web` or `payments-api`)",
            "services/a.yaml:5:1: statuss: unknown field (hint: known fields here: apiVersion, kind, metadata, spec)",
        ],
    ),
    (
        "duplicate names across files name both files",
        &[
            (
                "services/a.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec: { template: { command: [a] } }\n",
            ),
            (
                "services/team/b.yml",
                "# moved here by mistake\napiVersion: floyd.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec: { template: { command: [b] } }\n",
            ),
        ],
        None,
        &[
            "services/team/b.yml:5:9: metadata.name: duplicate service name \"web\": also defined at services/a.yaml:3:19 (hint: each service is defined by exactly one manifest)",
        ],
    ),
    (
        "service names colliding with generated or cluster-owned Kubernetes names",
        &[
            (
                "services/a.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec: { template: { command: [a] } }\n---\napiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web-preview }\nspec: { template: { command: [a] } }\n",
            ),
            (
                "services/k.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata:\n  name: kubernetes\nspec: { template: { command: [a] } }\n",
            ),
            (
                "services/s.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: floyd-state-x }\nspec: { template: { command: [a] } }\n",
            ),
        ],
        None,
        &[
            "services/a.yaml:8:19: metadata.name: \"web-preview\" is the name of the preview Service Floyd makes for service \"web\"; rename one of them (hint: Floyd names a blue-green preview Service <name>-preview and state ConfigMaps floyd-state-<name>)",
            "services/k.yaml:4:9: metadata.name: \"kubernetes\" is reserved: it is the API server's own Service in namespace default; rename the service (hint: Floyd names a blue-green preview Service <name>-preview and state ConfigMaps floyd-state-<name>)",
            "services/s.yaml:3:19: metadata.name: names starting with \"floyd-state-\" are reserved for Floyd's state ConfigMaps; rename the service (hint: Floyd names a blue-green preview Service <name>-preview and state ConfigMaps floyd-state-<name>)",
        ],
    ),
    (
        "YAML syntax error",
        &[(
            "services/a.yaml",
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web\nspec: {}\n",
        )],
        None,
        &["services/a.yaml:4:5: "],
    ),
    (
        "template: undefined value, with the template's own line",
        &[
            (
                "floyd.yaml",
                "values: { replicas: 2 }\nenvironments: { prod: { values: { replicas: 5 } } }\n",
            ),
            (
                "services/a.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: {{ values.replica }}\n  template: { command: [a] }\n",
            ),
        ],
        Some("prod"),
        &[
            "services/a.yaml:5:16: template: `values.replica` is undefined (environment prod) (hint: did you mean `values.replicas`?)",
        ],
    ),
    (
        "template: syntax error",
        &[(
            "services/a.yaml",
            "apiVersion: floyd.dev/v1\nkind: Service\n{% if %}\nmetadata: { name: web }\n",
        )],
        None,
        &["services/a.yaml:3:7: template: unexpected end of block"],
    ),
    (
        "errors after templating point into the source",
        &[
            ("floyd.yaml", "values: { replicas: -3, version: \"1.0\" }\n"),
            (
                "services/a.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: {{ values.replicas }}\n  template: { command: [a, \"{{ values.version }}\"], extra: 1 }\n",
            ),
        ],
        None,
        &[
            "services/a.yaml:5:13: spec.replicas: must be at least 0 (is -3)",
            "services/a.yaml:6:53: spec.template.extra: unknown field (hint: known fields here: image, command, env, workingDir, resources, terminationGracePeriodSeconds, kubernetes)",
        ],
    ),
    (
        "floyd.yaml: unknown field, bad environment, bad inventory",
        &[
            (
                "floyd.yaml",
                "valeus: {}\nenvironments:\n  Prod: {}\n  stage: { values: [1] }\nruntime:\n  local:\n    gpus:\n      - { product: A100, count: 0 }\n      - { product: H100, count: 2, mig: { 1g.10gb: 7, big: 1 } }\nnotifications:\n  - { url: \"https://hooks.example/x\", format: teams }\n",
            ),
            (
                "services/a.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec: { template: { command: [a] } }\n",
            ),
        ],
        None,
        &[
            "floyd.yaml:1:1: valeus: unknown field (hint: did you mean `values`?)",
            "floyd.yaml:3:3: environments.Prod: invalid environment name \"Prod\": invalid character 'P': a DNS-1123 label has only lowercase letters, digits and '-' (hint: use a DNS-1123 label such as `staging` or `prod`)",
            "floyd.yaml:4:20: environments.stage.values: expected a mapping, found a list",
            "floyd.yaml:8:33: runtime.local.gpus[0].count: must be at least 1 (is 0)",
            "floyd.yaml:9:55: runtime.local.gpus[1].mig.big: invalid MIG profile \"big\" (hint: use an NVIDIA profile name such as 1g.10gb or 3g.40gb)",
            "floyd.yaml:11:47: notifications[0].format: unknown format \"teams\" (hint: use slack or generic)",
        ],
    ),
    (
        "every file's errors are collected",
        &[
            (
                "services/a.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: a }\nspec: { replicas: -1, template: { command: [a] } }\n",
            ),
            (
                "services/b.yaml",
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: b }\nspec: { replicas: x, template: { command: [b] } }\n",
            ),
            ("services/c.yaml", "   \n# nothing here\n"),
        ],
        None,
        &[
            "services/a.yaml:4:19: spec.replicas: must be at least 0 (is -1)",
            "services/b.yaml:4:19: spec.replicas: expected an integer, found a string",
            "services/c.yaml:1:1: no YAML document in the file (hint: add a kind: Service manifest, or delete the file)",
        ],
    ),
];

#[test]
fn broken_repos_report_every_error_with_positions() {
    let mut failed = Vec::new();
    for (what, files, env, want) in REPO_CASES {
        let repo = Repo::with(files);
        let got = match repo.load(*env) {
            Ok(_) => Vec::new(),
            Err(d) => d,
        };
        // An expectation ending in ": " checks the position only (the
        // parser's wording is its own).
        let ok = got.len() == want.len()
            && got.iter().zip(want.iter()).all(|(g, w)| {
                if w.ends_with(": ") {
                    g.starts_with(w)
                } else {
                    g == w
                }
            });
        if !ok {
            failed.push(format!("case {what}:\n  got:  {got:#?}\n  want: {want:#?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Two services on one port both validated, and at run time the second
/// load balancer could not bind while `status` said Complete (issue #20).
#[test]
fn duplicate_ports_across_services_name_both_places() {
    let svc = |name: &str, ports: &str, strategy: &str| {
        format!(
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec:\n  template: {{ command: [app] }}\n  ports:\n{ports}{strategy}"
        )
    };
    let a = svc("a", "    - { name: http, port: 8080 }\n", "");
    let b = svc(
        "b",
        "    - { name: admin, port: 9000 }\n    - { name: http, port: 8080 }\n",
        "",
    );
    let c = svc(
        "c",
        "    - { name: http, port: 8181 }\n",
        "  strategy:\n    type: BlueGreen\n    blueGreen: { previewPort: 9000 }\n",
    );
    let d = svc(
        "d",
        "    - { name: http, port: 8282 }\n",
        "  strategy:\n    type: BlueGreen\n    blueGreen: { previewPort: 9100 }\n",
    );
    let e = svc("e", "    - { name: http, port: 9100 }\n", "");
    let repo = Repo::with(&[
        ("services/a.yaml", &a),
        ("services/b.yaml", &b),
        ("services/c.yaml", &c),
        ("services/d.yaml", &d),
        ("services/e.yaml", &e),
    ]);
    let hint = "(hint: each service port and previewPort must be unique across all services: its load balancer binds it)";
    assert_eq!(
        repo.load(None).unwrap_err(),
        vec![
            format!(
                "services/b.yaml:8:27: spec.ports[1].port: port 8080 of service \"b\" is also used by service \"a\" at services/a.yaml:7:27 (spec.ports[0].port) {hint}"
            ),
            format!(
                "services/c.yaml:10:31: spec.strategy.blueGreen.previewPort: port 9000 of service \"c\" is also used by service \"b\" at services/b.yaml:7:28 (spec.ports[0].port) {hint}"
            ),
            format!(
                "services/e.yaml:7:27: spec.ports[0].port: port 9100 of service \"e\" is also used by service \"d\" at services/d.yaml:10:31 (spec.strategy.blueGreen.previewPort) {hint}"
            ),
        ]
    );
    // Distinct ports: valid.
    let e = svc("e", "    - { name: http, port: 9200 }\n", "");
    repo.write("services/e.yaml", e.as_bytes());
    repo.write(
        "services/b.yaml",
        svc("b", "    - { name: http, port: 8081 }\n", "").as_bytes(),
    );
    repo.write(
        "services/c.yaml",
        svc(
            "c",
            "    - { name: http, port: 8181 }\n",
            "  strategy:\n    type: BlueGreen\n    blueGreen: { previewPort: 9001 }\n",
        )
        .as_bytes(),
    );
    assert_eq!(repo.load(None).map(|r| r.services.len()), Ok(5));
    // `floyd validate` exits 2 and prints both places.
    repo.write(
        "services/e.yaml",
        svc("e", "    - { name: http, port: 8080 }\n", "").as_bytes(),
    );
    let (code, _, err) = floyd(&["validate", repo.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("services/e.yaml:7:27: spec.ports[0].port: port 8080")
            && err.contains("services/a.yaml:7:27"),
        "{err}"
    );
}

#[test]
fn unusable_files_are_reported_with_where() {
    let repo = Repo::with(&[]);
    repo.write(
        "services/latin1.yaml",
        b"kind: Service\nmetadata: { name: caf\xe9 }\n",
    );
    repo.write("services/empty.yaml", b"");
    repo.write("services/blank.yml", b"\n   \n");
    let mut big = b"# padding\n".repeat(110_000);
    big.extend_from_slice(HEAD.as_bytes());
    repo.write("services/big.yaml", &big);
    repo.write("services/notes.txt", b"not a manifest, not read");
    repo.write("services/.web.yaml.swp", b"\x00\x01editor swap file");
    assert_eq!(
        repo.load(None).unwrap_err(),
        vec![
            "services/big.yaml:0:0: file is 1100100 bytes; the limit is 1048576 (1 MiB) (hint: split it into several files)",
            "services/blank.yml:1:1: file is empty (hint: add a manifest, or delete the file)",
            "services/empty.yaml:1:1: file is empty (hint: add a manifest, or delete the file)",
            "services/latin1.yaml:2:22: not UTF-8 text (invalid byte 0xe9) (hint: save the file as UTF-8)",
        ]
    );
}

#[test]
fn missing_directory_and_unknown_environment() {
    let r = manifest::load_release(Path::new("/nonexistent/floyd-config"), None);
    assert!(matches!(r, Err(Error::Read { .. })), "{r:?}");
    let repo = Repo::new();
    assert_eq!(
        repo.load(None).unwrap_err(),
        vec![format!(
            "services:0:0: no services/ directory (hint: put kind: Service manifests in {}/services/*.yaml)",
            repo.path().display()
        )]
    );
    // An empty release would delete everything: only when asked for.
    let repo = Repo::with(&[("services/README.md", "manifests go here")]);
    assert_eq!(
        repo.load(None).unwrap_err(),
        vec![
            "services:0:0: no *.yaml or *.yml manifests under services/ (hint: an empty release removes every service; set `allowEmpty: true` in floyd.yaml if that is intended)"
        ]
    );
    repo.write("floyd.yaml", b"allowEmpty: true\nprune: true\n");
    let r = repo.load(None).unwrap();
    assert!(r.services.is_empty() && r.prune);

    let r = manifest::load_release(&examples(), Some("qa"));
    assert_eq!(
        r.unwrap_err().to_string(),
        "unknown environment \"qa\"; floyd.yaml defines: demo, k8s, prod, staging"
    );
}

#[test]
fn environments_overlay_base_values_deeply() {
    let repo = Repo::with(&[
        (
            "floyd.yaml",
            "values:\n  app: { version: \"1.0\", replicas: 2, log: info }\nenvironments:\n  prod: { values: { app: { replicas: 6 } } }\n  dev:\n",
        ),
        (
            "services/web.yaml",
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: {{ values.app.replicas }}\n  template:\n    command: [\"${FLOYD_BIN}\", sample-app, --version, \"{{ values.app.version }}\"]\n    env: { LOG: \"{{ values.app.log }}\", ENV: \"{{ environment }}\" }\n",
        ),
    ]);
    assert_eq!(
        ConfigRepo::read(repo.path()).unwrap().environments(),
        vec!["dev", "prod"]
    );
    let base = repo.load(None).unwrap();
    let prod = repo.load(Some("prod")).unwrap();
    let dev = repo.load(Some("dev")).unwrap();
    let (b, p) = (&base.services[0], &prod.services[0]);
    assert_eq!((b.spec.replicas, p.spec.replicas), (2, 6));
    assert_eq!(p.spec.template.env["LOG"], "info");
    assert_eq!(p.spec.template.env["ENV"], "prod");
    assert_eq!(
        p.spec.template.command,
        vec!["${FLOYD_BIN}", "sample-app", "--version", "1.0"]
    );
    // The environment's name is in the template, so prod's differs from dev's.
    assert_ne!(b.revision, p.revision);
    assert_eq!(dev.services[0].spec.replicas, 2);
}

fn revision(text: &str) -> String {
    let s = manifest::parse_service(text, Path::new("x.yaml")).expect("valid");
    s.revision.to_string()
}

#[test]
fn revisions_ignore_formatting_comments_key_order_and_replicas() {
    let a = "apiVersion: floyd.dev/v1
kind: Service
metadata: { name: web }
spec:
  replicas: 3
  template:
    command: [app, --port, '${PORT}']
    env: { A: '1', B: '2' }
    resources: { cpu: 500m, gpu: { count: 1, product: X } }
";
    // Block style, comments, other key order, replicas changed, rollout
    // policy changed (strategy, probes, gates, allowInPlace).
    let b = "# the web tier
kind: Service
apiVersion: floyd.dev/v1
spec:
  strategy: { type: Recreate }
  template:
    resources:
      gpu:
        product: X   # same GPU
        count: 1
        allowInPlace: false
      cpu: \"500m\"
    env:
      B: \"2\"
      A: \"1\"
    command:
      - app
      - --port
      - ${PORT}
  replicas: 10
  health: { readiness: { tcp: { port: 80 } } }
  gates: [{ successRate: { min: 0.9 } }]
metadata:
  name: web
";
    assert_eq!(revision(a), revision(b));
    assert_eq!(revision(a).len(), 10);
    assert!(revision(a).chars().all(|c| c.is_ascii_hexdigit()));
    // Anything in the template is a new revision.
    for changed in [
        a.replace("--port", "--listen"),
        a.replace("B: '2'", "B: '3'"),
        a.replace("cpu: 500m", "cpu: 600m"),
        a.replace("product: X", "product: Y"),
        a.replace(
            "    command:",
            "    terminationGracePeriodSeconds: 5\n    command:",
        ),
    ] {
        assert_ne!(revision(a), revision(&changed), "{changed}");
    }
}

#[test]
fn revision_is_stable_across_versions() {
    // A fixed value: a change here means every running service would see a
    // new revision (and roll) after upgrading Floyd.
    let s = manifest::parse_service(
        "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec: { template: { command: [app] } }\n",
        Path::new("x.yaml"),
    )
    .unwrap();
    assert_eq!(s.revision.as_str(), GOLDEN_REVISION);
}
const GOLDEN_REVISION: &str = "483c01f160";

#[test]
fn every_environment_of_examples_repo_is_valid() {
    let repo = ConfigRepo::read(&examples()).unwrap();
    let envs = repo.environments();
    assert_eq!(envs, vec!["demo", "k8s", "prod", "staging"]);
    for env in std::iter::once(None).chain(envs.iter().map(|e| Some(e.as_str()))) {
        let r = repo.release(env).unwrap_or_else(|e| panic!("{env:?}: {e}"));
        let names: Vec<_> = r.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["api", "inference", "shop", "web"], "{env:?}");
        assert_eq!(r.gpus.len(), 1);
        let inference = r.service("inference").unwrap();
        let gpu = inference.spec.gpu().unwrap();
        assert_eq!(gpu.count, 1);
        // The product constraint matches the declared inventory.
        assert_eq!(gpu.product.as_deref(), Some(r.gpus[0].product.as_str()));
        assert!(
            r.gpus[0].count > inference.spec.replicas,
            "room for a surge"
        );
        let api = r.service("api").unwrap();
        assert_eq!(api.spec.strategy_name(), "BlueGreen");
        assert!(!api.spec.gates.is_empty());
        assert_eq!(
            r.service("web").unwrap().spec.strategy_name(),
            "RollingUpdate"
        );
        assert_eq!(r.service("shop").unwrap().spec.strategy_name(), "Canary");
        for s in &r.services {
            // The k8s environment runs the binary of the image; the others
            // the local runtime's.
            let (program, image) = match env {
                Some("k8s") => (
                    "/usr/local/bin/floyd",
                    Some("ghcr.io/floyd-dev/floyd:0.1.0"),
                ),
                _ => ("${FLOYD_BIN}", None),
            };
            assert_eq!(s.spec.template.command[0], program);
            assert_eq!(s.spec.template.image.as_deref(), image);
            assert_eq!(
                s.spec.template.kubernetes.is_some(),
                image.is_some() && s.name.as_str() == "web"
            );
            assert!(
                s.spec
                    .ports
                    .iter()
                    .all(|p| (18000..19000).contains(&p.port))
            );
        }
    }
    // Only replicas differ between staging and prod for web: same revision.
    let staging = repo.release(Some("staging")).unwrap();
    let prod = repo.release(Some("prod")).unwrap();
    let (s, p) = (
        staging.service("web").unwrap(),
        prod.service("web").unwrap(),
    );
    assert_ne!(s.spec.replicas, p.spec.replicas);
    assert_ne!(s.revision, p.revision, "LOG_LEVEL differs (debug vs info)");
}

fn floyd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_floyd"))
        .args(args)
        .env_remove("FLOYD_CONFIG_DIR")
        .env_remove("FLOYD_ENVIRONMENT")
        .env_remove("FLOYD_OUTPUT")
        .output()
        .expect("run floyd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn golden_render_of_examples_repo() {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifest/examples-prod.json");
    let ex = examples();
    let (code, out, err) = floyd(&["render", ex.to_str().unwrap(), "-e", "prod", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    if std::env::var_os("FLOYD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    let want =
        std::fs::read_to_string(&golden).expect("golden file (FLOYD_UPDATE_GOLDEN=1 writes it)");
    assert_eq!(out, want);

    // YAML has the same shape as JSON.
    let (code, yaml, err) = floyd(&["render", ex.to_str().unwrap(), "-e", "prod"]);
    assert_eq!(code, 0, "{err}");
    let from_yaml: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    let from_json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(from_yaml, from_json);
    // The printed spec is the model's serde form: it reads back as the model.
    let services = from_json["services"].as_array().unwrap();
    let release = manifest::load_release(&ex, Some("prod")).unwrap();
    for (printed, loaded) in services.iter().zip(&release.services) {
        assert_eq!(printed["name"], loaded.name.as_str());
        assert_eq!(printed["revision"], loaded.revision.as_str());
        let spec: manifest::ServiceSpec = serde_json::from_value(printed["spec"].clone()).unwrap();
        assert_eq!(spec, loaded.spec);
    }
}

#[test]
fn cli_validate_and_render_exit_codes() {
    let ex = examples();
    let ex = ex.to_str().unwrap();
    let (code, out, err) = floyd(&["validate", ex]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            0,
            "ok: 4 services, environments: demo, k8s, prod, staging\n",
            "note: service web: spec.autoscaling applies on the kube runtime only; the local runtime ignores it and runs spec.replicas instances\n\
             note: service web: spec.template.kubernetes applies on the kube runtime only; the local runtime ignores it\n"
        )
    );
    let (code, out, _) = floyd(&["validate", ex, "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["valid"].as_bool(), v["services"].as_u64()),
        (Some(true), Some(4))
    );

    let repo = Repo::with(&[
        (
            "floyd.yaml",
            "values: { r: 1 }\nenvironments: { prod: { values: { r: -1 } } }\n",
        ),
        (
            "services/a.yaml",
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: a }\nspec:\n  replicas: {{ values.r }}\n  template: { command: [a], bogus: 1 }\n",
        ),
    ]);
    let dir = repo.path().to_str().unwrap();
    let (code, out, err) = floyd(&["validate", dir]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{dir}/services/a.yaml:5:13: spec.replicas: must be at least 0 (is -1) [prod]"),
            format!(
                "{dir}/services/a.yaml:6:29: spec.template.bogus: unknown field (hint: known fields here: image, command, env, workingDir, resources, terminationGracePeriodSeconds, kubernetes)"
            ),
            format!("error: 2 problem(s) in {dir}"),
        ]
    );

    let (code, out, _) = floyd(&["validate", dir, "-o", "json"]);
    assert_eq!(code, 2);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["environments"], serde_json::json!(["prod"]));
    assert_eq!(v["problems"].as_array().unwrap().len(), 2);
    let p = &v["problems"][0];
    assert_eq!(
        (p["line"].as_u64(), p["column"].as_u64(), p["path"].as_str()),
        (Some(5), Some(13), Some("spec.replicas"))
    );
    assert_eq!(p["environments"], serde_json::json!(["prod"]));
    assert_eq!(
        v["problems"][1]["environments"],
        serde_json::json!(["base", "prod"])
    );

    let (code, out, err) = floyd(&["render", dir, "-o", "json"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with(&format!("{dir}/services/a.yaml:6:29: spec.template.bogus")),
        "{err}"
    );

    let (code, _, err) = floyd(&["render", ex, "-e", "qa"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown environment \"qa\""), "{err}");
    let (code, _, err) = floyd(&["render", ex, "-o", "xml"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = floyd(&["validate", "/nonexistent/floyd-config"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read config repository /nonexistent/floyd-config"),
        "{err}"
    );
}

mod no_panic {
    //! Nothing panics on any input: random bytes, and valid manifests with
    //! random edits (including YAML and template syntax), through the whole loader.
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "{{",
        "}}",
        "{%",
        "%}",
        "{#",
        ":",
        ": ",
        "- ",
        "\n",
        "\n  ",
        "&a ",
        "*a",
        "<<: *a\n",
        "[",
        "]",
        "{",
        "}",
        "'",
        "\"",
        "-1",
        "0",
        "99999999999999999999999",
        "1.5e400",
        "25%",
        "~",
        "!!binary ",
        "---\n",
        "...\n",
        "\t",
        "{{ values.nope }}",
        "{% for i in range(3) %}",
        "{% endfor %}",
        "{{ values.webReplicas * 1000 }}",
        "é",
        "\u{feff}",
        "\0",
    ];

    fn check(repo: &Repo, files: &[(&str, &[u8])]) -> Result<(), TestCaseError> {
        for (p, t) in files {
            repo.write(p, t);
        }
        let Ok(cr) = ConfigRepo::read(repo.path()) else {
            return Ok(());
        };
        for env in [None, Some("prod")] {
            match cr.release(env) {
                Ok(_) | Err(Error::UnknownEnvironment { .. }) => {}
                Err(Error::Invalid(d)) => {
                    prop_assert!(!d.is_empty());
                    for d in &d {
                        let lines = files
                            .iter()
                            .find(|(p, _)| Path::new(p) == d.file)
                            .map_or(0, |(_, t)| t.iter().filter(|b| **b == b'\n').count() + 1);
                        prop_assert!(d.line <= lines + 1, "{d} beyond the file");
                    }
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        Ok(())
    }

    fn example_files() -> Vec<(&'static str, String)> {
        [
            "floyd.yaml",
            "services/web.yaml",
            "services/api.yaml",
            "services/inference.yaml",
        ]
        .into_iter()
        .map(|p| (p, std::fs::read_to_string(examples().join(p)).unwrap()))
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = manifest::parse_service(&text, Path::new("x.yaml"));
            let repo = Repo::with(&[]);
            check(&repo, &[("services/x.yaml", &bytes)])?;
        }

        #[test]
        fn mutated_valid_manifests(
            edits in proptest::collection::vec((0usize..4, any::<prop::sample::Index>(), 0u8..4, any::<prop::sample::Index>(), any::<u8>()), 1..6)
        ) {
            let mut files = example_files();
            for (file, at, op, token, byte) in edits {
                let text = &mut files[file].1;
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                match op {
                    0 => text.insert_str(i, TOKENS[token.index(TOKENS.len())]),
                    1 => {
                        let mut end = (i + 1 + byte as usize % 16).min(text.len());
                        while !text.is_char_boundary(end) {
                            end += 1;
                        }
                        text.replace_range(i..end, "");
                    }
                    2 => text.insert(i, char::from(byte)),
                    _ => {
                        // Duplicate a line elsewhere: duplicate keys, names, ports.
                        let lines: Vec<&str> = text.lines().collect();
                        let line = lines[token.index(lines.len())].to_string();
                        let mut j = at.index(lines.len());
                        let mut out: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                        j = j.min(out.len());
                        out.insert(j, line);
                        *text = out.join("\n") + "\n";
                    }
                }
            }
            let repo = Repo::new();
            let files: Vec<(&str, &[u8])> = files.iter().map(|(p, t)| (*p, t.as_bytes())).collect();
            check(&repo, &files)?;
        }
    }
}

#[test]
fn large_repos_load_in_parallel_with_the_same_results() {
    // Enough files for several loader threads; a duplicate and an error in
    // files handled by different threads must still be found.
    let repo = Repo::with(&[("floyd.yaml", "values: { r: 2 }\n")]);
    for i in 0..400 {
        let name = if i == 399 {
            "svc-7".to_string()
        } else {
            format!("svc-{i}")
        };
        let replicas = if i == 250 { "-1" } else { "{{ values.r }}" };
        repo.write(
            &format!("services/s{i:03}.yaml"),
            format!("apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: {name} }}\nspec: {{ replicas: {replicas}, template: {{ command: [app, \"{i}\"] }} }}\n").as_bytes(),
        );
    }
    assert_eq!(
        repo.load(None).unwrap_err(),
        vec![
            "services/s250.yaml:4:19: spec.replicas: must be at least 0 (is -1)",
            "services/s399.yaml:3:19: metadata.name: duplicate service name \"svc-7\": also defined at services/s007.yaml:3:19 (hint: each service is defined by exactly one manifest)",
        ]
    );
    repo.write("services/s250.yaml", b"apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: svc-250 }\nspec: { template: { command: [app] } }\n");
    std::fs::remove_file(repo.path().join("services/s399.yaml")).unwrap();
    let r = repo.load(None).unwrap();
    assert_eq!(r.services.len(), 399);
    let mut names: Vec<&str> = r.services.iter().map(|s| s.name.as_str()).collect();
    let sorted = {
        let mut n = names.clone();
        n.sort();
        n
    };
    assert_eq!(names, sorted, "sorted by name");
    names.dedup();
    assert_eq!(names.len(), 399);
    assert_eq!(r.service("svc-250").unwrap().spec.replicas, 1);
    assert_eq!(r.service("svc-3").unwrap().spec.replicas, 2);
}

/// One name for the output format of every command (`FLOYD_OUTPUT`); the
/// old `FLOYD_VALIDATE_OUTPUT` still works for `validate` when it is unset.
#[test]
fn output_format_environment_variables() {
    let ex = examples();
    let run = |envs: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_floyd"));
        c.args(args)
            .env_remove("FLOYD_OUTPUT")
            .env_remove("FLOYD_VALIDATE_OUTPUT")
            .env_remove("FLOYD_CONFIG_DIR")
            .env_remove("FLOYD_ENVIRONMENT");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().expect("run floyd");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let dir = ex.to_str().unwrap();
    for envs in [
        &[("FLOYD_OUTPUT", "json")][..],
        &[("FLOYD_VALIDATE_OUTPUT", "json")][..],
        &[("FLOYD_OUTPUT", "json"), ("FLOYD_VALIDATE_OUTPUT", "text")][..],
    ] {
        let (code, out) = run(envs, &["validate", dir]);
        assert_eq!(code, Some(0));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{envs:?}: {e}: {out}"));
        assert_eq!(v["valid"], true);
    }
    let (_, out) = run(
        &[("FLOYD_OUTPUT", "text"), ("FLOYD_VALIDATE_OUTPUT", "json")],
        &["validate", dir],
    );
    assert!(out.starts_with("ok: 4 services"), "{out}");
    // `text` for render is YAML, so one FLOYD_OUTPUT=text serves every command.
    let (code, out) = run(&[("FLOYD_OUTPUT", "text")], &["render", dir]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("services:"), "{out}");
    let (code, out) = run(&[("FLOYD_OUTPUT", "json")], &["render", dir]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with('{'), "{out}");
}

/// Every field a manifest can set, for the render round trip.
const FULL: &str = r#"apiVersion: floyd.dev/v1
kind: Service
metadata:
  name: inference
spec:
  replicas: 4
  template:
    image: ghcr.io/acme/inference:1.4.2
    command: ["./serve", "--port", "${PORT}"]
    env: { LOG_LEVEL: info, WORKERS: 4, DEBUG: false, EMPTY: }
    workingDir: /srv
    resources:
      cpu: 500m
      memory: 256Mi
      gpu: { count: 2, product: NVIDIA-A100-SXM4-80GB, memoryMiB: 81920, sharing: mig, profile: 1g.10gb, allowInPlace: false }
    terminationGracePeriodSeconds: 5
  ports: [{ name: http, port: 18080 }, { name: metrics, port: 18090 }]
  health:
    readiness: { http: { path: /healthz, port: http }, periodSeconds: 2, failureThreshold: 3, timeoutSeconds: 1 }
    liveness:  { tcp: { port: 18090 }, initialDelaySeconds: 5 }
    startup: { exec: { command: [test, -f, /tmp/ready] }, failureThreshold: 30 }
  minReadySeconds: 5
  progressDeadlineSeconds: 300
  revisionHistoryLimit: 3
  strategy:
    type: BlueGreen
    blueGreen: { previewPort: 18081, autoPromote: false, scaleDownDelaySeconds: 1m }
  gates:
    - successRate: { min: 0.99, window: 30s }
    - prometheus: { query: "sum(rate(x[1m]))", address: "http://127.0.0.1:9090", max: 0.01, onNoData: pass }
    - webhook: { url: "https://approve.example.com/hook?token=abc&team=web", timeoutSeconds: 5, onNoData: fail }
  onFailure: { rollback: true, revert: false }
"#;

/// What `floyd render` prints, written back as a config repo: each
/// service's `spec` under `apiVersion`/`kind`/`metadata`.
fn rendered_as_repo(rendered: &str, redacted_secrets: bool) -> Repo {
    let v: serde_json::Value = serde_saphyr::from_str(rendered).expect("render output is YAML");
    let repo = Repo::with(&[]);
    for s in v["services"].as_array().expect("services") {
        let name = s["name"].as_str().expect("name");
        let doc = serde_json::json!({
            "apiVersion": "floyd.dev/v1",
            "kind": "Service",
            "metadata": { "name": name },
            "spec": s["spec"],
        });
        let mut text = serde_json::to_string_pretty(&doc).unwrap();
        if redacted_secrets {
            // What a person does with a redacted URL: put the secret back.
            text = text.replace("token=***", "token=abc");
        }
        repo.write(&format!("services/{name}.yaml"), text.as_bytes());
    }
    repo
}

/// `floyd render` wrote `windowSeconds`, which `validate` rejects, so its
/// output could not be fed back (issue #20). Now every field round-trips.
#[test]
fn render_output_validates_and_loads_back_the_same() {
    let full = Repo::with(&[("services/inference.yaml", FULL)]);
    let ex = examples();
    for (dir, env) in [
        (full.path(), None),
        (ex.as_path(), None),
        (ex.as_path(), Some("prod")),
        (ex.as_path(), Some("staging")),
        (ex.as_path(), Some("k8s")),
    ] {
        let mut args = vec!["render", dir.to_str().unwrap()];
        if let Some(e) = env {
            args.extend(["-e", e]);
        }
        let (code, out, err) = floyd(&args);
        assert_eq!(code, 0, "{err}");
        let back = rendered_as_repo(&out, true);
        let (code, _, err) = floyd(&["validate", back.path().to_str().unwrap()]);
        assert_eq!(
            code, 0,
            "render output of {dir:?} {env:?} does not validate:\n{err}"
        );
        let original = manifest::load_release(dir, env).unwrap();
        let reloaded = back.load(None).unwrap();
        assert_eq!(reloaded.services.len(), original.services.len());
        for (a, b) in original.services.iter().zip(&reloaded.services) {
            assert_eq!((&a.name, &a.revision), (&b.name, &b.revision));
            assert_eq!(a.spec, b.spec, "{}", a.name);
        }
    }
}

/// Gate and notification URLs can carry credentials in their query; `render`
/// prints them redacted, as the logs do.
#[test]
fn render_redacts_secret_looking_query_strings() {
    let full = Repo::with(&[("services/inference.yaml", FULL)]);
    for o in ["yaml", "json"] {
        let (code, out, err) = floyd(&["render", full.path().to_str().unwrap(), "-o", o]);
        assert_eq!(code, 0, "{err}");
        assert!(!out.contains("token=abc"), "{out}");
        assert!(
            out.contains("https://approve.example.com/hook?token=***&team=web"),
            "{out}"
        );
    }
}

/// `events: [rollout-failed]` (once in docs/manifest.md) validated and the
/// notification never fired; an undefined value printed once per
/// environment (issue #20).
#[test]
fn event_names_are_checked_and_each_problem_is_printed_once() {
    let repo = Repo::with(&[
        (
            "floyd.yaml",
            "values: { a: 1 }\nenvironments: { prod: { values: { a: 2 } }, staging: {} }\nnotifications:\n  - { url: \"http://x/h\", events: [failed, rollout-failed, rolled-back, Completed, zzz] }\n",
        ),
        (
            "services/web.yaml",
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec:\n  replicas: {{ values.nope }}\n  template: { command: [a] }\n",
        ),
    ]);
    let dir = repo.path().to_str().unwrap();
    let (code, _, err) = floyd(&["validate", dir]);
    assert_eq!(code, 2);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!(
                "{dir}/floyd.yaml:4:43: notifications[0].events[1]: unknown event \"rollout-failed\" (hint: did you mean `failed`?)"
            ),
            format!(
                "{dir}/floyd.yaml:4:59: notifications[0].events[2]: unknown event \"rolled-back\" (hint: did you mean `rolledBack`?)"
            ),
            format!(
                "{dir}/floyd.yaml:4:72: notifications[0].events[3]: unknown event \"Completed\" (hint: did you mean `completed`?)"
            ),
            format!(
                "{dir}/floyd.yaml:4:83: notifications[0].events[4]: unknown event \"zzz\" (hint: known events: started, completed, failed, rolledBack, degraded, revertPushed, revertFailed)"
            ),
            format!(
                "{dir}/services/web.yaml:5:16: template: `values.nope` is undefined (hint: define it under `values:` in floyd.yaml, or in the environment's values)"
            ),
            format!("error: 5 problem(s) in {dir}"),
        ]
    );
    // docs/manifest.md's own example validates.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/manifest.md"))
            .unwrap();
    let line = docs
        .lines()
        .find(|l| l.contains("format: slack, events:"))
        .expect("the docs' notification example");
    let repo = Repo::with(&[
        ("floyd.yaml", &format!("notifications:\n{line}\n")),
        (
            "services/web.yaml",
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: { name: web }\nspec: { template: { command: [a] } }\n",
        ),
    ]);
    assert_eq!(repo.load(None).map(|r| r.notifications.len()), Ok(1));
}
