//! Checks requests against GitHub's official OpenAPI description (npm
//! `@octokit/openapi`, installed under `./.tools/octokit` by
//! `scripts/install-octokit-openapi.sh`, which `scripts/test.sh` runs):
//! the path must be one of the spec's paths, the method one of its
//! operations, every query parameter declared (with an allowed value), and
//! the JSON body valid against the operation's request-body schema. Stricter
//! than the spec in one way: a body property the schema does not declare is
//! an error (it would be a typo GitHub silently ignores).
//!
//! Without the spec the check is skipped with a message, unless `CI` is
//! set, where a missing spec fails the test.

use serde_json::Value;
use std::path::PathBuf;

pub struct Spec {
    doc: Value,
}

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/octokit/node_modules/@octokit/openapi/generated/api.github.com.json")
}

impl Spec {
    pub fn load() -> Option<Spec> {
        let p = spec_path();
        match std::fs::read(&p) {
            Ok(b) => Some(Spec {
                doc: serde_json::from_slice(&b).expect("the OpenAPI description is JSON"),
            }),
            Err(_) if std::env::var_os("CI").is_some() => panic!(
                "{} is missing; under CI it is required (run scripts/install-octokit-openapi.sh)",
                p.display()
            ),
            Err(_) => {
                eprintln!(
                    "SKIPPED: {} not found; run `bash scripts/install-octokit-openapi.sh` to validate GitHub requests",
                    p.display()
                );
                None
            }
        }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let mut at = &self.doc;
            for part in r.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            v = at;
        }
        v
    }

    /// `uri`: the path below the API base, with its query.
    pub fn check(&self, method: &str, uri: &str, body: &Value) -> Result<(), String> {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let paths = self.doc["paths"].as_object().expect("paths");
        let mut best: Option<(&String, usize)> = None;
        for t in paths.keys() {
            let ts: Vec<&str> = t.trim_matches('/').split('/').collect();
            if ts.len() != segs.len() {
                continue;
            }
            let mut literal = 0;
            let ok = ts.iter().zip(&segs).all(|(t, s)| {
                if t.starts_with('{') {
                    !s.is_empty()
                } else {
                    literal += 1;
                    t == s
                }
            });
            if ok && best.is_none_or(|(_, l)| literal > l) {
                best = Some((t, literal));
            }
        }
        let Some((template, _)) = best else {
            return Err(format!("{method} {path}: no such path in GitHub's API"));
        };
        let item = &paths[template];
        let op = item
            .get(method.to_ascii_lowercase())
            .ok_or_else(|| format!("{method} {template}: no such operation"))?;
        let params: Vec<&Value> = item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .map(|p| self.resolve(p))
            .collect();
        let mut given = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let p = params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == k)
                .ok_or_else(|| format!("{method} {template}: undeclared query parameter {k}"))?;
            let schema = self.resolve(&p["schema"]);
            let v = percent_decode(v);
            let value = match schema["type"].as_str() {
                Some("integer") => Value::from(
                    v.parse::<i64>()
                        .map_err(|_| format!("{method} {template}: ?{k}={v} is not an integer"))?,
                ),
                Some("boolean") => Value::from(v == "true"),
                _ => Value::from(v),
            };
            self.validate(schema, &value, &format!("?{k}"))
                .map_err(|e| format!("{method} {template}: {e}"))?;
            given.push(k.to_string());
        }
        for p in &params {
            if p["in"] == "query"
                && p["required"] == true
                && !given.iter().any(|g| p["name"] == g.as_str())
            {
                return Err(format!(
                    "{method} {template}: required query parameter {} missing",
                    p["name"]
                ));
            }
        }
        match op.get("requestBody").map(|b| self.resolve(b)) {
            None if body.is_null() => Ok(()),
            None => Err(format!("{method} {template}: takes no body, got {body}")),
            Some(_) if body.is_null() => {
                if op["requestBody"]["required"] == true {
                    Err(format!("{method} {template}: a body is required"))
                } else {
                    Ok(())
                }
            }
            Some(rb) => {
                let schema = &rb["content"]["application/json"]["schema"];
                self.validate(schema, body, "body")
                    .map_err(|e| format!("{method} {template}: {e}"))
            }
        }
    }

    fn validate(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(schema);
        if let Some(all) = s["allOf"].as_array() {
            for sub in all {
                self.validate(sub, v, at)?;
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = s[key].as_array() {
                let errs: Vec<String> = alts
                    .iter()
                    .filter_map(|a| self.validate(a, v, at).err())
                    .collect();
                if errs.len() == alts.len() {
                    return Err(format!("{at}: matches none of {key}: {}", errs.join(" | ")));
                }
            }
        }
        if v.is_null() && s["nullable"] == true {
            return Ok(());
        }
        let types: Vec<&str> = match &s["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !types.is_empty() {
            let actual = match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let ok = types
                .iter()
                .any(|t| *t == actual || (*t == "number" && actual == "integer"));
            if !ok {
                return Err(format!("{at}: expected {types:?}, got {actual} {v}"));
            }
        }
        if let Some(e) = s["enum"].as_array()
            && !e.contains(v)
        {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
        if let (Some(max), Some(st)) = (s["maxLength"].as_u64(), v.as_str())
            && st.chars().count() as u64 > max
        {
            return Err(format!("{at}: longer than {max} characters"));
        }
        match v {
            Value::Object(o) if s.get("properties").is_some() || s.get("required").is_some() => {
                for r in s["required"].as_array().into_iter().flatten() {
                    let r = r.as_str().unwrap_or("");
                    if !o.contains_key(r) {
                        return Err(format!("{at}: required property {r} missing"));
                    }
                }
                let props = s["properties"].as_object();
                for (k, val) in o {
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => self.validate(ps, val, &format!("{at}.{k}"))?,
                        None if s.get("additionalProperties").is_some_and(|a| a != false) => {}
                        None => return Err(format!("{at}: undeclared property {k}")),
                    }
                }
                Ok(())
            }
            Value::Array(a) => {
                if let Some(min) = s["minItems"].as_u64()
                    && (a.len() as u64) < min
                {
                    return Err(format!("{at}: fewer than {min} items"));
                }
                if let Some(items) = s.get("items") {
                    for (i, x) in a.iter().enumerate() {
                        self.validate(items, x, &format!("{at}[{i}]"))?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len() + 1
            && let Ok(x) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16)
        {
            out.push(x);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The validator itself rejects what it must (so a pass means something).
#[test]
fn openapi_validator_rejects_wrong_requests() {
    let Some(spec) = Spec::load() else { return };
    let ok = serde_json::json!({"title": "t", "head": "h", "base": "main", "body": "b"});
    spec.check("POST", "/repos/acme/cfg/pulls", &ok).unwrap();
    let cases = [
        ("POST", "/repos/acme/cfg/pullz", ok.clone(), "no such path"),
        (
            "DELETE",
            "/repos/acme/cfg/pulls",
            ok.clone(),
            "no such operation",
        ),
        (
            "POST",
            "/repos/acme/cfg/pulls",
            serde_json::json!({"title": 5, "head": "h", "base": "main"}),
            "expected",
        ),
        (
            "POST",
            "/repos/acme/cfg/pulls",
            serde_json::json!({"title": "t", "head": "h", "base": "main", "labels": ["x"]}),
            "undeclared property labels",
        ),
        (
            "POST",
            "/repos/acme/cfg/statuses/abc",
            serde_json::json!({"state": "failed", "context": "floyd/web"}),
            "is not one of",
        ),
        (
            "GET",
            "/repos/acme/cfg/pulls?state=opened",
            serde_json::Value::Null,
            "is not one of",
        ),
        (
            "GET",
            "/repos/acme/cfg/pulls?colour=red",
            serde_json::Value::Null,
            "undeclared query parameter",
        ),
    ];
    for (m, uri, body, want) in cases {
        let e = spec.check(m, uri, &body).unwrap_err();
        assert!(e.contains(want), "{m} {uri}: {e}");
    }
}
