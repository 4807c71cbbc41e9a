//! Canary traffic through a Gateway API `HTTPRoute`
//! (`strategy.canary.trafficRouting.gatewayAPI.httpRoute`).
//!
//! Floyd owns two Services per canary service: `<service>-stable` and
//! `<service>-canary` (annotation `floyd.dev/role` `stable` / `canary`,
//! the install's identity labels), each selecting the pods of one revision
//! while a canary runs; once it is settled the stable Service selects every
//! revision of the service (there is one) and the canary Service gets weight 0.
//!
//! The HTTPRoute is the user's: Floyd never creates or deletes it and changes
//! nothing in it but the `backendRefs` of the rules that refer to
//! `<service>-stable` or `<service>-canary`: there these two refs get the
//! weights `100 − w` and `w` (the canary ref is added beside the stable one
//! when the user wrote only that). The change is a JSON Patch that first
//! tests each rewritten list against what was read, so a concurrent edit of
//! the route makes the patch fail (and the next step retry) rather than be
//! overwritten.
//!
//! [`route_patch`] is the pure part: given the route as read, the patch to
//! send (or none when the weights are already right).

use super::objects::Install;
use super::{Error, KubeRuntime, api_err};
use crate::manifest::{Revision, ServiceName, ServiceSpec, Strategy};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

/// The API group of `HTTPRoute`.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The version Floyd reads and patches.
pub const GATEWAY_VERSION: &str = "v1";

/// `<service>-stable`: the Service of the stable revision.
pub fn stable_service_name(service: &ServiceName) -> String {
    format!("{service}-stable")
}
/// `<service>-canary`: the Service of the canary revision.
pub fn canary_service_name(service: &ServiceName) -> String {
    format!("{service}-canary")
}

/// The HTTPRoute a canary spec routes through, if any.
pub fn http_route(spec: &ServiceSpec) -> Option<&str> {
    match &spec.strategy {
        Strategy::Canary { canary } => canary
            .traffic_routing
            .as_ref()
            .map(|t| t.gateway_api.http_route.as_str()),
        _ => None,
    }
}

/// The `stable` or `canary` Service of `service`, selecting `revision`'s
/// pods (every revision of the service when `None`).
pub fn role_service(
    install: Install<'_>,
    service: &ServiceName,
    spec: &ServiceSpec,
    role: &'static str,
    revision: Option<&Revision>,
) -> Service {
    let name = if role == "canary" {
        canary_service_name(service)
    } else {
        stable_service_name(service)
    };
    super::objects::routed_service(install, service, spec, name, role, revision)
}

/// Whether `r` is a backendRef to the Service `name` in the route's own namespace.
fn refers_to(r: &Value, name: &str, namespace: &str) -> bool {
    let group_ok = r
        .get("group")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let kind_ok = r
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(|k| k == "Service");
    let ns_ok = r
        .get("namespace")
        .and_then(Value::as_str)
        .is_none_or(|n| n == namespace);
    group_ok && kind_ok && ns_ok && r.get("name").and_then(Value::as_str) == Some(name)
}

/// The JSON Patch (RFC 6902) that gives the stable and canary refs of
/// `route` (an HTTPRoute as read) the weights `100 − weight` and `weight`;
/// `Ok(None)` when they already have them. Every rule that refers to either
/// Service gets both refs, in place of the first one, with the port (and any
/// other field) of the ref the user wrote; other refs are left alone.
/// Errors say what is wrong with the route and how to fix it.
pub fn route_patch(
    route: &Value,
    service: &ServiceName,
    namespace: &str,
    weight: u32,
) -> Result<Option<Value>, String> {
    let stable = stable_service_name(service);
    let canary = canary_service_name(service);
    let weight = weight.min(100);
    let rules = route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut ops = Vec::new();
    let mut found = false;
    for (i, rule) in rules.iter().enumerate() {
        let refs = rule
            .get("backendRefs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ours = |r: &Value| refers_to(r, &stable, namespace) || refers_to(r, &canary, namespace);
        let Some(first) = refs.iter().position(ours) else {
            continue;
        };
        found = true;
        let template = refs
            .iter()
            .find(|r| refers_to(r, &stable, namespace))
            .unwrap_or(&refs[first]);
        let with = |name: &str, w: u32| {
            let mut r = refs
                .iter()
                .find(|r| refers_to(r, name, namespace))
                .unwrap_or(template)
                .clone();
            r["name"] = json!(name);
            r["weight"] = json!(w);
            r
        };
        let mut want: Vec<Value> = Vec::with_capacity(refs.len() + 1);
        for (j, r) in refs.iter().enumerate() {
            if j == first {
                want.push(with(&stable, 100 - weight));
                want.push(with(&canary, weight));
            } else if !ours(r) {
                want.push(r.clone());
            }
        }
        if want.as_slice() != refs {
            let path = format!("/spec/rules/{i}/backendRefs");
            ops.push(json!({"op": "test", "path": path, "value": refs}));
            ops.push(json!({"op": "replace", "path": path, "value": want}));
        }
    }
    if !found {
        return Err(format!(
            "no rule of the HTTPRoute has a backendRef to Service {stable:?}; add one (e.g. backendRefs: [{{ name: {stable}, port: <port> }}]) and Floyd adds {canary:?} beside it"
        ));
    }
    Ok((!ops.is_empty()).then_some(Value::Array(ops)))
}

fn route_resource() -> ApiResource {
    ApiResource {
        group: GATEWAY_GROUP.into(),
        version: GATEWAY_VERSION.into(),
        api_version: format!("{GATEWAY_GROUP}/{GATEWAY_VERSION}"),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

impl KubeRuntime {
    fn route_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(self.client().clone(), self.namespace(), &route_resource())
    }

    /// Applies the `role` Service of `service` selecting `revision` (every
    /// revision when `None`), after checking that it is this install's.
    async fn apply_role_service(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        role: &'static str,
        revision: Option<&Revision>,
    ) -> Result<(), Error> {
        let obj = role_service(self.install(), service, spec, role, revision);
        let name = obj.metadata.name.clone().unwrap_or_default();
        self.may_write("apply", "Service", &name)?;
        self.read_owned(&self.svc_api(), "Service", &name, service, Some(role))
            .await?;
        self.svc_api()
            .patch(&name, &self.apply_params(), &Patch::Apply(&obj))
            .await
            .map_err(api_err("apply", "Service", self.namespace(), &name))?;
        Ok(())
    }

    /// A new revision of a routed canary service: the stable Service exists
    /// from the first revision on (selecting every revision), so the route's
    /// stable backend has endpoints before any canary. An existing one is
    /// left as it is (a canary may be running).
    pub(super) async fn ensure_stable_service(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
    ) -> Result<(), Error> {
        if http_route(spec).is_none() || spec.ports.is_empty() {
            return Ok(());
        }
        let name = stable_service_name(service);
        if self
            .read_owned(&self.svc_api(), "Service", &name, service, Some("stable"))
            .await?
            .is_none()
        {
            self.apply_role_service(service, spec, "stable", None)
                .await?;
        }
        Ok(())
    }

    /// Routes `weight` percent of the HTTPRoute's traffic to `canary` and
    /// the rest to `stable` (every revision when `None`, as when settled):
    /// the Services first, so the weights never point at a Service that
    /// selects the wrong pods, then the route's weights.
    pub(super) async fn route_weight(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        route: &str,
        canary: &Revision,
        stable: Option<&Revision>,
        weight: u32,
    ) -> Result<(), Error> {
        if spec.ports.is_empty() {
            return Err(Error::Spec {
                service: service.to_string(),
                message: format!(
                    "trafficRouting through HTTPRoute {route} needs a port: declare spec.ports"
                ),
            });
        }
        // The route is read (and checked) first: a missing or unusable
        // route fails the step before anything is written.
        let patch = self.route_patch_for(service, route, weight).await?;
        self.apply_role_service(service, spec, "stable", stable)
            .await?;
        self.apply_role_service(service, spec, "canary", Some(canary))
            .await?;
        self.send_route_patch(service, route, patch).await
    }

    /// A settled routed service: the stable Service selects every revision
    /// and gets all of the route's traffic.
    pub(super) async fn route_settled(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        route: &str,
    ) -> Result<(), Error> {
        if spec.ports.is_empty() {
            return Ok(());
        }
        let patch = self.route_patch_for(service, route, 0).await?;
        self.apply_role_service(service, spec, "stable", None)
            .await?;
        self.send_route_patch(service, route, patch).await
    }

    /// Reads the HTTPRoute; the patch its weights need, if any.
    async fn route_patch_for(
        &self,
        service: &ServiceName,
        route: &str,
        weight: u32,
    ) -> Result<Option<Value>, Error> {
        let ns = self.namespace();
        let api = self.route_api();
        let live = api
            .get_opt(route)
            .await
            .map_err(api_err("get", "HTTPRoute", ns, route))?
            .ok_or_else(|| Error::Spec {
                service: service.to_string(),
                message: format!(
                    "HTTPRoute {ns}/{route} (spec.strategy.canary.trafficRouting.gatewayAPI.httpRoute) does not exist; create it with a backendRef to Service {:?} (Floyd never creates or deletes it), or remove trafficRouting",
                    stable_service_name(service)
                ),
            })?;
        let value = serde_json::to_value(&live).map_err(|e| Error::Spec {
            service: service.to_string(),
            message: format!("HTTPRoute {ns}/{route}: {e}"),
        })?;
        route_patch(&value, service, ns, weight).map_err(|m| Error::Spec {
            service: service.to_string(),
            message: format!("HTTPRoute {ns}/{route}: {m}"),
        })
    }

    /// Sends a patch from [`Self::route_patch_for`] (nothing for `None`).
    async fn send_route_patch(
        &self,
        service: &ServiceName,
        route: &str,
        patch: Option<Value>,
    ) -> Result<(), Error> {
        let Some(patch) = patch else {
            return Ok(());
        };
        let ns = self.namespace();
        let api = self.route_api();
        self.may_write("patch", "HTTPRoute", route)?;
        let patch = serde_json::from_value(patch).map_err(|e| Error::Spec {
            service: service.to_string(),
            message: format!("HTTPRoute {ns}/{route}: cannot build the patch: {e}"),
        })?;
        api.patch(
            route,
            &PatchParams {
                field_manager: Some(super::FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(api_err("patch", "HTTPRoute", ns, route))?;
        Ok(())
    }

    /// Deletes the stable and canary Services of a removed service (this
    /// install's only); the HTTPRoute is the user's and stays.
    pub(super) async fn delete_role_services(&self, service: &ServiceName) -> Result<(), Error> {
        let svc = self.svc_api();
        for (name, role) in [
            (stable_service_name(service), "stable"),
            (canary_service_name(service), "canary"),
        ] {
            self.delete_owned(&svc, "Service", &name, service, Some(role))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServiceName {
        ServiceName::parse(s).unwrap()
    }

    fn route(refs: Value) -> Value {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "shop", "namespace": "apps"},
               "spec": {"parentRefs": [{"name": "gw"}],
                        "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                   "backendRefs": refs}]}})
    }

    #[test]
    fn adds_the_canary_ref_beside_the_stable_one_with_its_port() {
        let r = route(json!([{"name": "shop-stable", "port": 8080}]));
        let p = route_patch(&r, &name("shop"), "apps", 10).unwrap().unwrap();
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/spec/rules/0/backendRefs",
                 "value": [{"name": "shop-stable", "port": 8080}]},
                {"op": "replace", "path": "/spec/rules/0/backendRefs",
                 "value": [{"name": "shop-stable", "port": 8080, "weight": 90},
                           {"name": "shop-canary", "port": 8080, "weight": 10}]}
            ])
        );
    }

    #[test]
    fn weights_already_right_need_no_patch() {
        let r = route(json!([
            {"name": "shop-stable", "port": 80, "weight": 50},
            {"name": "shop-canary", "port": 80, "weight": 50}
        ]));
        assert_eq!(route_patch(&r, &name("shop"), "apps", 50).unwrap(), None);
    }

    #[test]
    fn other_backends_and_rules_are_left_alone() {
        let mut r = route(json!([
            {"name": "mirror", "port": 80, "weight": 1},
            {"name": "shop-canary", "port": 80, "weight": 0},
            {"name": "shop-stable", "port": 80, "weight": 100}
        ]));
        r["spec"]["rules"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"backendRefs": [{"name": "web", "port": 80}]}));
        let p = route_patch(&r, &name("shop"), "apps", 25).unwrap().unwrap();
        assert_eq!(p.as_array().unwrap().len(), 2, "{p}");
        assert_eq!(p[1]["path"], "/spec/rules/1/backendRefs");
        assert_eq!(
            p[1]["value"],
            json!([
                {"name": "mirror", "port": 80, "weight": 1},
                {"name": "shop-stable", "port": 80, "weight": 75},
                {"name": "shop-canary", "port": 80, "weight": 25}
            ])
        );
    }

    #[test]
    fn refs_to_another_namespace_or_kind_are_not_ours() {
        for r in [
            json!([{"name": "shop-stable", "namespace": "other", "port": 80}]),
            json!([{"name": "shop-stable", "kind": "ServiceImport", "group": "multicluster.x-k8s.io", "port": 80}]),
            json!([{"name": "shop", "port": 80}]),
        ] {
            let err = route_patch(&route(r.clone()), &name("shop"), "apps", 5).unwrap_err();
            assert!(
                err.contains("backendRef to Service \"shop-stable\""),
                "{r}: {err}"
            );
        }
    }
}
