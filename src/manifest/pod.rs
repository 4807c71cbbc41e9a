//! `spec.template.kubernetes`: a pod template fragment decoded with the
//! Kubernetes API's own types (`k8s-openapi`'s `PodSpec`), straight from the
//! positioned YAML tree, so a mistyped or unknown field is reported like
//! every other manifest error: `file:line:col`, field path, what to do.
//!
//! The types' `Deserialize` impls skip fields they do not know (through
//! `IgnoredAny`); the deserializer here reports every such skip as an
//! unknown field, with the known names of that object for a "did you mean".

use super::decode::{Ctx, closest, join};
use super::model::{KubernetesPod, PodMetadata};
use super::yaml::{Node, Pos, Value};
use k8s_openapi::api::core::v1::PodSpec;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

/// The container Floyd's own fields (image, command, env, resources, probes,
/// ports) describe; a container of this name in the fragment is merged into
/// it rather than added beside it.
pub const MAIN_CONTAINER: &str = "app";

/// One problem found while deserializing: where, which field, what.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    pub pos: Pos,
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// The error type the deserializer speaks; the first node that sees an
/// error without a position gives it its own.
#[derive(Debug)]
pub(crate) struct DeError {
    at: Option<(Pos, String)>,
    message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for DeError {}
impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            at: None,
            message: msg.to_string(),
        }
    }
}

/// Deserializes `T` from `node`, whose field path is `path`. Unknown fields
/// are collected (decoding goes on); a type error stops at the first one.
pub(crate) fn from_node<T: de::DeserializeOwned>(
    node: &Node,
    path: &str,
) -> (Option<T>, Vec<Issue>) {
    let unknown = RefCell::new(Vec::new());
    let de = NodeDe {
        node,
        path: path.to_string(),
        key_pos: node.pos,
        known: &[],
        unknown: &unknown,
    };
    let result = T::deserialize(de);
    let mut issues = unknown.into_inner();
    let value = match result {
        Ok(v) => Some(v),
        Err(e) => {
            let (pos, path) = e.at.unwrap_or((node.pos, path.to_string()));
            let hint = e
                .message
                .contains("expected a string")
                .then(|| "quote the value".to_string());
            issues.push(Issue {
                pos,
                path,
                message: e.message,
                hint,
            });
            None
        }
    };
    (value, issues)
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    /// Where the key of this value is (unknown fields are reported there).
    key_pos: Pos,
    /// The fields of the struct this value is a field of.
    known: &'static [&'static str],
    unknown: &'a RefCell<Vec<Issue>>,
}

impl<'a> NodeDe<'a> {
    fn locate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|mut e| {
            if e.at.is_none() {
                e.at = Some((self.node.pos, self.path.clone()));
            }
            e
        })
    }

    fn visit_any<'de, V: Visitor<'de>>(
        &self,
        visitor: V,
        known: &'static [&'static str],
    ) -> Result<V::Value, DeError> {
        let r = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(v) => visitor.visit_i64(v),
                Err(_) => match u64::try_from(*i) {
                    Ok(v) => visitor.visit_u64(v),
                    Err(_) => visitor.visit_i128(*i),
                },
            },
            Value::Float(f) => visitor.visit_f64(*f),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqAcc {
                items: items.iter().enumerate(),
                path: &self.path,
                unknown: self.unknown,
            }),
            Value::Map(entries) => visitor.visit_map(MapAcc {
                entries: entries.iter(),
                value: None,
                path: &self.path,
                known,
                unknown: self.unknown,
            }),
        };
        self.locate(r)
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_any(visitor, &[])
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.value == Value::Null {
            let r = visitor.visit_none();
            return self.locate(r);
        }
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if !matches!(self.node.value, Value::Map(_)) {
            return Err(DeError {
                at: Some((self.node.pos, self.path.clone())),
                message: format!("expected a mapping, found {}", self.node.value.kind()),
            });
        }
        self.visit_any(visitor, fields)
    }

    /// The Kubernetes types skip fields they do not know through
    /// `IgnoredAny`: each one is an unknown field here.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let field = self.path.rsplit('.').next().unwrap_or_default();
        let hint = match closest(field, self.known) {
            Some(c) => format!("did you mean `{c}`?"),
            None if self.known.is_empty() => "remove it".to_string(),
            None => format!("known fields here: {}", self.known.join(", ")),
        };
        self.unknown.borrow_mut().push(Issue {
            pos: self.key_pos,
            path: self.path.clone(),
            message: "unknown field".into(),
            hint: Some(hint),
        });
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map enum identifier
    }
}

struct SeqAcc<'a, I> {
    items: I,
    path: &'a str,
    unknown: &'a RefCell<Vec<Issue>>,
}

impl<'de, 'a, I: Iterator<Item = (usize, &'a Node)>> de::SeqAccess<'de> for SeqAcc<'a, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, node)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(NodeDe {
            node,
            path: format!("{}[{i}]", self.path),
            key_pos: node.pos,
            known: &[],
            unknown: self.unknown,
        })
        .map(Some)
    }
}

struct MapAcc<'a, I> {
    entries: I,
    value: Option<(&'a Node, &'a Node)>,
    path: &'a str,
    known: &'static [&'static str],
    unknown: &'a RefCell<Vec<Issue>>,
}

impl<'de, 'a, I: Iterator<Item = &'a (Node, Node)>> de::MapAccess<'de> for MapAcc<'a, I> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((k, v)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((k, v));
        let Some(text) = k.key_text() else {
            return Err(DeError {
                at: Some((k.pos, self.path.to_string())),
                message: format!("keys must be strings, found {}", k.value.kind()),
            });
        };
        let key: de::value::StringDeserializer<DeError> = text.into_deserializer();
        seed.deserialize(key).map(Some).map_err(|mut e| {
            e.at.get_or_insert((k.pos, self.path.to_string()));
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((k, v)) = self.value.take() else {
            return Err(de::Error::custom("value without a key"));
        };
        let key = k.key_text().unwrap_or_default();
        seed.deserialize(NodeDe {
            node: v,
            path: join(self.path, &key),
            key_pos: k.pos,
            known: self.known,
            unknown: self.unknown,
        })
    }
}

/// The child of `node` at `key` (a mapping key) with its key's position.
fn child<'n>(node: &'n Node, key: &str) -> Option<(Pos, &'n Node)> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k.pos, v)),
        _ => None,
    }
}

fn item(node: &Node, i: usize) -> Option<&Node> {
    match &node.value {
        Value::Seq(items) => items.get(i),
        _ => None,
    }
}

fn string_map(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
    let (v, issues) = from_node::<BTreeMap<String, String>>(node, path);
    report(cx, issues);
    v
}

fn report(cx: &mut Ctx<'_>, issues: Vec<Issue>) {
    for i in issues {
        match i.hint {
            Some(h) => cx.err_hint(i.pos, &i.path, i.message, h),
            None => cx.err(i.pos, &i.path, i.message),
        }
    }
}

/// A DNS-1123 label, as container names must be.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Decodes `spec.template.kubernetes` at `path`. `floyd_env` is the env of
/// Floyd's own `env` field: the main container's env in the fragment must
/// not name any of them (nor `PORT`).
pub(crate) fn kubernetes(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    floyd_env: &BTreeMap<String, String>,
) -> Option<KubernetesPod> {
    let before = cx.diags.len();
    let o = cx.obj(node, path, &["metadata", "spec"])?;
    let mut pod = KubernetesPod::default();
    if let Some(m) = o.get("metadata") {
        let mp = o.at("metadata");
        if let Some(meta) = cx.obj(m, &mp, &["labels", "annotations"]) {
            let mut md = PodMetadata::default();
            if let Some(n) = meta.get("labels") {
                md.labels = string_map(cx, n, &meta.at("labels")).unwrap_or_default();
            }
            if let Some(n) = meta.get("annotations") {
                md.annotations = string_map(cx, n, &meta.at("annotations")).unwrap_or_default();
            }
            pod.metadata = md;
        }
    }
    if let Some(n) = o.get("spec") {
        let sp = o.at("spec");
        let (spec, issues) = from_node::<PodSpec>(n, &sp);
        report(cx, issues);
        if let Some(spec) = spec {
            check_spec(cx, n, &sp, &spec, floyd_env);
            pod.spec = spec;
        }
    }
    (cx.diags.len() == before).then_some(pod)
}

/// What the types cannot say: names the API server requires, fields Floyd
/// owns, env names given twice.
fn check_spec(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: &str,
    spec: &PodSpec,
    floyd_env: &BTreeMap<String, String>,
) {
    if let Some((pos, _)) = child(node, "terminationGracePeriodSeconds") {
        cx.err_hint(
            pos,
            &join(path, "terminationGracePeriodSeconds"),
            "set by Floyd",
            "use spec.template.terminationGracePeriodSeconds",
        );
    }
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    let lists = [
        ("containers", Some(&spec.containers)),
        ("initContainers", spec.init_containers.as_ref()),
    ];
    for (list, containers) in lists {
        let Some(containers) = containers else {
            continue;
        };
        let list_node = child(node, list).map(|(_, n)| n);
        for (i, c) in containers.iter().enumerate() {
            let cpath = format!("{}[{i}]", join(path, list));
            let c_node = list_node.and_then(|l| item(l, i));
            let name_pos = c_node
                .and_then(|n| child(n, "name"))
                .map(|(p, _)| p)
                .or(c_node.map(|n| n.pos))
                .unwrap_or(node.pos);
            let main = list == "containers" && c.name == MAIN_CONTAINER;
            if c.name.is_empty() {
                cx.err_hint(
                    name_pos,
                    &join(&cpath, "name"),
                    "required field is missing",
                    "every container needs a name (a DNS label such as `log-shipper`)",
                );
            } else if !dns_label(&c.name) {
                cx.err_hint(
                    name_pos,
                    &join(&cpath, "name"),
                    format!("invalid container name {:?}", c.name),
                    "use a DNS label: lowercase letters, digits and '-'",
                );
            } else if let Some(first) = seen.get(c.name.as_str()) {
                cx.err(
                    name_pos,
                    &join(&cpath, "name"),
                    format!("container name {:?} is already used by {first}", c.name),
                );
            } else if list == "initContainers" && c.name == MAIN_CONTAINER {
                cx.err_hint(
                    name_pos,
                    &join(&cpath, "name"),
                    format!("{MAIN_CONTAINER:?} is the name of Floyd's main container"),
                    "give the init container another name",
                );
            } else {
                seen.insert(&c.name, cpath.clone());
            }
            if !main && c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
                cx.err_hint(
                    c_node.map_or(node.pos, |n| n.pos),
                    &join(&cpath, "image"),
                    "required field is missing",
                    format!(
                        "only the main container ({MAIN_CONTAINER:?}) takes its image from spec.template.image"
                    ),
                );
            }
            if main {
                check_main_env(cx, c_node, &cpath, c, floyd_env);
            }
        }
    }
}

/// The main container's env in the fragment adds to Floyd's `env`; a name
/// in both would leave one of the two values unused, so it is an error.
fn check_main_env(
    cx: &mut Ctx<'_>,
    c_node: Option<&Node>,
    cpath: &str,
    c: &k8s_openapi::api::core::v1::Container,
    floyd_env: &BTreeMap<String, String>,
) {
    let env_node = c_node.and_then(|n| child(n, "env")).map(|(_, n)| n);
    for (j, e) in c.env.iter().flatten().enumerate() {
        let p = format!("{cpath}.env[{j}].name");
        let pos = env_node
            .and_then(|l| item(l, j))
            .and_then(|n| child(n, "name"))
            .map(|(_, v)| v.pos)
            .or(c_node.map(|n| n.pos))
            .unwrap_or_default();
        if e.name == "PORT" {
            cx.err_hint(
                pos,
                &p,
                "PORT is assigned by the runtime to each instance",
                "refer to it as $(PORT) instead",
            );
        } else if floyd_env.contains_key(&e.name) {
            cx.err_hint(
                pos,
                &p,
                format!("{} is also set in spec.template.env", e.name),
                "set each variable in one place: literal values in spec.template.env, valueFrom here",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{Error, Service, parse_service, revision_of};
    use std::path::Path;

    /// A service whose `spec.template.kubernetes` is `fragment`, written
    /// from line 9, column 7 on.
    fn service(fragment: &str) -> String {
        let body: String = fragment.lines().map(|l| format!("      {l}\n")).collect();
        format!(
            "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: web }}\nspec:\n  template:\n    image: ghcr.io/acme/web:1\n    env: {{ LOG: info }}\n    kubernetes:\n{body}"
        )
    }

    fn parse(fragment: &str) -> Result<Service, Vec<String>> {
        parse_service(&service(fragment), Path::new("svc.yaml")).map_err(|e| match e {
            Error::Invalid(d) => d.iter().map(|d| d.to_string()).collect(),
            other => vec![other.to_string()],
        })
    }

    const K: &str = "svc.yaml";
    const P: &str = "spec.template.kubernetes";

    #[test]
    fn bad_fragments_are_errors_at_their_position() {
        let cases: &[(&str, &str)] = &[
            (
                "spec:\n  serviceAcountName: api",
                "10:9: spec.template.kubernetes.spec.serviceAcountName: unknown field (hint: did you mean `serviceAccountName`?)",
            ),
            (
                "spec:\n  tolerations:\n    - { key: dedicated, operater: Exists }",
                "11:31: spec.template.kubernetes.spec.tolerations[0].operater: unknown field (hint: did you mean `operator`?)",
            ),
            (
                "spec:\n  containers:\n    - name: shipper\n      image: busybox\n      env:\n        - name: A\n          value: 5",
                "15:24: spec.template.kubernetes.spec.containers[0].env[0].value: invalid type: integer `5`, expected a string (hint: quote the value)",
            ),
            (
                "spec:\n  tolerations: { key: a }",
                "10:22: spec.template.kubernetes.spec.tolerations: invalid type: map, expected a sequence",
            ),
            (
                "spec:\n  containers:\n    - name: shipper",
                "11:13: spec.template.kubernetes.spec.containers[0].image: required field is missing (hint: only the main container (\"app\") takes its image from spec.template.image)",
            ),
            (
                "spec:\n  containers:\n    - image: busybox",
                "11:13: spec.template.kubernetes.spec.containers[0].name: required field is missing (hint: every container needs a name (a DNS label such as `log-shipper`))",
            ),
            (
                "spec:\n  initContainers: [{ name: app, image: busybox }]",
                "10:28: spec.template.kubernetes.spec.initContainers[0].name: \"app\" is the name of Floyd's main container (hint: give the init container another name)",
            ),
            (
                "spec:\n  containers:\n    - name: app\n      env: [{ name: LOG, value: debug }]",
                "12:27: spec.template.kubernetes.spec.containers[0].env[0].name: LOG is also set in spec.template.env (hint: set each variable in one place: literal values in spec.template.env, valueFrom here)",
            ),
            (
                "spec:\n  terminationGracePeriodSeconds: 5",
                "10:9: spec.template.kubernetes.spec.terminationGracePeriodSeconds: set by Floyd (hint: use spec.template.terminationGracePeriodSeconds)",
            ),
            (
                "metadata:\n  name: web-pod",
                "10:9: spec.template.kubernetes.metadata.name: unknown field (hint: known fields here: labels, annotations)",
            ),
            (
                "metadata:\n  labels: { tier: 5 }",
                "10:25: spec.template.kubernetes.metadata.labels.tier: invalid type: integer `5`, expected a string (hint: quote the value)",
            ),
            (
                "spec:\n  securityContext: { runAsUser: root }",
                "10:39: spec.template.kubernetes.spec.securityContext.runAsUser: invalid type: string \"root\", expected i64",
            ),
            (
                "pod: {}",
                "9:7: spec.template.kubernetes.pod: unknown field (hint: known fields here: metadata, spec)",
            ),
        ];
        let mut wrong = Vec::new();
        for (fragment, want) in cases {
            let errs = parse(fragment).expect_err(fragment);
            if errs != vec![format!("{K}:{want}")] {
                wrong.push(format!("fragment:\n{fragment}\nwant {want}\ngot  {errs:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }

    #[test]
    fn every_unknown_field_is_reported() {
        let errs = parse("spec:\n  hostname: a\n  nodeSelectr: {}\n  containers:\n    - { name: s, image: b, imagePullPolice: Always }").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with(&format!("{K}:11:9: {P}.spec.nodeSelectr: unknown field")));
        assert!(errs[1].starts_with(&format!("{K}:13:34: {P}.spec.containers[0].imagePullPolice: unknown field (hint: did you mean `imagePullPolicy`?)")));
    }

    const GOOD: &str = r#"metadata:
  labels: { tier: web, team: payments }
  annotations: { prometheus.io/scrape: "true" }
spec:
  serviceAccountName: web
  priorityClassName: high
  imagePullSecrets: [{ name: registry }]
  nodeSelector: { disktype: ssd }
  securityContext: { runAsNonRoot: true, fsGroup: 2000 }
  tolerations:
    - { key: dedicated, operator: Equal, value: web, effect: NoSchedule }
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: { matchLabels: { tier: web } }
  topologySpreadConstraints:
    - { maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway }
  volumes:
    - name: config
      configMap: { name: web-config }
  initContainers:
    - { name: migrate, image: "ghcr.io/acme/migrate:1", command: [migrate, up] }
  containers:
    - name: app
      securityContext: { readOnlyRootFilesystem: true }
      volumeMounts: [{ name: config, mountPath: /etc/web }]
      envFrom: [{ configMapRef: { name: web-env } }]
      env:
        - name: DB_PASSWORD
          valueFrom: { secretKeyRef: { name: db, key: password } }
        - name: POD_NAME
          valueFrom: { fieldRef: { fieldPath: metadata.name } }
        - name: MODE
          valueFrom: { configMapKeyRef: { name: web-config, key: mode } }
    - name: log-shipper
      image: fluent/fluent-bit:3
      resources: { requests: { cpu: 50m, memory: 64Mi } }
"#;

    #[test]
    fn a_full_fragment_decodes_into_the_kubernetes_types() {
        let s = parse(GOOD).unwrap();
        let k = s.spec.template.kubernetes.as_deref().unwrap();
        assert_eq!(k.metadata.labels["team"], "payments");
        assert_eq!(k.metadata.annotations["prometheus.io/scrape"], "true");
        let spec = &k.spec;
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
        assert_eq!(spec.security_context.as_ref().unwrap().fs_group, Some(2000));
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].value.as_deref(),
            Some("web")
        );
        assert_eq!(spec.containers.len(), 2);
        let app = &spec.containers[0];
        let env = app.env.as_ref().unwrap();
        let secret = env[0]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("db", "password")
        );
        assert_eq!(
            env[1]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let cm = spec.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap();
        assert_eq!(cm.name, "web-config");
        let sidecar = &spec.containers[1];
        let cpu = &sidecar
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["cpu"];
        assert_eq!(cpu.0, "50m");
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "migrate");
    }

    #[test]
    fn key_order_does_not_change_the_revision_but_values_do() {
        let a = parse(GOOD).unwrap();
        let reordered = r#"spec:
  containers:
    - env:
        - valueFrom: { secretKeyRef: { key: password, name: db } }
          name: DB_PASSWORD
        - name: POD_NAME
          valueFrom: { fieldRef: { fieldPath: metadata.name } }
        - valueFrom: { configMapKeyRef: { key: mode, name: web-config } }
          name: MODE
      envFrom: [{ configMapRef: { name: web-env } }]
      volumeMounts: [{ mountPath: /etc/web, name: config }]
      securityContext: { readOnlyRootFilesystem: true }
      name: app
    - resources: { requests: { memory: 64Mi, cpu: 50m } }
      image: fluent/fluent-bit:3
      name: log-shipper
  initContainers:
    - { command: [migrate, up], image: "ghcr.io/acme/migrate:1", name: migrate }
  volumes:
    - configMap: { name: web-config }
      name: config
  topologySpreadConstraints:
    - { whenUnsatisfiable: ScheduleAnyway, topologyKey: topology.kubernetes.io/zone, maxSkew: 1 }
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - podAffinityTerm:
            labelSelector: { matchLabels: { tier: web } }
            topologyKey: kubernetes.io/hostname
          weight: 100
  tolerations:
    - { effect: NoSchedule, value: web, operator: Equal, key: dedicated }
  securityContext: { fsGroup: 2000, runAsNonRoot: true }
  nodeSelector: { disktype: ssd }
  imagePullSecrets: [{ name: registry }]
  priorityClassName: high
  serviceAccountName: web
metadata:
  annotations: { prometheus.io/scrape: "true" }
  labels: { team: payments, tier: web }
"#;
        let b = parse(reordered).unwrap();
        assert_eq!(a.spec.template, b.spec.template);
        assert_eq!(a.revision, b.revision);
        assert_eq!(a.revision, revision_of(&b.spec.template));
        let changed = parse(&GOOD.replace("fsGroup: 2000", "fsGroup: 2001")).unwrap();
        assert_ne!(a.revision, changed.revision);
        let label = parse(&GOOD.replace("team: payments", "team: billing")).unwrap();
        assert_ne!(a.revision, label.revision);
        // No fragment: the revision is what it was before the field existed.
        let plain = parse_service(
            &service("").replace("    kubernetes:\n", ""),
            Path::new("svc.yaml"),
        )
        .unwrap();
        let mut t = plain.spec.template.clone();
        assert!(t.kubernetes.is_none());
        assert_eq!(plain.revision, revision_of(&t));
        t.kubernetes = Some(Box::default());
        assert_ne!(plain.revision, revision_of(&t));
    }

    #[test]
    fn autoscaling_decodes_and_its_errors_have_positions() {
        let doc = |a: &str| {
            format!(
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: web }}\nspec:\n  template: {{ image: x }}\n  autoscaling: {a}\n"
            )
        };
        let p = |a: &str| {
            parse_service(&doc(a), Path::new("svc.yaml")).map_err(|e| match e {
                Error::Invalid(d) => d.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                other => vec![other.to_string()],
            })
        };
        let s =
            p("{ minReplicas: 2, maxReplicas: 5, targetCPUUtilizationPercentage: 70 }").unwrap();
        let a = s.spec.autoscaling.clone().unwrap();
        assert_eq!(
            (
                a.min_replicas,
                a.max_replicas,
                a.target_cpu_utilization_percentage
            ),
            (2, 5, Some(70))
        );
        let s2 = p("{ maxReplicas: 5, metric: { name: rps, averageValue: 100 } }").unwrap();
        assert_eq!(
            s2.spec.autoscaling.unwrap().metric.unwrap().average_value,
            "100"
        );
        assert_eq!(s.revision, s2.revision, "not part of the revision");
        for (a, want) in [
            (
                "{ minReplicas: 3, maxReplicas: 2, targetCPUUtilizationPercentage: 70 }",
                "svc.yaml:6:47: spec.autoscaling.maxReplicas: must be at least minReplicas (2 < 3)",
            ),
            (
                "{ maxReplicas: 2 }",
                "svc.yaml:6:16: spec.autoscaling: needs a target (hint: set one of targetCPUUtilizationPercentage (e.g. 70) or metric: { name, averageValue })",
            ),
            (
                "{ targetCPUUtilizationPercentage: 70 }",
                "svc.yaml:6:16: spec.autoscaling.maxReplicas: required field is missing",
            ),
            (
                "{ maxReplicas: 2, targetCPUUtilisationPercentage: 70 }",
                "svc.yaml:6:34: spec.autoscaling.targetCPUUtilisationPercentage: unknown field (hint: did you mean `targetCPUUtilizationPercentage`?)",
            ),
        ] {
            let errs = p(a).unwrap_err();
            assert_eq!(
                errs.first().map(String::as_str),
                Some(want),
                "{a}: {errs:?}"
            );
        }
    }

    #[test]
    fn env_value_from_is_a_reference_in_the_template() {
        let doc = |env: &str| {
            format!(
                "apiVersion: floyd.dev/v1\nkind: Service\nmetadata: {{ name: web }}\nspec:\n  template:\n    command: [x]\n    env:\n{env}"
            )
        };
        let p = |env: &str| {
            parse_service(&doc(env), Path::new("svc.yaml")).map_err(|e| match e {
                Error::Invalid(d) => d.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                other => vec![other.to_string()],
            })
        };
        let s = p("      LOG: info\n      DB: { valueFrom: { file: /run/secrets/db } }\n      KEY: { valueFrom: { env: API_KEY } }\n").unwrap();
        let t = &s.spec.template;
        assert_eq!(t.env.len(), 1);
        assert_eq!(
            t.env_from["DB"],
            crate::manifest::EnvSource::File("/run/secrets/db".into())
        );
        assert_eq!(
            t.env_from["KEY"],
            crate::manifest::EnvSource::Env("API_KEY".into())
        );
        // The manifest form, and back.
        let json = serde_json::to_value(t).unwrap();
        assert_eq!(
            json["env"]["DB"],
            serde_json::json!({"valueFrom": {"file": "/run/secrets/db"}})
        );
        assert_eq!(json["env"]["LOG"], "info");
        let back: crate::manifest::InstanceTemplate = serde_json::from_value(json).unwrap();
        assert_eq!(&back, t);
        // Another file is another revision (a rename rolls; see docs for a changed secret).
        let other = p("      LOG: info\n      DB: { valueFrom: { file: /run/secrets/db-2 } }\n      KEY: { valueFrom: { env: API_KEY } }\n").unwrap();
        assert_ne!(s.revision, other.revision);
        for (env, want) in [
            (
                "      DB: { valueFrom: { file: secrets/db } }\n",
                "svc.yaml:8:32: spec.template.env.DB.valueFrom.file: must be an absolute path (hint: the file is read on the controller's machine, e.g. /run/secrets/db-password)",
            ),
            (
                "      DB: { valueFrom: { file: /a, env: B } }\n",
                "svc.yaml:8:24: spec.template.env.DB.valueFrom: needs exactly one of file and env (hint: valueFrom: { file: /run/secrets/db-password } or valueFrom: { env: DB_PASSWORD })",
            ),
            (
                "      DB: { valueFrom: { secretKeyRef: { name: a, key: b } } }\n",
                "svc.yaml:8:26: spec.template.env.DB.valueFrom.secretKeyRef: unknown field (hint: known fields here: file, env)",
            ),
        ] {
            let errs = p(env).unwrap_err();
            assert_eq!(
                errs.first().map(String::as_str),
                Some(want),
                "{env}: {errs:?}"
            );
        }
    }
}
