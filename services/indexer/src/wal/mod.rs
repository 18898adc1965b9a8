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
//! - `snapshot-{seq}.snap`: `FMSNAP01, seq: u64, dim: u32 (0 = none yet), count: u64`, the
//!   entries, then the crc32 of everything before it. Written to a `.tmp` file, synced, renamed
//!   and the directory synced, so a snapshot is either whole or absent.
//!
//! Any other damage (a bad record before the end, a corrupt newest snapshot with no older one)
//! stops the start-up with an error that names the file: serving would silently lose documents.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::backend::Entry;

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

const SNAP_MAGIC: &[u8; 8] = b"FMSNAP01";
/// Largest record accepted on replay, so a corrupt length cannot ask for all memory.
const MAX_RECORD: u32 = 1 << 30;

impl Log {
    /// Opens (creating if needed) the data directory, takes its lock and recovers what it holds.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<(Self, Recovered)> {
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
        let mut snapshots = Vec::new();
        let mut logs = Vec::new();
        for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // An interrupted snapshot: never renamed, so never relied on.
                let _ = fs::remove_file(item.path());
            } else if let Some(seq) = numbered(&name, "snapshot-", ".snap") {
                snapshots.push((seq, item.path()));
            } else if let Some(first) = numbered(&name, "log-", ".wal") {
                logs.push((first, item.path()));
            }
        }
        snapshots.sort();
        logs.sort();

        let mut recovered = Recovered::default();
        let mut snap_seq = 0;
        // Snapshots appear by rename, whole or not at all: a damaged one is not a crash's doing,
        // and the logs it covered are gone, so there is nothing to fall back on.
        if let Some((seq, path)) = snapshots.pop() {
            let (got_seq, rows) =
                read_snapshot(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if got_seq != seq {
                bail!("{} names another sequence number", path.display());
            }
            snap_seq = seq;
            recovered.snapshot = Some(rows);
        }

        let mut seq = snap_seq;
        let mut current: Option<(PathBuf, u64)> = None;
        let count = logs.len();
        for (i, (_, path)) in logs.iter().enumerate() {
            let last = i + 1 == count;
            let (records, good_len) = read_log(path)?;
            let file_len = fs::metadata(path)?.len();
            if good_len < file_len {
                if !last {
                    bail!(
                        "{} is damaged at byte {good_len} and is not the newest log: refusing to \
                         start without the documents after it",
                        path.display()
                    );
                }
                tracing::warn!(
                    file = %path.display(),
                    kept = good_len,
                    dropped = file_len - good_len,
                    "truncating a record cut short by a crash (it was never acknowledged)"
                );
            }
            for (record_seq, op) in records {
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
            recovered.log_bytes += good_len;
            if last {
                current = Some((path.clone(), good_len));
            }
        }

        let (path, len, file) = match current {
            Some((path, len)) => {
                // Append mode: every write goes to the end, also after a truncation.
                let file = OpenOptions::new()
                    .read(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                file.set_len(len)?;
                file.sync_all()?;
                (path, len, file)
            }
            None => {
                let path = dir.join(log_name(seq + 1));
                let file = create_synced(dir, &path)?;
                (path, 0, file)
            }
        };
        let since_snapshot = recovered.log_bytes;
        let log = Self {
            dir: dir.to_owned(),
            _lock: lock,
            file,
            path,
            len,
            seq,
            since_snapshot,
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
        let mut payload = Vec::with_capacity(64);
        encode_op(self.seq + 1, op, &mut payload);
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&len| len <= MAX_RECORD)
            .ok_or_else(|| io::Error::other("a write larger than 1 GiB cannot be logged"))?;
        let mut record = Vec::with_capacity(payload.len() + 8);
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
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

/// Writes a snapshot and removes what it makes redundant; runs without the log's lock.
pub(crate) struct Snapshotter {
    dir: PathBuf,
    /// First sequence number of the log file current at the rotation: older files go.
    current_first: u64,
}

impl Snapshotter {
    /// Writes `rows` (the state after record `seq`) as a snapshot, then deletes older snapshots
    /// and every log file before the one that was current when the log was rotated.
    pub(crate) fn write(&self, seq: u64, rows: &Rows) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("snapshot-{seq:020}.snap"));
        let tmp = self.dir.join(format!("snapshot-{seq:020}.tmp"));
        {
            let file = File::create(&tmp)?;
            let mut out = CrcWriter::new(BufWriter::with_capacity(1 << 20, file));
            out.write_all(SNAP_MAGIC)?;
            out.write_all(&seq.to_le_bytes())?;
            let dim = rows.dim.unwrap_or(0);
            out.write_all(&u32::try_from(dim).unwrap_or(u32::MAX).to_le_bytes())?;
            out.write_all(&(rows.ids.len() as u64).to_le_bytes())?;
            let mut buf = Vec::with_capacity(4 * dim + 64);
            for entry in rows.entries() {
                buf.clear();
                put_str(&mut buf, entry.id);
                put_opt_str(&mut buf, entry.parent_id);
                put_f32s(&mut buf, entry.vector);
                out.write_all(&buf)?;
            }
            let crc = out.crc();
            let mut inner = out.into_inner();
            inner.write_all(&crc.to_le_bytes())?;
            let file = inner.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        for item in fs::read_dir(&self.dir)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            let older_snapshot = numbered(&name, "snapshot-", ".snap").is_some_and(|s| s < seq);
            let older_log =
                numbered(&name, "log-", ".wal").is_some_and(|first| first < self.current_first);
            if older_snapshot || older_log {
                fs::remove_file(item.path())?;
            }
        }
        Ok(path)
    }
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

// ---- encoding -------------------------------------------------------------------------------

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;

fn encode_op(seq: u64, op: &Op, out: &mut Vec<u8>) {
    out.extend_from_slice(&seq.to_le_bytes());
    match op {
        Op::Upsert { replaced, entries } => {
            out.push(OP_UPSERT);
            put_len(out, replaced.len());
            for id in replaced {
                put_str(out, id);
            }
            put_len(out, entries.len());
            for entry in entries {
                put_str(out, &entry.id);
                put_opt_str(out, entry.parent_id.as_deref());
                put_len(out, entry.vector.len());
                put_f32s(out, &entry.vector);
            }
        }
        Op::Delete { ids } => {
            out.push(OP_DELETE);
            put_len(out, ids.len());
            for id in ids {
                put_str(out, id);
            }
        }
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths come from requests capped far below 4 GiB by the body limit.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

/// Reads a record's or a snapshot's fields; every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated field",
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len(&mut self) -> io::Result<usize> {
        Ok(self.u32()? as usize)
    }

    fn string(&mut self) -> io::Result<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "id is not UTF-8"))
    }

    fn opt_string(&mut self) -> io::Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "bad option tag")),
        }
    }

    fn f32s(&mut self, n: usize, out: &mut Vec<f32>) -> io::Result<()> {
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "vector length overflows")
        })?)?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }
}

fn decode_op(payload: &[u8]) -> io::Result<(u64, Op)> {
    let mut c = Cursor { buf: payload };
    let seq = c.u64()?;
    let op = match c.u8()? {
        OP_UPSERT => {
            let n = c.len()?;
            let mut replaced = Vec::with_capacity(n.min(c.buf.len()));
            for _ in 0..n {
                replaced.push(c.string()?);
            }
            let n = c.len()?;
            let mut entries = Vec::with_capacity(n.min(c.buf.len()));
            for _ in 0..n {
                let id = c.string()?;
                let parent_id = c.opt_string()?;
                let dim = c.len()?;
                let mut vector = Vec::with_capacity(dim.min(c.buf.len() / 4));
                c.f32s(dim, &mut vector)?;
                entries.push(OwnedEntry {
                    id,
                    parent_id,
                    vector,
                });
            }
            Op::Upsert { replaced, entries }
        }
        OP_DELETE => {
            let n = c.len()?;
            let mut ids = Vec::with_capacity(n.min(c.buf.len()));
            for _ in 0..n {
                ids.push(c.string()?);
            }
            Op::Delete { ids }
        }
        tag => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown record type {tag}"),
            ))
        }
    };
    if !c.buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing bytes in a record",
        ));
    }
    Ok((seq, op))
}

/// The whole records of a log file, and the length they span. Reading stops at the first record
/// that is cut short or fails its checksum.
fn read_log(path: &Path) -> anyhow::Result<(Vec<(u64, Op)>, u64)> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let len = len as usize;
        if len as u64 > u64::from(MAX_RECORD) || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode_op(payload) {
            Ok(record) => records.push(record),
            // The checksum matched, so this is not a torn write: a bug or a foreign file.
            Err(e) => bail!("{}: undecodable record at byte {at}: {e}", path.display()),
        }
        at += 8 + len;
    }
    Ok((records, at as u64))
}

fn read_snapshot(path: &Path) -> anyhow::Result<(u64, Rows)> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    if bytes.len() < 8 + 8 + 4 + 8 + 4 {
        bail!("too short to be a snapshot");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        bail!("checksum mismatch");
    }
    let mut c = Cursor { buf: body };
    if c.take(8)? != SNAP_MAGIC {
        bail!("not a flowmesh snapshot");
    }
    let seq = c.u64()?;
    let dim = c.len()?;
    let count = usize::try_from(c.u64()?)?;
    let mut rows = Rows {
        dim: (dim > 0).then_some(dim),
        ..Rows::default()
    };
    let cap = count.min(c.buf.len());
    rows.ids.reserve(cap);
    rows.parent_ids.reserve(cap);
    rows.vectors
        .reserve(cap.saturating_mul(dim).min(c.buf.len() / 4));
    for _ in 0..count {
        rows.ids.push(c.string()?);
        rows.parent_ids.push(c.opt_string()?);
        c.f32s(dim, &mut rows.vectors)?;
    }
    if !c.buf.is_empty() {
        bail!("trailing bytes");
    }
    Ok((seq, rows))
}

/// A writer that keeps the crc32 of what passed through it.
struct CrcWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
        }
    }

    fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: &str, v: f32) -> Op {
        Op::Upsert {
            replaced: vec![id.to_owned()],
            entries: vec![OwnedEntry {
                id: id.to_owned(),
                parent_id: Some(format!("{id}-parent")),
                vector: vec![v, -v, 0.5],
            }],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-wal-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_round_trip_through_a_reopen() {
        let dir = temp_dir("roundtrip");
        let ops = vec![
            upsert("a", 1.0),
            Op::Delete {
                ids: vec!["x".into(), "ü🙂".into()],
            },
            upsert("b", 2.0),
        ];
        {
            let (mut log, recovered) = Log::open(&dir).unwrap();
            assert!(recovered.ops.is_empty() && recovered.snapshot.is_none());
            for op in &ops {
                log.append(op).unwrap();
            }
        }
        let (_log, recovered) = Log::open(&dir).unwrap();
        assert_eq!(recovered.ops, ops);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_writing_goes_on() {
        let dir = temp_dir("torn");
        let log_path;
        {
            let (mut log, _) = Log::open(&dir).unwrap();
            log.append(&upsert("a", 1.0)).unwrap();
            log.append(&upsert("b", 2.0)).unwrap();
            log_path = log.path.clone();
        }
        // Cut the last record in the middle, as a crash during its write would.
        let len = fs::metadata(&log_path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&log_path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        {
            let (mut log, recovered) = Log::open(&dir).unwrap();
            assert_eq!(recovered.ops, vec![upsert("a", 1.0)]);
            log.append(&upsert("c", 3.0)).unwrap();
        }
        let (_log, recovered) = Log::open(&dir).unwrap();
        assert_eq!(recovered.ops, vec![upsert("a", 1.0), upsert("c", 3.0)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_snapshot_replaces_the_logs_it_covers() {
        let dir = temp_dir("snapshot");
        let rows = Rows {
            dim: Some(3),
            ids: vec!["a".into(), "b".into()],
            parent_ids: vec![None, Some("p".into())],
            vectors: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        {
            let (mut log, _) = Log::open(&dir).unwrap();
            log.append(&upsert("a", 1.0)).unwrap();
            log.append(&upsert("b", 2.0)).unwrap();
            let seq = log.rotate().unwrap();
            assert_eq!(seq, 2);
            log.append(&upsert("c", 3.0)).unwrap();
            log.snapshotter().write(seq, &rows).unwrap();
        }
        let logs = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(".wal")
            })
            .count();
        assert_eq!(logs, 1, "the covered log file is gone");
        let (_log, recovered) = Log::open(&dir).unwrap();
        assert_eq!(recovered.snapshot, Some(rows));
        assert_eq!(recovered.ops, vec![upsert("c", 3.0)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_the_same_directory() {
        let dir = temp_dir("lock");
        let (_log, _) = Log::open(&dir).unwrap();
        let err = Log::open(&dir).err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_before_the_end_refuses_to_start() {
        let dir = temp_dir("damage");
        {
            let (mut log, _) = Log::open(&dir).unwrap();
            log.append(&upsert("a", 1.0)).unwrap();
            log.rotate().unwrap();
            log.append(&upsert("b", 2.0)).unwrap();
        }
        let first = dir.join(log_name(1));
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let err = Log::open(&dir).err().unwrap();
        assert!(err.to_string().contains("damaged"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
