//! `floyd simulate <file> [--json]`: the engine on the `sim` runtime in
//! virtual time. The file holds `service:` (a full `kind: Service`
//! document, validated like any in a config repo), `start:` (how the
//! revision running before the rollout differs from the spec's template;
//! omit it for a first deployment) and `scenario:` (instance behaviour, GPU
//! inventory, gate results, timed events). See docs/engine.md.
//!
//! Exit codes: 0 the rollout completed, 1 it failed (rolled back or not),
//! 2 the file is invalid.

use super::CliError;
use crate::engine::Phase;
use crate::manifest::{self, Revision};
use crate::runtime::sim::scenario::{Scenario, Simulation, TemplateChange, Tick};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Scenario file: a service spec, the starting revision, the scenario.
    pub file: PathBuf,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// The parts of a simulation file besides `service:` (which is parsed by
/// `manifest::parse_service` for exact positions).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimFile {
    #[allow(dead_code)]
    service: serde::de::IgnoredAny,
    #[serde(default)]
    start: Option<TemplateChange>,
    #[serde(default)]
    scenario: Scenario,
}

/// A parsed, validated simulation file.
pub struct Input {
    pub service: manifest::Service,
    pub start: Option<TemplateChange>,
    pub scenario: Scenario,
}

/// The `service:` block of the file: its text dedented, the line it starts
/// on (0-based offset) and its indentation, so diagnostics can point into
/// the original file.
fn service_block(text: &str) -> Option<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| {
        l.strip_prefix("service:")
            .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
    })?;
    let mut body = Vec::new();
    for l in &lines[start + 1..] {
        let top_level = !l.is_empty() && !l.starts_with(' ') && !l.starts_with('#');
        if top_level {
            break;
        }
        body.push(*l);
    }
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    let dedented: Vec<&str> = body
        .iter()
        .map(|l| match l.get(..indent) {
            Some(p) if p.trim().is_empty() => &l[indent..],
            _ => l.trim_start(),
        })
        .collect();
    Some((dedented.join("\n") + "\n", start + 1, indent))
}

/// `error: line L column C: msg` (serde-saphyr) as `file:L:C: msg`.
fn positioned(file: &Path, msg: &str) -> String {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((line, rest)) = rest.split_once(" column ")
        && let Some((col, text)) = rest.split_once(": ")
        && line.parse::<usize>().is_ok()
        && col.parse::<usize>().is_ok()
    {
        return format!("{}:{line}:{col}: {text}", file.display());
    }
    format!("{}: {msg}", file.display())
}

/// Reads and validates a simulation file; errors are `file:line:col: ...` lines.
pub fn load(text: &str, file: &Path) -> Result<Input, String> {
    let rest: SimFile = serde_saphyr::from_str(text)
        .map_err(|e| positioned(file, e.to_string().lines().next().unwrap_or("invalid YAML")))?;
    let Some((block, line_offset, indent)) = service_block(text) else {
        return Err(format!(
            "{}:0:0: service: expected a block mapping holding a `kind: Service` document (`service:` on its own line, the document indented below it)",
            file.display()
        ));
    };
    let service = manifest::parse_service(&block, file).map_err(|e| match e {
        manifest::Error::Invalid(diags) => diags
            .into_iter()
            .map(|mut d| {
                if d.line > 0 {
                    d.line += line_offset;
                    d.column += indent;
                }
                if !d.path.is_empty() {
                    d.path = format!("service.{}", d.path);
                }
                d.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{}: {other}", file.display()),
    })?;
    Ok(Input {
        service,
        start: rest.start,
        scenario: rest.scenario,
    })
}

/// `step 2/6: pause 60s`, or `promoting` after the last step.
fn step_label(c: &crate::engine::CanaryStatus) -> String {
    if c.step >= c.steps {
        "promoting".to_string()
    } else {
        format!("step {}/{}: {}", c.step + 1, c.steps, c.current)
    }
}

fn fmt_secs(t: f64) -> String {
    if (t - t.round()).abs() < 1e-9 {
        format!("{t:.0}")
    } else {
        format!("{t:.3}")
    }
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", args.file.display())))?;
    let input = load(&text, &args.file).map_err(CliError::usage)?;
    let strategy = input.service.spec.strategy_name();
    let replicas = input.service.spec.replicas;
    let mut sim = Simulation::new(
        input.service.name.clone(),
        input.service.spec,
        input.start.as_ref(),
        &input.scenario,
    )
    .map_err(|e| CliError::usage(format!("{}: {e}", args.file.display())))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let labels: BTreeMap<Revision, String> = sim.labels.clone();
    let relabel = |s: &str, labels: &BTreeMap<Revision, String>| {
        let mut s = s.to_string();
        for (rev, label) in labels {
            s = s.replace(&format!("{label} ({rev})"), label);
            s = s.replace(rev.as_str(), label);
        }
        s
    };
    if !args.json {
        let legend: Vec<String> = labels.iter().map(|(r, l)| format!("{l} = {r}")).collect();
        writeln!(
            out,
            "simulating {} ({strategy}, {replicas} replicas): {}",
            input.service.name,
            legend.join(", ")
        )?;
        writeln!(out, "counts are replicas/ready/available per revision")?;
    }
    let mut write_err: Option<std::io::Error> = None;
    let outcome = sim.run(|tick: &Tick, _| {
        let line = if args.json {
            let revisions: serde_json::Map<String, serde_json::Value> = tick
                .revisions
                .iter()
                .map(|(r, (replicas, ready, available))| {
                    (
                        r.to_string(),
                        serde_json::json!({"replicas": replicas, "ready": ready, "available": available}),
                    )
                })
                .collect();
            let mut v = serde_json::json!({
                "t": tick.t,
                "revision": revisions,
                "event": tick.events.join("; "),
                "phase": tick.phase.as_str(),
                "reason": tick.reason,
            });
            if let Some(m) = v.as_object_mut() {
                if let Some(w) = tick.weight {
                    m.insert("weight".into(), serde_json::json!(w));
                }
                if let Some(c) = &tick.canary {
                    m.insert("step".into(), serde_json::json!(step_label(c)));
                }
            }
            if tick.t == 0.0
                && let Some(m) = v.as_object_mut()
            {
                let l: serde_json::Map<String, serde_json::Value> = labels
                    .iter()
                    .map(|(r, l)| (r.to_string(), serde_json::Value::String(l.clone())))
                    .collect();
                m.insert("labels".into(), serde_json::Value::Object(l));
            }
            v.to_string()
        } else {
            let counts: Vec<String> = tick
                .revisions
                .iter()
                .map(|(r, (a, b, c))| {
                    let name = labels.get(r).cloned().unwrap_or_else(|| r.to_string());
                    format!("{name} {a}/{b}/{c}")
                })
                .collect();
            let mut line = format!(
                "t={:>6}s  {:<17}  {}",
                fmt_secs(tick.t),
                tick.phase.as_str(),
                counts.join("  ")
            );
            if let Some(w) = tick.weight {
                line.push_str(&format!("  weight {w:>3}%"));
            }
            if let Some(c) = &tick.canary {
                line.push_str(&format!("  [{}]", step_label(c)));
            }
            if !tick.events.is_empty() {
                line.push_str("  | ");
                line.push_str(&relabel(&tick.events.join("; "), &labels));
            }
            line
        };
        if write_err.is_none()
            && let Err(e) = writeln!(out, "{line}")
        {
            write_err = Some(e);
        }
    });
    if let Some(e) = write_err {
        // A closed pipe (`| head`) is not a failed rollout.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
        return Ok(if outcome.result == Phase::Complete {
            0
        } else {
            1
        });
    }
    let result = if outcome.result == Phase::Complete {
        "Complete"
    } else {
        "Failed"
    };
    if args.json {
        let v = serde_json::json!({"t": outcome.t, "result": result, "reason": outcome.reason});
        let _ = writeln!(out, "{v}");
    } else {
        let _ = writeln!(
            out,
            "result: {result} after {} s: {}",
            fmt_secs(outcome.t),
            relabel(&outcome.reason, &labels)
        );
    }
    Ok(if outcome.result == Phase::Complete {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_block_is_dedented_with_offsets() {
        let text = "# sim\nservice:\n  apiVersion: floyd.dev/v1\n  kind: Service\n\n  spec:\n    replicas: 2\nscenario:\n  seed: 1\n";
        let (block, offset, indent) = service_block(text).unwrap();
        assert_eq!(offset, 2);
        assert_eq!(indent, 2);
        assert!(
            block.starts_with("apiVersion: floyd.dev/v1\nkind: Service\n\nspec:\n  replicas: 2\n")
        );
        assert!(!block.contains("scenario"));
        assert_eq!(service_block("service: {kind: Service}\n"), None);
    }
}
