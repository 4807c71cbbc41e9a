//! `floyd validate [<dir>] [-o text|json]`: load + validate + render the base
//! values and every environment; report every problem once.
//!
//! Text (default): one `file:line:col: field.path: message` line per problem
//! on stderr, a one-line summary on stdout when valid. JSON: one object on
//! stdout, for CI tools that annotate pull requests.

use crate::manifest::{ConfigRepo, Diagnostic, Error};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
    /// Output format [default: text]. `FLOYD_VALIDATE_OUTPUT`, the older
    /// name of `FLOYD_OUTPUT`, is still read when `FLOYD_OUTPUT` is unset.
    #[arg(long, short = 'o', value_enum, env = "FLOYD_OUTPUT")]
    pub output: Option<Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Problems on stderr, one `file:line:col: field.path: message` line each.
    Text,
    /// One JSON object on stdout (for CI annotations).
    Json,
}

/// `--output`, else the old `FLOYD_VALIDATE_OUTPUT`, else text.
fn output(args: &Args) -> anyhow::Result<Output> {
    if let Some(o) = args.output {
        return Ok(o);
    }
    match std::env::var("FLOYD_VALIDATE_OUTPUT") {
        Ok(v) if !v.is_empty() => <Output as clap::ValueEnum>::from_str(&v, true).map_err(|_| {
            super::CliError::usage(format!(
                "FLOYD_VALIDATE_OUTPUT={v:?}: use text or json (FLOYD_OUTPUT is the current name)"
            ))
        }),
        _ => Ok(Output::Text),
    }
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let format = output(&args)?;
    let repo = ConfigRepo::read(&args.dir).map_err(|e| super::CliError::usage(e.to_string()))?;
    let envs = repo.environments();
    let targets: Vec<Option<&str>> = std::iter::once(None)
        .chain(envs.iter().map(|e| Some(e.as_str())))
        .collect();
    // Each problem once, with the renders it showed up in.
    let mut problems: Vec<(Diagnostic, Vec<&str>)> = Vec::new();
    let mut base_services = 0;
    // Fields only the kube runtime uses, per service: said once, as notes.
    let mut kube_only: std::collections::BTreeMap<String, std::collections::BTreeSet<&str>> =
        Default::default();
    for env in &targets {
        let label = env.unwrap_or("base");
        match repo.release(*env) {
            Ok(r) => {
                if env.is_none() {
                    base_services = r.services.len();
                }
                for s in &r.services {
                    let mut fields = Vec::new();
                    if s.spec.autoscaling.is_some() {
                        fields.push("spec.autoscaling");
                    }
                    if s.spec.template.kubernetes.is_some() {
                        fields.push("spec.template.kubernetes");
                    }
                    if !fields.is_empty() {
                        kube_only
                            .entry(s.name.to_string())
                            .or_default()
                            .extend(fields);
                    }
                }
            }
            Err(Error::Invalid(diags)) => {
                for mut d in diags {
                    // The renderer names the environment for the controller's
                    // logs; here the tag says which renders it showed up in,
                    // so the same problem is printed once.
                    if let Some(e) = env {
                        d.message = d.message.replace(&format!(" (environment {e})"), "");
                    }
                    match problems.iter_mut().find(|(p, _)| *p == d) {
                        Some((_, labels)) => labels.push(label),
                        None => problems.push((d, vec![label])),
                    }
                }
            }
            Err(e) => return Err(super::CliError::usage(e.to_string())),
        }
    }
    problems
        .sort_by(|(a, _), (b, _)| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    for (d, _) in &mut problems {
        d.file = shown_path(&args.dir, &d.file);
    }
    let code = if problems.is_empty() { 0 } else { 2 };

    if format == Output::Json {
        let out = serde_json::json!({
            "valid": problems.is_empty(),
            "services": base_services,
            "environments": envs,
            "problems": problems.iter().map(|(d, labels)| serde_json::json!({
                "file": d.file.to_string_lossy(),
                "line": d.line,
                "column": d.column,
                "path": d.path,
                "message": d.message,
                "hint": d.hint,
                "environments": labels,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(code);
    }

    for (service, fields) in &kube_only {
        for f in fields {
            let what = if *f == "spec.autoscaling" {
                "the local runtime ignores it and runs spec.replicas instances"
            } else {
                "the local runtime ignores it"
            };
            eprintln!("note: service {service}: {f} applies on the kube runtime only; {what}");
        }
    }
    if problems.is_empty() {
        let envs = if envs.is_empty() {
            "none".to_string()
        } else {
            envs.join(", ")
        };
        println!("ok: {base_services} services, environments: {envs}");
        return Ok(0);
    }
    let shown: Vec<Diagnostic> = problems
        .iter()
        .cloned()
        .map(|(mut d, labels)| {
            if labels.len() < targets.len() {
                d.message = format!("{} [{}]", d.message, labels.join(", "));
            }
            d
        })
        .collect();
    report(&shown, &args.dir.display().to_string());
    Ok(code)
}

/// The reporter of every command that reads files: one
/// `file:line:col: field.path: message (hint: ...)` line per problem on
/// stderr, then `error: N problem(s) in <what>`.
pub(crate) fn report(problems: &[Diagnostic], what: &str) {
    for d in problems {
        eprintln!("{d}");
    }
    eprintln!("error: {} problem(s) in {what}", problems.len());
}

/// A diagnostic's file as the user can open it from where they ran `floyd`.
pub(crate) fn shown_path(dir: &Path, file: &Path) -> PathBuf {
    if dir == Path::new(".") {
        file.to_path_buf()
    } else {
        dir.join(file)
    }
}
