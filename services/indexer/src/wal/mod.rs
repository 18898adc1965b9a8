//! Durability for one shard: an append-only log of every acknowledged write, plus snapshots.
//!
//! A write is encoded as one record, appended to the current log file and flushed to disk
//! (`fdatasync`) before the shard applies it and answers. Every record carries a sequence number.
//! From time to time the whole shard is written to a snapshot file that names the last sequence
//! number it holds; the log files it covers are then deleted. Recovery loads the newest snapshot
//! and replays the records after it.
//!
//! Files in the data directory:
//!
//! - `LOCK`: held (an advisory lock) by the process serving the shard, so that two processes
//!   never write one directory;
//! - `log-{first_seq}.wal`: records `len: u32, crc32: u32, payload[len]` (little-endian); a
//!   record cut short by a crash at the end of the newest log file is the only damage expected,
//!   and it is truncated away (that write was never acknowledged);
//! - `snapshot-{seq}.snap`: the whole shard after record `seq` ([`snapshot`]), whole or absent.
//!
//! Any other damage (a bad record before the end, a corrupt newest snapshot with no older one)
//! stops the start-up with an error that names the file: serving would silently lose documents.
//!
//! The module is split by concern: this file is the log and its recovery, [`snapshot`] the
//! snapshot files, [`codec`] the binary encoding of records and entries, [`crc`] the
//! checksumming writer.

mod codec;
mod crc;
mod snapshot;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::backend::Entry;

pub(crate) use snapshot::Snapshotter;
pub(crate) use snapshot::{encode as encode_snapshot, install as install_snapshot};

/// One logged write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// [`crate::VectorIndex::upsert`]'s arguments.
    Upsert {
        replaced: Vec<String>,
        entries: Vec<OwnedEntry>,
    },
    /// [`crate::VectorIndex::delete`]'s argument.
    Delete { ids: Vec<String> },
}

/// An [`Entry`] that owns its data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnedEntry {
    pub(crate) id: String,
    pub(crate) parent_id: Option<String>,
    pub(crate) vector: Vec<f32>,
}

impl OwnedEntry {
    pub(crate) fn borrowed(&self) -> Entry<'_> {
        Entry {
            id: &self.id,
            parent_id: self.parent_id.as_deref(),
            vector: &self.vector,
        }
    }
}

/// Every stored entry of a shard, row-major, as a snapshot holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Rows {
    pub(crate) dim: Option<usize>,
    pub(crate) ids: Vec<String>,
    pub(crate) parent_ids: Vec<Option<String>>,
    pub(crate) vectors: Vec<f32>,
}

impl Rows {
    pub(crate) fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let dim = self.dim.unwrap_or(0);
        self.ids.iter().enumerate().map(move |(i, id)| Entry {
            id,
            parent_id: self.parent_ids[i].as_deref(),
            vector: &self.vectors[i * dim..(i + 1) * dim],
        })
    }
}

/// What recovery found: the newest snapshot, and the records after it, in order.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) snapshot: Option<Rows>,
    pub(crate) ops: Vec<Op>,
    /// Bytes of log replayed, to decide whether to write a snapshot at once.
    pub(crate) log_bytes: u64,
}

/// The open log of one data directory.
pub(crate) struct Log {
    dir: PathBuf,
    /// Held for the life of the log: the directory's owner.
    _lock: File,
    file: File,
    path: PathBuf,
    /// Length of the current file up to its last whole record.
    len: u64,
    /// Sequence number of the last record written (or recovered).
    seq: u64,
    /// Bytes appended since the last snapshot began.
    since_snapshot: u64,
    /// Set when a failed write could not be undone: the log refuses further writes.
    broken: bool,
}

/// The snapshot and log files of a data directory, each sorted by its sequence number.
#[derive(Default)]
struct Listing {
    snapshots: Vec<(u64, PathBuf)>,
    logs: Vec<(u64, PathBuf)>,
}

/// Where replaying the logs ended.
struct Replayed {
    /// Sequence number of the last record replayed (or of the snapshot, with no record after).
    seq: u64,
    /// The newest log file and the length of its whole records, if there is one.
    current: Option<(PathBuf, u64)>,
}

impl Log {
    /// Opens (creating if needed) the data directory, takes its lock and recovers what it holds:
    /// the newest snapshot, then every record after it.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<(Self, Recovered)> {
        let lock = lock_dir(dir)?;
        let Listing {
            mut snapshots,
            logs,
        } = list_dir(dir)?;
        let mut recovered = Recovered::default();
        let mut snap_seq = 0;
        if let Some((seq, rows)) = load_newest(snapshots.pop())? {
            snap_seq = seq;
            recovered.snapshot = Some(rows);
        }
        let Replayed { seq, current } = replay(&logs, snap_seq, &mut recovered)?;
        let (path, len, file) = match current {
            Some((path, len)) => {
                let file = reopen_truncated(&path, len)?;
                (path, len, file)
            }
            None => {
                let path = dir.join(log_name(seq + 1));
                let file = create_synced(dir, &path)?;
                (path, 0, file)
            }
        };
        let log = Self {
            dir: dir.to_owned(),
            _lock: lock,
            file,
            path,
            len,
            seq,
            since_snapshot: recovered.log_bytes,
            broken: false,
        };
        Ok((log, recovered))
    }

    /// Appends `op` and flushes it to disk. When this returns `Ok`, the write survives a crash.
    pub(crate) fn append(&mut self, op: &Op) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(
                "the log could not undo a failed write and refuses more; restart the indexer",
            ));
        }
        let record = codec::frame(self.seq + 1, op)?;
        let written = (&self.file)
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Take the partial record back, or later records would follow garbage.
            if self.file.set_len(self.len).is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        self.len += record.len() as u64;
        self.since_snapshot += record.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Bytes logged since the last snapshot began.
    pub(crate) fn since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// Starts a new log file, so that a snapshot of the state as of now can replace every
    /// older one. Returns the sequence number that snapshot must carry.
    pub(crate) fn rotate(&mut self) -> io::Result<u64> {
        if self.len > 0 {
            let path = self.dir.join(log_name(self.seq + 1));
            let file = create_synced(&self.dir, &path)?;
            self.file = file;
            self.path = path;
            self.len = 0;
        }
        self.since_snapshot = 0;
        Ok(self.seq)
    }

    /// A handle for writing the snapshot taken at `seq` without holding the log.
    pub(crate) fn snapshotter(&self) -> Snapshotter {
        let name = self.path.file_name().map(|n| n.to_string_lossy());
        Snapshotter {
            dir: self.dir.clone(),
            current_first: name
                .and_then(|n| numbered(&n, "log-", ".wal"))
                .unwrap_or(u64::MAX),
        }
    }
}

/// Creates `dir` if needed and takes its `LOCK`, held for as long as the returned file is open.
fn lock_dir(dir: &Path) -> anyhow::Result<File> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "{} is in use by another indexer process (its LOCK is held)",
            dir.display()
        );
    }
    Ok(lock)
}

/// The snapshots and logs in `dir`, oldest first; removes interrupted snapshots (`.tmp`).
fn list_dir(dir: &Path) -> anyhow::Result<Listing> {
    let mut listing = Listing::default();
    for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            // An interrupted snapshot: never renamed, so never relied on.
            let _ = fs::remove_file(item.path());
        } else if let Some(seq) = numbered(&name, "snapshot-", ".snap") {
            listing.snapshots.push((seq, item.path()));
        } else if let Some(first) = numbered(&name, "log-", ".wal") {
            listing.logs.push((first, item.path()));
        }
    }
    listing.snapshots.sort();
    listing.logs.sort();
    Ok(listing)
}

/// Reads the newest snapshot, if there is one. Snapshots appear by rename, whole or not at all:
/// a damaged one is not a crash's doing, and the logs it covered are gone, so there is nothing
/// to fall back on and the error stops the start-up.
fn load_newest(newest: Option<(u64, PathBuf)>) -> anyhow::Result<Option<(u64, Rows)>> {
    let Some((seq, path)) = newest else {
        return Ok(None);
    };
    let (got_seq, rows) = snapshot::read_snapshot(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if got_seq != seq {
        bail!("{} names another sequence number", path.display());
    }
    Ok(Some((seq, rows)))
}

/// Replays the records of `logs` (oldest first) after `snap_seq` into `recovered`. Only the
/// newest file may end in a torn record; records must follow each other without a gap.
fn replay(
    logs: &[(u64, PathBuf)],
    snap_seq: u64,
    recovered: &mut Recovered,
) -> anyhow::Result<Replayed> {
    let mut seq = snap_seq;
    let mut current = None;
    for (i, (_, path)) in logs.iter().enumerate() {
        let last = i + 1 == logs.len();
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let read =
            codec::unframe(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        check_tail(path, read.good_len, bytes.len() as u64, last)?;
        for (record_seq, op) in read.records {
            if record_seq <= seq {
                continue;
            }
            if record_seq != seq + 1 {
                bail!(
                    "{}: record {record_seq} follows {seq}; records are missing",
                    path.display()
                );
            }
            seq = record_seq;
            recovered.ops.push(op);
        }
        recovered.log_bytes += read.good_len;
        if last {
            current = Some((path.clone(), read.good_len));
        }
    }
    Ok(Replayed { seq, current })
}

/// Accepts bytes after the last whole record only at the end of the newest log file: a write
/// cut short by a crash, never acknowledged. Anywhere else it is damage that loses documents.
fn check_tail(path: &Path, good_len: u64, file_len: u64, last: bool) -> anyhow::Result<()> {
    if good_len >= file_len {
        return Ok(());
    }
    if !last {
        bail!(
            "{} is damaged at byte {good_len} and is not the newest log: refusing to start \
             without the documents after it",
            path.display()
        );
    }
    tracing::warn!(
        file = %path.display(),
        kept = good_len,
        dropped = file_len - good_len,
        "truncating a record cut short by a crash (it was never acknowledged)"
    );
    Ok(())
}

/// Opens the newest log file for appending, cut back to its whole records and synced.
fn reopen_truncated(path: &Path, len: u64) -> anyhow::Result<File> {
    // Append mode: every write goes to the end, also after a truncation.
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.set_len(len)?;
    file.sync_all()?;
    Ok(file)
}

fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn log_name(first_seq: u64) -> String {
    format!("log-{first_seq:020}.wal")
}

fn create_synced(dir: &Path, path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    file.set_len(0)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
