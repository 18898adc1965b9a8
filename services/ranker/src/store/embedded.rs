//! The embedded document store: a `redb` database file in the ranker's data directory, the
//! default on a single machine so that running flowmesh needs no Redis.
//!
//! Every write is one transaction committed durably (fsynced) before the ranker answers; reads
//! see the last committed state. redb's calls block, so they run on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use flowmesh_shared::Document;
use redb::{Database, ReadableTable as _, ReadableTableMetadata as _, TableDefinition};

use super::{decode, encode, DocStore, StoreError};

const DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("documents");

/// Documents in a local `redb` file.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating) the store `docs.redb` in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join("docs.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open the document store {}", path.display()))?;
        // Create the table, so that reads of an empty store find it.
        let tx = db.begin_write()?;
        tx.open_table(DOCS)?;
        tx.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Number of stored documents.
    pub fn count(&self) -> anyhow::Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(DOCS)?.len()?)
    }

    /// The content digest (see [`flowmesh_shared::mirror::Digest`]) over every document's id
    /// and stored bytes.
    pub fn digest(&self) -> anyhow::Result<String> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DOCS)?;
        let mut digest = flowmesh_shared::mirror::Digest::new();
        for item in table.iter()? {
            let (id, value) = item?;
            digest.add(id.value().as_bytes(), value.value());
        }
        Ok(digest.finish())
    }

    /// Every document as one image, read in one transaction (a consistent state):
    /// `FMDOCS01`, the count (u64 LE), then per document its id and stored bytes, each as a
    /// u32 LE length and the bytes.
    pub fn export_image(&self) -> anyhow::Result<Vec<u8>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(DOCS)?;
        let mut out = Vec::with_capacity(1 << 16);
        out.extend_from_slice(IMAGE_MAGIC);
        out.extend_from_slice(&table.len()?.to_le_bytes());
        for item in table.iter()? {
            let (id, value) = item?;
            for part in [id.value().as_bytes(), value.value()] {
                out.extend_from_slice(&u32::try_from(part.len())?.to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        Ok(out)
    }

    /// Writes an image from [`EmbeddedStore::export_image`] as a fresh `docs.redb` in the empty
    /// data directory `dir`; checked whole before the file is kept.
    pub fn install_image(dir: &Path, bytes: &[u8]) -> anyhow::Result<()> {
        let pairs = parse_image(bytes)?;
        let store = Self::open(dir)?;
        let tx = store.db.begin_write()?;
        {
            let mut table = tx.open_table(DOCS)?;
            for (id, value) in pairs {
                table.insert(id, value)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("document store task failed: {e}")))?
    }
}

const IMAGE_MAGIC: &[u8; 8] = b"FMDOCS01";

/// The (id, bytes) pairs of an image.
fn parse_image(bytes: &[u8]) -> anyhow::Result<Vec<(&str, &[u8])>> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(rest.len() >= n, "the image is truncated");
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head)
    }
    fn len(rest: &mut &[u8]) -> anyhow::Result<usize> {
        let b = take(rest, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut rest = bytes;
    anyhow::ensure!(
        take(&mut rest, 8)? == IMAGE_MAGIC,
        "not a flowmesh document store image"
    );
    let count = take(&mut rest, 8)?;
    let count = u64::from_le_bytes(count.try_into()?);
    let mut pairs = Vec::new();
    for _ in 0..count {
        let n = len(&mut rest)?;
        let id = std::str::from_utf8(take(&mut rest, n)?)?;
        let n = len(&mut rest)?;
        pairs.push((id, take(&mut rest, n)?));
    }
    anyhow::ensure!(rest.is_empty(), "trailing bytes after the image");
    Ok(pairs)
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

impl DocStore for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn count_cheaply(&self) -> Option<u64> {
        // redb keeps each table's length in its header: no scan.
        self.count().ok()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Document>>, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(failed)?;
            let table = tx.open_table(DOCS).map_err(failed)?;
            ids.iter()
                .map(|id| match table.get(id.as_str()).map_err(failed)? {
                    Some(value) => decode(value.value()).map(Some),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    async fn put_many(&self, docs: Vec<Document>) -> Result<(), StoreError> {
        let values = docs
            .iter()
            .map(|d| Ok((d.id.clone(), encode(d)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(failed)?;
            {
                let mut table = tx.open_table(DOCS).map_err(failed)?;
                for (id, value) in &values {
                    table
                        .insert(id.as_str(), value.as_slice())
                        .map_err(failed)?;
                }
            }
            tx.commit().map_err(failed)
        })
        .await
    }

    async fn delete_many(&self, ids: &[String]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(failed)?;
            let mut removed = 0;
            {
                let mut table = tx.open_table(DOCS).map_err(failed)?;
                for id in &ids {
                    if table.remove(id.as_str()).map_err(failed)?.is_some() {
                        removed += 1;
                    }
                }
            }
            tx.commit().map_err(failed)?;
            Ok(removed)
        })
        .await
    }
}
