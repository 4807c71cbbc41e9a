//! SSH host key checking against an OpenSSH known_hosts file.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;

/// Whether `file` (OpenSSH known_hosts format) accepts `key` of type `kind`
/// for `host` on `port`: plain, wildcard (`*`, `?`) and negated (`!`) host
/// patterns, `[host]:port` entries, hashed entries (`|1|salt|hash`, as
/// `ssh-keygen -H` and `HashKnownHosts yes` write them), `@revoked` keys
/// (refused) and `@cert-authority` lines (skipped: certificates are not
/// supported).
pub(super) fn known_hosts_match(
    file: &Path,
    host: &str,
    port: u16,
    kind: &str,
    key: &[u8],
) -> Result<bool, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("known_hosts {}: cannot read: {e}", file.display()))?;
    known_hosts_text_match(&text, host, port, kind, key)
        .map_err(|e| format!("known_hosts {}: {e}", file.display()))
}

fn known_hosts_text_match(
    text: &str,
    host: &str,
    port: u16,
    kind: &str,
    key: &[u8],
) -> Result<bool, String> {
    // The name OpenSSH looks up: `host`, or `[host]:port` off port 22.
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut found = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let mut first = parts.next();
        let marker = first.filter(|f| f.starts_with('@'));
        if marker.is_some() {
            first = parts.next();
        }
        let (Some(hosts), Some(k), Some(b64)) = (first, parts.next(), parts.next()) else {
            continue;
        };
        if k != kind
            || STANDARD.decode(b64).ok().as_deref() != Some(key)
            || !hosts_match(hosts, &name)
        {
            continue;
        }
        match marker {
            None => found = true,
            Some("@revoked") => return Err(format!("the {kind} host key of {name} is revoked")),
            Some(_) => {}
        }
    }
    Ok(found)
}

/// One known_hosts host field against `name`: a hashed entry, or
/// comma-separated patterns where a matching `!pattern` wins.
fn hosts_match(hosts: &str, name: &str) -> bool {
    if let Some(rest) = hosts.strip_prefix("|1|") {
        use hmac::Mac;
        let Some((salt, hash)) = rest.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(name.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    let mut matched = false;
    for pattern in hosts.split(',') {
        match pattern.strip_prefix('!') {
            Some(neg) if glob_match(neg, name) => return false,
            Some(_) => {}
            None => matched |= glob_match(pattern, name),
        }
    }
    matched
}

/// OpenSSH host patterns: `*` any run of characters, `?` one; host names
/// compare without regard to case.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (
        pattern.to_ascii_lowercase().chars().collect(),
        name.to_ascii_lowercase().chars().collect(),
    );
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The SSH port of a remote URL (22 unless `ssh://host:port/...` says).
pub(super) fn ssh_port(url: &str) -> u16 {
    url.strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
        .or_else(|| url.strip_prefix("ssh+git://"))
        .and_then(|rest| {
            let authority = rest.split('/').next()?;
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (_, port) = host_port.rsplit_once(':')?;
            // `[::1]:2222`, not the colons inside an IPv6 literal.
            if host_port.starts_with('[') && !host_port.contains("]:") {
                return None;
            }
            port.parse().ok()
        })
        .unwrap_or(22)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `ssh-keygen -H` output for `git.example.com` and
    /// `[git.example.com]:2222` with one ed25519 key.
    const HASHED: &str = "|1|cj6Wq/RowfJfkGjQx6umBLqyeDc=|kyUA1a1M5TW7HayQXfKRycxlb/Y= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICMmxxZwjtKMdkt5yvXgr90ZcM1pLXgP6NTg+I4DYJ+G
|1|nGSj8/Y9b7SMv8WTCPUBrL+lyr4=|aa042ze4pdSUZX99BHluo1L2s9g= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICMmxxZwjtKMdkt5yvXgr90ZcM1pLXgP6NTg+I4DYJ+G
";
    const KEY_B64: &str = "AAAAC3NzaC1lZDI1NTE5AAAAICMmxxZwjtKMdkt5yvXgr90ZcM1pLXgP6NTg+I4DYJ+G";

    #[test]
    fn known_hosts_hashed_plain_patterns_ports_and_revoked() {
        let key = STANDARD.decode(KEY_B64).unwrap();
        let other = {
            let mut k = key.clone();
            *k.last_mut().unwrap() ^= 1;
            k
        };
        let m = |text: &str, host: &str, port: u16, kind: &str, key: &[u8]| {
            known_hosts_text_match(text, host, port, kind, key)
        };
        // Hashed: the host on 22 and on 2222 each match their own line only.
        assert_eq!(
            m(HASHED, "git.example.com", 22, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(HASHED, "git.example.com", 2222, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(HASHED, "git.example.com", 2200, "ssh-ed25519", &key),
            Ok(false)
        );
        assert_eq!(
            m(HASHED, "git.example.org", 22, "ssh-ed25519", &key),
            Ok(false)
        );
        assert_eq!(
            m(HASHED, "git.example.com", 22, "ssh-ed25519", &other),
            Ok(false)
        );
        assert_eq!(m(HASHED, "git.example.com", 22, "ssh-rsa", &key), Ok(false));

        let plain = format!(
            "# comment\n\n*.example.com,!evil.example.com ssh-ed25519 {KEY_B64}\n[git.internal]:2222 ssh-ed25519 {KEY_B64}\n@cert-authority *.ca.example ssh-ed25519 {KEY_B64}\n"
        );
        assert_eq!(
            m(&plain, "Git.Example.com", 22, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(&plain, "evil.example.com", 22, "ssh-ed25519", &key),
            Ok(false)
        );
        assert_eq!(
            m(&plain, "git.internal", 2222, "ssh-ed25519", &key),
            Ok(true)
        );
        assert_eq!(
            m(&plain, "git.internal", 22, "ssh-ed25519", &key),
            Ok(false),
            "port matters"
        );
        assert_eq!(
            m(&plain, "x.ca.example", 22, "ssh-ed25519", &key),
            Ok(false),
            "CA lines are not host keys"
        );

        let revoked = format!("{plain}@revoked * ssh-ed25519 {KEY_B64}\n");
        let err = m(&revoked, "git.example.com", 22, "ssh-ed25519", &key).unwrap_err();
        assert!(err.contains("revoked"), "{err}");
    }

    #[test]
    fn host_patterns_and_ssh_ports() {
        assert!(glob_match("*.example.com", "a.b.example.com"));
        assert!(glob_match("git?.example.com", "git1.example.com"));
        assert!(!glob_match("git?.example.com", "git.example.com"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*c", "abd"));
        assert_eq!(ssh_port("ssh://git@host:2222/repo.git"), 2222);
        assert_eq!(ssh_port("ssh://host/repo.git"), 22);
        assert_eq!(ssh_port("git@host:org/repo.git"), 22);
        assert_eq!(ssh_port("ssh://git@[::1]:2200/r"), 2200);
        assert_eq!(ssh_port("ssh://git@[::1]/r"), 22);
    }
}
