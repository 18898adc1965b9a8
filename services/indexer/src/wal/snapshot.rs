//! Snapshots: the whole shard in one file, `FMSNAP01, seq: u64, dim: u32 (0 = none yet),
//! count: u64`, the entries, then the crc32 of everything before it. Written to a `.tmp` file,
//! synced, renamed and the directory synced, so a snapshot is either whole or absent.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;

use super::codec::{put_f32s, put_opt_str, put_str, Cursor};
use super::crc::CrcWriter;
use super::{numbered, sync_dir, Rows};

const SNAP_MAGIC: &[u8; 8] = b"FMSNAP01";

/// Writes a snapshot and removes what it makes redundant; runs without the log's lock.
pub(crate) struct Snapshotter {
    pub(super) dir: PathBuf,
    /// First sequence number of the log file current at the rotation: older files go.
    pub(super) current_first: u64,
}

impl Snapshotter {
    /// Writes `rows` (the state after record `seq`) as a snapshot, then deletes older snapshots
    /// and every log file before the one that was current when the log was rotated.
    pub(crate) fn write(&self, seq: u64, rows: &Rows) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("snapshot-{seq:020}.snap"));
        let tmp = self.dir.join(format!("snapshot-{seq:020}.tmp"));
        write_synced(&tmp, seq, rows)?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)?;
        self.remove_covered(seq)?;
        Ok(path)
    }

    /// Deletes the snapshots older than `seq` and the log files the one at `seq` covers.
    fn remove_covered(&self, seq: u64) -> io::Result<()> {
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
        Ok(())
    }
}

/// Writes the snapshot of `rows` at `seq` into `path` and syncs it.
fn write_synced(path: &Path, seq: u64, rows: &Rows) -> io::Result<()> {
    let file = File::create(path)?;
    let inner = encode_into(BufWriter::with_capacity(1 << 20, file), seq, rows)?;
    let file = inner.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
}

/// The snapshot of `rows` at `seq` as bytes (a mirrored copy's image for its peers).
pub(crate) fn encode(seq: u64, rows: &Rows) -> Vec<u8> {
    let dim = rows.dim.unwrap_or(0);
    let cap = rows.ids.len() * (4 * dim + 48) + 64;
    // Writing into a Vec cannot fail.
    encode_into(Vec::with_capacity(cap), seq, rows).unwrap_or_default()
}

/// Writes the snapshot of `rows` at `seq` into `out`, returning it.
fn encode_into<W: Write>(out: W, seq: u64, rows: &Rows) -> io::Result<W> {
    let mut out = CrcWriter::new(out);
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
    Ok(inner)
}

/// Installs the snapshot `bytes` (from [`encode`]) into the empty data directory `dir`, as the
/// file the next [`super::Log::open`] recovers. Checked whole before anything is written.
pub(crate) fn install(dir: &Path, bytes: &[u8]) -> anyhow::Result<u64> {
    let (seq, _) = decode(bytes)?;
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("snapshot-{seq:020}.snap"));
    let tmp = dir.join(format!("snapshot-{seq:020}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(seq)
}

/// Reads the snapshot in `path`: its sequence number and its rows.
pub(super) fn read_snapshot(path: &Path) -> anyhow::Result<(u64, Rows)> {
    let mut bytes = Vec::new();
    BufReader::new(File::open(path)?).read_to_end(&mut bytes)?;
    decode(&bytes)
}

/// Reads a snapshot from its bytes: its sequence number and its rows.
pub(crate) fn decode(bytes: &[u8]) -> anyhow::Result<(u64, Rows)> {
    if bytes.len() < 8 + 8 + 4 + 8 + 4 {
        bail!("too short to be a snapshot");
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        bail!("checksum mismatch");
    }
    let mut c = Cursor::new(body);
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
    let cap = count.min(c.remaining());
    rows.ids.reserve(cap);
    rows.parent_ids.reserve(cap);
    rows.vectors
        .reserve(cap.saturating_mul(dim).min(c.remaining() / 4));
    for _ in 0..count {
        rows.ids.push(c.string()?);
        rows.parent_ids.push(c.opt_string()?);
        c.f32s(dim, &mut rows.vectors)?;
    }
    if c.remaining() != 0 {
        bail!("trailing bytes");
    }
    Ok((seq, rows))
}
