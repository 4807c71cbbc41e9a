//! Tables and cells for a person: revisions, readiness, canary steps.

use crate::hub::ServiceView;
use std::time::Duration;

pub(super) fn short(s: &str) -> &str {
    s.get(..8).unwrap_or(s)
}

pub(super) fn rev_str(r: Option<&crate::manifest::Revision>) -> String {
    r.map(|r| short(r.as_str()).to_string())
        .unwrap_or_else(|| "-".into())
}

pub(super) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `aaaaaaaa → bbbbbbbb` while rolling, one revision when settled.
pub(super) fn revisions_cell(v: &ServiceView) -> String {
    match (&v.current_revision, &v.target_revision) {
        (Some(c), Some(t)) if c != t => format!("{} → {}", short(c.as_str()), short(t.as_str())),
        (c, t) => rev_str(t.as_ref().or(c.as_ref())),
    }
}

/// A canary's step and weight: `step 2/6 pause 60s, weight 5%`.
pub fn canary_cell(c: &crate::engine::CanaryStatus) -> String {
    if c.step >= c.steps {
        format!("promoting, weight {}%", c.weight)
    } else {
        format!(
            "step {}/{} {}, weight {}%",
            c.step + 1,
            c.steps,
            c.current,
            c.weight
        )
    }
}

/// The strategy, with a canary's step and weight.
pub(super) fn strategy_cell(v: &ServiceView) -> String {
    match &v.canary {
        Some(c) => format!("{} ({})", v.strategy, canary_cell(c)),
        None => v.strategy.clone(),
    }
}

/// Ready instances of the target revision / replicas wanted.
pub(super) fn ready_cell(v: &ServiceView) -> String {
    let ready = v
        .target_revision
        .as_ref()
        .and_then(|t| v.revisions.iter().find(|r| &r.revision == t))
        .map(|r| r.ready)
        .unwrap_or(0);
    format!("{ready}/{}", v.replicas)
}

/// A plain table: columns padded to their widest cell (by chars).
pub(super) fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// The `floyd status` table.
pub fn status_table(services: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.phase.as_str().to_string(),
                strategy_cell(v),
                revisions_cell(v),
                ready_cell(v),
                v.commit
                    .as_ref()
                    .map(|c| {
                        format!(
                            "{} {}",
                            short(&c.sha).get(..7).unwrap_or(""),
                            truncate(&c.summary, 50)
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "PHASE",
            "STRATEGY",
            "REVISIONS",
            "READY",
            "COMMIT",
        ],
        &rows,
    )
}

pub(super) fn when(t: crate::time::Time) -> String {
    let st = std::time::UNIX_EPOCH + Duration::from_millis(t.as_millis());
    humantime::format_rfc3339_seconds(st).to_string()
}
