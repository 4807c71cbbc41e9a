//! Git I/O off the control loop. Fetches and revert pushes run as tasks on
//! the blocking pool, one at a time (the mirror has one writer), each with a
//! deadline; their results come back to the loop as [`GitDone`] events. The
//! loop never waits for the remote: while it hangs, rollouts keep stepping,
//! failures are rolled back and commands are answered.
//!
//! libgit2's own network timeouts can only be set through `unsafe` global
//! options, which this crate forbids; so an operation that passes its
//! deadline is reported as failed at once, and its thread is left to finish
//! when the connection drops. No other Git operation starts until it has
//! (`busy`), so hung operations never pile up.

use crate::manifest::ServiceName;
use crate::source::{self, GitSource, RevertOutcome, RevertRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A Git operation that ended (or passed its deadline).
#[derive(Debug)]
pub(super) enum GitDone {
    /// A poll or fetch: the new tip when the branch moved.
    Fetched {
        result: Result<Option<String>, source::Error>,
        elapsed: Duration,
    },
    /// A revert attempt for `service`.
    Reverted {
        service: ServiceName,
        req: Box<RevertRequest>,
        result: Result<RevertOutcome, source::Error>,
    },
    /// A revert attempt of the commit that broke rendering.
    RenderReverted {
        req: Box<RevertRequest>,
        result: Result<RevertOutcome, source::Error>,
    },
}

/// Runs Git operations for the loop.
pub(super) struct GitWorker {
    tx: mpsc::UnboundedSender<GitDone>,
    /// A blocking Git operation is running (possibly past its deadline).
    busy: Arc<AtomicBool>,
    timeout: Duration,
}

/// Clears `busy` when the blocking operation ends, however it ends.
struct Busy(Arc<AtomicBool>);
impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl GitWorker {
    pub(super) fn new(timeout: Duration) -> (GitWorker, mpsc::UnboundedReceiver<GitDone>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            GitWorker {
                tx,
                busy: Arc::new(AtomicBool::new(false)),
                timeout,
            },
            rx,
        )
    }

    /// A Git operation is running (the next one waits for it).
    pub(super) fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Runs `op` on the blocking pool with the deadline; `done` turns its
    /// result into the event. False (nothing started) while another runs.
    fn start<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce() -> Result<T, source::Error> + Send + 'static,
        done: impl FnOnce(Result<T, source::Error>, Duration) -> GitDone + Send + 'static,
    ) -> bool {
        if self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let guard = Busy(self.busy.clone());
        let (tx, timeout) = (self.tx.clone(), self.timeout);
        tokio::spawn(async move {
            let started = Instant::now();
            let task = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                op()
            });
            let result = match tokio::time::timeout(timeout, task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(source::Error::Git(format!("{what} task failed: {e}"))),
                Err(_) => Err(source::Error::Timeout {
                    what,
                    seconds: timeout.as_secs(),
                }),
            };
            // The loop may be gone (shutdown): nothing left to tell.
            let _ = tx.send(done(result, started.elapsed()));
        });
        true
    }

    /// Polls (`fetch` false: ask for the tip first) or fetches at once.
    pub(super) fn start_fetch(&self, src: Arc<GitSource>, fetch: bool) -> bool {
        self.start(
            "fetch",
            move || {
                if fetch {
                    let before = src.local_tip()?;
                    let tip = src.fetch()?;
                    Ok((before.as_deref() != Some(tip.as_str())).then_some(tip))
                } else {
                    src.poll()
                }
            },
            |result, elapsed| GitDone::Fetched { result, elapsed },
        )
    }

    /// One revert attempt for `service`: a push, or a pull request on the
    /// Git host when the branch refuses pushes (see
    /// [`crate::githost::pr::revert`]; its Git work runs on the blocking pool).
    pub(super) fn start_revert(
        &self,
        src: Arc<GitSource>,
        host: Option<crate::githost::GitHost>,
        service: ServiceName,
        req: RevertRequest,
    ) -> bool {
        self.start_planned_revert(
            src,
            host,
            req,
            super::policy::plan_revert,
            move |req, result| GitDone::Reverted {
                service,
                req: Box::new(req),
                result,
            },
        )
    }

    /// One revert attempt planned by `planner`; `done` makes the event.
    pub(super) fn start_planned_revert(
        &self,
        src: Arc<GitSource>,
        host: Option<crate::githost::GitHost>,
        req: RevertRequest,
        planner: source::revert::Planner,
        done: impl FnOnce(RevertRequest, Result<RevertOutcome, source::Error>) -> GitDone
        + Send
        + 'static,
    ) -> bool {
        if self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let guard = Busy(self.busy.clone());
        let (tx, timeout) = (self.tx.clone(), self.timeout);
        tokio::spawn(async move {
            let _guard = guard;
            let attempt = crate::githost::pr::revert(host, src, req.clone(), planner);
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(source::Error::Timeout {
                    what: "revert",
                    seconds: timeout.as_secs(),
                }),
            };
            let _ = tx.send(done(req, result));
        });
        true
    }
}

/// Worth trying again later (the remote was unreachable, slow, or kept
/// moving), as opposed to a refusal a retry would only repeat.
pub(super) fn transient(e: &source::Error) -> bool {
    matches!(
        e,
        source::Error::Remote { .. }
            | source::Error::Timeout { .. }
            | source::Error::PushRejected {
                retryable: true,
                ..
            }
    )
}
