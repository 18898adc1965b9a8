//! The progress file of `flowmesh index`: what the gateway has acknowledged of one input, written
//! atomically (a temporary file, synced, then renamed over the old one) after every
//! acknowledged batch, so that an interrupted run resumes after the last acknowledged document.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::input::Format;

/// What one run has had acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The input, as an absolute path.
    pub input: PathBuf,
    pub format: Format,
    /// The gateway the documents went to.
    pub gateway: String,
    /// Bytes (files) or files (folders) of the input acknowledged.
    pub offset: u64,
    /// The last line (or file) acknowledged.
    pub line: u64,
    /// The SHA-256 of the acknowledged part of the input (bytes; names and sizes of files).
    pub prefix_sha256: String,
    /// Documents acknowledged.
    pub documents: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// When this was written (RFC 3339).
    pub updated: String,
}

/// Where the progress of `input` is kept unless `--state` says: `INPUT.flowmesh-index` beside a
/// file, `DIR/.flowmesh-index` inside a folder.
pub fn default_path(input: &Path) -> PathBuf {
    if input.is_dir() {
        return input.join(".flowmesh-index");
    }
    let mut name = input.file_name().unwrap_or_default().to_os_string();
    name.push(".flowmesh-index");
    input.with_file_name(name)
}

impl State {
    /// The state in `path`; `None` when there is no such file.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not a flowmesh index progress file (remove it, or give --restart)",
                path.display()
            )
        })
    }

    /// Writes this state to `path` atomically.
    pub fn save(&mut self, path: &Path) -> anyhow::Result<()> {
        self.updated = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("cannot write the progress file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn states_round_trip_through_their_file() {
        let dir = std::env::temp_dir().join(format!("flowmesh-cli-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.jsonl.flowmesh-index");
        assert_eq!(State::load(&path).unwrap(), None);
        let mut state = State {
            input: dir.join("x.jsonl"),
            format: Format::Jsonl,
            gateway: "http://127.0.0.1:1".into(),
            offset: 10,
            line: 2,
            prefix_sha256: "ab".into(),
            documents: 2,
            batches: 1,
            updated: String::new(),
        };
        state.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(state.clone()));
        assert!(!dir.join("x.jsonl.flowmesh-index.tmp").exists());
        std::fs::write(&path, b"{").unwrap();
        assert!(State::load(&path).is_err());
        assert_eq!(default_path(&dir.join("x.jsonl")), path);
        assert_eq!(default_path(&dir), dir.join(".flowmesh-index"));
    }
}
