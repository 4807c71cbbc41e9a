//! Unit tests of `parse_service`: defaults, every field, and errors with
//! their exact positions and field paths.

use super::*;

fn parse(text: &str) -> Result<Service, Vec<String>> {
    parse_service(text, Path::new("svc.yaml")).map_err(|e| match e {
        Error::Invalid(d) => d.iter().map(|d| d.to_string()).collect(),
        other => vec![other.to_string()],
    })
}

const MINIMAL: &str = "apiVersion: floyd.dev/v1
kind: Service
metadata: { name: web }
spec:
  template:
    command: [\"${FLOYD_BIN}\", sample-app, --version, \"1.0\"]
";

#[test]
fn minimal_service_gets_every_default() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.name.as_str(), "web");
    let mut want = ServiceSpec::with_defaults(
        1,
        InstanceTemplate::command(["${FLOYD_BIN}", "sample-app", "--version", "1.0"]),
    );
    want.on_failure = OnFailure::default();
    assert_eq!(s.spec, want);
    assert_eq!(s.revision, revision_of(&s.spec.template));
    assert_eq!(s.file.as_deref(), Some(Path::new("svc.yaml")));
}

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
    - webhook: { url: "http://127.0.0.1:18999/check", timeoutSeconds: 5, onNoData: fail }
  onFailure: { rollback: true, revert: false }
"#;

#[test]
fn every_field_is_read() {
    let s = parse(FULL).unwrap();
    let sp = &s.spec;
    assert_eq!(sp.replicas, 4);
    assert_eq!(
        sp.template.image.as_deref(),
        Some("ghcr.io/acme/inference:1.4.2")
    );
    assert_eq!(sp.template.command, vec!["./serve", "--port", "${PORT}"]);
    assert_eq!(sp.template.env["WORKERS"], "4");
    assert_eq!(sp.template.env["DEBUG"], "false");
    assert_eq!(sp.template.env["EMPTY"], "");
    assert_eq!(sp.template.working_dir.as_deref(), Some("/srv"));
    assert_eq!(sp.template.resources.cpu.as_deref(), Some("500m"));
    assert_eq!(sp.template.resources.memory.as_deref(), Some("256Mi"));
    assert_eq!(
        sp.gpu(),
        Some(&GpuRequest {
            count: 2,
            product: Some("NVIDIA-A100-SXM4-80GB".into()),
            memory_mib: Some(81920),
            sharing: GpuSharing::Mig {
                profile: "1g.10gb".into()
            },
            allow_in_place: false,
        })
    );
    assert_eq!(sp.template.termination_grace_period_seconds, 5);
    assert_eq!(sp.ports.len(), 2);
    let r = sp.health.readiness.as_ref().unwrap();
    assert_eq!(
        r.action,
        ProbeAction::Http {
            path: "/healthz".into(),
            port: PortRef::Name("http".into())
        }
    );
    assert_eq!(
        (
            r.period_seconds,
            r.failure_threshold,
            r.timeout_seconds,
            r.success_threshold
        ),
        (2, 3, 1, 1)
    );
    let l = sp.health.liveness.as_ref().unwrap();
    assert_eq!(
        l.action,
        ProbeAction::Tcp {
            port: PortRef::Number(18090)
        }
    );
    assert_eq!((l.initial_delay_seconds, l.period_seconds), (5, 10));
    assert_eq!(sp.health.startup.as_ref().unwrap().failure_threshold, 30);
    assert_eq!(
        (
            sp.min_ready_seconds,
            sp.progress_deadline_seconds,
            sp.revision_history_limit
        ),
        (5, 300, 3)
    );
    assert_eq!(
        sp.strategy,
        Strategy::BlueGreen {
            blue_green: BlueGreenParams {
                preview_port: Some(18081),
                auto_promote: false,
                scale_down_delay_seconds: 60
            }
        }
    );
    assert_eq!(sp.gates.len(), 3);
    assert_eq!(
        sp.gates[0],
        Gate::SuccessRate {
            min: 0.99,
            window_seconds: 30,
            on_no_data: OnNoData::Wait
        }
    );
    assert_eq!(sp.gates[1].on_no_data(), OnNoData::Pass);
    assert_eq!(
        sp.gates[2],
        Gate::Webhook {
            url: "http://127.0.0.1:18999/check".into(),
            timeout_seconds: 5,
            on_no_data: OnNoData::Fail
        }
    );
    assert_eq!(
        sp.on_failure,
        OnFailure {
            rollback: true,
            revert: false
        }
    );
}

#[test]
fn every_error_is_reported_with_position_and_path() {
    let text = "apiVersion: floyd.dev/v1
kind: Service
metadata: { name: Web_1 }
spec:
  replcas: 3
  template:
    command: [x]
  strategy:
    rollingUpdate: { maxSurge: 0, maxUnavailable: 0% }
  health:
    readiness: { http: { path: healthz, port: web } }
";
    let errs = parse(text).unwrap_err();
    assert_eq!(
        errs,
        vec![
            "svc.yaml:3:19: metadata.name: invalid service name \"Web_1\": invalid character 'W': a DNS-1123 label has only lowercase letters, digits and '-' (hint: use a DNS-1123 label such as `web` or `payments-api`)",
            "svc.yaml:5:3: spec.replcas: unknown field (hint: did you mean `replicas`?)",
            "svc.yaml:9:51: spec.strategy.rollingUpdate.maxUnavailable: maxSurge and maxUnavailable must not both be 0: the rollout could never replace an instance (hint: allow a surge (maxSurge: 1) or some unavailability (maxUnavailable: 1))",
            "svc.yaml:11:32: spec.health.readiness.http.path: must start with '/' (hint: write \"/healthz\")",
            "svc.yaml:11:47: spec.health.readiness.http.port: no port named \"web\" in spec.ports (hint: declare it under spec.ports or use a port number)",
        ]
    );
}

#[test]
fn syntax_errors_and_documents() {
    assert_eq!(parse("a: [1\nb: : :\n").unwrap_err().len(), 1);
    assert!(parse("").unwrap_err()[0].contains("no YAML document"));
    let two = format!("{MINIMAL}---\n{MINIMAL}");
    let e = parse(&two).unwrap_err();
    assert!(
        e[0].starts_with("svc.yaml:8:1: expected one document, found 2"),
        "{e:?}"
    );
    assert!(
        parse("spec: {{ values.x }}").unwrap_err()[0].starts_with("svc.yaml:1:7: template syntax")
    );
}

fn with_strategy(strategy: &str) -> String {
    format!("{MINIMAL}  strategy:\n{strategy}")
}

#[test]
fn canary_strategy_decodes_every_field() {
    let text = with_strategy(
        r#"    type: Canary
    canary:
      steps:
        - setWeight: 5
        - pause: { duration: 60s }
        - setWeight: 25
        - analysis: {}
        - pause: {}
        - pause:
        - setWeight: 100
      match:
        - headers: { X-Canary: "true", x-user: "42" }
      mirror: true
"#,
    );
    let s = parse(&text).unwrap();
    let Strategy::Canary { canary } = &s.spec.strategy else {
        panic!("{:?}", s.spec.strategy)
    };
    assert_eq!(
        canary.steps,
        vec![
            CanaryStep::SetWeight(5),
            CanaryStep::Pause(CanaryPause {
                duration_seconds: Some(60)
            }),
            CanaryStep::SetWeight(25),
            CanaryStep::Analysis(CanaryAnalysis {}),
            CanaryStep::Pause(CanaryPause::default()),
            CanaryStep::Pause(CanaryPause::default()),
            CanaryStep::SetWeight(100),
        ]
    );
    assert_eq!(canary.matches.len(), 1);
    assert_eq!(
        canary.matches[0]
            .headers
            .get("x-canary")
            .map(String::as_str),
        Some("true"),
        "header names are lowercased"
    );
    assert!(canary.mirror);
    assert_eq!(canary.traffic_routing, None);
    assert_eq!(canary.max_weight(), 100);
    assert_eq!(canary.weight_after(2), 5);
    // The strategy is not part of the revision.
    let plain = parse(MINIMAL).unwrap();
    assert_eq!(s.revision, plain.revision);
    // The rendered form reads back.
    let json = serde_json::to_string(&s.spec.strategy).unwrap();
    assert!(
        json.contains(r#""steps":[{"setWeight":5},{"pause":{"duration":60}}"#),
        "{json}"
    );
    let back: Strategy = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, &s.spec.strategy);
}

#[test]
fn canary_errors_have_positions_and_paths() {
    let text = with_strategy(
        r#"    type: Canary
    canary:
      steps:
        - setWeight: 50
        - setWeight: 20
        - setWeight: 101
        - pause: { duration: soon }
        - analysis: { gates: 1 }
        - paws: {}
        - { setWeight: 5, pause: {} }
        - {}
      match:
        - headers: { "bad header": "x" }
        - headers: {}
      mirror: yes please
"#,
    );
    let errs = parse(&text).unwrap_err();
    assert_eq!(
        errs,
        vec![
            "svc.yaml:12:22: spec.strategy.canary.steps[1].setWeight: weight 20 is below the 50 of step 0: canary weights never decrease (hint: order the steps by weight; `floyd abort` sends all traffic back)",
            "svc.yaml:13:22: spec.strategy.canary.steps[2].setWeight: must be at most 100 (is 101)",
            "svc.yaml:14:30: spec.strategy.canary.steps[3].pause.duration: expected a duration (hint: write seconds (`30`) or a duration like `30s`, `2m`, `1h`, `1m30s`)",
            "svc.yaml:15:21: spec.strategy.canary.steps[4].analysis: analysis takes no parameters: it checks spec.gates (hint: write `- analysis: {}` and configure the checks under spec.gates)",
            "svc.yaml:16:11: spec.strategy.canary.steps[5].paws: unknown field (hint: known fields here: setWeight, pause, analysis)",
            "svc.yaml:17:34: spec.strategy.canary.steps[6].pause: a list item is one step (found setWeight and pause) (hint: write each step as its own `- ` item)",
            "svc.yaml:18:11: spec.strategy.canary.steps[7]: a step needs one of setWeight, pause or analysis (hint: e.g. - setWeight: 10)",
            "svc.yaml:20:22: spec.strategy.canary.match[0].headers.bad header: \"bad header\" is not a valid HTTP header name (hint: use letters, digits and '-', e.g. x-canary)",
            "svc.yaml:21:20: spec.strategy.canary.match[1].headers: a match needs at least one header (hint: e.g. headers: { x-canary: \"true\" })",
            "svc.yaml:22:15: spec.strategy.canary.mirror: expected true or false, found a string",
        ]
    );
    let missing = parse(&with_strategy("    type: Canary\n")).unwrap_err();
    assert_eq!(
        missing,
        vec![
            "svc.yaml:8:5: spec.strategy.canary.steps: Canary needs steps (hint: add canary: { steps: [{ setWeight: 10 }, { pause: { duration: 60s } }] })"
        ]
    );
    let empty = parse(&with_strategy(
        "    type: Canary\n    canary: { steps: [] }\n",
    ))
    .unwrap_err();
    assert_eq!(
        empty,
        vec![
            "svc.yaml:9:22: spec.strategy.canary.steps: a canary needs at least one step (hint: e.g. steps: [{ setWeight: 10 }, { pause: { duration: 60s } }])"
        ]
    );
    let routed = parse(&with_strategy(
        "    type: Canary\n    canary:\n      steps: [{ setWeight: 5 }]\n      trafficRouting: { gatewayAPI: { httpRoute: web } }\n",
    ))
    .unwrap();
    let Strategy::Canary { canary } = &routed.spec.strategy else {
        panic!("{:?}", routed.spec.strategy)
    };
    assert_eq!(
        canary.traffic_routing,
        Some(TrafficRouting {
            gateway_api: GatewayApiRouting {
                http_route: "web".into()
            }
        })
    );
    let bad_route = parse(&with_strategy(
        "    type: Canary\n    canary:\n      steps: [{ setWeight: 5 }]\n      trafficRouting: { gatewayAPI: { httpRoute: Web_Route } }\n",
    ))
    .unwrap_err();
    assert_eq!(
        bad_route,
        vec![
            "svc.yaml:11:50: spec.strategy.canary.trafficRouting.gatewayAPI.httpRoute: \"Web_Route\" is not a Kubernetes object name (hint: use the metadata.name of an HTTPRoute in Floyd's namespace: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        ]
    );
    let wrong = parse(&with_strategy(
        "    type: RollingUpdate\n    canary: { steps: [{ setWeight: 5 }] }\n",
    ))
    .unwrap_err();
    assert!(
        wrong[0].contains(
            "spec.strategy.canary: canary parameters given, but the strategy type is RollingUpdate"
        ),
        "{wrong:?}"
    );
}
