//! What the local runtime runs, in memory and on disk.
//!
//! Owns: the service / revision / instance records and their persisted form
//! (`<state-dir>/local/state.json`, written atomically: temp file, fsync,
//! rename). Fields marked `serde(skip)` are live-only (probe state, stop
//! tokens); everything needed to adopt instances after a
//! controller restart (pid, process start time, ports, GPU units, revision
//! templates, desired counts, traffic) is persisted.
//! Must not: start, stop or signal anything.

use super::gpu::{GpuPool, Placement};
use crate::manifest::{
    CanaryParams, HealthSpec, InstanceTemplate, PortSpec, Revision, ServiceName,
};
use crate::runtime::{CanarySplit, InstancePhase};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read local runtime state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "local runtime state {path} is corrupt ({source}); move it away to start from scratch (instances it lists will not be adopted)"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write local runtime state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub services: BTreeMap<ServiceName, Svc>,
    #[serde(skip)]
    pub gpus: GpuPool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Svc {
    pub ports: Vec<PortSpec>,
    pub preview_port: Option<u16>,
    pub health: HealthSpec,
    /// Oldest first.
    pub revisions: Vec<Rev>,
    pub active: Option<Revision>,
    pub preview: Option<Revision>,
    /// Canary split of the active traffic (`Action::SetWeight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySplit>,
    /// Canary header matches and mirroring, from the spec's `strategy.canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_params: Option<CanaryParams>,
    pub instances: BTreeMap<String, Inst>,
    /// Being deleted (prune): removed once its last instance has stopped.
    #[serde(default)]
    pub deleting: bool,
}

impl Svc {
    pub fn rev(&self, r: &Revision) -> Option<&Rev> {
        self.revisions.iter().find(|x| &x.revision == r)
    }
    pub fn rev_mut(&mut self, r: &Revision) -> Option<&mut Rev> {
        self.revisions.iter_mut().find(|x| &x.revision == r)
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Rev {
    pub revision: Revision,
    pub created_at: Time,
    pub desired: u32,
    pub template: InstanceTemplate,
    /// DeleteRevision was asked while instances still existed: forget the
    /// revision once they are gone.
    #[serde(default)]
    pub forget: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Inst {
    pub id: String,
    pub revision: Revision,
    pub created_at: Time,
    /// Port per declared port name; `""` is the primary `PORT`.
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub gpu: Option<Placement>,
    pub pid: Option<i32>,
    /// Field 22 of `/proc/<pid>/stat`: tells a live instance from a recycled pid.
    pub start_time: Option<u64>,
    pub restarts: u32,
    pub terminating: bool,
    pub ready_since: Option<Time>,
    #[serde(default)]
    pub last_exit: Option<String>,
    #[serde(skip, default = "pending")]
    pub phase: InstancePhase,
    #[serde(skip)]
    pub reason: Option<String>,
    /// Cancelled to stop the instance (drain, SIGTERM, grace, SIGKILL).
    #[serde(skip)]
    pub stop: CancellationToken,
}

fn pending() -> InstancePhase {
    InstancePhase::Pending
}

impl State {
    /// Loads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the state atomically: a crash leaves the old or the new file, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_data().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }
}
