//! The binary encoding of log records and snapshot entries: little-endian lengths, strings as
//! `len: u32, bytes`, options as a `0`/`1` tag, vectors as raw `f32`s; a record is framed as
//! `len: u32, crc32: u32, payload[len]`. Every read is bounds-checked.

use std::io;

use super::{Op, OwnedEntry};

/// Largest record accepted, written or replayed, so a corrupt length cannot ask for all memory.
pub(super) const MAX_RECORD: u32 = 1 << 30;

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;

/// `op` with sequence number `seq`, framed with its length and checksum.
pub(super) fn frame(seq: u64, op: &Op) -> io::Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(64);
    encode_op(seq, op, &mut payload);
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= MAX_RECORD)
        .ok_or_else(|| io::Error::other("a write larger than 1 GiB cannot be logged"))?;
    let mut record = Vec::with_capacity(payload.len() + 8);
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

/// How reading a log's bytes ended.
pub(super) struct Unframed {
    /// The whole records, in order, with their sequence numbers.
    pub(super) records: Vec<(u64, Op)>,
    /// Bytes the whole records span: reading stops at the first record cut short or failing
    /// its checksum.
    pub(super) good_len: u64,
}

/// The whole records of a log file's `bytes`. A record whose checksum matches but that does
/// not decode is an error (a bug or a foreign file, not a torn write), naming its offset.
pub(super) fn unframe(bytes: &[u8]) -> Result<Unframed, String> {
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
        let record =
            decode_op(payload).map_err(|e| format!("undecodable record at byte {at}: {e}"))?;
        records.push(record);
        at += 8 + len;
    }
    Ok(Unframed {
        records,
        good_len: at as u64,
    })
}

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
            put_ids(out, ids);
        }
    }
}

fn decode_op(payload: &[u8]) -> io::Result<(u64, Op)> {
    let mut c = Cursor::new(payload);
    let seq = c.u64()?;
    let op = match c.u8()? {
        OP_UPSERT => {
            let replaced = c.ids()?;
            let n = c.len()?;
            let mut entries = Vec::with_capacity(n.min(c.remaining()));
            for _ in 0..n {
                let id = c.string()?;
                let parent_id = c.opt_string()?;
                let dim = c.len()?;
                let mut vector = Vec::with_capacity(dim.min(c.remaining() / 4));
                c.f32s(dim, &mut vector)?;
                entries.push(OwnedEntry {
                    id,
                    parent_id,
                    vector,
                });
            }
            Op::Upsert { replaced, entries }
        }
        OP_DELETE => Op::Delete { ids: c.ids()? },
        tag => return Err(invalid(format!("unknown record type {tag}"))),
    };
    if c.remaining() != 0 {
        return Err(invalid("trailing bytes in a record"));
    }
    Ok((seq, op))
}

pub(super) fn put_len(out: &mut Vec<u8>, len: usize) {
    // Lengths come from requests capped far below 4 GiB by the body limit.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

pub(super) fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[String]) {
    put_len(out, ids.len());
    for id in ids {
        put_str(out, id);
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads a record's or a snapshot's fields; every read is bounds-checked.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(invalid("truncated field"));
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

    pub(super) fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(super) fn len(&mut self) -> io::Result<usize> {
        Ok(self.u32()? as usize)
    }

    pub(super) fn string(&mut self) -> io::Result<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| invalid("id is not UTF-8"))
    }

    pub(super) fn opt_string(&mut self) -> io::Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(invalid("bad option tag")),
        }
    }

    fn ids(&mut self) -> io::Result<Vec<String>> {
        let n = self.len()?;
        let mut ids = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            ids.push(self.string()?);
        }
        Ok(ids)
    }

    pub(super) fn f32s(&mut self, n: usize, out: &mut Vec<f32>) -> io::Result<()> {
        let bytes = self.take(
            n.checked_mul(4)
                .ok_or_else(|| invalid("vector length overflows"))?,
        )?;
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }
}
