//! Signed revert commits: an SSH signature (SSHSIG, namespace `git`) over
//! the commit object, stored in its `gpgsig` header, which is what git
//! writes with `gpg.format=ssh` and checks with `git verify-commit` against
//! `gpg.ssh.allowedSignersFile`. Signed in process with the `ssh-key`
//! crate; no tool is spawned. The key never appears in logs or errors (only
//! its file name and public fingerprint do).

use super::Error;
use git2::{Oid, Repository};
use ssh_key::{HashAlg, LineEnding, PrivateKey};
use std::path::Path;

/// A loaded signing key.
pub struct Signer {
    key: PrivateKey,
}

impl Signer {
    /// Reads an unencrypted OpenSSH private key file.
    pub fn load(path: &Path) -> Result<Signer, Error> {
        let err = |message: String| Error::SigningKey {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let key = PrivateKey::from_openssh(&text).map_err(|_| {
            err(
                "not an OpenSSH private key (expected the file `ssh-keygen -t ed25519` writes)"
                    .into(),
            )
        })?;
        if key.is_encrypted() {
            return Err(err(
                "the key is encrypted with a passphrase; give an unencrypted key readable only by Floyd"
                    .into(),
            ));
        }
        key.sign("git", HashAlg::Sha512, b"floyd").map_err(|e| {
            err(format!(
                "cannot sign with this key ({e}); use an ed25519 key"
            ))
        })?;
        tracing::info!(key = %path.display(), fingerprint = %key.public_key().fingerprint(HashAlg::Sha256), "revert commits will be signed");
        Ok(Signer { key })
    }

    /// The armored SSH signature of `data` (`-----BEGIN SSH SIGNATURE-----`).
    pub fn sign(&self, data: &[u8]) -> Result<String, String> {
        let sig = self
            .key
            .sign("git", HashAlg::Sha512, data)
            .map_err(|e| format!("signing the commit: {e}"))?;
        sig.to_pem(LineEnding::LF)
            .map_err(|e| format!("encoding the signature: {e}"))
    }
}

/// Writes a commit (no ref moved), signed when `signer` is given.
pub fn commit(
    signer: Option<&Signer>,
    repo: &Repository,
    sig: &git2::Signature<'_>,
    message: &str,
    tree: &git2::Tree<'_>,
    parents: &[&git2::Commit<'_>],
) -> Result<Oid, String> {
    let Some(s) = signer else {
        return repo
            .commit(None, sig, sig, message, tree, parents)
            .map_err(|e| e.to_string());
    };
    let buf = repo
        .commit_create_buffer(sig, sig, message, tree, parents)
        .map_err(|e| e.to_string())?;
    let content = buf
        .as_str()
        .map_err(|_| "the commit is not UTF-8".to_string())?;
    let armored = s.sign(content.as_bytes())?;
    repo.commit_signed(content, armored.trim_end(), Some("gpgsig"))
        .map_err(|e| e.to_string())
}
