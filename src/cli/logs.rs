//! `floyd logs <service> [--revision r] [-f]`: instance logs of the local runtime.
//!
//! Reads `<state-dir>/local/logs/<service>/<revision>/<instance>.log` (and the
//! rotated `.log.N` files before it) and prints each line prefixed with the
//! instance. `-f` follows: new lines, new instances, truncation by rotation.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub service: String,
    #[arg(long)]
    pub revision: Option<String>,
    /// Follow.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// State directory of the controller.
    #[arg(long, env = "FLOYD_STATE_DIR", default_value = ".floyd")]
    pub state_dir: PathBuf,
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

fn print_lines(out: &mut impl Write, prefix: &str, bytes: &[u8]) -> std::io::Result<()> {
    for line in String::from_utf8_lossy(bytes).lines() {
        writeln!(out, "{prefix} {line}")?;
    }
    Ok(())
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
    let files = log_files(&root, args.revision.as_deref());
    if files.is_empty() && !args.follow {
        return Err(super::CliError::failed(format!(
            "no logs for service {}{} under {} (is --state-dir the controller's state directory?)",
            args.service,
            args.revision
                .as_deref()
                .map(|r| format!(" revision {r}"))
                .unwrap_or_default(),
            root.display()
        )));
    }
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
                print_lines(&mut out, &prefix, &b)?;
            }
        }
        let b = std::fs::read(path).unwrap_or_default();
        print_lines(&mut out, &prefix, &b)?;
        offsets.insert(path.clone(), b.len() as u64);
    }
    out.flush()?;
    if !args.follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(Duration::from_millis(250));
        for (path, (rev, inst)) in log_files(&root, args.revision.as_deref()) {
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
                print_lines(&mut out, &prefix, &buf[..end])?;
                *off += end as u64;
            }
        }
        out.flush()?;
    }
}
