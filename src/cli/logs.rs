//! `floyd logs <service> [--revision r] [--since 10m] [-f]`: instance logs of
//! the local runtime.
//!
//! Reads `<state-dir>/local/logs/<service>/<revision>/<instance>.log` (and the
//! rotated `.log.N` files before it) and prints each line prefixed with when
//! it was written (to about a second, from the runtime's notes: see
//! `runtime::local::logtimes`) and the instance. `-f` follows: new lines, new
//! instances, truncation by rotation.

use crate::runtime::local::logtimes;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Service name (`metadata.name`).
    pub service: String,
    /// Only this revision: any unique prefix of at least 4 characters
    /// (`floyd status` shows 8).
    #[arg(long)]
    pub revision: Option<String>,
    /// Keep printing new lines (and new instances) until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines written since then: a duration back from now (`10m`,
    /// `1h30m`) or a time (`2026-12-01T08:00:00Z`).
    #[arg(long, value_parser = parse_since, value_name = "WHEN")]
    pub since: Option<u64>,
    /// Leave out the time in front of each line.
    #[arg(long)]
    pub no_timestamps: bool,
    /// State directory of the controller.
    #[arg(long, env = "FLOYD_STATE_DIR", default_value = ".floyd")]
    pub state_dir: PathBuf,
}

/// Shortest revision prefix accepted (`floyd status` shows 8 characters).
pub const MIN_PREFIX: usize = 4;

/// The one revision among `known` that `prefix` names: a unique prefix of
/// at least [`MIN_PREFIX`] characters (or the whole revision).
pub fn resolve_revision<'a>(prefix: &str, known: &'a [String]) -> Result<&'a str, String> {
    let list = || {
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    };
    if let Some(exact) = known.iter().find(|k| *k == prefix) {
        return Ok(exact);
    }
    if prefix.chars().count() < MIN_PREFIX {
        return Err(format!(
            "--revision {prefix:?}: give at least {MIN_PREFIX} characters; revisions: {}",
            list()
        ));
    }
    let matches: Vec<&String> = known.iter().filter(|k| k.starts_with(prefix)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "--revision {prefix:?}: no such revision; revisions: {}",
            list()
        )),
        many => Err(format!(
            "--revision {prefix:?} is ambiguous: {}",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The revisions with logs under `root`, sorted.
fn revisions(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Current log files (`*.log`) of a service, by instance, with their revision.
fn log_files(root: &Path, revision: Option<&str>) -> BTreeMap<PathBuf, (String, String)> {
    let mut out = BTreeMap::new();
    let Ok(revs) = std::fs::read_dir(root) else {
        return out;
    };
    for rev in revs.flatten() {
        let rev_name = rev.file_name().to_string_lossy().into_owned();
        if revision.is_some_and(|r| r != rev_name) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(rev.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(inst) = name.strip_suffix(".log") {
                out.insert(f.path(), (rev_name.clone(), inst.to_string()));
            }
        }
    }
    out
}

/// `--since`: a duration back from now, or an RFC 3339 time; unix ms.
fn parse_since(s: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(s) {
        Ok(d) => now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?} is neither a duration (10m, 1h30m) nor a time (2026-12-01T08:00:00Z)")
        })?,
    };
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

/// How lines are printed: the instance prefix, and times unless turned off.
struct Printer {
    timestamps: bool,
    since: Option<u64>,
}

impl Printer {
    /// Prints the whole lines of `bytes`, which start at byte `start` of a
    /// file whose notes are `notes` (modification time `mtime`).
    fn print(
        &self,
        out: &mut impl Write,
        prefix: &str,
        bytes: &[u8],
        start: u64,
        notes: &[(u64, u64)],
        mtime: u64,
    ) -> std::io::Result<()> {
        let mut end = start;
        for raw in bytes.split_inclusive(|b| *b == b'\n') {
            end += raw.len() as u64;
            let at = logtimes::time_of(notes, end, mtime);
            if self.since.is_some_and(|s| at < s) {
                continue;
            }
            let line = String::from_utf8_lossy(raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if self.timestamps {
                let t = std::time::UNIX_EPOCH + Duration::from_millis(at);
                writeln!(
                    out,
                    "{} {prefix} {line}",
                    humantime::format_rfc3339_seconds(t)
                )?;
            } else {
                writeln!(out, "{prefix} {line}")?;
            }
        }
        Ok(())
    }
}

fn mtime_ms(p: &Path) -> u64 {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    crate::time::Time::now_wall().as_millis()
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if crate::manifest::ServiceName::parse(&args.service).is_err() {
        return Err(super::CliError::usage(format!(
            "{:?} is not a service name",
            args.service
        )));
    }
    let root = args
        .state_dir
        .join("local")
        .join("logs")
        .join(&args.service);
    let revision = match &args.revision {
        Some(p) => Some(
            resolve_revision(p, &revisions(&root))
                .map_err(super::CliError::usage)?
                .to_string(),
        ),
        None => None,
    };
    let files = log_files(&root, revision.as_deref());
    if files.is_empty() && !args.follow {
        return Err(super::CliError::usage(format!(
            "no logs for service {}{} under {} (is --state-dir the controller's state directory?)",
            args.service,
            revision
                .as_deref()
                .map(|r| format!(" revision {r}"))
                .unwrap_or_default(),
            root.display()
        )));
    }
    let printer = Printer {
        timestamps: !args.no_timestamps,
        since: args.since,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Position reached in each current file.
    let mut offsets: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for (path, (rev, inst)) in &files {
        let prefix = format!("[{inst} {rev}]");
        // Rotated files first, oldest first.
        let mut n = 1;
        let mut rotated = Vec::new();
        loop {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".{n}"));
            let p = PathBuf::from(s);
            if !p.exists() {
                break;
            }
            rotated.push(p);
            n += 1;
        }
        for p in rotated.iter().rev() {
            if let Ok(b) = std::fs::read(p) {
                printer.print(&mut out, &prefix, &b, 0, &logtimes::read(p), mtime_ms(p))?;
            }
        }
        let b = std::fs::read(path).unwrap_or_default();
        printer.print(
            &mut out,
            &prefix,
            &b,
            0,
            &logtimes::read(path),
            mtime_ms(path),
        )?;
        offsets.insert(path.clone(), b.len() as u64);
    }
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(Duration::from_millis(250));
        for (path, (rev, inst)) in log_files(&root, revision.as_deref()) {
            let prefix = format!("[{inst} {rev}]");
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let off = offsets.entry(path.clone()).or_insert(0);
            if len < *off {
                // Rotated (copied away and truncated): start over.
                *off = 0;
            }
            if len == *off {
                continue;
            }
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(*off)).is_ok() && f.read_to_end(&mut buf).is_ok() {
                // Only whole lines; the rest comes next round.
                let end = buf
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map(|p| p + 1)
                    .unwrap_or(0);
                // Read within 250 ms of being written: now is its time.
                printer.print(&mut out, &prefix, &buf[..end], *off, &[], now_ms())?;
                *off += end as u64;
            }
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_revision;

    #[test]
    fn revisions_by_unique_prefix() {
        let known = vec![
            "0a1b2c3d4e".to_string(),
            "0a1bffffff".to_string(),
            "9f9f9f9f9f".to_string(),
        ];
        let table: &[(&str, Result<&str, &str>)] = &[
            ("9f9f", Ok("9f9f9f9f9f")),
            ("9f9f9f9f", Ok("9f9f9f9f9f")),
            ("0a1b2", Ok("0a1b2c3d4e")),
            ("0a1b", Err("ambiguous: 0a1b2c3d4e, 0a1bffffff")),
            (
                "9f9",
                Err("at least 4 characters; revisions: 0a1b2c3d4e, 0a1bffffff, 9f9f9f9f9f"),
            ),
            ("abcd", Err("no such revision; revisions: 0a1b2c3d4e")),
        ];
        for (prefix, want) in table {
            let got = resolve_revision(prefix, &known);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{prefix}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{prefix}: {g}"),
                (g, w) => panic!("{prefix}: got {g:?}, want {w:?}"),
            }
        }
        assert!(
            resolve_revision("abc", &[])
                .unwrap_err()
                .contains("revisions: none")
        );
    }
}
