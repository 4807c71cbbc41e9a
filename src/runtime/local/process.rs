//! Processes of the local runtime: starting an instance (argv with `${VAR}`
//! expansion, never a shell; its own process group; output to a log file),
//! watching it (a child we started, or an adopted process polled through
//! `/proc`), stopping it (SIGTERM to the group, grace period, SIGKILL), and
//! log rotation.
//!
//! Must not: decide when to start or stop; that is the supervisor's job.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variables passed through from the controller to instances.
/// Everything else of the controller's environment (tokens, credentials)
/// stays out.
const PASS_THROUGH_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// The controller's variables instances inherit (see [`PASS_THROUGH_ENV`]).
pub fn pass_through_env() -> Vec<(&'static str, String)> {
    PASS_THROUGH_ENV
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v)))
        .collect()
}

/// Expands `${VAR}` from `env`; unknown references stay as written (like
/// Kubernetes' `$(VAR)`), `$$` is a literal `$`.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
        {
            let name = &body[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Process start time (clock ticks since boot), field 22 of `/proc/<pid>/stat`,
/// and the state letter. `None` when the process does not exist.
pub fn proc_stat(pid: i32) -> Option<(char, u64, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Parses `/proc/<pid>/stat`: (state, starttime, pgrp). The command name may
/// contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat(s: &str) -> Option<(char, u64, i32)> {
    let close = s.rfind(')')?;
    let fields: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so field N is index N - 3.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start, pgrp))
}

/// Whether `pid` is alive and is the process started at `start_time`
/// (not a recycled pid, not a zombie).
pub fn alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some((state, st, _)) if st == start_time && state != 'Z' && state != 'X')
}

/// Pids of live processes in process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(proc_stat(*pid), Some((st, _, g)) if g == pgid && st != 'Z'))
        .collect()
}

/// Pids of processes whose environment has `FLOYD_LOCAL_STATE=<marker>`:
/// instances started by a runtime on this state directory.
pub fn processes_with_marker(marker: &str) -> Vec<i32> {
    processes_with_env("FLOYD_LOCAL_STATE", marker)
}

/// Pids of live processes whose environment has `key=value`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| has_env(*pid, key, value) && proc_stat(*pid).is_some_and(|s| s.0 != 'Z'))
        .collect()
}

/// Whether `pid` was started by a runtime on this state directory: its
/// environment carries `FLOYD_LOCAL_STATE=<marker>`. A process whose
/// environment cannot be read (gone, another user's) is not ours.
pub fn has_marker(pid: i32, marker: &str) -> bool {
    has_env(pid, "FLOYD_LOCAL_STATE", marker)
}

/// Whether the environment of `pid` has `key=value` (false when it cannot be read).
pub fn has_env(pid: i32, key: &str, value: &str) -> bool {
    let needle = format!("{key}={value}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        .unwrap_or(false)
}

/// Stops what is left of a process group Floyd started, touching only
/// processes that carry `marker`: the whole group when every live member
/// does, else only the marked ones, one by one. A recorded pid can be
/// reused by anyone after a reboot; a group id only once no process of the
/// old group is left, so a foreign group under an old id is never signalled.
pub fn kill_marked_group(pgid: i32, marker: &str) -> usize {
    let members = group_members(pgid);
    let marked: Vec<i32> = members
        .iter()
        .copied()
        .filter(|p| has_marker(*p, marker))
        .collect();
    if marked.is_empty() {
        return 0;
    }
    if marked.len() == members.len() {
        signal_group(pgid, Signal::SIGKILL);
    } else {
        for p in &marked {
            let _ = nix::sys::signal::kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
    }
    marked.len()
}

/// Sends `sig` to the process group `pgid`; a group that is gone is fine.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// Why a start failed, in words.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("template has no command")]
    NoCommand,
    #[error("cannot open log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
}

/// What to start.
pub struct StartSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub working_dir: Option<&'a str>,
    pub log: &'a Path,
}

/// Starts a process in its own group with stdout and stderr appended to the log file.
/// Output goes straight to the file (no pipe through the controller), so an
/// instance keeps running and logging while the controller restarts.
pub fn start(spec: &StartSpec<'_>) -> Result<tokio::process::Child, StartError> {
    let argv: Vec<String> = spec.argv.iter().map(|a| expand(a, spec.env)).collect();
    let Some(program) = argv.first() else {
        return Err(StartError::NoCommand);
    };
    if let Some(dir) = spec.log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.log)
            .map_err(|source| StartError::Log {
                path: spec.log.to_path_buf(),
                source,
            })
    };
    let out = open()?;
    let err = open()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    cmd.envs(pass_through_env());
    cmd.envs(spec.env);
    if let Some(dir) = spec.working_dir {
        cmd.current_dir(dir);
    }
    cmd.spawn().map_err(|source| StartError::Spawn {
        program: program.clone(),
        source,
    })
}

/// A running instance process: our child, or one adopted after a restart.
pub enum Proc {
    Child(tokio::process::Child),
    Adopted { pid: i32, start_time: u64 },
}

impl Proc {
    pub fn pid(&self) -> Option<i32> {
        match self {
            Proc::Child(c) => c.id().map(|p| p as i32),
            Proc::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits for the process to exit; says how, in words.
    pub async fn wait(&mut self) -> String {
        match self {
            Proc::Child(c) => match c.wait().await {
                Ok(st) => describe_exit(st),
                Err(e) => format!("wait failed: {e}"),
            },
            Proc::Adopted { pid, start_time } => {
                // Not our child: no wait(2). Poll /proc.
                while alive(*pid, *start_time) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                "exited (adopted process, status unknown)".into()
            }
        }
    }

    /// SIGTERM to the group, up to `grace` for the process to exit, then
    /// SIGKILL; finally SIGKILL to whatever is left of the group. Returns how
    /// it ended.
    pub async fn terminate(&mut self, grace: Duration) -> String {
        let Some(pid) = self.pid() else {
            return self.wait().await;
        };
        signal_group(pid, Signal::SIGTERM);
        let how = match tokio::time::timeout(grace, self.wait()).await {
            Ok(how) => how,
            Err(_) => {
                signal_group(pid, Signal::SIGKILL);
                format!(
                    "{} (killed: ignored SIGTERM for {} s)",
                    self.wait().await,
                    grace.as_secs()
                )
            }
        };
        signal_group(pid, Signal::SIGKILL);
        how
    }
}

/// "exited with status 1", "killed by signal 9 (SIGKILL)".
pub fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = st.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = st.signal() {
        let name = Signal::try_from(sig)
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|_| "?".into());
        format!("killed by signal {sig} ({name})")
    } else {
        "exited".into()
    }
}

/// Rotates `log` when it is larger than `max_bytes`: `log.N-1` → `log.N`, …,
/// a copy of `log` → `log.1`, then `log` is truncated. Copy-and-truncate
/// because the instance holds the file open in append mode (and may outlive
/// the controller), so it keeps writing to the same, now empty, file.
pub fn rotate_if_needed(log: &Path, max_bytes: u64, keep: u32) -> io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes || keep == 0 {
        return Ok(false);
    }
    let numbered = |n: u32| {
        let mut s = log.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    };
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::copy(log, numbered(1))?;
    OpenOptions::new().write(true).open(log)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_table() {
        let env: BTreeMap<String, String> = [("PORT", "8080"), ("A", "x y")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases = [
            ("--port=${PORT}", "--port=8080"),
            ("${A}", "x y"),
            ("${NOPE}", "${NOPE}"),
            ("$$PORT", "$PORT"),
            ("$PORT", "$PORT"),
            ("${PORT", "${PORT"),
            ("a$", "a$"),
            ("${PORT}${PORT}", "80808080"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &env), want, "{input}");
        }
    }

    #[test]
    fn stat_parsing_handles_odd_names() {
        let s = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(s), Some(('S', 987654, 1234)));
        assert_eq!(parse_stat("garbage"), None);
        let own = proc_stat(std::process::id() as i32).unwrap();
        assert!(alive(std::process::id() as i32, own.1));
        assert!(!alive(std::process::id() as i32, own.1 + 1));
    }

    #[test]
    fn rotation_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("i.log");
        for round in 0..4u8 {
            std::fs::write(&log, vec![b'a' + round; 100]).unwrap();
            assert!(rotate_if_needed(&log, 50, 2).unwrap());
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        }
        assert_eq!(std::fs::read(dir.path().join("i.log.1")).unwrap()[0], b'd');
        assert_eq!(std::fs::read(dir.path().join("i.log.2")).unwrap()[0], b'c');
        assert!(!dir.path().join("i.log.3").exists());
        assert!(!rotate_if_needed(&log, 50, 2).unwrap());
    }
}
