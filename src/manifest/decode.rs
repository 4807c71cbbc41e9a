//! From positioned YAML nodes to the validated model: field-by-field decoding
//! with defaults, every problem recorded as a [`Diagnostic`] with its
//! position and field path (decoding goes on after an error, so one run
//! reports everything it can).

use super::Diagnostic;
use super::model::*;
use super::yaml::{Node, Pos, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Maps a position in the text that was parsed back to the file the user
/// wrote (templates can shift columns and lines).
pub(crate) trait PosMap {
    fn map(&self, pos: Pos) -> Pos;
}

/// No templating: positions are already the user's.
pub(crate) struct Identity;
impl PosMap for Identity {
    fn map(&self, pos: Pos) -> Pos {
        pos
    }
}

/// Where diagnostics go while one file is decoded.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub map: &'a dyn PosMap,
    pub diags: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub fn err(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.push(pos, path, message.into(), None);
    }
    pub fn err_hint(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(pos, path, message.into(), Some(hint.into()));
    }
    fn push(&mut self, pos: Pos, path: &str, message: String, hint: Option<String>) {
        let p = self.map.map(pos);
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: p.line,
            column: p.col,
            path: path.to_string(),
            message,
            hint,
        });
    }

    /// `node` as a mapping whose keys are all in `known`; unknown keys are
    /// reported (with a "did you mean" hint when one is close).
    pub fn obj<'n>(&mut self, node: &'n Node, path: &str, known: &[&str]) -> Option<Obj<'n>> {
        let Value::Map(entries) = &node.value else {
            self.err(
                node.pos,
                path,
                format!("expected a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut fields = Vec::with_capacity(entries.len());
        let mut unknown = 0;
        for (k, v) in entries {
            let Some(key) = k.as_str() else {
                self.err(
                    k.pos,
                    path,
                    format!("field names must be strings, found {}", k.value.kind()),
                );
                continue;
            };
            if !known.contains(&key) {
                unknown += 1;
                let p = join(path, key);
                match closest(key, known) {
                    Some(c) => {
                        self.err_hint(k.pos, &p, "unknown field", format!("did you mean `{c}`?"))
                    }
                    None => self.err_hint(
                        k.pos,
                        &p,
                        "unknown field",
                        format!("known fields here: {}", known.join(", ")),
                    ),
                }
                continue;
            }
            fields.push((key, v));
        }
        Some(Obj {
            fields,
            unknown,
            pos: node.pos,
            path: path.to_string(),
        })
    }

    /// A required field: reports it when missing.
    pub fn required<'n>(&mut self, o: &Obj<'n>, key: &str) -> Option<&'n Node> {
        let n = o.get(key);
        if n.is_none() {
            self.err(o.pos, &o.at(key), "required field is missing");
        }
        n
    }

    pub fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            other => {
                self.err_hint(
                    n.pos,
                    path,
                    format!("expected a string, found {}", other.kind()),
                    "quote the value",
                );
                None
            }
        }
    }

    pub fn nonempty_string(&mut self, n: &Node, path: &str) -> Option<String> {
        let s = self.string(n, path)?;
        if s.trim().is_empty() {
            self.err(n.pos, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A string, also accepting integers and booleans written without quotes
    /// (`PORT: 8080`, `DEBUG: true`); floats are refused because their text
    /// would change (`1.10` is 1.1).
    pub fn text(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.err_hint(
                    n.pos,
                    path,
                    format!("expected a string, found {}", other.kind()),
                    "quote the value",
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, n: &Node, path: &str) -> Option<bool> {
        match &n.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.err(
                    n.pos,
                    path,
                    format!("expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int(&mut self, n: &Node, path: &str, min: i128, max: i128) -> Option<i128> {
        match &n.value {
            Value::Int(i) if (min..=max).contains(i) => Some(*i),
            Value::Int(i) => {
                let msg = if *i < min {
                    format!("must be at least {min} (is {i})")
                } else {
                    format!("must be at most {max} (is {i})")
                };
                self.err(n.pos, path, msg);
                None
            }
            Value::Str(s) if s.trim().parse::<i128>().is_ok() => {
                self.err_hint(
                    n.pos,
                    path,
                    "expected an integer, found a string",
                    "remove the quotes",
                );
                None
            }
            other => {
                self.err(
                    n.pos,
                    path,
                    format!("expected an integer, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn u32_in(&mut self, n: &Node, path: &str, min: u32, max: u32) -> Option<u32> {
        self.int(n, path, min.into(), max.into())
            .and_then(|i| u32::try_from(i).ok())
    }

    pub fn number(&mut self, n: &Node, path: &str) -> Option<f64> {
        match &n.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) if f.is_finite() => Some(*f),
            Value::Float(_) => {
                self.err(n.pos, path, "must be a finite number");
                None
            }
            other => {
                self.err(
                    n.pos,
                    path,
                    format!("expected a number, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A duration in whole seconds: `30`, `30s`, `2m`, `1h`, `1m30s`.
    pub fn duration_secs(&mut self, n: &Node, path: &str) -> Option<u32> {
        let parsed = match &n.value {
            Value::Int(i) => u32::try_from(*i).ok(),
            Value::Str(s) => parse_duration(s),
            _ => None,
        };
        if parsed.is_none() {
            self.err_hint(
                n.pos,
                path,
                "expected a duration",
                "write seconds (`30`) or a duration like `30s`, `2m`, `1h`, `1m30s`",
            );
        }
        parsed
    }

    pub fn string_list(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &n.value else {
            self.err(
                n.pos,
                path,
                format!("expected a list, found {}", n.value.kind()),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.text(item, &format!("{path}[{i}]")) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub fn list<'n>(&mut self, n: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            other => {
                self.err(
                    n.pos,
                    path,
                    format!("expected a list, found {}", other.kind()),
                );
                None
            }
        }
    }
}

/// A mapping whose keys were checked against the known ones.
pub(crate) struct Obj<'n> {
    fields: Vec<(&'n str, &'n Node)>,
    /// Keys that were reported as unknown (a typo of a required key is
    /// reported once, as the typo).
    pub unknown: usize,
    pub pos: Pos,
    pub path: String,
}

impl<'n> Obj<'n> {
    /// The field is present, even as `null` (`- analysis:` with nothing).
    pub fn fields_has(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| *k == key)
    }
    /// The field's value; `null` counts as absent (`replicas:` with nothing).
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| v.value != Value::Null)
    }
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The known name closest to `word`, if it is close enough to be a typo.
pub(crate) fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let lw = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (levenshtein(&lw, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `30`, `30s`, `2m`, `1h`, `1m30s` (no fractions) → seconds.
pub(crate) fn parse_duration(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = u64::MAX;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        // Units must be given largest first, each once: `1m30s`, not `30s1m`.
        if digits.is_empty() || unit >= last_unit {
            return None;
        }
        last_unit = unit;
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return None;
    }
    u32::try_from(total).ok()
}

const SERVICE_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const SPEC_FIELDS: &[&str] = &[
    "replicas",
    "template",
    "ports",
    "health",
    "minReadySeconds",
    "progressDeadlineSeconds",
    "revisionHistoryLimit",
    "strategy",
    "gates",
    "onFailure",
    "driftPolicy",
    "autoscaling",
];
pub(crate) const API_VERSION: &str = "floyd.dev/v1";

/// A decoded `kind: Service` document, with where its name was written.
pub(crate) struct Decoded {
    pub name: ServiceName,
    pub name_pos: Pos,
    pub spec: ServiceSpec,
}

/// Decodes one `kind: Service` document. `None` when any error was recorded
/// for it (all of them are in `cx.diags`).
pub(crate) fn service(cx: &mut Ctx<'_>, doc: &Node) -> Option<Decoded> {
    let before = cx.diags.len();
    let top = cx.obj(doc, "", SERVICE_FIELDS)?;

    if let Some(n) = cx.required(&top, "apiVersion")
        && let Some(v) = cx.string(n, "apiVersion")
        && v != API_VERSION
    {
        cx.err_hint(
            n.pos,
            "apiVersion",
            format!("unsupported apiVersion {v:?}"),
            format!("use `apiVersion: {API_VERSION}`"),
        );
    }
    if let Some(n) = cx.required(&top, "kind")
        && let Some(k) = cx.string(n, "kind")
        && k != "Service"
    {
        cx.err_hint(
            n.pos,
            "kind",
            format!("unknown kind {k:?}"),
            "Floyd manifests have `kind: Service`",
        );
    }

    let mut name = None;
    let mut name_pos = top.pos;
    if let Some(m) = cx.required(&top, "metadata")
        && let Some(meta) = cx.obj(m, "metadata", &["name"])
        && let Some(n) = cx.required(&meta, "name")
    {
        name_pos = n.pos;
        if let Some(s) = cx.string(n, "metadata.name") {
            match ServiceName::parse(&s) {
                Ok(v) => name = Some(v),
                Err(e) => cx.err_hint(
                    n.pos,
                    "metadata.name",
                    format!("invalid service name {s:?}: {e}"),
                    "use a DNS-1123 label such as `web` or `payments-api`",
                ),
            }
        }
    }

    let spec = cx.required(&top, "spec").and_then(|s| spec(cx, s));
    if cx.diags.len() > before {
        return None;
    }
    Some(Decoded {
        name: name?,
        name_pos,
        spec: spec?,
    })
}

fn spec(cx: &mut Ctx<'_>, node: &Node) -> Option<ServiceSpec> {
    let before = cx.diags.len();
    let o = cx.obj(node, "spec", SPEC_FIELDS)?;

    let replicas = match o.get("replicas") {
        Some(n) => cx.u32_in(n, "spec.replicas", 0, i32::MAX as u32),
        None => Some(1),
    };
    let template = cx
        .required(&o, "template")
        .and_then(|n| template(cx, n, "spec.template"));
    let ports = match o.get("ports") {
        Some(n) => ports(cx, n, "spec.ports"),
        None => Vec::new(),
    };
    let health = match o.get("health") {
        Some(n) => health(cx, n, "spec.health", &ports),
        None => HealthSpec::default(),
    };
    let min_ready = opt_u32(cx, &o, "minReadySeconds", 0, 0, 86_400);
    let deadline = opt_u32(cx, &o, "progressDeadlineSeconds", 600, 1, 86_400 * 7);
    let history = opt_u32(cx, &o, "revisionHistoryLimit", 10, 0, 1000);
    if let (Some(m), Some(d)) = (min_ready, deadline)
        && d <= m
    {
        let pos = o
            .get("progressDeadlineSeconds")
            .or(o.get("minReadySeconds"))
            .map_or(o.pos, |n| n.pos);
        cx.err(
            pos,
            "spec.progressDeadlineSeconds",
            format!("must be greater than minReadySeconds ({d} <= {m}): no instance could become available in time"),
        );
    }
    let strategy = match o.get("strategy") {
        Some(n) => strategy(cx, n, "spec.strategy", &ports),
        None => Some(default_strategy()),
    };
    let gates = match o.get("gates") {
        Some(n) => gates(cx, n, "spec.gates"),
        None => Vec::new(),
    };
    let on_failure = match o.get("onFailure") {
        Some(n) => on_failure(cx, n, "spec.onFailure"),
        None => Some(OnFailure::default()),
    };
    let drift_policy = match o.get("driftPolicy") {
        Some(n) => drift_policy(cx, n, &o.at("driftPolicy")),
        None => Some(DriftPolicy::Correct),
    };
    let autoscaling = o
        .get("autoscaling")
        .map(|n| autoscaling(cx, n, "spec.autoscaling"));
    if cx.diags.len() > before {
        return None;
    }
    Some(ServiceSpec {
        replicas: replicas?,
        template: template?,
        ports,
        health,
        min_ready_seconds: min_ready?,
        progress_deadline_seconds: deadline?,
        revision_history_limit: history?,
        strategy: strategy?,
        gates,
        on_failure: on_failure?,
        drift_policy: drift_policy?,
        autoscaling: autoscaling.flatten(),
    })
}

fn autoscaling(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<Autoscaling> {
    let o = cx.obj(
        node,
        path,
        &[
            "minReplicas",
            "maxReplicas",
            "targetCPUUtilizationPercentage",
            "metric",
        ],
    )?;
    let min = opt_u32(cx, &o, "minReplicas", 1, 1, i32::MAX as u32);
    let max = cx
        .required(&o, "maxReplicas")
        .and_then(|n| cx.u32_in(n, &o.at("maxReplicas"), 1, i32::MAX as u32));
    if let (Some(lo), Some(hi)) = (min, max)
        && hi < lo
    {
        let pos = o.get("maxReplicas").map_or(o.pos, |n| n.pos);
        cx.err(
            pos,
            &o.at("maxReplicas"),
            format!("must be at least minReplicas ({hi} < {lo})"),
        );
    }
    let cpu = o
        .get("targetCPUUtilizationPercentage")
        .and_then(|n| cx.u32_in(n, &o.at("targetCPUUtilizationPercentage"), 1, 1000));
    let metric = o.get("metric").and_then(|n| {
        let p = o.at("metric");
        let m = cx.obj(n, &p, &["name", "averageValue"])?;
        let name = cx
            .required(&m, "name")
            .and_then(|v| cx.nonempty_string(v, &m.at("name")));
        let value = cx
            .required(&m, "averageValue")
            .and_then(|v| quantity(cx, v, &m.at("averageValue")));
        Some(PodsMetric {
            name: name?,
            average_value: value?,
        })
    });
    let has_cpu = o.get("targetCPUUtilizationPercentage").is_some();
    let has_metric = o.get("metric").is_some();
    if !has_cpu && !has_metric && o.unknown > 0 {
        // A misspelt target was reported as such.
        return None;
    }
    if has_cpu == has_metric {
        cx.err_hint(
            o.pos,
            path,
            if has_cpu {
                "targetCPUUtilizationPercentage and metric are both set"
            } else {
                "needs a target"
            },
            "set one of targetCPUUtilizationPercentage (e.g. 70) or metric: { name, averageValue }",
        );
        return None;
    }
    Some(Autoscaling {
        min_replicas: min?,
        max_replicas: max?,
        target_cpu_utilization_percentage: cpu,
        metric,
    })
}

fn drift_policy(cx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<DriftPolicy> {
    let s = cx.string(n, path)?;
    match s.as_str() {
        "correct" => Some(DriftPolicy::Correct),
        "report" => Some(DriftPolicy::Report),
        _ => {
            cx.err_hint(
                n.pos,
                path,
                format!("unknown driftPolicy {s:?}"),
                "use correct (default: put hand edits back) or report (only report them)",
            );
            None
        }
    }
}

fn opt_u32(
    cx: &mut Ctx<'_>,
    o: &Obj<'_>,
    key: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Option<u32> {
    match o.get(key) {
        Some(n) => cx.u32_in(n, &o.at(key), min, max),
        None => Some(default),
    }
}

fn opt_bool(cx: &mut Ctx<'_>, o: &Obj<'_>, key: &str, default: bool) -> Option<bool> {
    match o.get(key) {
        Some(n) => cx.boolean(n, &o.at(key)),
        None => Some(default),
    }
}

fn template(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<InstanceTemplate> {
    let o = cx.obj(
        node,
        path,
        &[
            "image",
            "command",
            "env",
            "workingDir",
            "resources",
            "terminationGracePeriodSeconds",
            "kubernetes",
        ],
    )?;
    let mut t = InstanceTemplate {
        termination_grace_period_seconds: 30,
        ..InstanceTemplate::default()
    };
    if let Some(n) = o.get("image") {
        t.image = cx.nonempty_string(n, &o.at("image"));
    }
    if let Some(n) = o.get("command") {
        let p = o.at("command");
        if let Some(argv) = cx.string_list(n, &p) {
            if argv.first().is_none_or(|a| a.trim().is_empty()) {
                cx.err(n.pos, &p, "the program (first element) must not be empty");
            }
            t.command = argv;
        }
    }
    if o.get("image").is_none() && o.get("command").is_none() {
        cx.err_hint(
            o.pos,
            path,
            "needs `command` (local runtime) or `image` (kube runtime)",
            "e.g. command: [\"${FLOYD_BIN}\", \"sample-app\"]",
        );
    }
    if let Some(n) = o.get("env") {
        (t.env, t.env_from) = env(cx, n, &o.at("env"));
    }
    if let Some(n) = o.get("workingDir") {
        t.working_dir = cx.nonempty_string(n, &o.at("workingDir"));
    }
    if let Some(n) = o.get("resources") {
        t.resources = resources(cx, n, &o.at("resources")).unwrap_or_default();
    }
    if let Some(g) = opt_u32(cx, &o, "terminationGracePeriodSeconds", 30, 0, 86_400) {
        t.termination_grace_period_seconds = g;
    }
    if let Some(n) = o.get("kubernetes") {
        let mut names = t.env.clone();
        names.extend(t.env_from.keys().map(|k| (k.clone(), String::new())));
        t.kubernetes = super::pod::kubernetes(cx, n, &o.at("kubernetes"), &names).map(Box::new);
    }
    Some(t)
}

/// `env`: literal values, and `{ valueFrom: { file | env } }` references
/// the local runtime resolves at instance start.
fn env(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, EnvSource>) {
    let mut out = BTreeMap::new();
    let mut refs = BTreeMap::new();
    let Value::Map(entries) = &node.value else {
        cx.err(
            node.pos,
            path,
            format!(
                "expected a mapping of NAME: value, found {}",
                node.value.kind()
            ),
        );
        return (out, refs);
    };
    for (k, v) in entries {
        let Some(name) = k.key_text() else {
            cx.err(k.pos, path, "variable names must be strings");
            continue;
        };
        let p = join(path, &name);
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            cx.err_hint(
                k.pos,
                &p,
                "invalid environment variable name",
                "use letters, digits and '_', not starting with a digit",
            );
            continue;
        }
        if name == "PORT" {
            cx.err_hint(
                k.pos,
                &p,
                "PORT is assigned by the runtime to each instance",
                "refer to it as ${PORT} in the command instead",
            );
            continue;
        }
        if let Value::Map(_) = v.value {
            if let Some(r) = env_ref(cx, v, &p) {
                refs.insert(name, r);
            }
            continue;
        }
        let value = if v.value == Value::Null {
            Some(String::new())
        } else {
            cx.text(v, &p)
        };
        if let Some(value) = value {
            out.insert(name, value);
        }
    }
    (out, refs)
}

/// `NAME: { valueFrom: { file: /abs/path } }` or `{ valueFrom: { env: VAR } }`.
fn env_ref(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<EnvSource> {
    let o = cx.obj(node, path, &["valueFrom"])?;
    let n = cx.required(&o, "valueFrom")?;
    let p = o.at("valueFrom");
    let f = cx.obj(n, &p, &["file", "env"])?;
    match (f.get("file"), f.get("env")) {
        (Some(file), None) => {
            let fp = f.at("file");
            let s = cx.nonempty_string(file, &fp)?;
            if !s.starts_with('/') {
                cx.err_hint(
                    file.pos,
                    &fp,
                    "must be an absolute path",
                    "the file is read on the controller's machine, e.g. /run/secrets/db-password",
                );
                return None;
            }
            Some(EnvSource::File(s))
        }
        (None, Some(var)) => {
            let vp = f.at("env");
            let s = cx.nonempty_string(var, &vp)?;
            Some(EnvSource::Env(s))
        }
        // A misspelt (or Kubernetes) source was reported as such.
        (None, None) if f.unknown > 0 => None,
        _ => {
            cx.err_hint(
                f.pos,
                &p,
                "needs exactly one of file and env",
                "valueFrom: { file: /run/secrets/db-password } or valueFrom: { env: DB_PASSWORD }",
            );
            None
        }
    }
}

/// Kubernetes quantity: `500m`, `1`, `0.5`, `256Mi`, `1G`.
fn quantity(cx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<String> {
    let s = match &n.value {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_finite() => f.to_string(),
        other => {
            cx.err(
                n.pos,
                path,
                format!(
                    "expected a quantity like \"500m\" or \"256Mi\", found {}",
                    other.kind()
                ),
            );
            return None;
        }
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let num_ok = !num.is_empty()
        && num.chars().filter(|c| *c == '.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.');
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if !num_ok || !SUFFIXES.contains(&suffix) {
        cx.err_hint(
            n.pos,
            path,
            format!("invalid quantity {s:?}"),
            "use a Kubernetes quantity such as \"500m\", \"2\", \"256Mi\" or \"1Gi\"",
        );
        return None;
    }
    Some(s)
}

fn resources(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<Resources> {
    let o = cx.obj(node, path, &["cpu", "memory", "gpu"])?;
    let mut r = Resources::default();
    if let Some(n) = o.get("cpu") {
        r.cpu = quantity(cx, n, &o.at("cpu"));
    }
    if let Some(n) = o.get("memory") {
        r.memory = quantity(cx, n, &o.at("memory"));
    }
    if let Some(n) = o.get("gpu") {
        r.gpu = gpu(cx, n, &o.at("gpu"));
    }
    Some(r)
}

/// MIG profiles as NVIDIA names them: `1g.10gb`, `3g.40gb`, `1c.3g.40gb`, `1g.10gb+me`.
pub(crate) fn is_mig_profile(p: &str) -> bool {
    let p = p.strip_suffix("+me").unwrap_or(p);
    let parts: Vec<&str> = p.split('.').collect();
    let num_then = |s: &str, suffix: &str| {
        s.strip_suffix(suffix)
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
    };
    match parts.as_slice() {
        [g, mem] => num_then(g, "g") && num_then(mem, "gb"),
        [c, g, mem] => num_then(c, "c") && num_then(g, "g") && num_then(mem, "gb"),
        _ => false,
    }
}

const SHARING_MODES: &[&str] = &["exclusive", "time-sliced", "mig"];

fn gpu(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<GpuRequest> {
    let o = cx.obj(
        node,
        path,
        &[
            "count",
            "product",
            "memoryMiB",
            "sharing",
            "profile",
            "allowInPlace",
        ],
    )?;
    let before = cx.diags.len();
    let count = opt_u32(cx, &o, "count", 1, 1, 1024);
    let product = o
        .get("product")
        .and_then(|n| cx.nonempty_string(n, &o.at("product")));
    let memory_mib = o
        .get("memoryMiB")
        .and_then(|n| cx.int(n, &o.at("memoryMiB"), 1, u32::MAX.into()))
        .and_then(|i| u64::try_from(i).ok());
    let allow_in_place = opt_bool(cx, &o, "allowInPlace", true);

    // `sharing: mig` + `profile: 1g.10gb`, or the rendered form
    // `sharing: { mode: mig, profile: 1g.10gb }`.
    let mut profile_node = o.get("profile");
    let mut profile_path = o.at("profile");
    let mode = match o.get("sharing") {
        None => Some(("exclusive".to_string(), o.pos)),
        Some(
            n @ Node {
                value: Value::Str(_),
                ..
            },
        ) => cx.string(n, &o.at("sharing")).map(|s| (s, n.pos)),
        Some(n) => {
            let sp = o.at("sharing");
            let so = cx.obj(n, &sp, &["mode", "profile"])?;
            if let Some(p) = so.get("profile") {
                if profile_node.is_some() {
                    cx.err(p.pos, &so.at("profile"), "profile is given twice");
                }
                profile_node = Some(p);
                profile_path = so.at("profile");
            }
            cx.required(&so, "mode")
                .and_then(|m| cx.string(m, &so.at("mode")).map(|s| (s, m.pos)))
        }
    };
    let sharing = match mode {
        Some((m, pos)) => match m.as_str() {
            "exclusive" | "time-sliced" => {
                if let Some(p) = profile_node {
                    cx.err_hint(
                        p.pos,
                        &profile_path,
                        format!("profile applies only to `sharing: mig` (sharing is {m})"),
                        "remove it or set sharing: mig",
                    );
                }
                Some(if m == "exclusive" {
                    GpuSharing::Exclusive
                } else {
                    GpuSharing::TimeSliced
                })
            }
            "mig" => match profile_node {
                None => {
                    cx.err_hint(
                        pos,
                        &profile_path,
                        "sharing: mig needs a profile",
                        "e.g. profile: 1g.10gb",
                    );
                    None
                }
                Some(p) => cx.string(p, &profile_path).and_then(|s| {
                    if is_mig_profile(&s) {
                        Some(GpuSharing::Mig { profile: s })
                    } else {
                        cx.err_hint(
                            p.pos,
                            &profile_path,
                            format!("invalid MIG profile {s:?}"),
                            "use an NVIDIA profile name such as 1g.10gb, 2g.20gb or 3g.40gb",
                        );
                        None
                    }
                }),
            },
            other => {
                let hint = match closest(other, SHARING_MODES) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => "use exclusive, time-sliced or mig".to_string(),
                };
                cx.err_hint(
                    pos,
                    &o.at("sharing"),
                    format!("unknown sharing mode {other:?}"),
                    hint,
                );
                None
            }
        },
        None => None,
    };
    if cx.diags.len() > before {
        return None;
    }
    Some(GpuRequest {
        count: count?,
        product,
        memory_mib,
        sharing: sharing?,
        allow_in_place: allow_in_place?,
    })
}

/// IANA service name style: lowercase letters, digits and '-', at most 15.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn ports(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Vec<PortSpec> {
    let mut out: Vec<(PortSpec, Pos)> = Vec::new();
    let Some(items) = cx.list(node, path) else {
        return Vec::new();
    };
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(o) = cx.obj(item, &ip, &["name", "port"]) else {
            continue;
        };
        let name = cx.required(&o, "name").and_then(|n| {
            let s = cx.string(n, &o.at("name"))?;
            if !valid_port_name(&s) {
                cx.err_hint(
                    n.pos,
                    &o.at("name"),
                    format!("invalid port name {s:?}"),
                    "use at most 15 lowercase letters, digits and '-', e.g. `http`",
                );
                return None;
            }
            if let Some((_, p)) = out.iter().find(|(q, _)| q.name == s) {
                cx.err(
                    n.pos,
                    &o.at("name"),
                    format!(
                        "duplicate port name {s:?} (first at line {})",
                        cx.map.map(*p).line
                    ),
                );
                return None;
            }
            Some(s)
        });
        let port = cx.required(&o, "port").and_then(|n| {
            let v = cx.int(n, &o.at("port"), 1, 65535)? as u16;
            if let Some((_, p)) = out.iter().find(|(q, _)| q.port == v) {
                cx.err(
                    n.pos,
                    &o.at("port"),
                    format!("duplicate port {v} (first at line {})", cx.map.map(*p).line),
                );
                return None;
            }
            Some((v, n.pos))
        });
        if let (Some(name), Some((port, pos))) = (name, port) {
            out.push((PortSpec { name, port }, pos));
        }
    }
    out.into_iter().map(|(p, _)| p).collect()
}

fn health(cx: &mut Ctx<'_>, node: &Node, path: &str, ports: &[PortSpec]) -> HealthSpec {
    let mut h = HealthSpec::default();
    let Some(o) = cx.obj(node, path, &["readiness", "liveness", "startup"]) else {
        return h;
    };
    if let Some(n) = o.get("readiness") {
        h.readiness = probe(cx, n, &o.at("readiness"), ports, false);
    }
    if let Some(n) = o.get("liveness") {
        h.liveness = probe(cx, n, &o.at("liveness"), ports, true);
    }
    if let Some(n) = o.get("startup") {
        h.startup = probe(cx, n, &o.at("startup"), ports, true);
    }
    h
}

fn probe(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    ports: &[PortSpec],
    success_must_be_one: bool,
) -> Option<Probe> {
    let o = cx.obj(
        node,
        path,
        &[
            "http",
            "tcp",
            "exec",
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
        ],
    )?;
    let before = cx.diags.len();
    let kinds: Vec<&str> = ["http", "tcp", "exec"]
        .into_iter()
        .filter(|k| o.get(k).is_some())
        .collect();
    let action = match kinds.as_slice() {
        [] if o.unknown > 0 => None,
        [] => {
            cx.err_hint(
                o.pos,
                path,
                "a probe needs one of http, tcp or exec",
                "e.g. http: { path: /healthz, port: http }",
            );
            None
        }
        [k] => {
            let n = o.get(k)?;
            let p = o.at(k);
            match *k {
                "http" => cx.obj(n, &p, &["path", "port"]).and_then(|h| {
                    let hp = cx.required(&h, "path").and_then(|n| {
                        let s = cx.string(n, &h.at("path"))?;
                        if !s.starts_with('/') {
                            cx.err_hint(
                                n.pos,
                                &h.at("path"),
                                "must start with '/'",
                                format!("write \"/{s}\""),
                            );
                            return None;
                        }
                        Some(s)
                    });
                    let port = cx
                        .required(&h, "port")
                        .and_then(|n| port_ref(cx, n, &h.at("port"), ports));
                    Some(ProbeAction::Http {
                        path: hp?,
                        port: port?,
                    })
                }),
                "tcp" => cx.obj(n, &p, &["port"]).and_then(|t| {
                    let port = cx
                        .required(&t, "port")
                        .and_then(|n| port_ref(cx, n, &t.at("port"), ports));
                    Some(ProbeAction::Tcp { port: port? })
                }),
                _ => cx.obj(n, &p, &["command"]).and_then(|e| {
                    let c = cx.required(&e, "command")?;
                    let argv = cx.string_list(c, &e.at("command"))?;
                    if argv.first().is_none_or(|a| a.trim().is_empty()) {
                        cx.err(
                            c.pos,
                            &e.at("command"),
                            "the program (first element) must not be empty",
                        );
                        return None;
                    }
                    Some(ProbeAction::Exec { command: argv })
                }),
            }
        }
        _ => {
            let second = o.get(kinds[1]).map_or(o.pos, |n| n.pos);
            cx.err(
                second,
                &o.at(kinds[1]),
                format!(
                    "a probe has exactly one of http, tcp or exec (found {})",
                    kinds.join(" and ")
                ),
            );
            None
        }
    };
    let initial = opt_u32(cx, &o, "initialDelaySeconds", 0, 0, 3600);
    let period = opt_u32(cx, &o, "periodSeconds", 10, 1, 3600);
    let timeout = opt_u32(cx, &o, "timeoutSeconds", 1, 1, 3600);
    let success = opt_u32(cx, &o, "successThreshold", 1, 1, 100);
    let failure = opt_u32(cx, &o, "failureThreshold", 3, 1, 100);
    if success_must_be_one
        && let Some(s) = success
        && s != 1
        && let Some(n) = o.get("successThreshold")
    {
        cx.err(
            n.pos,
            &o.at("successThreshold"),
            "must be 1 for liveness and startup probes (one success is enough to stop restarting)",
        );
    }
    if cx.diags.len() > before {
        return None;
    }
    Some(Probe {
        action: action?,
        initial_delay_seconds: initial?,
        period_seconds: period?,
        timeout_seconds: timeout?,
        success_threshold: success?,
        failure_threshold: failure?,
    })
}

fn port_ref(cx: &mut Ctx<'_>, n: &Node, path: &str, ports: &[PortSpec]) -> Option<PortRef> {
    match &n.value {
        Value::Int(_) => cx.int(n, path, 1, 65535).map(|p| PortRef::Number(p as u16)),
        Value::Str(s) => {
            if ports.iter().any(|p| &p.name == s) {
                Some(PortRef::Name(s.clone()))
            } else {
                let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                let hint = match closest(s, &names) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None if names.is_empty() => {
                        "declare it under spec.ports or use a port number".into()
                    }
                    None => format!("declared ports: {}", names.join(", ")),
                };
                cx.err_hint(
                    n.pos,
                    path,
                    format!("no port named {s:?} in spec.ports"),
                    hint,
                );
                None
            }
        }
        other => {
            cx.err(
                n.pos,
                path,
                format!("expected a port name or number, found {}", other.kind()),
            );
            None
        }
    }
}

fn default_strategy() -> Strategy {
    Strategy::RollingUpdate {
        rolling_update: RollingUpdateParams {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
        },
    }
}

const STRATEGY_TYPES: &[&str] = &["RollingUpdate", "Recreate", "BlueGreen", "Canary"];

fn strategy(cx: &mut Ctx<'_>, node: &Node, path: &str, ports: &[PortSpec]) -> Option<Strategy> {
    let o = cx.obj(
        node,
        path,
        &["type", "rollingUpdate", "blueGreen", "canary"],
    )?;
    let ty = match o.get("type") {
        None => "RollingUpdate".to_string(),
        Some(n) => {
            let t = cx.string(n, &o.at("type"))?;
            if !STRATEGY_TYPES.contains(&t.as_str()) {
                let hint = match closest(&t, STRATEGY_TYPES) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => "use RollingUpdate, Recreate, BlueGreen or Canary".into(),
                };
                cx.err_hint(
                    n.pos,
                    &o.at("type"),
                    format!("unknown strategy type {t:?}"),
                    hint,
                );
                return None;
            }
            t
        }
    };
    // Parameters for another type are a mistake, not something to ignore.
    for (key, owner) in [
        ("rollingUpdate", "RollingUpdate"),
        ("blueGreen", "BlueGreen"),
        ("canary", "Canary"),
    ] {
        if owner != ty
            && let Some(n) = o.get(key)
        {
            cx.err_hint(
                n.pos,
                &o.at(key),
                format!("{key} parameters given, but the strategy type is {ty}"),
                format!("set type: {owner}, or remove {key}"),
            );
        }
    }
    match ty.as_str() {
        "Recreate" => Some(Strategy::Recreate),
        "Canary" => {
            let Some(n) = o.get("canary") else {
                cx.err_hint(
                    o.pos,
                    &o.at("canary.steps"),
                    "Canary needs steps",
                    "add canary: { steps: [{ setWeight: 10 }, { pause: { duration: 60s } }] }",
                );
                return None;
            };
            canary(cx, n, &o.at("canary")).map(|canary| Strategy::Canary { canary })
        }
        "RollingUpdate" => {
            let Some(n) = o.get("rollingUpdate") else {
                return Some(default_strategy());
            };
            let p = o.at("rollingUpdate");
            let ro = cx.obj(n, &p, &["maxSurge", "maxUnavailable"])?;
            let surge = match ro.get("maxSurge") {
                Some(n) => int_or_percent(cx, n, &ro.at("maxSurge"), None),
                None => Some(IntOrPercent::Percent(25)),
            };
            let unavailable = match ro.get("maxUnavailable") {
                Some(n) => int_or_percent(cx, n, &ro.at("maxUnavailable"), Some(100)),
                None => Some(IntOrPercent::Percent(25)),
            };
            let (surge, unavailable) = (surge?, unavailable?);
            let zero =
                |v: IntOrPercent| matches!(v, IntOrPercent::Int(0) | IntOrPercent::Percent(0));
            if zero(surge) && zero(unavailable) {
                let pos = ro
                    .get("maxUnavailable")
                    .or(ro.get("maxSurge"))
                    .map_or(ro.pos, |n| n.pos);
                cx.err_hint(
                    pos,
                    &ro.at("maxUnavailable"),
                    "maxSurge and maxUnavailable must not both be 0: the rollout could never replace an instance",
                    "allow a surge (maxSurge: 1) or some unavailability (maxUnavailable: 1)",
                );
                return None;
            }
            Some(Strategy::RollingUpdate {
                rolling_update: RollingUpdateParams {
                    max_surge: surge,
                    max_unavailable: unavailable,
                },
            })
        }
        _ => {
            let Some(n) = o.get("blueGreen") else {
                cx.err_hint(
                    o.pos,
                    &o.at("blueGreen.previewPort"),
                    "BlueGreen needs a previewPort",
                    "add blueGreen: { previewPort: 18081 } (where the new revision is served before promotion)",
                );
                return None;
            };
            let p = o.at("blueGreen");
            let bo = cx.obj(
                n,
                &p,
                &["previewPort", "autoPromote", "scaleDownDelaySeconds"],
            )?;
            let preview = cx.required(&bo, "previewPort").and_then(|n| {
                let v = cx.int(n, &bo.at("previewPort"), 1, 65535)? as u16;
                if ports.iter().any(|q| q.port == v) {
                    cx.err_hint(
                        n.pos,
                        &bo.at("previewPort"),
                        format!("previewPort {v} is also a service port"),
                        "preview traffic needs a port of its own",
                    );
                    return None;
                }
                Some(v)
            });
            let auto = opt_bool(cx, &bo, "autoPromote", true);
            let delay = match bo.get("scaleDownDelaySeconds") {
                Some(n) => cx.duration_secs(n, &bo.at("scaleDownDelaySeconds")),
                None => Some(30),
            };
            Some(Strategy::BlueGreen {
                blue_green: BlueGreenParams {
                    preview_port: Some(preview?),
                    auto_promote: auto?,
                    scale_down_delay_seconds: delay?,
                },
            })
        }
    }
}

const CANARY_STEP_KINDS: &[&str] = &["setWeight", "pause", "analysis"];

/// `strategy.canary`. Rules: at least one step; each step is one of
/// `setWeight` (0..=100), `pause` (`duration` optional) or `analysis` (`{}`);
/// weights never decrease (a canary only ramps up; `floyd abort` is the way
/// back); `match` items need at least one header.
fn canary(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<CanaryParams> {
    let before = cx.diags.len();
    let o = cx.obj(node, path, &["steps", "match", "mirror", "trafficRouting"])?;
    let mut steps = Vec::new();
    if let Some(n) = cx.required(&o, "steps")
        && let Some(items) = cx.list(n, &o.at("steps"))
    {
        if items.is_empty() {
            cx.err_hint(
                n.pos,
                &o.at("steps"),
                "a canary needs at least one step",
                "e.g. steps: [{ setWeight: 10 }, { pause: { duration: 60s } }]",
            );
        }
        let mut last: Option<(u32, usize)> = None;
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", o.at("steps"));
            let Some(so) = cx.obj(item, &ip, CANARY_STEP_KINDS) else {
                continue;
            };
            let kinds: Vec<&str> = CANARY_STEP_KINDS
                .iter()
                .copied()
                .filter(|k| so.fields_has(k))
                .collect();
            let step = match kinds.as_slice() {
                [] if so.unknown > 0 => None,
                [] => {
                    cx.err_hint(
                        so.pos,
                        &ip,
                        "a step needs one of setWeight, pause or analysis",
                        "e.g. - setWeight: 10",
                    );
                    None
                }
                ["setWeight"] => {
                    let wn = so.get("setWeight");
                    match wn {
                        None => {
                            cx.err(so.pos, &so.at("setWeight"), "expected a weight 0..100");
                            None
                        }
                        Some(wn) => {
                            let w = cx.u32_in(wn, &so.at("setWeight"), 0, 100);
                            if let (Some(w), Some((prev, at))) = (w, last)
                                && w < prev
                            {
                                cx.err_hint(
                                    wn.pos,
                                    &so.at("setWeight"),
                                    format!(
                                        "weight {w} is below the {prev} of step {at}: canary weights never decrease"
                                    ),
                                    "order the steps by weight; `floyd abort` sends all traffic back",
                                );
                            }
                            if let Some(w) = w {
                                last = Some((w, i));
                            }
                            w.map(CanaryStep::SetWeight)
                        }
                    }
                }
                ["pause"] => {
                    let pp = so.at("pause");
                    match so.get("pause") {
                        None => Some(CanaryStep::Pause(CanaryPause::default())),
                        Some(pn) => cx.obj(pn, &pp, &["duration"]).and_then(|po| {
                            let d = match po.get("duration") {
                                Some(dn) => Some(cx.duration_secs(dn, &po.at("duration"))?),
                                None => None,
                            };
                            Some(CanaryStep::Pause(CanaryPause {
                                duration_seconds: d,
                            }))
                        }),
                    }
                }
                ["analysis"] => {
                    let ap = so.at("analysis");
                    match so.get("analysis") {
                        Some(an) if an.value != Value::Map(Vec::new()) => {
                            cx.err_hint(
                                an.pos,
                                &ap,
                                "analysis takes no parameters: it checks spec.gates",
                                "write `- analysis: {}` and configure the checks under spec.gates",
                            );
                            None
                        }
                        _ => Some(CanaryStep::Analysis(CanaryAnalysis {})),
                    }
                }
                _ => {
                    let second = kinds.get(1).copied().unwrap_or("step");
                    let pos = so.get(second).map_or(so.pos, |n| n.pos);
                    cx.err_hint(
                        pos,
                        &so.at(second),
                        format!("a list item is one step (found {})", kinds.join(" and ")),
                        "write each step as its own `- ` item",
                    );
                    None
                }
            };
            steps.extend(step);
        }
    }
    let mut matches = Vec::new();
    if let Some(n) = o.get("match")
        && let Some(items) = cx.list(n, &o.at("match"))
    {
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{}[{i}]", o.at("match"));
            let Some(mo) = cx.obj(item, &ip, &["headers"]) else {
                continue;
            };
            let Some(hn) = cx.required(&mo, "headers") else {
                continue;
            };
            let hp = mo.at("headers");
            let Value::Map(entries) = &hn.value else {
                cx.err(
                    hn.pos,
                    &hp,
                    format!(
                        "expected a mapping of header: value, found {}",
                        hn.value.kind()
                    ),
                );
                continue;
            };
            if entries.is_empty() {
                cx.err_hint(
                    hn.pos,
                    &hp,
                    "a match needs at least one header",
                    "e.g. headers: { x-canary: \"true\" }",
                );
                continue;
            }
            let mut headers = BTreeMap::new();
            for (k, v) in entries {
                let Some(name) = k.key_text() else {
                    cx.err(k.pos, &hp, "header names must be strings");
                    continue;
                };
                let p = join(&hp, &name);
                if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    cx.err_hint(
                        k.pos,
                        &p,
                        format!("{name:?} is not a valid HTTP header name"),
                        "use letters, digits and '-', e.g. x-canary",
                    );
                    continue;
                }
                let Some(value) = cx.text(v, &p) else {
                    continue;
                };
                if hyper::header::HeaderValue::from_str(&value).is_err() {
                    cx.err_hint(
                        v.pos,
                        &p,
                        "not a valid HTTP header value",
                        "use visible ASCII characters",
                    );
                    continue;
                }
                headers.insert(name.to_ascii_lowercase(), value);
            }
            matches.push(CanaryMatch { headers });
        }
    }
    let mirror = opt_bool(cx, &o, "mirror", false);
    let mut traffic_routing = None;
    if let Some(n) = o.get("trafficRouting") {
        let tp = o.at("trafficRouting");
        if let Some(to) = cx.obj(n, &tp, &["gatewayAPI"])
            && let Some(gn) = cx.required(&to, "gatewayAPI")
            && let Some(go) = cx.obj(gn, &to.at("gatewayAPI"), &["httpRoute"])
            && let Some(rn) = cx.required(&go, "httpRoute")
            && let Some(route) = cx.nonempty_string(rn, &go.at("httpRoute"))
        {
            // An HTTPRoute name is a DNS-1123 subdomain; a bad one would
            // only fail at the first step, against the API server.
            let ok = route.len() <= 253
                && route.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')
                })
                && route.starts_with(|c: char| c.is_ascii_alphanumeric())
                && route.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                cx.err_hint(
                    rn.pos,
                    &go.at("httpRoute"),
                    format!("{route:?} is not a Kubernetes object name"),
                    "use the metadata.name of an HTTPRoute in Floyd's namespace: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
                );
            }
            traffic_routing = Some(TrafficRouting {
                gateway_api: GatewayApiRouting { http_route: route },
            });
        }
    }
    if cx.diags.len() > before {
        return None;
    }
    Some(CanaryParams {
        steps,
        matches,
        mirror: mirror?,
        traffic_routing,
    })
}

fn int_or_percent(
    cx: &mut Ctx<'_>,
    n: &Node,
    path: &str,
    max_pct: Option<u32>,
) -> Option<IntOrPercent> {
    match &n.value {
        Value::Int(_) => cx
            .u32_in(n, path, 0, i32::MAX as u32)
            .map(IntOrPercent::Int),
        Value::Str(s) => {
            let pct = s
                .trim()
                .strip_suffix('%')
                .and_then(|d| d.trim().parse::<u32>().ok());
            match pct {
                Some(p) if max_pct.is_none_or(|m| p <= m) => Some(IntOrPercent::Percent(p)),
                Some(p) => {
                    cx.err(n.pos, path, format!("must be at most 100% (is {p}%)"));
                    None
                }
                None => {
                    let hint = if s.trim().parse::<u32>().is_ok() {
                        "remove the quotes for a count, or add '%' for a percentage"
                    } else {
                        "write a count (`1`) or a percentage (`25%`)"
                    };
                    cx.err_hint(
                        n.pos,
                        path,
                        format!("{s:?} is neither an integer nor a percentage"),
                        hint,
                    );
                    None
                }
            }
        }
        other => {
            cx.err_hint(
                n.pos,
                path,
                format!(
                    "expected an integer or a percentage, found {}",
                    other.kind()
                ),
                "write a count (`1`) or a percentage (`25%`)",
            );
            None
        }
    }
}

const GATE_KINDS: &[&str] = &["successRate", "prometheus", "webhook"];

fn gates(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Vec<Gate> {
    let Some(items) = cx.list(node, path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(o) = cx.obj(item, &ip, GATE_KINDS) else {
            continue;
        };
        let kinds: Vec<&str> = GATE_KINDS
            .iter()
            .copied()
            .filter(|k| o.get(k).is_some())
            .collect();
        match kinds.as_slice() {
            [] if o.unknown > 0 => {}
            [] => cx.err_hint(
                o.pos,
                &ip,
                "a gate needs one of successRate, prometheus or webhook",
                "e.g. - successRate: { min: 0.99, window: 30s }",
            ),
            [k] => {
                let n = o.get(k).unwrap_or(item);
                if let Some(g) = gate(cx, k, n, &o.at(k)) {
                    out.push(g);
                }
            }
            _ => {
                let pos = o.get(kinds[1]).map_or(o.pos, |n| n.pos);
                cx.err_hint(
                    pos,
                    &o.at(kinds[1]),
                    format!("a list item is one gate (found {})", kinds.join(" and ")),
                    "write each gate as its own `- ` item",
                );
            }
        }
    }
    out
}

fn on_no_data(cx: &mut Ctx<'_>, o: &Obj<'_>) -> Option<OnNoData> {
    let Some(n) = o.get("onNoData") else {
        return Some(OnNoData::Wait);
    };
    let s = cx.string(n, &o.at("onNoData"))?;
    match s.as_str() {
        "wait" => Some(OnNoData::Wait),
        "pass" => Some(OnNoData::Pass),
        "fail" => Some(OnNoData::Fail),
        _ => {
            cx.err_hint(
                n.pos,
                &o.at("onNoData"),
                format!("unknown onNoData {s:?}"),
                "use wait (default), pass or fail",
            );
            None
        }
    }
}

fn http_url(cx: &mut Ctx<'_>, n: &Node, path: &str) -> Option<String> {
    let s = cx.nonempty_string(n, path)?;
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
        // The URL itself is not echoed: it may carry credentials.
        cx.err_hint(
            n.pos,
            path,
            "must be an http:// or https:// URL with a host",
            "e.g. http://127.0.0.1:9090",
        );
        return None;
    }
    Some(s)
}

fn gate(cx: &mut Ctx<'_>, kind: &str, node: &Node, path: &str) -> Option<Gate> {
    let before = cx.diags.len();
    match kind {
        "successRate" => {
            let o = cx.obj(node, path, &["min", "window", "onNoData"])?;
            let min = cx.required(&o, "min").and_then(|n| {
                let v = cx.number(n, &o.at("min"))?;
                if v <= 0.0 || v > 1.0 {
                    cx.err_hint(
                        n.pos,
                        &o.at("min"),
                        format!("must be in (0, 1] (is {v})"),
                        "a share of successful requests, e.g. 0.99",
                    );
                    return None;
                }
                Some(v)
            });
            let window = match o.get("window") {
                Some(n) => cx.duration_secs(n, &o.at("window")).and_then(|w| {
                    if w == 0 {
                        cx.err(n.pos, &o.at("window"), "must be at least 1s");
                        None
                    } else {
                        Some(w)
                    }
                }),
                None => Some(60),
            };
            let nd = on_no_data(cx, &o);
            if cx.diags.len() > before {
                return None;
            }
            Some(Gate::SuccessRate {
                min: min?,
                window_seconds: window?,
                on_no_data: nd?,
            })
        }
        "prometheus" => {
            let o = cx.obj(node, path, &["query", "address", "min", "max", "onNoData"])?;
            let query = cx
                .required(&o, "query")
                .and_then(|n| cx.nonempty_string(n, &o.at("query")));
            let address = o
                .get("address")
                .and_then(|n| http_url(cx, n, &o.at("address")));
            let min = o.get("min").and_then(|n| cx.number(n, &o.at("min")));
            let max = o.get("max").and_then(|n| cx.number(n, &o.at("max")));
            if o.get("min").is_none() && o.get("max").is_none() {
                cx.err_hint(
                    o.pos,
                    path,
                    "needs min, max or both",
                    "e.g. max: 0.01 for an error ratio",
                );
            }
            if let (Some(lo), Some(hi)) = (min, max)
                && lo > hi
            {
                let pos = o.get("max").map_or(o.pos, |n| n.pos);
                cx.err(
                    pos,
                    &o.at("max"),
                    format!("max ({hi}) is below min ({lo}): no result could pass"),
                );
            }
            let nd = on_no_data(cx, &o);
            if cx.diags.len() > before {
                return None;
            }
            Some(Gate::Prometheus {
                query: query?,
                address,
                min,
                max,
                on_no_data: nd?,
            })
        }
        _ => {
            let o = cx.obj(node, path, &["url", "timeoutSeconds", "onNoData"])?;
            let url = cx
                .required(&o, "url")
                .and_then(|n| http_url(cx, n, &o.at("url")));
            let timeout = opt_u32(cx, &o, "timeoutSeconds", 10, 1, 300);
            let nd = on_no_data(cx, &o);
            if cx.diags.len() > before {
                return None;
            }
            Some(Gate::Webhook {
                url: url?,
                timeout_seconds: timeout?,
                on_no_data: nd?,
            })
        }
    }
}

fn on_failure(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<OnFailure> {
    let o = cx.obj(node, path, &["rollback", "revert"])?;
    let rollback = opt_bool(cx, &o, "rollback", true);
    let revert = opt_bool(cx, &o, "revert", true);
    Some(OnFailure {
        rollback: rollback?,
        revert: revert?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [
            ("30", Some(30)),
            ("30s", Some(30)),
            ("2m", Some(120)),
            ("1h", Some(3600)),
            ("1m30s", Some(90)),
            ("1h2m3s", Some(3723)),
            ("", None),
            ("s", None),
            ("30x", None),
            ("30s1m", None),
            ("1m1m", None),
            ("-1", None),
            ("1.5s", None),
            ("99999999999h", None),
        ] {
            assert_eq!(parse_duration(s), want, "{s:?}");
        }
    }

    #[test]
    fn mig_profiles() {
        for (p, ok) in [
            ("1g.10gb", true),
            ("3g.40gb", true),
            ("1c.3g.40gb", true),
            ("1g.10gb+me", true),
            ("1g", false),
            ("g.10gb", false),
            ("1g.10", false),
            ("", false),
            ("1g.10gb.5", false),
        ] {
            assert_eq!(is_mig_profile(p), ok, "{p}");
        }
    }

    #[test]
    fn typo_hints() {
        assert_eq!(closest("replcas", SPEC_FIELDS), Some("replicas"));
        assert_eq!(closest("Replicas", SPEC_FIELDS), Some("replicas"));
        assert_eq!(closest("zzz", SPEC_FIELDS), None);
        assert_eq!(
            closest("rollingupdate", &["rollingUpdate", "blueGreen"]),
            Some("rollingUpdate")
        );
    }
}
