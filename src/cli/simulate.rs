//! `floyd simulate <file|dir>... [-o text|json]` and `floyd simulate
//! <config-repo> --service <name> [--environment e] [--from <git-rev>]`: the
//! engine on the `sim` runtime in virtual time.
//!
//! A simulation file holds `service:` (a full `kind: Service` document,
//! validated like any in a config repo), `start:` (how the revision running
//! before the rollout differs from the spec's template; omit it for a first
//! deployment) and `scenario:` (instance behaviour, GPU inventory, gate
//! results, timed events). See docs/engine.md. With `--service`, the path is
//! a config repository: the target is the service as rendered from the
//! directory, the start is the same service at the Git revision `--from`
//! (default `HEAD~1`), and instances behave as the default scenario says.
//!
//! Every file is checked before anything runs; every problem is reported
//! with `file:line:col` and a hint by the same reporter as `floyd validate`.
//! Revisions are named by their labels (`start`, `target`, newRevision
//! names), in that order, in text and JSON alike.
//!
//! Exit codes: 0 every rollout completed, 1 one failed (rolled back or not),
//! 2 invalid input, 3 the config repository cannot be opened with Git.

use super::CliError;
use crate::engine::Phase;
use crate::manifest::{self, Diagnostic, InstanceTemplate, Revision, revision_of};
use crate::runtime::sim::scenario::{Scenario, ScenarioError, Simulation, TemplateChange, Tick};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulation files, or directories of them (every `*.yaml`/`*.yml` in
    /// them); with `--service`, one config repository.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Output format: a timeline for people, or one JSON object per line.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "text",
        env = "FLOYD_OUTPUT"
    )]
    pub output: Output,
    /// Same as `-o json` (the older spelling).
    #[arg(long)]
    pub json: bool,
    /// Simulate this service's rollout as rendered from the config repository PATH.
    #[arg(long)]
    pub service: Option<String>,
    /// Environment from floyd.yaml to render (with `--service`).
    #[arg(long, short = 'e', requires = "service", env = "FLOYD_ENVIRONMENT")]
    pub environment: Option<String>,
    /// The Git revision whose rendering of the service runs before the
    /// rollout (with `--service`) [default: HEAD~1].
    #[arg(long, requires = "service", value_name = "GIT_REV")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per state change: counts per revision, events.
    Text,
    /// One JSON object per line, then a result line.
    Json,
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

/// A serde-saphyr message (`error: line L column C: msg`) as a diagnostic.
fn positioned(file: &Path, msg: &str) -> Diagnostic {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    let mut d = Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message: msg.to_string(),
        hint: None,
    };
    if let Some(rest) = msg.strip_prefix("line ")
        && let Some((line, rest)) = rest.split_once(" column ")
        && let Some((col, text)) = rest.split_once(": ")
        && let (Ok(line), Ok(col)) = (line.parse::<usize>(), col.parse::<usize>())
    {
        d.line = line;
        d.column = col;
        d.message = text.to_string();
    }
    if d.message.starts_with("unknown field") {
        d.hint = Some("see the simulation file format in docs/engine.md".into());
    }
    d
}

/// Reads and validates a simulation file; every problem as a diagnostic.
pub fn load(text: &str, file: &Path) -> Result<Input, Vec<Diagnostic>> {
    let rest: SimFile = serde_saphyr::from_str(text).map_err(|e| {
        vec![positioned(
            file,
            e.to_string().lines().next().unwrap_or("invalid YAML"),
        )]
    })?;
    let Some((block, line_offset, indent)) = service_block(text) else {
        return Err(vec![Diagnostic {
            file: file.to_path_buf(),
            line: manifest::yaml_position(text, "service").map_or(0, |p| p.0),
            column: manifest::yaml_position(text, "service").map_or(0, |p| p.1),
            path: "service".into(),
            message: "expected a block mapping holding a `kind: Service` document".into(),
            hint: Some(
                "write `service:` on its own line with the document indented below it".into(),
            ),
        }]);
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
                d
            })
            .collect::<Vec<_>>(),
        other => vec![Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            path: "service".into(),
            message: other.to_string(),
            hint: None,
        }],
    })?;
    Ok(Input {
        service,
        start: rest.start,
        scenario: rest.scenario,
    })
}

/// A scenario that makes no sense, positioned in the file's text.
fn scenario_diagnostic(file: &Path, text: &str, e: &ScenarioError) -> Diagnostic {
    let full = e.to_string();
    let (path, message) = full.split_once(": ").unwrap_or(("scenario", full.as_str()));
    let (line, column) = manifest::yaml_position(text, path).unwrap_or((0, 0));
    let hint = match e {
        ScenarioError::GateCount { want, .. } => Some(format!(
            "give one entry per gate of service.spec.gates, in the same order ({want}), or leave scenario.gates out"
        )),
        ScenarioError::EventShape { .. } => {
            Some("e.g. `{ at: 30, command: promote }` or `{ at: 60, replicas: 6 }`".into())
        }
        ScenarioError::EventTime { .. } => {
            Some("seconds since the rollout started, e.g. `at: 30`".into())
        }
        ScenarioError::UnknownRevision { .. } => None,
    };
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        path: path.to_string(),
        message: message.to_string(),
        hint,
    }
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

/// One simulation ready to run: where it came from, the simulation, and
/// what the legend says about its revisions.
struct Prepared {
    /// The file (or config repository) it came from.
    source: PathBuf,
    sim: Simulation,
    /// The revision running before the rollout, if any.
    start: Option<Revision>,
    /// Extra words for the legend, by revision (e.g. the Git revision).
    notes: BTreeMap<Revision, String>,
}

/// The simulation files named by `paths`: files as given, directories
/// expanded to their `*.yaml`/`*.yml` files (sorted).
fn expand(paths: &[PathBuf], problems: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|f| {
                            f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml")
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            if files.is_empty() {
                problems.push(file_problem(
                    p,
                    "no *.yaml or *.yml simulation files in this directory",
                    Some("to simulate a service of a config repository, add --service <name>"),
                ));
            }
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn file_problem(file: &Path, message: &str, hint: Option<&str>) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        path: String::new(),
        message: message.to_string(),
        hint: hint.map(str::to_string),
    }
}

/// Loads and checks one simulation file.
fn prepare_file(file: &Path) -> Result<Prepared, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![file_problem(file, &format!("cannot read: {e}"), None)])?;
    let input = load(&text, file)?;
    let start = input
        .start
        .as_ref()
        .map(|c| revision_of(&c.apply(&input.service.spec.template)));
    let sim = Simulation::new(
        input.service.name.clone(),
        input.service.spec,
        input.start.as_ref(),
        &input.scenario,
    )
    .map_err(|e| vec![scenario_diagnostic(file, &text, &e)])?;
    Ok(Prepared {
        source: file.to_path_buf(),
        sim,
        start,
        notes: BTreeMap::new(),
    })
}

/// Removes a scratch directory when dropped.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the tree of `commit` under `prefix` into `dir`.
fn extract(repo: &git2::Repository, tree: &git2::Tree<'_>, dir: &Path) -> Result<(), git2::Error> {
    std::fs::create_dir_all(dir).map_err(|e| git2::Error::from_str(&e.to_string()))?;
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        let path = dir.join(name);
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                extract(repo, &sub, &path)?;
            }
            Some(git2::ObjectType::Blob) => {
                let blob = repo.find_blob(entry.id())?;
                std::fs::write(&path, blob.content())
                    .map_err(|e| git2::Error::from_str(&e.to_string()))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// `--service`: the target from the directory as it is, the start from the
/// same directory at the Git revision `from`.
fn prepare_repo(
    args: &Args,
    dir: &Path,
    service: &str,
) -> anyhow::Result<Result<Prepared, Vec<Diagnostic>>> {
    let env = args.environment.as_deref();
    let target = match manifest::load_release(dir, env) {
        Ok(r) => r,
        Err(manifest::Error::Invalid(mut diags)) => {
            for d in &mut diags {
                d.file = super::validate::shown_path(dir, &d.file);
            }
            return Ok(Err(diags));
        }
        Err(e) => return Err(CliError::usage(e.to_string())),
    };
    let Some(svc) = target.service(service).cloned() else {
        let known: Vec<&str> = target.services.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::usage(format!(
            "--service {service:?}: {} defines no such service; it defines: {}",
            dir.display(),
            known.join(", ")
        )));
    };
    let from = args.from.as_deref().unwrap_or("HEAD~1");
    let repo = git2::Repository::discover(dir).map_err(|e| {
        CliError::unreachable(format!(
            "{}: cannot open the Git repository: {} (--from needs the config repo's Git history)",
            dir.display(),
            e.message()
        ))
    })?;
    let commit = repo
        .revparse_single(from)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| {
            CliError::usage(format!(
                "--from {from:?}: not a commit of {}: {}",
                dir.display(),
                e.message()
            ))
        })?;
    let workdir = repo.workdir().ok_or_else(|| {
        CliError::usage(format!(
            "{}: a bare repository has no files to render",
            dir.display()
        ))
    })?;
    let abs = std::fs::canonicalize(dir)?;
    let root = std::fs::canonicalize(workdir)?;
    let prefix = abs
        .strip_prefix(&root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let tree = commit.tree()?;
    let sub = if prefix.as_os_str().is_empty() {
        Some(tree)
    } else {
        tree.get_path(&prefix)
            .ok()
            .and_then(|e| repo.find_tree(e.id()).ok())
    };
    let short = commit.id().to_string()[..7].to_string();
    let mut start: Option<(InstanceTemplate, String)> = None;
    if let Some(sub) = sub {
        let scratch = Scratch(std::env::temp_dir().join(format!(
            "floyd-simulate-{}-{}",
            std::process::id(),
            short
        )));
        extract(&repo, &sub, &scratch.0)
            .map_err(|e| anyhow::anyhow!("cannot read {from} from Git: {}", e.message()))?;
        match manifest::load_release(&scratch.0, env) {
            Ok(r) => {
                if let Some(s) = r.service(service) {
                    start = Some((s.spec.template.clone(), "start".into()));
                }
            }
            Err(e) => {
                return Err(CliError::usage(format!(
                    "--from {from:?} ({short}): the config repository there does not render: {}",
                    e.to_string().lines().next().unwrap_or_default()
                )));
            }
        }
    }
    let start_rev = start.as_ref().map(|(t, _)| revision_of(t));
    let mut notes = BTreeMap::new();
    if let Some(r) = &start_rev {
        notes.insert(r.clone(), format!("{from}, {short}"));
    }
    notes.insert(svc.revision.clone(), "the working tree".into());
    let sim = Simulation::from_start(
        svc.name.clone(),
        svc.spec.clone(),
        start,
        &Scenario::default(),
    )
    .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(Ok(Prepared {
        source: dir.to_path_buf(),
        sim,
        start: start_rev,
        notes,
    }))
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let json = args.json || args.output == Output::Json;
    let mut problems = Vec::new();
    let mut prepared = Vec::new();
    if let Some(service) = &args.service {
        let [dir] = args.paths.as_slice() else {
            return Err(CliError::usage(
                "--service takes one config repository (give one PATH)",
            ));
        };
        match prepare_repo(&args, dir, service)? {
            Ok(p) => prepared.push(p),
            Err(d) => problems.extend(d),
        }
    } else {
        for file in expand(&args.paths, &mut problems) {
            match prepare_file(&file) {
                Ok(p) => prepared.push(p),
                Err(d) => problems.extend(d),
            }
        }
    }
    if !problems.is_empty() {
        let what = args
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        super::validate::report(&problems, &what);
        return Ok(2);
    }
    let many = prepared.len() > 1;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut code = 0;
    for (i, p) in prepared.into_iter().enumerate() {
        if p.start.as_ref() == Some(&p.sim.state.target) {
            // `--service` with a service the change did not touch.
            writeln!(
                out,
                "{}: the same revision {} at --from {} and in {}; nothing to roll out",
                p.sim.name,
                p.sim.state.target,
                args.from.as_deref().unwrap_or("HEAD~1"),
                p.source.display()
            )?;
            continue;
        }
        if many && !json {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "== {} ==", p.source.display())?;
        }
        match simulate_one(p, json, many, &mut out) {
            Ok(Phase::Complete) => {}
            Ok(_) => code = 1,
            // A closed pipe (`| head`) is not a failed rollout.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(code),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(code)
}

/// Text: the revisions' labels in place of their hashes.
fn relabel(s: &str, labels: &BTreeMap<Revision, String>) -> String {
    let mut s = s.to_string();
    for (rev, label) in labels {
        s = s.replace(&format!("{label} ({rev})"), label);
        s = s.replace(rev.as_str(), label);
    }
    s
}

/// Runs one simulation, printing its timeline; returns its result.
fn simulate_one(
    p: Prepared,
    json: bool,
    many: bool,
    out: &mut impl Write,
) -> std::io::Result<Phase> {
    let Prepared {
        source,
        mut sim,
        start,
        notes,
    } = p;
    let name = sim.name.clone();
    let strategy = sim.spec.strategy_name();
    let replicas = sim.spec.replicas;
    let blue_green = strategy == "BlueGreen";
    let target = sim.state.target.clone();
    // Columns in a stable order: start, target, later revisions as they appear.
    let mut order: Vec<Revision> = start.iter().cloned().collect();
    if !order.contains(&target) {
        order.push(target.clone());
    }
    let file = source.display().to_string();
    if !json {
        let legend: Vec<String> = order
            .iter()
            .map(|r| {
                let label = sim.label(r);
                match notes.get(r) {
                    Some(n) => format!("{label} = {r} ({n})"),
                    None => format!("{label} = {r}"),
                }
            })
            .collect();
        writeln!(
            out,
            "simulating {name} ({strategy}, {replicas} replicas): {}",
            legend.join(", ")
        )?;
        writeln!(out, "counts are replicas/ready/available per revision")?;
    }
    // Every revision is named up front (newRevision events included).
    let labels = sim.labels.clone();
    let mut write_err: Option<std::io::Error> = None;
    let mut first = true;
    let outcome = sim.run(|tick: &Tick, world| {
        for r in tick.revisions.keys() {
            if !order.contains(r) {
                order.push(r.clone());
            }
        }
        let labels = &labels;
        let label = |r: &Revision| labels.get(r).cloned().unwrap_or_else(|| r.to_string());
        let traffic = if blue_green {
            let o = world.observe(&name, None);
            Some((o.active.as_ref().map(label), o.preview.as_ref().map(label)))
        } else {
            None
        };
        let present: Vec<&Revision> = order
            .iter()
            .filter(|r| tick.revisions.contains_key(*r))
            .collect();
        let line = if json {
            let mut revs = String::from("{");
            for (i, r) in present.iter().enumerate() {
                let (a, b, c) = tick.revisions[*r];
                if i > 0 {
                    revs.push(',');
                }
                revs.push_str(&format!(
                    "{}:{}",
                    serde_json::Value::String(label(r)),
                    serde_json::json!({"replicas": a, "ready": b, "available": c})
                ));
            }
            revs.push('}');
            let mut fields = vec![
                format!("\"t\":{}", serde_json::json!(tick.t)),
                format!("\"revision\":{revs}"),
                format!(
                    "\"event\":{}",
                    serde_json::Value::String(relabel(&tick.events.join("; "), labels))
                ),
                format!("\"phase\":{}", serde_json::json!(tick.phase.as_str())),
                format!(
                    "\"reason\":{}",
                    serde_json::Value::String(relabel(&tick.reason, labels))
                ),
            ];
            if let Some((active, preview)) = &traffic {
                fields.push(format!("\"active\":{}", serde_json::json!(active)));
                fields.push(format!("\"preview\":{}", serde_json::json!(preview)));
            }
            if let Some(w) = tick.weight {
                fields.push(format!("\"weight\":{w}"));
            }
            if let Some(c) = &tick.canary {
                fields.push(format!("\"step\":{}", serde_json::json!(step_label(c))));
            }
            if first {
                let mut all = order.clone();
                all.extend(labels.keys().filter(|r| !order.contains(r)).cloned());
                let l: Vec<String> = all
                    .iter()
                    .map(|r| {
                        format!(
                            "{}:{}",
                            serde_json::json!(label(r)),
                            serde_json::json!(r.as_str())
                        )
                    })
                    .collect();
                fields.push(format!("\"labels\":{{{}}}", l.join(",")));
            }
            if many {
                fields.push(format!("\"file\":{}", serde_json::json!(file)));
            }
            format!("{{{}}}", fields.join(","))
        } else {
            let counts: Vec<String> = present
                .iter()
                .map(|r| {
                    let (a, b, c) = tick.revisions[*r];
                    format!("{} {a}/{b}/{c}", label(r))
                })
                .collect();
            let mut line = format!(
                "t={:>6}s  {:<17}  {}",
                fmt_secs(tick.t),
                tick.phase.as_str(),
                counts.join("  ")
            );
            if let Some((active, preview)) = &traffic {
                line.push_str(&format!(
                    "  active {}  preview {}",
                    active.as_deref().unwrap_or("-"),
                    preview.as_deref().unwrap_or("-")
                ));
            }
            if let Some(w) = tick.weight {
                line.push_str(&format!("  weight {w:>3}%"));
            }
            if let Some(c) = &tick.canary {
                line.push_str(&format!("  [{}]", step_label(c)));
            }
            if !tick.events.is_empty() {
                line.push_str("  | ");
                line.push_str(&relabel(&tick.events.join("; "), labels));
            }
            line
        };
        first = false;
        if write_err.is_none()
            && let Err(e) = writeln!(out, "{line}")
        {
            write_err = Some(e);
        }
    });
    if let Some(e) = write_err {
        return Err(e);
    }
    let result = if outcome.result == Phase::Complete {
        "Complete"
    } else {
        "Failed"
    };
    if json {
        let mut v = serde_json::json!({"t": outcome.t, "result": result, "reason": relabel(&outcome.reason, &labels)});
        if many && let Some(m) = v.as_object_mut() {
            m.insert("file".into(), serde_json::json!(file));
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "result: {result} after {} s: {}",
            fmt_secs(outcome.t),
            relabel(&outcome.reason, &labels)
        )?;
    }
    Ok(outcome.result)
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
