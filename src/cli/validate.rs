//! `floyd validate [<dir>]`: load + validate + render the base values and
//! every environment; print every problem once, one per line, to stderr.

use crate::manifest::{ConfigRepo, Diagnostic, Error};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config repository directory.
    #[arg(default_value = ".", env = "FLOYD_CONFIG_DIR")]
    pub dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let repo = ConfigRepo::read(&args.dir).map_err(|e| super::CliError::usage(e.to_string()))?;
    let envs = repo.environments();
    let targets: Vec<Option<&str>> = std::iter::once(None)
        .chain(envs.iter().map(|e| Some(e.as_str())))
        .collect();
    // Each problem once, with the renders it showed up in.
    let mut problems: Vec<(Diagnostic, Vec<&str>)> = Vec::new();
    let mut base_services = 0;
    for env in &targets {
        let label = env.unwrap_or("base");
        match repo.release(*env) {
            Ok(r) => {
                if env.is_none() {
                    base_services = r.services.len();
                }
            }
            Err(Error::Invalid(diags)) => {
                for d in diags {
                    match problems.iter_mut().find(|(p, _)| *p == d) {
                        Some((_, labels)) => labels.push(label),
                        None => problems.push((d, vec![label])),
                    }
                }
            }
            Err(e) => return Err(super::CliError::usage(e.to_string())),
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
    problems
        .sort_by(|(a, _), (b, _)| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    for (mut d, labels) in problems.iter().cloned() {
        d.file = shown_path(&args.dir, &d.file);
        if labels.len() < targets.len() {
            d.message = format!("{} [{}]", d.message, labels.join(", "));
        }
        eprintln!("{d}");
    }
    eprintln!(
        "error: {} problem(s) in {}",
        problems.len(),
        args.dir.display()
    );
    Ok(2)
}

/// A diagnostic's file as the user can open it from where they ran `floyd`.
pub(crate) fn shown_path(dir: &Path, file: &Path) -> PathBuf {
    if dir == Path::new(".") {
        file.to_path_buf()
    } else {
        dir.join(file)
    }
}
