//! Where the ranker's Redis password comes from: the variable `FLOWMESH_RANKER_REDIS_PASSWORD`
//! or a file named by `--redis-password-file`, never a command-line flag (every user of a host
//! can read a process's arguments in `/proc`). The value is trimmed; it is never printed: the
//! errors name the variable or the file, and Redis URLs are shown with their password redacted.

use std::path::Path;

use anyhow::{bail, Context as _};

/// The variable that may hold the Redis password (read by hand, not through clap, so that no
/// flag can carry it).
pub const PASSWORD_ENV: &str = "FLOWMESH_RANKER_REDIS_PASSWORD";

/// A Redis password; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(String);

impl RedisPassword {
    /// The password itself, for the connection (never for a message).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(***)")
    }
}

/// The password from `env_value` (the variable's value, if set) or `file`: `None` when neither
/// is given (or the variable is empty), an error when both are, or when the file cannot be
/// read, holds no password, or holds more than one.
pub fn redis_password(
    env_value: Option<String>,
    file: Option<&Path>,
) -> anyhow::Result<Option<RedisPassword>> {
    let from_env = env_value
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    match (from_env, file) {
        (Some(_), Some(file)) => bail!(
            "the Redis password is given twice: in {PASSWORD_ENV} and in --redis-password-file {}; \
             give one",
            file.display()
        ),
        (Some(value), None) => Ok(Some(RedisPassword(value))),
        (None, Some(file)) => from_file(file).map(Some),
        (None, None) => Ok(None),
    }
}

/// The one password of `file`: blank lines and lines starting with `#` are skipped, the rest
/// trimmed.
fn from_file(file: &Path) -> anyhow::Result<RedisPassword> {
    let secrets = flowmesh_shared::secret::read_secret_file(file)
        .with_context(|| format!("--redis-password-file {}", file.display()))?;
    match secrets.as_slice() {
        [one] => Ok(RedisPassword(one.expose().to_owned())),
        more => bail!(
            "--redis-password-file {} holds {} passwords; Redis takes one",
            file.display(),
            more.len()
        ),
    }
}

/// The error of the removed `--redis-password` flag (and of `with: {redis_password: ...}` in a
/// Flow, which the launcher turns into that flag).
pub(crate) const REMOVED_FLAG: &str =
    "--redis-password (in a Flow: `with: {redis_password: ...}`) \
    is no longer accepted: a password on a command line can be read by every user of the host; \
    give it in the variable FLOWMESH_RANKER_REDIS_PASSWORD or in a file named by \
    --redis-password-file (FLOWMESH_RANKER_REDIS_PASSWORD_FILE)";

/// The value of the removed flag, dropped as soon as it is parsed: only its presence is kept,
/// so that no error or `Debug` output can show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemovedFlag;

/// Clap's parser of the removed flag: accepts any value and forgets it.
pub(crate) fn forget_value(_: &str) -> Result<RemovedFlag, std::convert::Infallible> {
    Ok(RemovedFlag)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn file_with(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-ranker-password-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("redis_password");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn from_the_variable_trimmed_and_empty_is_unset() {
        let pw = redis_password(Some("  p4ss \n".into()), None).unwrap();
        assert_eq!(pw.unwrap().expose(), "p4ss");
        assert!(redis_password(Some("  ".into()), None).unwrap().is_none());
        assert!(redis_password(None, None).unwrap().is_none());
    }

    #[test]
    fn from_a_file_with_comments() {
        let path = file_with("one", "# the ranker's Redis password\n\n  fileP4ss  \n");
        let pw = redis_password(None, Some(&path)).unwrap().unwrap();
        assert_eq!(pw.expose(), "fileP4ss");
        assert_eq!(format!("{pw:?}"), "RedisPassword(***)");
    }

    #[test]
    fn both_or_two_passwords_or_none_in_the_file_are_errors_without_the_values() {
        let two = file_with("two", "firstPw\nsecondPw\n");
        let err = format!("{:#}", redis_password(None, Some(&two)).unwrap_err());
        assert!(err.contains("holds 2 passwords"), "{err}");
        assert!(
            !err.contains("firstPw") && !err.contains("secondPw"),
            "{err}"
        );

        let both = redis_password(Some("envPw".into()), Some(&two)).unwrap_err();
        let err = format!("{both:#}");
        assert!(err.contains("given twice"), "{err}");
        assert!(!err.contains("envPw"), "{err}");

        let empty = file_with("empty", "# nothing\n\n");
        assert!(redis_password(None, Some(&empty)).is_err());
        let missing = empty.with_file_name("missing");
        let err = format!("{:#}", redis_password(None, Some(&missing)).unwrap_err());
        assert!(err.contains("--redis-password-file"), "{err}");
    }
}
