//! Client API keys: where they come from ([`ApiKeyArgs`], `FLOWMESH_API_KEY`,
//! `FLOWMESH_READ_ONLY_API_KEY`), how a presented key is checked ([`ApiKeys::identify`]) and what
//! a caller is called in logs ([`Caller`]).
//!
//! Keys are never flags: a flag names a FILE of keys (one per line), and the keys themselves may
//! also come from the environment, so that no key is ever on a command line (visible in `ps` and
//! `/proc`). Several keys of each kind may be set at once (rotation); the files are re-read on
//! SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use flowmesh_shared::secret::SecretSet;

/// The variable of read-write keys (comma-separated).
pub const API_KEY_ENV: &str = "FLOWMESH_API_KEY";
/// The variable of read-only keys (comma-separated).
pub const READ_ONLY_API_KEY_ENV: &str = "FLOWMESH_READ_ONLY_API_KEY";

/// Where the gateway's client API keys come from, besides `FLOWMESH_API_KEY` (read-write) and
/// `FLOWMESH_READ_ONLY_API_KEY` (read-only), which hold comma-separated keys.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ApiKeyArgs {
    /// A file of read-write API keys, one per line (blank lines and `#` comments skipped);
    /// repeatable. Re-read on SIGHUP. Keys may also be given in `FLOWMESH_API_KEY`
    /// (comma-separated), never on the command line. With any key set, every route but
    /// /livez, /readyz, /docs and /openapi.json needs one.
    #[arg(
        long = "api-key-file",
        env = "FLOWMESH_API_KEY_FILE",
        value_delimiter = ','
    )]
    pub api_key_files: Vec<PathBuf>,
    /// A file of read-only API keys (search, status and metrics only), as `--api-key-file`;
    /// repeatable. Keys may also be given in `FLOWMESH_READ_ONLY_API_KEY`.
    #[arg(
        long = "read-only-api-key-file",
        env = "FLOWMESH_READ_ONLY_API_KEY_FILE",
        value_delimiter = ','
    )]
    pub read_only_api_key_files: Vec<PathBuf>,
}

impl ApiKeyArgs {
    /// Reads the keys of the files and the environment. An unreadable or empty file is an
    /// error naming the file.
    pub fn load(&self) -> anyhow::Result<ApiKeys> {
        let read_write = SecretSet::load(Some(API_KEY_ENV), &self.api_key_files)
            .context("cannot read the read-write API keys")?;
        let read_only = SecretSet::load(Some(READ_ONLY_API_KEY_ENV), &self.read_only_api_key_files)
            .context("cannot read the read-only API keys")?;
        Ok(ApiKeys::new(read_write, read_only))
    }
}

/// The gateway's client API keys; cheap to clone (the sets are shared).
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    read_write: Option<SecretSet>,
    read_only: Option<SecretSet>,
}

impl ApiKeys {
    /// No keys: the gateway is open and every caller is `anonymous`.
    pub fn none() -> Self {
        Self::default()
    }

    /// The keys of two sets (either may be absent).
    pub fn new(read_write: Option<SecretSet>, read_only: Option<SecretSet>) -> Self {
        Self {
            read_write,
            read_only,
        }
    }

    /// Whether any key is configured, so that callers must present one.
    pub fn is_enabled(&self) -> bool {
        self.read_write.is_some() || self.read_only.is_some()
    }

    /// The caller whose key `presented` is, or `None` for a key that is not one of them. Every
    /// key of both kinds is compared, in constant time, whatever matches.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        let read_write = self.read_write.as_ref().and_then(|s| s.matching(presented));
        let read_only = self.read_only.as_ref().and_then(|s| s.matching(presented));
        // A key listed as both is read-write.
        if let Some(key) = read_write {
            return Some(Caller::new(
                format!("read-write/{}", key.fingerprint()),
                true,
            ));
        }
        read_only.map(|key| Caller::new(format!("read-only/{}", key.fingerprint()), false))
    }

    /// Re-reads the key files on every SIGHUP (see [`SecretSet::reload_on_sighup`]).
    pub fn reload_on_sighup(&self) {
        for set in [&self.read_write, &self.read_only].into_iter().flatten() {
            set.reload_on_sighup();
        }
    }
}

/// Who called: the name of the key (never the key) and whether it may write.
#[derive(Debug, Clone)]
pub struct Caller {
    name: Arc<str>,
    may_write: bool,
}

impl Caller {
    fn new(name: String, may_write: bool) -> Self {
        Self {
            name: name.into(),
            may_write,
        }
    }

    /// The caller when no key is configured: may do everything.
    pub fn anonymous() -> Self {
        Self::new("anonymous".into(), true)
    }

    /// `read-write/xxxxxxxx`, `read-only/xxxxxxxx` (the first 8 hex digits of the SHA-256 of the
    /// key) or `anonymous`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the caller may write (`/index`, `/update`, `/delete`).
    pub fn may_write(&self) -> bool {
        self.may_write
    }
}

/// Counts a refused request in `flowmesh_auth_failures_total{service="gateway",reason}`
/// (`missing`, `wrong`, `read_only`).
pub(crate) fn count_failure(reason: &'static str) {
    metrics::counter!("flowmesh_auth_failures_total", "service" => "gateway", "reason" => reason)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmesh_shared::secret::Secret;

    fn set(keys: &[&str]) -> Option<SecretSet> {
        Some(SecretSet::new(keys.iter().map(Secret::new).collect()))
    }

    #[test]
    fn keys_are_identified_by_kind_and_named_by_their_hash() {
        let keys = ApiKeys::new(set(&["rw-one", "rw-two"]), set(&["ro-one"]));
        assert!(keys.is_enabled());
        let rw = keys.identify(b"rw-two").unwrap();
        assert!(rw.may_write());
        // The first 8 hex digits of the key's SHA-256, computed here independently.
        let digest = <sha2::Sha256 as sha2::Digest>::digest(b"rw-two");
        let expected: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(rw.name(), format!("read-write/{expected}"));
        let ro = keys.identify(b"ro-one").unwrap();
        assert!(!ro.may_write());
        assert!(ro.name().starts_with("read-only/"));
        assert!(!ro.name().contains("ro-one"));
        assert!(keys.identify(b"rw-on").is_none());
        assert!(keys.identify(b"").is_none());
        assert!(keys.identify(b"ro-one ").is_none());
        assert!(!ApiKeys::none().is_enabled());
    }
}
