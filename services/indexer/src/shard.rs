//! One shard: every entry held exactly in memory, optionally an approximate structure over them,
//! and the log that makes every acknowledged write durable.
//!
//! A write takes the shard's writer lock, checks the entries, appends the write to the log and
//! flushes it to disk, then applies it in memory and answers: a write that was answered survives
//! a crash, and one that was refused left nothing behind. Searches do not take the writer lock.
//!
//! Snapshots and rebuilds run on background threads. Each starts under the writer lock with a
//! copy of the entries (a memory copy, short), so that no write falls between the copy and what
//! is recorded after it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::approx::{Approx, BuildState};
use crate::backend::{Entry, Hit, IndexError, Metric, Stats, VectorIndex};
use crate::flat::FlatIndex;
use crate::wal::{Log, Op, OwnedEntry};

/// Log bytes after which a snapshot is written (or the size of the last snapshot, if larger).
const SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

/// A shard of the index.
pub struct Shard {
    inner: Arc<Inner>,
}

struct Inner {
    metric: Metric,
    all: FlatIndex,
    approx: Option<Approx>,
    writer: Mutex<Option<Log>>,
    durable: bool,
    snapshotting: AtomicBool,
    /// Bytes of the last snapshot written (estimated from the entries), to space snapshots out.
    last_snapshot_bytes: std::sync::atomic::AtomicU64,
}

/// What `/stats` reports about a shard, beyond [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ShardStats {
    /// Count, dimension, backend and metric.
    #[serde(flatten)]
    pub index: Stats,
    /// Whether writes are logged to a data directory (false: memory only).
    pub durable: bool,
    /// The approximate structure's state; absent for the `flat` backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildState>,
}

impl Shard {
    /// A `flat` shard in memory only, nothing logged (tests, throwaway runs).
    pub fn flat_in_memory(metric: Metric) -> Self {
        Self::in_memory(metric, None)
    }

    /// A shard that keeps everything in memory only (tests, throwaway runs).
    pub(crate) fn in_memory(metric: Metric, approx: Option<Approx>) -> Self {
        Self {
            inner: Arc::new(Inner {
                metric,
                all: FlatIndex::new(metric),
                approx,
                writer: Mutex::new(None),
                durable: false,
                snapshotting: AtomicBool::new(false),
                last_snapshot_bytes: 0.into(),
            }),
        }
    }

    /// Opens the shard stored in `dir` (creating it), replaying what it holds.
    pub(crate) fn open(dir: &Path, metric: Metric, approx: Option<Approx>) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        let (log, recovered) = Log::open(dir)?;
        let all = FlatIndex::new(metric);
        let inner = Inner {
            metric,
            all,
            approx,
            writer: Mutex::new(None),
            durable: true,
            snapshotting: AtomicBool::new(false),
            last_snapshot_bytes: 0.into(),
        };
        let snapshot_entries = recovered.snapshot.as_ref().map_or(0, |s| s.ids.len());
        if let Some(rows) = &recovered.snapshot {
            let entries: Vec<Entry<'_>> = rows.entries().collect();
            for chunk in entries.chunks(4096) {
                inner.apply_upsert(&[], chunk)?;
            }
            if let Some(dim) = rows.dim {
                // An emptied shard keeps its dimension.
                inner.all.restore_dim(dim);
            }
        }
        let ops = recovered.ops.len();
        for op in &recovered.ops {
            inner.apply(op)?;
        }
        *inner.writer() = Some(log);
        tracing::info!(
            dir = %dir.display(),
            snapshot_entries,
            log_records = ops,
            entries = inner.all.len(),
            seconds = started.elapsed().as_secs_f64(),
            "shard recovered"
        );
        let shard = Self {
            inner: Arc::new(inner),
        };
        if recovered.log_bytes > 0 {
            // Start the next life from one snapshot rather than a long log.
            shard.inner.clone().snapshot_in_background();
        }
        shard.inner.clone().rebuild_if_due();
        Ok(shard)
    }

    /// `/stats`.
    pub fn shard_stats(&self) -> ShardStats {
        ShardStats {
            index: self.stats(),
            durable: self.inner.durable,
            build: self.inner.approx.as_ref().map(Approx::build_state),
        }
    }

    /// How many documents the stored vectors belong to (see [`FlatIndex::documents`]).
    pub fn documents(&self) -> usize {
        self.inner.all.documents()
    }

    /// Waits until no snapshot or rebuild runs (tests and benchmarks).
    pub fn wait_idle(&self) {
        loop {
            let len = self.inner.all.len();
            let building = self
                .inner
                .approx
                .as_ref()
                .is_some_and(|a| a.build_state().building || a.wants_rebuild(len));
            if !building && !self.inner.snapshotting.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
impl Shard {
    /// Holds the writer lock, as a long write or a snapshot's copy does (tests).
    pub(crate) fn hold_writer(&self) -> MutexGuard<'_, Option<Log>> {
        self.inner.writer()
    }
}

impl Inner {
    fn writer(&self) -> MutexGuard<'_, Option<Log>> {
        // A panic while holding it happens before or after a whole append, never inside one.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, op: &Op) -> Result<(), IndexError> {
        match op {
            Op::Upsert { replaced, entries } => {
                let replaced: Vec<&str> = replaced.iter().map(String::as_str).collect();
                let entries: Vec<Entry<'_>> = entries.iter().map(OwnedEntry::borrowed).collect();
                self.apply_upsert(&replaced, &entries)
            }
            Op::Delete { ids } => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                self.apply_delete(&ids);
                Ok(())
            }
        }
    }

    fn apply_upsert(&self, replaced: &[&str], entries: &[Entry<'_>]) -> Result<(), IndexError> {
        let gone = self.all.upsert_tracked(replaced, entries)?;
        if let Some(approx) = &self.approx {
            approx.upsert(replaced, entries, &gone);
        }
        Ok(())
    }

    fn apply_delete(&self, ids: &[&str]) -> usize {
        let gone = self.all.delete_tracked(ids);
        if let Some(approx) = &self.approx {
            approx.delete(&gone);
        }
        gone.len()
    }

    /// Starts a rebuild of the approximate structure when enough has changed.
    fn rebuild_if_due(self: Arc<Self>) {
        let Some(approx) = &self.approx else { return };
        if !approx.wants_rebuild(self.all.len()) {
            return;
        }
        let rows = {
            let _writes = self.writer();
            if !approx.begin_rebuild() {
                return;
            }
            self.all.export()
        };
        let inner = Arc::clone(&self);
        let spawned = std::thread::Builder::new()
            .name("indexer-rebuild".into())
            .spawn(move || {
                if let Some(approx) = &inner.approx {
                    approx.finish_rebuild(rows);
                }
                // Writes that came during the build may already call for the next one.
                inner.rebuild_if_due();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a rebuild thread");
        }
    }

    /// Writes a snapshot when the log has grown enough since the last one.
    fn snapshot_if_due(self: Arc<Self>, log_bytes: u64) {
        let due = SNAPSHOT_AFTER_BYTES.max(self.last_snapshot_bytes.load(Ordering::Relaxed));
        if log_bytes >= due {
            self.snapshot_in_background();
        }
    }

    fn snapshot_in_background(self: Arc<Self>) {
        if self.snapshotting.swap(true, Ordering::AcqRel) {
            return;
        }
        let taken = {
            let mut writer = self.writer();
            writer.as_mut().map(|log| {
                let seq = log.rotate();
                (seq, log.snapshotter(), self.all.export())
            })
        };
        let Some((seq, snapshotter, rows)) = taken else {
            self.snapshotting.store(false, Ordering::Release);
            return;
        };
        let inner = Arc::clone(&self);
        let spawned = std::thread::Builder::new()
            .name("indexer-snapshot".into())
            .spawn(move || {
                let result = seq.and_then(|seq| {
                    let started = std::time::Instant::now();
                    let path = snapshotter.write(seq, &rows)?;
                    tracing::info!(
                        file = %path.display(),
                        entries = rows.ids.len(),
                        seconds = started.elapsed().as_secs_f64(),
                        "snapshot written"
                    );
                    Ok(())
                });
                if let Err(e) = result {
                    // The log still holds everything: nothing is lost, the log only grows.
                    tracing::error!(error = %e, "cannot write a snapshot");
                }
                let bytes = rows.vectors.len() as u64 * 4 + rows.ids.len() as u64 * 32;
                inner.last_snapshot_bytes.store(bytes, Ordering::Relaxed);
                inner.snapshotting.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a snapshot thread");
            self.snapshotting.store(false, Ordering::Release);
        }
    }
}

impl VectorIndex for Shard {
    fn backend(&self) -> &'static str {
        self.inner.approx.as_ref().map_or("flat", Approx::name)
    }

    fn stats(&self) -> Stats {
        let mut stats = self.inner.all.stats();
        stats.backend = self.backend();
        stats
    }

    fn upsert(&self, replaced: &[&str], entries: &[Entry<'_>]) -> Result<(), IndexError> {
        let log_bytes = {
            let mut writer = self.inner.writer();
            self.inner.all.check(entries)?;
            let log_bytes = match writer.as_mut() {
                Some(log) => {
                    let op = Op::Upsert {
                        replaced: replaced.iter().map(|s| (*s).to_owned()).collect(),
                        entries: entries
                            .iter()
                            .map(|e| OwnedEntry {
                                id: e.id.to_owned(),
                                parent_id: e.parent_id.map(str::to_owned),
                                vector: e.vector.to_vec(),
                            })
                            .collect(),
                    };
                    log.append(&op)
                        .map_err(|e| IndexError::Storage(e.to_string()))?;
                    log.since_snapshot()
                }
                None => 0,
            };
            self.inner.apply_upsert(replaced, entries)?;
            log_bytes
        };
        Arc::clone(&self.inner).rebuild_if_due();
        Arc::clone(&self.inner).snapshot_if_due(log_bytes);
        Ok(())
    }

    fn search(&self, queries: &[Entry<'_>], k: usize) -> Result<Vec<Vec<Hit>>, IndexError> {
        match &self.inner.approx {
            Some(approx) => {
                // The dimension is the shard's, whatever the built structure holds.
                if let Some(dim) = self.inner.all.stats().dimension {
                    if let Some(bad) = queries.iter().find(|q| q.vector.len() != dim) {
                        return Err(IndexError::WrongDimension {
                            id: bad.id.to_owned(),
                            expected: dim,
                            got: bad.vector.len(),
                        });
                    }
                }
                approx.search(queries, k)
            }
            None => self.inner.all.search(queries, k),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.inner.all.contains(id)
    }

    fn delete(&self, ids: &[&str]) -> Result<usize, IndexError> {
        let (removed, log_bytes) = {
            let mut writer = self.inner.writer();
            let log_bytes = match writer.as_mut() {
                Some(log) => {
                    let op = Op::Delete {
                        ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                    };
                    log.append(&op)
                        .map_err(|e| IndexError::Storage(e.to_string()))?;
                    log.since_snapshot()
                }
                None => 0,
            };
            (self.inner.apply_delete(ids), log_bytes)
        };
        Arc::clone(&self.inner).rebuild_if_due();
        Arc::clone(&self.inner).snapshot_if_due(log_bytes);
        Ok(removed)
    }
}

impl Shard {
    /// The whole shard as snapshot bytes (the WAL's snapshot format), copied under the writer
    /// lock so that no write is half in it: a mirrored copy's image for its peers.
    pub fn export_image(&self) -> Vec<u8> {
        let rows = {
            let _writes = self.inner.writer();
            self.inner.all.export()
        };
        crate::wal::encode_snapshot(0, &rows)
    }

    /// Installs an image from [`Shard::export_image`] into the empty data directory `dir`, so
    /// that opening the shard there recovers it.
    pub fn install_image(dir: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        crate::wal::install_snapshot(dir, bytes)?;
        Ok(())
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.inner.all.len()
    }

    /// Whether the shard stores nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The content digest (see [`flowmesh_shared::mirror::Digest`]) over every entry's id,
    /// parent id and vector bytes.
    pub fn digest(&self) -> String {
        let rows = self.inner.all.export();
        let mut digest = flowmesh_shared::mirror::Digest::new();
        let mut value = Vec::new();
        for entry in rows.entries() {
            value.clear();
            match entry.parent_id {
                Some(p) => {
                    value.push(1);
                    value.extend_from_slice(&(p.len() as u64).to_le_bytes());
                    value.extend_from_slice(p.as_bytes());
                }
                None => value.push(0),
            }
            for x in entry.vector {
                value.extend_from_slice(&x.to_le_bytes());
            }
            digest.add(entry.id.as_bytes(), &value);
        }
        digest.finish()
    }

    /// Whether the shard holds `id` (an entry, or the parent of stored chunks).
    pub fn holds(&self, id: &str) -> bool {
        self.inner.all.contains(id)
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.inner.metric
    }
}
