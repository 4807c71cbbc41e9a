//! `floyd diff`: what a sync of a config directory would change against
//! the live state a Floyd server reports (or, with `--objects`, against a
//! cluster's objects), with each rollout's prediction.

use super::format::short;
use super::http::{Client, ServiceList};
use super::{DiffArgs, Output};
use crate::cli::CliError;
use crate::diff::{Change as PlanChange, plan};
use crate::hub::ServiceView;
use crate::manifest::{InstanceTemplate, Release, Revision, ServiceName};
use crate::model::{Observed, ObservedRevision};
use crate::time::Time;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a sync would do to one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub service: String,
    /// `added`, `removed`, `rollout`, `scale`, `rollout+scale`, `orphaned` (removed but prune is off).
    pub change: String,
    pub from_revision: Option<String>,
    pub to_revision: Option<String>,
    pub from_replicas: Option<u32>,
    pub to_replicas: Option<u32>,
    /// GPU units the desired service holds in total (replicas × per instance).
    pub gpu_units: Option<u32>,
    pub gpu_product: Option<String>,
    /// The predicted rollout (added and rolled-out services), see [`crate::predict`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prediction: Option<crate::predict::Prediction>,
}

/// The live services as the sync planner sees a runtime: each service's
/// revisions (the API lists them oldest first, as the runtime observed them)
/// and the revision the controller aims at. Pure.
pub(super) fn observed_from_views(
    live: &[ServiceView],
) -> (
    BTreeMap<ServiceName, Observed>,
    BTreeMap<ServiceName, Revision>,
) {
    let mut observed = BTreeMap::new();
    let mut target = BTreeMap::new();
    for v in live {
        // Names come from the server, which took them from validated
        // manifests; one that does not parse cannot be in a release either.
        let Ok(name) = ServiceName::parse(&v.name) else {
            continue;
        };
        let aim = v.target_revision.as_ref().or(v.current_revision.as_ref());
        // The API counts instances as they are; the planner compares the
        // count the controller aims at (the service's replicas, reached at
        // the end of a rollout in progress) with the desired one.
        let mut revisions: Vec<ObservedRevision> = v
            .revisions
            .iter()
            .zip(0u64..)
            .map(|(r, i)| ObservedRevision {
                revision: r.revision.clone(),
                created_at: Time::from_millis(i),
                desired: if Some(&r.revision) == aim {
                    v.replicas
                } else {
                    r.desired
                },
                instances: Vec::new(),
                template: InstanceTemplate::default(),
            })
            .collect();
        if let Some(t) = aim {
            if !revisions.is_empty() && !revisions.iter().any(|r| &r.revision == t) {
                // A rollout that has not created its revision yet.
                revisions.push(ObservedRevision {
                    revision: t.clone(),
                    created_at: Time::from_millis(revisions.len() as u64),
                    desired: v.replicas,
                    instances: Vec::new(),
                    template: InstanceTemplate::default(),
                });
            }
            target.insert(name.clone(), t.clone());
        }
        observed.insert(
            name,
            Observed {
                revisions,
                ..Observed::default()
            },
        );
    }
    (observed, target)
}

/// Compares a rendered release with the live services: [`crate::diff::plan`]
/// (the controller's own planner) on the services the API reports, labelled
/// for a person. Pure.
pub(super) fn plan_diff(release: &Release, live: &[ServiceView]) -> Vec<Change> {
    let (observed, target) = observed_from_views(live);
    let view = |n: &ServiceName| live.iter().find(|v| v.name == n.as_str());
    plan(release, &observed, &target)
        .into_iter()
        .filter_map(|(name, change)| {
            let desired = release.service(name.as_str());
            let gpu = desired.and_then(|s| s.spec.template.resources.gpu.as_ref().map(|g| (s, g)));
            let live_replicas = view(&name).map(|v| v.replicas);
            let (label, from_revision, to_revision, from_replicas, to_replicas) = match change {
                PlanChange::Unchanged => return None,
                PlanChange::Create { revision } => (
                    "added",
                    None,
                    Some(revision),
                    None,
                    desired.map(|s| s.spec.replicas),
                ),
                PlanChange::NewRevision { from, to } => {
                    let to_replicas = desired.map(|s| s.spec.replicas);
                    let scaled = live_replicas.is_some()
                        && live_replicas != to_replicas
                        && desired.is_some_and(|s| s.spec.autoscaling.is_none());
                    (
                        if scaled { "rollout+scale" } else { "rollout" },
                        from,
                        Some(to),
                        live_replicas,
                        to_replicas,
                    )
                }
                PlanChange::Scale { revision, from, to } => (
                    "scale",
                    Some(revision.clone()),
                    Some(revision),
                    Some(from),
                    Some(to),
                ),
                PlanChange::Delete => (
                    "removed",
                    target.get(&name).cloned(),
                    None,
                    live_replicas,
                    None,
                ),
                PlanChange::Orphan => (
                    "orphaned",
                    target.get(&name).cloned(),
                    None,
                    live_replicas,
                    None,
                ),
            };
            Some(Change {
                service: name.as_str().to_string(),
                change: label.to_string(),
                from_revision: from_revision.map(|r| r.as_str().to_string()),
                to_revision: to_revision.map(|r| r.as_str().to_string()),
                from_replicas,
                to_replicas,
                gpu_units: gpu.map(|(s, g)| g.count.saturating_mul(s.spec.replicas)),
                gpu_product: gpu.map(|(_, g)| g.product.clone().unwrap_or_else(|| "any".into())),
                prediction: None,
            })
        })
        .collect()
}

/// The part of `GET /api/v1/services/{name}/plan` that `floyd diff` uses.
#[derive(serde::Deserialize)]
pub(super) struct PlanResponse {
    inputs: crate::predict::PlanInputs,
}

pub(super) fn change_line(c: &Change) -> String {
    let sign = match c.change.as_str() {
        "added" => "+",
        "removed" => "-",
        "orphaned" => "!",
        _ => "~",
    };
    let revs = match (&c.from_revision, &c.to_revision) {
        (Some(f), Some(t)) if f != t => format!("revision {} → {}", short(f), short(t)),
        (None, Some(t)) => format!("revision {}", short(t)),
        (Some(f), None) => format!("revision {}", short(f)),
        _ => String::new(),
    };
    let reps = match (c.from_replicas, c.to_replicas) {
        (Some(f), Some(t)) if f != t => format!("replicas {f} → {t}"),
        (None, Some(t)) => format!("{t} replicas"),
        (Some(f), None) => format!("{f} replicas"),
        (Some(f), Some(_)) => format!("{f} replicas"),
        _ => String::new(),
    };
    let gpu = match (c.gpu_units, &c.gpu_product) {
        (Some(n), Some(p)) => format!("needs {n} GPU unit(s) of {p}"),
        _ => String::new(),
    };
    let what = match c.change.as_str() {
        "orphaned" => "removed from Git, left running (prune: false)".to_string(),
        other => other.to_string(),
    };
    [format!("{sign} {}", c.service), what, revs, reps, gpu]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("  ")
}

pub fn diff(a: DiffArgs) -> anyhow::Result<u8> {
    if a.objects {
        let release = crate::manifest::load_release(&a.dir, a.environment.as_deref())
            .map_err(|e| CliError::usage(e.to_string()))?;
        return crate::cli::objdiff::run(
            &release,
            &a.namespace,
            &a.instance,
            a.server.output == Output::Json,
        );
    }
    let c = Client::new(&a.server, None)?;
    let release = crate::manifest::load_release(&a.dir, a.environment.as_deref())
        .map_err(|e| CliError::usage(e.to_string()))?;
    let live: ServiceList = c.get("/api/v1/services")?;
    let mut changes = plan_diff(&release, &live.services);
    for ch in changes.iter_mut() {
        let Some(svc) = release.service(&ch.service) else {
            continue;
        };
        if !matches!(ch.change.as_str(), "added" | "rollout" | "rollout+scale") {
            continue;
        }
        // What the controller has seen of the service (start-up times, GPU
        // capacity); a new service, or a server without the endpoint: none.
        let inputs = if ch.change == "added" {
            crate::predict::PlanInputs::default()
        } else {
            c.get::<PlanResponse>(&format!("/api/v1/services/{}/plan", ch.service))
                .map(|p| p.inputs)
                .unwrap_or_default()
        };
        ch.prediction = Some(crate::predict::predict(&svc.name, &svc.spec, &inputs));
    }
    if c.output == Output::Json {
        c.print_json(&serde_json::json!({ "changes": changes }))?;
    } else if changes.is_empty() {
        println!("no changes: the live state matches {}", a.dir.display());
    } else {
        for ch in &changes {
            println!("{}", change_line(ch));
            for l in ch.prediction.iter().flat_map(crate::predict::describe) {
                println!("    {l}");
            }
        }
    }
    Ok(u8::from(!changes.is_empty()))
}
