//! Durable controller state (redb, one file in the state directory): last
//! synced commit per service, rollout states, rollout history, revert
//! records, webhook delivery ids.
//!
//! Values are JSON (serde) so the file stays readable across versions: a new
//! field with `#[serde(default)]` never breaks an old store.
//! Must not: decide anything; it stores what the controller hands it.

use crate::engine::RolloutState;
use crate::hub::{CommitInfo, HistoryEntry};
use crate::manifest::{Revision, ServiceSpec};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const APPLIED: TableDefinition<&str, &str> = TableDefinition::new("applied");
const ROLLOUTS: TableDefinition<&str, &str> = TableDefinition::new("rollouts");
const HISTORY: TableDefinition<&str, &str> = TableDefinition::new("history");
const REVERTS: TableDefinition<&str, &str> = TableDefinition::new("reverts");
const DELIVERIES: TableDefinition<&str, u64> = TableDefinition::new("deliveries");
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// History entries kept per service.
const HISTORY_KEEP: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state store {path}: {message} (is another floyd running with the same --state-dir?)")]
    Open { path: PathBuf, message: String },
    #[error("state store {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("state store {path}: record {key:?} in table {table} is unreadable: {message}")]
    Corrupt {
        path: PathBuf,
        table: String,
        key: String,
        message: String,
    },
}

/// The last commit whose rollout of a service completed: the "last good" one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub commit: String,
    pub revision: Revision,
    pub at: crate::time::Time,
}

/// The controller's durable memory of one service's rollout: enough to
/// resume after a restart without starting over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub state: RolloutState,
    /// The spec the rollout works towards (a rollback's spec differs from Git's).
    pub spec: ServiceSpec,
    pub commit: Option<CommitInfo>,
    pub from_revision: Option<Revision>,
    /// The failure of this rollout was handled (rolled back / reverted / degraded).
    #[serde(default)]
    pub failure_handled: bool,
    #[serde(default)]
    pub revert_commit: Option<String>,
    /// Files of the config repo (repo-relative) that define the service.
    #[serde(default)]
    pub files: Vec<String>,
    /// Running, but not as Git says, and Floyd will not fix it (why).
    #[serde(default)]
    pub degraded: Option<String>,
    /// A rollback whose revision Git holds again (the revert landed).
    #[serde(default)]
    pub git_agrees: bool,
    /// The last commit whose complete desired state (revision, replicas and
    /// every other field) reached Complete: what a failure goes back to.
    #[serde(default)]
    pub last_complete: Option<Desired>,
    /// The desired state this one replaced (in flight or settled), kept so a
    /// desired state that can never fit restores it instead of a rollback.
    /// One level deep: its own `previous` is always `None`.
    #[serde(default)]
    pub previous: Option<Box<RolloutRecord>>,
    /// The commit that created the service when nothing of it had completed
    /// yet (carried across supersedes until a desired state completes).
    #[serde(default)]
    pub created_by: Option<CommitInfo>,
    /// A desired state that failed and that Floyd will not apply again while
    /// Git still renders it (the revert is pending, refused or disabled).
    #[serde(default)]
    pub rejected: Option<Desired>,
    /// A revert Floyd still has to push (the remote was unreachable, or the
    /// attempt is queued behind another Git operation).
    #[serde(default)]
    pub pending_revert: Option<PendingRevert>,
}

/// A revert decided but not pushed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRevert {
    /// The commit whose desired state failed.
    pub failed: CommitInfo,
    /// Revert the commits after this one (the last Complete commit, or the
    /// desired state restored).
    pub base: String,
    pub failed_revision: Revision,
    /// What runs instead (for the message).
    pub rolled_back_to: String,
    pub reason: String,
    pub files: Vec<String>,
    /// Attempts that failed so far, and when to try again.
    pub attempts: u32,
    pub next_at: crate::time::Time,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// One commit's desired state of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub commit: CommitInfo,
    pub revision: Revision,
    pub spec: ServiceSpec,
}

impl Desired {
    /// The same desired state (the commit aside).
    pub fn same_state(&self, revision: &Revision, spec: &ServiceSpec) -> bool {
        self.revision == *revision && self.spec == *spec
    }
}

impl RolloutRecord {
    /// The one constructor: a rollout of `state` towards `spec`, defined by `commit`.
    pub fn new(
        state: RolloutState,
        spec: ServiceSpec,
        commit: Option<CommitInfo>,
        files: Vec<String>,
    ) -> RolloutRecord {
        RolloutRecord {
            from_revision: state.stable.clone(),
            state,
            spec,
            commit,
            failure_handled: false,
            revert_commit: None,
            files,
            degraded: None,
            git_agrees: false,
            last_complete: None,
            previous: None,
            created_by: None,
            rejected: None,
            pending_revert: None,
        }
    }

    /// This record's own desired state (None before any commit named it).
    pub fn desired(&self) -> Option<Desired> {
        self.commit.as_ref().map(|c| Desired {
            commit: c.clone(),
            revision: self.state.target.clone(),
            spec: self.spec.clone(),
        })
    }
}

/// A revert commit Floyd pushed (or tried to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevertRecord {
    pub service: String,
    pub failed_commit: String,
    pub reverted: Vec<String>,
    pub revert_commit: Option<String>,
    pub ok: bool,
    pub message: String,
    pub at: crate::time::Time,
}

/// The store. Cheap to share behind an `Arc`; every call is one transaction.
///
/// After an I/O error (a full disk) redb refuses every later write until
/// the database is opened again, so a write that fails reopens the file and
/// tries once more; while that fails too, the error goes to the caller (the
/// controller reports it and writes again later).
pub struct Store {
    /// `None` only between a failed reopen and the next successful one.
    db: std::sync::RwLock<Option<Database>>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `<state_dir>/floyd.redb`.
    pub fn open(state_dir: &Path) -> Result<Store, Error> {
        let path = state_dir.join("floyd.redb");
        std::fs::create_dir_all(state_dir).map_err(|e| Error::Io {
            path: state_dir.to_path_buf(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        let db = Database::create(&path).map_err(|e| Error::Open {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let store = Store {
            db: std::sync::RwLock::new(Some(db)),
            path,
        };
        // Create every table once so readers never see "table does not exist".
        store.write(|tx| {
            tx.open_table(APPLIED)?;
            tx.open_table(ROLLOUTS)?;
            tx.open_table(HISTORY)?;
            tx.open_table(REVERTS)?;
            tx.open_table(DELIVERIES)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> Error {
        Error::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The open database (read access; see [`Store::reopen`]).
    fn db(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Database>>, Error> {
        let g = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.is_none() {
            return Err(self.io("the database could not be opened again after an I/O error"));
        }
        Ok(g)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, Error> {
        let g = self.db()?;
        let db = g.as_ref().expect("checked by db()");
        db.begin_read().map_err(|e| self.io(e))
    }

    /// Closes and opens the database file again (redb latches after an I/O
    /// error). The old handle is dropped first: it holds the file's lock.
    fn reopen(&self) -> Result<(), Error> {
        let mut g = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(g.take());
        let db = Database::create(&self.path).map_err(|e| self.io(e))?;
        *g = Some(db);
        tracing::info!(path = %self.path.display(), "state store reopened after an I/O error");
        Ok(())
    }

    /// One write transaction: `f`, then commit. An I/O error reopens the
    /// database and runs the transaction once more.
    fn transact<T>(
        &self,
        f: &dyn Fn(&mut redb::WriteTransaction) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let once = || -> Result<T, Error> {
            let g = self.db()?;
            let db = g.as_ref().expect("checked by db()");
            let mut tx = db.begin_write().map_err(|e| self.io(e))?;
            let out = f(&mut tx)?;
            tx.commit().map_err(|e| self.io(e))?;
            Ok(out)
        };
        match once() {
            Err(Error::Io { .. }) => {
                self.reopen()?;
                once()
            }
            other => other,
        }
    }

    fn write(
        &self,
        f: impl Fn(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), Error> {
        self.transact(&|tx| f(tx).map_err(|e| self.io(e)))
    }

    fn put_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
        value: &T,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(value).map_err(|e| self.io(e))?;
        self.write(|tx| {
            tx.open_table(table)?.insert(key, json.as_str())?;
            Ok(())
        })
    }

    fn get_json<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
        key: &str,
    ) -> Result<Option<T>, Error> {
        let tx = self.begin_read()?;
        let t = tx.open_table(table).map_err(|e| self.io(e))?;
        let Some(v) = t.get(key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        serde_json::from_str(v.value())
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                table: redb::TableHandle::name(&table).to_string(),
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    fn all_json<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &str>,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, Error> {
        let tx = self.begin_read()?;
        let t = tx.open_table(table).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| self.io(e))? {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let key = k.value().to_string();
            if !key.starts_with(prefix) {
                break;
            }
            let parsed = serde_json::from_str(v.value()).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                table: redb::TableHandle::name(&table).to_string(),
                key: key.clone(),
                message: e.to_string(),
            })?;
            out.push((key, parsed));
        }
        Ok(out)
    }

    fn remove(&self, table: TableDefinition<&str, &str>, key: &str) -> Result<(), Error> {
        self.write(|tx| {
            tx.open_table(table)?.remove(key)?;
            Ok(())
        })
    }

    // ---- last good commit per service ----

    pub fn set_applied(&self, service: &str, applied: &Applied) -> Result<(), Error> {
        self.put_json(APPLIED, service, applied)
    }
    pub fn applied(&self, service: &str) -> Result<Option<Applied>, Error> {
        self.get_json(APPLIED, service)
    }

    // ---- rollout states ----

    pub fn set_rollout(&self, service: &str, record: &RolloutRecord) -> Result<(), Error> {
        self.put_json(ROLLOUTS, service, record)
    }
    pub fn rollouts(&self) -> Result<Vec<(String, RolloutRecord)>, Error> {
        self.all_json(ROLLOUTS, "")
    }
    /// Forgets a pruned service (its history stays).
    pub fn remove_service(&self, service: &str) -> Result<(), Error> {
        self.remove(ROLLOUTS, service)?;
        self.remove(APPLIED, service)
    }

    // ---- history ----

    fn history_key(e: &HistoryEntry) -> String {
        // Sorts by service, then start time; the target makes two rollouts
        // started in the same millisecond distinct.
        format!("{}/{:020}/{}", e.service, e.started_at.0, e.to_revision)
    }

    /// Adds or replaces (same service, start, target) a history entry.
    pub fn record_history(&self, entry: &HistoryEntry) -> Result<(), Error> {
        self.put_json(HISTORY, &Self::history_key(entry), entry)?;
        let all = self.all_json::<serde_json::Value>(HISTORY, &format!("{}/", entry.service))?;
        if all.len() > HISTORY_KEEP {
            let drop: Vec<String> = all[..all.len() - HISTORY_KEEP]
                .iter()
                .map(|(k, _)| k.clone())
                .collect();
            self.write(|tx| {
                let mut t = tx.open_table(HISTORY)?;
                for k in &drop {
                    t.remove(k.as_str())?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
    /// Oldest first.
    pub fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, Error> {
        Ok(self
            .all_json(HISTORY, &format!("{service}/"))?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }
    /// Every entry of every service, oldest first per service.
    pub fn all_history(&self) -> Result<Vec<HistoryEntry>, Error> {
        Ok(self
            .all_json(HISTORY, "")?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    // ---- reverts ----

    pub fn record_revert(&self, r: &RevertRecord) -> Result<(), Error> {
        self.put_json(REVERTS, &format!("{}/{}", r.service, r.failed_commit), r)
    }
    pub fn reverts(&self) -> Result<Vec<RevertRecord>, Error> {
        Ok(self
            .all_json(REVERTS, "")?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    // ---- webhook deliveries ----

    /// Records a delivery id; false when it was seen before (even before a restart).
    /// Written without an fsync of its own (it lands with the next durable
    /// commit): losing the newest ids in a crash costs one extra fetch, and a
    /// webhook answer does not wait for the disk.
    pub fn first_delivery(&self, id: &str, now: crate::time::Time) -> Result<bool, Error> {
        self.transact(&|tx| {
            tx.set_durability(redb::Durability::None)
                .map_err(|e| self.io(e))?;
            let mut t = tx.open_table(DELIVERIES).map_err(|e| self.io(e))?;
            let seen = t.get(id).map_err(|e| self.io(e))?.is_some();
            if !seen {
                t.insert(id, now.0).map_err(|e| self.io(e))?;
            }
            Ok(!seen)
        })
    }

    /// Forgets delivery ids recorded before `before` (providers redeliver
    /// within hours, not weeks); returns how many went.
    pub fn prune_deliveries(&self, before: crate::time::Time) -> Result<usize, Error> {
        self.transact(&|tx| {
            use redb::ReadableTableMetadata;
            let mut t = tx.open_table(DELIVERIES).map_err(|e| self.io(e))?;
            let had = t.len().map_err(|e| self.io(e))?;
            t.retain(|_, at| at >= before.0).map_err(|e| self.io(e))?;
            Ok((had - t.len().map_err(|e| self.io(e))?) as usize)
        })
    }

    // ---- misc ----

    /// The last commit the controller synced (rendered and diffed).
    pub fn set_synced_commit(&self, sha: &str) -> Result<(), Error> {
        self.write(|tx| {
            tx.open_table(META)?.insert("synced_commit", sha)?;
            Ok(())
        })
    }
    pub fn synced_commit(&self) -> Result<Option<String>, Error> {
        self.meta("synced_commit")
    }

    /// The commit being rendered now (set before, cleared after): found at
    /// start-up, it means the process died rendering it (a hostile commit
    /// that exhausted memory), and it must not be rendered again.
    pub fn set_rendering(&self, sha: Option<&str>) -> Result<(), Error> {
        self.write(|tx| {
            let mut t = tx.open_table(META)?;
            match sha {
                Some(s) => {
                    t.insert("rendering", s)?;
                }
                None => {
                    t.remove("rendering")?;
                }
            }
            Ok(())
        })
    }
    pub fn rendering(&self) -> Result<Option<String>, Error> {
        self.meta("rendering")
    }

    fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        let tx = self.begin_read()?;
        let t = tx.open_table(META).map_err(|e| self.io(e))?;
        Ok(t.get(key)
            .map_err(|e| self.io(e))?
            .map(|v| v.value().to_string()))
    }
}

impl crate::hub::DeliveryLog for Store {
    fn first_delivery(&self, id: &str, now: crate::time::Time) -> Result<bool, String> {
        Store::first_delivery(self, id, now).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Phase, RolloutState};
    use crate::manifest::InstanceTemplate;
    use crate::time::Time;

    fn entry(service: &str, t: u64, rev: &str) -> HistoryEntry {
        HistoryEntry {
            service: service.into(),
            commit: None,
            from_revision: None,
            to_revision: Revision(rev.into()),
            started_at: Time(t),
            ended_at: None,
            result: Phase::Progressing,
            reason: String::new(),
            rollback: false,
            revert_commit: None,
        }
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.set_applied(
                "web",
                &Applied {
                    commit: "abc".into(),
                    revision: Revision("r1".into()),
                    at: Time(5),
                },
            )
            .unwrap();
            let rec = RolloutRecord::new(
                RolloutState::start(Revision("r2".into()), Some(Revision("r1".into())), Time(9)),
                ServiceSpec::with_defaults(2, InstanceTemplate::command(["x"])),
                None,
                vec!["services/web.yaml".into()],
            );
            s.set_rollout("web", &rec).unwrap();
            s.record_history(&entry("web", 1, "r1")).unwrap();
            s.record_history(&entry("web", 2, "r2")).unwrap();
            s.record_history(&entry("webx", 3, "r9")).unwrap();
            let mut done = entry("web", 2, "r2");
            done.result = Phase::Complete;
            s.record_history(&done).unwrap();
            assert!(s.first_delivery("github:1", Time(1)).unwrap());
            assert!(!s.first_delivery("github:1", Time(2)).unwrap());
            s.set_synced_commit("abc").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.applied("web").unwrap().unwrap().commit, "abc");
        assert_eq!(s.applied("api").unwrap(), None);
        let r = s.rollouts().unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].1.state.target, Revision("r2".into()));
        let h = s.history("web").unwrap();
        assert_eq!(
            h.len(),
            2,
            "webx is a different service; r2 updated in place"
        );
        assert_eq!(h[1].result, Phase::Complete);
        assert!(!s.first_delivery("github:1", Time(3)).unwrap());
        assert!(s.first_delivery("github:2", Time(50)).unwrap());
        assert_eq!(s.prune_deliveries(Time(10)).unwrap(), 1, "github:1 is old");
        assert!(!s.first_delivery("github:2", Time(60)).unwrap());
        assert!(s.first_delivery("github:1", Time(61)).unwrap(), "forgotten");
        assert_eq!(s.synced_commit().unwrap().as_deref(), Some("abc"));
        s.remove_service("web").unwrap();
        assert!(s.rollouts().unwrap().is_empty());
    }

    #[test]
    fn history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        for t in 0..(HISTORY_KEEP as u64 + 5) {
            s.record_history(&entry("web", t, "r")).unwrap();
        }
        let h = s.history("web").unwrap();
        assert_eq!(h.len(), HISTORY_KEEP);
        assert_eq!(h[0].started_at, Time(5), "oldest dropped first");
    }
}
