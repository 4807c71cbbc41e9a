//! Fixtures for the GitOps tests: real Git servers on 127.0.0.1 (`git daemon`
//! with receive-pack, and `git http-backend` behind a small in-test HTTP/1.1
//! bridge speaking CGI), and a working clone to push commits with the `git` CLI.
//! Everything is cleaned up on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server on port {port} did not come up within 10 s");
}

/// A bare repository `cfg.git` served over git:// or http://.
pub struct GitServer {
    pub root: tempfile::TempDir,
    pub url: String,
    port: u16,
    kind: Kind,
    daemon: Option<Child>,
    http_stop: Option<Arc<AtomicBool>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Daemon,
    Http,
}

impl GitServer {
    fn init() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let bare = root.path().join("cfg.git");
        git(
            root.path(),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git(&bare, &["config", "receive.denyNonFastForwards", "true"]);
        git(&bare, &["config", "http.receivepack", "true"]);
        root
    }

    /// `git daemon --enable=receive-pack` on a free port.
    pub fn daemon() -> GitServer {
        let root = Self::init();
        let port = free_port();
        let mut s = GitServer {
            url: format!("git://127.0.0.1:{port}/cfg.git"),
            root,
            port,
            kind: Kind::Daemon,
            daemon: None,
            http_stop: None,
        };
        s.start();
        s
    }

    /// `git http-backend` behind the in-test HTTP bridge.
    pub fn http() -> GitServer {
        let root = Self::init();
        let port = free_port();
        let mut s = GitServer {
            url: format!("http://127.0.0.1:{port}/cfg.git"),
            root,
            port,
            kind: Kind::Http,
            daemon: None,
            http_stop: None,
        };
        s.start();
        s
    }

    pub fn bare(&self) -> PathBuf {
        self.root.path().join("cfg.git")
    }

    /// Starts (again) on the same port.
    pub fn start(&mut self) {
        match self.kind {
            Kind::Daemon => {
                // git-daemon itself, not the `git` wrapper: killing the wrapper
                // would leave the daemon serving.
                let exec = git(Path::new("/"), &["--exec-path"]);
                let child = Command::new(Path::new(&exec).join("git-daemon"))
                    .args([
                        "--reuseaddr",
                        "--export-all",
                        "--enable=receive-pack",
                        "--listen=127.0.0.1",
                        &format!("--port={}", self.port),
                        &format!("--base-path={}", self.root.path().display()),
                        self.root.path().to_str().unwrap(),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("git daemon starts");
                self.daemon = Some(child);
            }
            Kind::Http => {
                let stop = Arc::new(AtomicBool::new(false));
                let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind bridge");
                listener.set_nonblocking(true).unwrap();
                let root = self.root.path().to_path_buf();
                let st = stop.clone();
                std::thread::spawn(move || {
                    while !st.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((s, _)) => {
                                let root = root.clone();
                                std::thread::spawn(move || {
                                    let _ = serve_cgi(s, &root);
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                });
                self.http_stop = Some(stop);
            }
        }
        wait_port(self.port);
    }

    /// Stops serving (the repository stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = self.http_stop.take() {
            s.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(30));
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Installs a `pre-receive` hook that, on the first push only, moves
    /// `main` to `refs/heads/<racer>` first: a push racing Floyd's.
    pub fn race_once_with(&self, racer: &str) {
        let hook = self.bare().join("hooks/pre-receive");
        let mark = self.root.path().join("raced");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\nif [ ! -f '{m}' ]; then touch '{m}'; env -u GIT_QUARANTINE_PATH git update-ref refs/heads/main $(git rev-parse refs/heads/{racer}); fi\ncat >/dev/null\nexit 0\n",
                m = mark.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// `git log` of the remote branch: `sha subject` lines, newest first.
    pub fn log(&self) -> Vec<String> {
        git(&self.bare(), &["log", "--format=%H %s", "main"])
            .lines()
            .map(str::to_string)
            .collect()
    }
    pub fn message(&self, rev: &str) -> String {
        let out = Command::new("git")
            .args(["log", "-1", "--format=%B", rev])
            .current_dir(self.bare())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim_end().to_string() + "\n"
    }
    pub fn show(&self, rev_path: &str) -> String {
        git(&self.bare(), &["show", rev_path])
    }
    pub fn tip(&self) -> String {
        git(&self.bare(), &["rev-parse", "main"])
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 → CGI bridge for `git http-backend` (one request per
/// connection; chunked request bodies are de-chunked).
fn serve_cgi(stream: TcpStream, root: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                reader.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0; n];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", get("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            get("content-encoding").unwrap_or_default(),
        )
        .env("GIT_PROTOCOL", get("git-protocol").unwrap_or_default())
        .env("REMOTE_USER", "tester")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&body)?;
    }
    let out = child.wait_with_output()?;
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let (head, payload) = match split {
        Some((p, n)) => (
            String::from_utf8_lossy(&raw[..p]).into_owned(),
            &raw[p + n..],
        ),
        None => (String::new(), &raw[..]),
    };
    let mut status = "200 OK".to_string();
    let mut out_headers = String::new();
    for l in head.lines() {
        if let Some(s) = l.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else if !l.trim().is_empty() {
            out_headers.push_str(l.trim_end());
            out_headers.push_str("\r\n");
        }
    }
    let mut w = stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\n{out_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    w.write_all(payload)?;
    w.flush()
}

/// A working clone to make commits with the `git` CLI and push them.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    /// Clones `url` (an empty repo is fine).
    pub fn clone(url: &str) -> Work {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["clone", "-q", url, "."]);
        git(dir.path(), &["checkout", "-q", "-B", "main"]);
        Work { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }
    pub fn remove(&self, rel: &str) -> &Self {
        git(self.dir.path(), &["rm", "-q", rel]);
        self
    }
    /// Commits everything; returns the sha.
    pub fn commit(&self, msg: &str) -> String {
        git(self.dir.path(), &["add", "-A"]);
        git(self.dir.path(), &["commit", "-q", "-m", msg]);
        git(self.dir.path(), &["rev-parse", "HEAD"])
    }
    /// Pushes to main; a rejected push panics with the remote's last
    /// commits (who moved the branch: Floyd's revert says why).
    pub fn push(&self) {
        let out = Command::new("git")
            .args(["push", "-q", "origin", "HEAD:refs/heads/main"])
            .current_dir(self.dir.path())
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .expect("git runs");
        if out.status.success() {
            return;
        }
        let _ = Command::new("git")
            .args(["fetch", "-q", "origin"])
            .current_dir(self.dir.path())
            .status();
        let log = Command::new("git")
            .args(["log", "-3", "--format=%h %an: %B", "origin/main"])
            .current_dir(self.dir.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!(
            "git push to main rejected: {}\nthe remote's last commits:\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    pub fn push_to(&self, branch: &str) {
        git(
            self.dir.path(),
            &["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")],
        );
    }
    pub fn pull(&self) {
        git(
            self.dir.path(),
            &["pull", "-q", "--rebase", "origin", "main"],
        );
    }
}

/// Waits for `cond`, polling; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}
