//! Secrets: API keys, the mesh token and passwords, held so that they are never printed, and
//! compared in constant time.
//!
//! # What each credential protects
//!
//! - **Client API keys** (gateway only; `FLOWMESH_API_KEY`, `FLOWMESH_READ_ONLY_API_KEY`, or
//!   files with `--api-key-file` / `--read-only-api-key-file`): who may call the gateway. A
//!   read-write key may search and write; a read-only key may only search.
//! - **The mesh token** (every service; `FLOWMESH_MESH_TOKEN` or `--mesh-token-file`): that a
//!   call to an executor (encoder, indexer, ranker) comes from the mesh's own gateway. Without
//!   it anyone who reaches an executor's port could read every document or wipe an index. The
//!   gateway sends the first token of its set; an executor accepts any token of its set, so a
//!   file holding the new and the old token rotates it without downtime.
//! - **The Redis password** (ranker): the document store.
//! - **TLS** ([`crate::tls`]) protects all of these in transit, and mutual TLS proves an
//!   executor's caller by its certificate as well.
//!
//! A [`Secret`] has no `Display` and no `Serialize`, and its `Debug` prints `Secret(***)`, so it
//! cannot end up in a log line, an error message or a JSON answer by accident. Secret files are
//! read again on SIGHUP ([`SecretSet::reload_on_sighup`]); values from the environment cannot
//! change while a process runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// A secret value: an API key, a token or a password.
///
/// `Debug` prints `Secret(***)`; there is no `Display` and no `Serialize`. Use
/// [`expose`](Self::expose) where the value itself must be sent, and
/// [`matches`](Self::matches) to check a presented value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// A secret holding `value`, trimmed of surrounding whitespace.
    pub fn new(value: impl AsRef<str>) -> Self {
        Self(value.as_ref().trim().to_owned())
    }

    /// The value, to send it (an `Authorization` header, a Redis `AUTH`). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret. The contents are compared in constant time; only a
    /// length mismatch returns early (the length of a secret is not worth hiding).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let own = self.0.as_bytes();
        own.len() == presented.len() && bool::from(own.ct_eq(presented))
    }

    /// A name for this secret that may be logged: the first 8 hex digits of the SHA-256 of
    /// the value. It identifies a key among a few without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The secrets of the file at `path`: one per line, trimmed; blank lines and lines starting
/// with `#` are skipped. A file without any is an error naming the file (never its content).
/// Warns when the file may be read by its group or others (Unix mode `& 0o077`).
pub fn read_secret_file(path: impl AsRef<Path>) -> anyhow::Result<Vec<Secret>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    warn_if_readable_by_others(path);
    let secrets: Vec<Secret> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(Secret::new)
        .collect();
    if secrets.is_empty() {
        bail!(
            "the secret file {} holds no secret (one per line; blank and # lines are skipped)",
            path.display()
        );
    }
    Ok(secrets)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "a secret file is accessible to its group or others; make it 0600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// The secrets in the environment variable `var`: comma-separated, trimmed, empty entries
/// skipped. `None` when the variable is unset, not Unicode, or holds no secret.
pub fn secret_from_env(var: &str) -> Option<Vec<Secret>> {
    let value = std::env::var(var).ok()?;
    let secrets: Vec<Secret> = value
        .split(',')
        .map(Secret::new)
        .filter(|s| !s.is_empty())
        .collect();
    (!secrets.is_empty()).then_some(secrets)
}

/// `url` with the password of its user information replaced by `***`:
/// `redis://:pw@h:1/0` becomes `redis://:***@h:1/0`, `redis://user:pw@h` becomes
/// `redis://user:***@h`. Works on strings that are not valid URLs too: the user information is
/// found by hand (`scheme://userinfo@`), and when it cannot be told apart from the rest, the
/// whole part after `scheme://` up to the last `@` is replaced.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    // The authority ends at the first `/`, `?` or `#`; a password may hold `@` (it should be
    // percent-encoded, but a wrong URL is what this is for), so the user information ends at
    // the last `@` of the authority.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@').or_else(|| rest.rfind('@')) else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // `scheme://token@host`: the user name is the secret (Redis accepts a password alone).
        None if !userinfo.is_empty() => "***".to_owned(),
        None => String::new(),
    };
    format!("{}{}{}", &url[..start], redacted, &rest[at..])
}

/// Where the secrets of a [`SecretSet`] come from.
#[derive(Debug, Clone)]
struct Sources {
    /// What the environment held at start; cannot change.
    env: Vec<Secret>,
    /// Files read again by [`SecretSet::reload`].
    files: Vec<PathBuf>,
}

/// A set of secrets of one kind (the mesh tokens, the read-write API keys), cheap to clone and
/// shared by every clone: built from an environment variable and/or files, re-read from the
/// files by [`reload`](Self::reload) (on SIGHUP with [`reload_on_sighup`](Self::reload_on_sighup)).
///
/// Its `Debug` shows how many secrets it holds, never them.
#[derive(Clone)]
pub struct SecretSet {
    current: Arc<RwLock<Vec<Secret>>>,
    sources: Arc<Sources>,
}

impl std::fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSet")
            .field("secrets", &self.len())
            .field("files", &self.sources.files)
            .finish()
    }
}

impl SecretSet {
    /// A fixed set (no files to reload), such as a token made by the launcher.
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self {
            current: Arc::new(RwLock::new(secrets)),
            sources: Arc::new(Sources {
                env: Vec::new(),
                files: Vec::new(),
            }),
        }
    }

    /// The set of the environment variable `env_var` (see [`secret_from_env`]) and the `files`
    /// (see [`read_secret_file`]): the files' secrets first, in order, then the variable's.
    /// `None` when the variable holds none and no file is given; an unreadable or empty file
    /// is an error.
    pub fn load(env_var: Option<&str>, files: &[PathBuf]) -> anyhow::Result<Option<Self>> {
        let env = env_var.and_then(secret_from_env).unwrap_or_default();
        if env.is_empty() && files.is_empty() {
            return Ok(None);
        }
        let sources = Sources {
            env,
            files: files.to_vec(),
        };
        let secrets = sources.read()?;
        Ok(Some(Self {
            current: Arc::new(RwLock::new(secrets)),
            sources: Arc::new(sources),
        }))
    }

    /// Reads the files again and replaces the set with what they and the environment hold,
    /// returning how many secrets it holds now. On an error the set is left as it was.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let secrets = self.sources.read()?;
        let n = secrets.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = secrets;
        Ok(n)
    }

    /// The first secret: the one a caller sends.
    pub fn first(&self) -> Option<Secret> {
        self.read().first().cloned()
    }

    /// Whether `presented` is one of the secrets. Every secret is compared (in constant time),
    /// even after a match.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.matching(presented).is_some()
    }

    /// The secret that `presented` is, comparing every secret as [`accepts`](Self::accepts)
    /// does; to name the key that was used ([`Secret::fingerprint`]).
    pub fn matching(&self, presented: &[u8]) -> Option<Secret> {
        let secrets = self.read();
        let mut found = None;
        for secret in secrets.iter() {
            if secret.matches(presented) && found.is_none() {
                found = Some(secret.clone());
            }
        }
        found
    }

    /// How many secrets the set holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the set holds no secret (never, for a set from [`load`](Self::load)).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The files the set is read from.
    pub fn files(&self) -> &[PathBuf] {
        &self.sources.files
    }

    /// Spawns a task that [`reload`](Self::reload)s the set on every SIGHUP, logging how many
    /// secrets it read (never them); on an error the old set stays and the error is logged.
    /// Does nothing for a set without files. Must be called inside a Tokio runtime.
    pub fn reload_on_sighup(&self) {
        if self.sources.files.is_empty() {
            return;
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hangups = match signal(SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGHUP; secret files will not be reloaded");
                    return;
                }
            };
            let set = self.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    let files = set.describe_files();
                    match set.reload() {
                        Ok(n) => tracing::info!("reloaded {n} secrets from {files}"),
                        Err(e) => tracing::error!(
                            error = format!("{e:#}"),
                            "cannot reload secrets from {files}; keeping the previous ones"
                        ),
                    }
                }
            });
        }
    }

    fn describe_files(&self) -> String {
        self.sources
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Secret>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sources {
    fn read(&self) -> anyhow::Result<Vec<Secret>> {
        let mut secrets = Vec::new();
        for file in &self.files {
            secrets.extend(read_secret_file(file)?);
        }
        secrets.extend(self.env.iter().cloned());
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_show_the_value() {
        let s = Secret::new("hunter2-value");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let set = SecretSet::new(vec![s]);
        assert!(!format!("{set:?}").contains("hunter2"));
    }

    #[test]
    fn matches_only_the_same_bytes() {
        let s = Secret::new("  abc123 ");
        assert_eq!(s.expose(), "abc123");
        assert!(s.matches(b"abc123"));
        assert!(!s.matches(b"abc124"));
        assert!(!s.matches(b"abc12"));
        assert!(!s.matches(b"abc1234"));
        assert!(!s.matches(b""));
    }

    #[test]
    fn fingerprint_is_eight_hex_digits_of_sha256() {
        // SHA-256("abc") = ba7816bf...
        assert_eq!(Secret::new("abc").fingerprint(), "ba7816bf");
    }

    #[test]
    fn redacts_passwords() {
        let cases = [
            ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
            ("redis://user:pw@h:6379", "redis://user:***@h:6379"),
            ("redis://user:p@ss@h/0", "redis://user:***@h/0"),
            ("redis://h:6379/0", "redis://h:6379/0"),
            ("redis+unix:///tmp/r.sock", "redis+unix:///tmp/r.sock"),
            ("rediss://tok@h", "rediss://***@h"),
            ("https://u:p@h/x?a=b@c", "https://u:***@h/x?a=b@c"),
            ("not a url", "not a url"),
            (
                "redis://:S3cretPw@bad host:port",
                "redis://:***@bad host:port",
            ),
            ("redis://:pw/with/slash@h:1", "redis://:***@h:1"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn env_values_are_split_and_trimmed() {
        let var = "FLOWMESH_TEST_SECRET_FROM_ENV_SPLIT";
        std::env::set_var(var, " a , ,b,, ");
        let got = secret_from_env(var).unwrap();
        assert_eq!(
            got.iter().map(Secret::expose).collect::<Vec<_>>(),
            ["a", "b"]
        );
        std::env::set_var(var, " , ");
        assert!(secret_from_env(var).is_none());
        std::env::remove_var(var);
        assert!(secret_from_env(var).is_none());
    }
}
