//! The instance manager's arithmetic, shared by the `local` and `sim`
//! runtimes (the `kube` runtime leaves it to the ReplicaSet controller):
//! make a revision's live instance count match its desired count.
//!
//! Creation goes in slow-start batches (1, 2, 4, ...) stopping at the first
//! failed creation; deletion removes the least useful instances first
//! (not running, then not ready, then ready the shortest time, then newest),
//! like Kubernetes' ReplicaSet controller.

use crate::model::{Instance, InstancePhase};

/// Slow-start batch sizes for creating `n` instances: 1, 2, 4, ... summing to `n`.
pub fn slow_start_batches(n: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut left = n;
    let mut batch = 1u32;
    while left > 0 {
        let b = batch.min(left);
        out.push(b);
        left -= b;
        batch = batch.saturating_mul(2);
    }
    out
}

/// Which of `instances` (non-terminating ones) to delete to get down to
/// `desired`, best candidates first. Returns instance ids.
pub fn pick_for_deletion(instances: &[Instance], desired: u32) -> Vec<String> {
    let mut live: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.phase != InstancePhase::Terminating)
        .collect();
    let excess = live.len().saturating_sub(desired as usize);
    if excess == 0 {
        return Vec::new();
    }
    live.sort_by_key(|i| deletion_rank(i));
    live.into_iter()
        .take(excess)
        .map(|i| i.id.clone())
        .collect()
}

/// Lower sorts first = deleted first.
fn deletion_rank(i: &Instance) -> (u8, u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>) {
    let running = match i.phase {
        InstancePhase::Failed => 0,
        InstancePhase::Pending => 1,
        _ => 2,
    };
    let ready = u8::from(i.ready_since.is_some());
    // Ready for a shorter time (later ready_since) goes first; then newer first.
    let ready_since = std::cmp::Reverse(i.ready_since.map(|t| t.0).unwrap_or(u64::MAX));
    (
        running,
        ready,
        ready_since,
        std::cmp::Reverse(i.created_at.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Time;

    fn inst(id: &str, phase: InstancePhase, ready: Option<u64>, created: u64) -> Instance {
        Instance {
            id: id.into(),
            phase,
            created_at: Time(created),
            ready_since: ready.map(Time),
            restarts: 0,
            reason: None,
            gpus: vec![],
        }
    }

    #[test]
    fn batches_double() {
        assert_eq!(slow_start_batches(0), Vec::<u32>::new());
        assert_eq!(slow_start_batches(1), vec![1]);
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
    }

    #[test]
    fn unready_deleted_before_ready() {
        let v = vec![
            inst("a", InstancePhase::Running, Some(5), 1),
            inst("b", InstancePhase::Running, None, 2),
            inst("c", InstancePhase::Pending, None, 3),
            inst("d", InstancePhase::Terminating, None, 4),
        ];
        assert_eq!(
            pick_for_deletion(&v, 1),
            vec!["c".to_string(), "b".to_string()]
        );
        assert_eq!(pick_for_deletion(&v, 3), Vec::<String>::new());
    }
}
