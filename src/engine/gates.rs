//! Health gates as the engine sees them: the controller evaluates each
//! configured gate and puts the results in `observed.gates` (spec order);
//! here they are combined with `onNoData` into one verdict.
//!
//! `Pending` (no data) blocks progress but does not fail; `onNoData: pass`
//! treats it as a pass, `onNoData: fail` as a failure. A gate without a
//! result yet is pending. Results older than `since` (for example
//! pre-promotion results after a blue-green switch) count as no result.

use crate::manifest::Gate;
use crate::model::{GateResult, GateVerdict};
use crate::time::Time;

/// All configured gates combined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GateSummary {
    /// Gates passing (a pending gate with `onNoData: pass` included).
    pub passed: u32,
    /// The first failing gate, as "gate <name> failed: <reason>".
    pub failed: Option<String>,
    /// Gates still waiting, as "<name>: <reason>".
    pub pending: Vec<String>,
}

impl GateSummary {
    pub fn all_passed(&self) -> bool {
        self.failed.is_none() && self.pending.is_empty()
    }
}

/// Display name of gate `i` of `gates`: `successRate`, or `prometheus[1]`
/// when the kind appears more than once.
pub fn gate_name(gates: &[Gate], i: usize) -> String {
    let kind = gates[i].kind();
    if gates.iter().filter(|g| g.kind() == kind).count() > 1 {
        format!("{kind}[{i}]")
    } else {
        kind.to_string()
    }
}

/// Combines `results` (spec order) for `gates`, ignoring results older than `since`.
pub fn evaluate(gates: &[Gate], results: &[GateResult], since: Time) -> GateSummary {
    let mut s = GateSummary::default();
    for (i, gate) in gates.iter().enumerate() {
        let name = results
            .get(i)
            .map(|r| r.name.clone())
            .unwrap_or_else(|| gate_name(gates, i));
        let verdict = match results.get(i) {
            Some(r) if r.at >= since => r.verdict.clone(),
            _ => GateVerdict::Pending("not evaluated yet".into()),
        };
        match verdict {
            GateVerdict::Pass => s.passed += 1,
            GateVerdict::Fail(reason) => {
                if s.failed.is_none() {
                    s.failed = Some(format!("gate {name} failed: {reason}"));
                }
            }
            GateVerdict::Pending(reason) => match gate.on_no_data() {
                crate::manifest::OnNoData::Pass => s.passed += 1,
                crate::manifest::OnNoData::Fail => {
                    if s.failed.is_none() {
                        s.failed = Some(format!(
                            "gate {name} failed: no data ({reason}) and onNoData is fail"
                        ));
                    }
                }
                crate::manifest::OnNoData::Wait => s.pending.push(format!("{name}: {reason}")),
            },
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::OnNoData;

    fn webhook(on: OnNoData) -> Gate {
        Gate::Webhook {
            url: "http://127.0.0.1:1/gate".into(),
            timeout_seconds: 5,
            on_no_data: on,
        }
    }
    fn res(v: GateVerdict, at: u64) -> GateResult {
        GateResult {
            name: "webhook".into(),
            verdict: v,
            at: Time(at),
        }
    }

    #[test]
    fn gate_table() {
        use GateVerdict::*;
        // (onNoData, result, since, passed, failed?, pending)
        let cases: Vec<(OnNoData, Option<GateResult>, u64, u32, bool, usize)> = vec![
            (OnNoData::Wait, None, 0, 0, false, 1),
            (OnNoData::Pass, None, 0, 1, false, 0),
            (OnNoData::Fail, None, 0, 0, true, 0),
            (OnNoData::Wait, Some(res(Pass, 5)), 0, 1, false, 0),
            (OnNoData::Wait, Some(res(Pass, 5)), 6, 0, false, 1), // stale result
            (
                OnNoData::Wait,
                Some(res(Fail("503".into()), 5)),
                0,
                0,
                true,
                0,
            ),
            (
                OnNoData::Wait,
                Some(res(Pending("no samples".into()), 5)),
                0,
                0,
                false,
                1,
            ),
            (
                OnNoData::Pass,
                Some(res(Pending("no samples".into()), 5)),
                0,
                1,
                false,
                0,
            ),
            (
                OnNoData::Fail,
                Some(res(Pending("no samples".into()), 5)),
                0,
                0,
                true,
                0,
            ),
            (
                OnNoData::Pass,
                Some(res(Fail("bad".into()), 5)),
                0,
                0,
                true,
                0,
            ),
        ];
        for (on, r, since, passed, failed, pending) in cases {
            let gates = vec![webhook(on)];
            let results: Vec<GateResult> = r.into_iter().collect();
            let s = evaluate(&gates, &results, Time(since));
            assert_eq!(
                (s.passed, s.failed.is_some(), s.pending.len()),
                (passed, failed, pending),
                "onNoData {on:?} results {results:?} since {since}"
            );
        }
    }

    #[test]
    fn failure_names_the_gate() {
        let gates = vec![webhook(OnNoData::Wait)];
        let s = evaluate(
            &gates,
            &[res(GateVerdict::Fail("returned 500".into()), 1)],
            Time(0),
        );
        assert_eq!(
            s.failed.as_deref(),
            Some("gate webhook failed: returned 500")
        );
    }
}
