//! The embedded document store: a `redb` database file in the ranker's data directory, the
//! default on a single machine so that running flowmesh needs no Redis.
//!
//! Every write is one transaction committed durably (fsynced) before the ranker answers; reads
//! see the last committed state. redb's calls block, so they run on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use flowmesh_shared::Document;
use redb::{Database, ReadableTableMetadata as _, TableDefinition};

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

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

impl DocStore for EmbeddedStore {
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
