//! `floyd reference [--man <dir>]`: the command-line reference, generated
//! from the clap definitions so it cannot drift from them. Markdown on
//! stdout (checked in as `docs/cli.md`; a test fails when that file is out
//! of date), or one man page per command with `--man` (`clap_mangen`).

use clap::{Arg, ArgAction, Command, CommandFactory};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write man pages (`floyd.1`, `floyd-run.1`, ...) into this directory
    /// instead of printing the Markdown reference.
    #[arg(long, value_name = "DIR")]
    pub man: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    match args.man {
        Some(dir) => {
            let written = man_pages(&dir)?;
            println!("wrote {} man pages to {}", written, dir.display());
        }
        None => print!("{}", markdown()),
    }
    Ok(0)
}

/// The public commands: hidden ones (internal helpers) are left out.
fn visible(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|c| !c.is_hide_set())
}

fn documented_args(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
}

/// The whole reference as Markdown (what `docs/cli.md` holds).
pub fn markdown() -> String {
    let root = super::Cli::command();
    let mut out = String::new();
    let _ = writeln!(out, "# Floyd command-line reference\n");
    let _ = writeln!(
        out,
        "Generated from the command definitions by `floyd reference > docs/cli.md` \
         (man pages: `floyd reference --man <dir>`); the test `cli_reference_is_up_to_date` \
         fails when this file is out of date. `floyd <command> --help` prints the same text.\n"
    );
    let _ = writeln!(out, "## Exit codes\n");
    let _ = writeln!(
        out,
        "Every command follows one convention:\n\n\
         | code | meaning |\n|---|---|\n\
         | 0 | success, or nothing to report |\n\
         | 1 | the command's negative answer: `diff` found changes, `watch` saw the rollout fail, \
         `status` has a Failed or Degraded service, `simulate` ended Failed, a manual control was refused |\n\
         | 2 | usage or invalid input: unknown flag, invalid config repo, unknown service |\n\
         | 3 | cannot reach the server (or it cannot serve: controller not running) or the repository |\n\n\
         The contract (`CONTRACT.md`) defines 0, 1 and 2; 3 is an extension so that a script can \
         tell \"the answer is no\" from \"could not ask\" (before, an unreachable server was 1). \
         Errors go to stderr, one line each. Each command's own meanings are listed below.\n"
    );
    let _ = writeln!(out, "## Environment variables\n");
    let _ = writeln!(
        out,
        "Every flag that has one reads `FLOYD_<FLAG_NAME>` (upper case, `-` as `_`), e.g. \
         `--state-dir` and `FLOYD_STATE_DIR`; a flag on the command line wins. `FLOYD_OUTPUT` \
         is the output format of every command with `-o` (`text` or `json`; `render` also \
         `yaml`, which `text` means there). `FLOYD_VALIDATE_OUTPUT`, its old name for \
         `validate`, is still read when `FLOYD_OUTPUT` is unset. `floyd sample-app` reads \
         `PORT` (set by the local runtime) and `SAMPLE_*`.\n"
    );
    let _ = writeln!(out, "## Commands\n");
    for sub in visible(&root) {
        let _ = writeln!(
            out,
            "- [`floyd {}`](#floyd-{}): {}",
            sub.get_name(),
            sub.get_name(),
            about(sub)
        );
    }
    let _ = writeln!(out);
    let mut global = Vec::new();
    for a in documented_args(&root) {
        global.push(a.clone());
    }
    for sub in visible(&root) {
        let _ = writeln!(out, "## floyd {}\n", sub.get_name());
        let _ = writeln!(out, "{}\n", about(sub));
        let mut sub = sub.clone().bin_name(format!("floyd {}", sub.get_name()));
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        let _ = writeln!(out, "```\n{usage}\n```\n");
        let args: Vec<&Arg> = documented_args(&sub)
            .filter(|a| !a.is_global_set())
            .collect();
        if !args.is_empty() {
            let _ = writeln!(out, "| argument | environment | default | description |");
            let _ = writeln!(out, "|---|---|---|---|");
            for a in args {
                let _ = writeln!(out, "{}", arg_row(a));
            }
            let _ = writeln!(out);
        }
        if let Some(after) = sub.get_after_help() {
            let _ = writeln!(out, "{}\n", one_line(&after.to_string()));
        }
    }
    let _ = writeln!(out, "## Global flags\n");
    let _ = writeln!(out, "| argument | environment | default | description |");
    let _ = writeln!(out, "|---|---|---|---|");
    for a in &global {
        let _ = writeln!(out, "{}", arg_row(a));
    }
    out
}

fn about(cmd: &Command) -> String {
    cmd.get_about()
        .map(|s| one_line(&s.to_string()))
        .unwrap_or_default()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn arg_row(a: &Arg) -> String {
    let name = if a.is_positional() {
        format!("`<{}>`", a.get_id().as_str().to_uppercase())
    } else {
        let mut n = String::new();
        if let Some(s) = a.get_short() {
            let _ = write!(n, "`-{s}`, ");
        }
        if let Some(l) = a.get_long() {
            let _ = write!(n, "`--{l}`");
        }
        let takes_value = !matches!(
            a.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        if takes_value {
            let v = a
                .get_value_names()
                .and_then(|v| v.first().map(|s| s.to_string()))
                .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
            let _ = write!(n, " `<{v}>`");
        }
        if let Some(aliases) = a.get_visible_aliases() {
            for al in aliases {
                let _ = write!(n, ", `--{al}`");
            }
        }
        n
    };
    let env = a
        .get_env()
        .map(|e| format!("`{}`", e.to_string_lossy()))
        .unwrap_or_default();
    let is_flag = matches!(a.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let default = a
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .filter(|_| !is_flag)
        .collect::<Vec<_>>()
        .join(", ");
    let mut help = a
        .get_long_help()
        .or(a.get_help())
        .map(|h| one_line(&h.to_string()))
        .unwrap_or_default();
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| match v.get_help() {
            Some(h) => format!("`{}` ({})", v.get_name(), one_line(&h.to_string())),
            None => format!("`{}`", v.get_name()),
        })
        .collect();
    if !help.is_empty() && !help.ends_with('.') {
        help.push('.');
    }
    if !values.is_empty() && !is_flag {
        let _ = write!(help, " Values: {}.", values.join(", "));
    }
    format!(
        "| {name} | {env} | {default} | {} |",
        help.replace('|', "\\|")
    )
}

/// Writes `floyd.1` and one `floyd-<command>.1` per public command.
pub fn man_pages(dir: &std::path::Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)
        .map_err(|e| super::CliError::usage(format!("--man {}: {e}", dir.display())))?;
    let root = super::Cli::command();
    let mut n = 0;
    let mut write = |name: String, cmd: Command| -> anyhow::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.clone())
            .render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        n += 1;
        Ok(())
    };
    write("floyd".into(), root.clone())?;
    for sub in visible(&root) {
        let name = format!("floyd-{}", sub.get_name());
        let cmd = sub
            .clone()
            .bin_name(format!("floyd {}", sub.get_name()))
            .version(env!("CARGO_PKG_VERSION"));
        write(name, cmd)?;
    }
    Ok(n)
}

/// Every public argument, as `command --flag`, that has no description.
pub fn undescribed() -> Vec<String> {
    let root = super::Cli::command();
    let mut out = Vec::new();
    for sub in visible(&root) {
        for a in documented_args(sub) {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{} {}", sub.get_name(), a.get_id()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_public_argument_has_a_description() {
        assert_eq!(super::undescribed(), Vec::<String>::new());
    }

    #[test]
    fn runtime_lists_its_values() {
        let md = super::markdown();
        let row = md
            .lines()
            .find(|l| l.starts_with("| `--runtime`"))
            .expect("--runtime row");
        assert!(row.contains("`local`") && row.contains("`kube`"), "{row}");
    }
}
