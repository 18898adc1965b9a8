//! The Redis document store (the seed's choice, on the ranker host), through a `deadpool-redis`
//! connection pool.
//!
//! Documents are MessagePack values under `{prefix}{id}`. Reads are one `MGET` per request,
//! writes one `MSET`, deletes one `DEL`. A command that fails or takes longer than the timeout
//! is a [`StoreError::Unavailable`], which the ranker answers with 503; the pool replaces broken
//! connections as it hands them out (each is checked with a `PING` when reused), so when Redis
//! comes back the ranker serves again without a restart.

use std::time::Duration;

use deadpool_redis::redis::{self, IntoConnectionInfo as _};
use deadpool_redis::{Pool, Runtime};
use flowmesh_shared::secret::redact_url;
use flowmesh_shared::Document;

use super::{decode, encode, DocStore, StoreError};

/// Documents in Redis. Clones share the connection pool.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url` (`redis://host:port/db`), with `password` (instead of the URL's), keys
    /// prefixed by `prefix`, and `timeout` for every command. Connects lazily: a Redis that is
    /// down at start-up only makes requests fail until it is up.
    pub fn new(
        url: &str,
        password: Option<&str>,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        // The URL may carry a password: every message shows it redacted.
        let shown = redact_url(url);
        let mut info = url
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("invalid Redis URL {shown:?}: {e}"))?;
        match (password, &info.redis.password) {
            (Some(password), _) => info.redis.password = Some(password.to_owned()),
            (None, Some(_)) => tracing::warn!(
                url = %shown,
                "the Redis URL carries a password: prefer FLOWMESH_RANKER_REDIS_PASSWORD or \
                 --redis-password-file, since a URL may be shown or logged"
            ),
            (None, None) => {}
        }
        let pool = deadpool_redis::Config::from_connection_info(info)
            .builder()
            .map_err(|e| anyhow::anyhow!("Redis pool: {e}"))?
            .max_size(32)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("Redis pool: {e}"))?;
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let work = async {
            let mut conn = self.pool.get().await.map_err(|e| match e {
                deadpool_redis::PoolError::Backend(e) => unavailable(&e),
                other => StoreError::Unavailable(format!("Redis: {other}")),
            })?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(|e| unavailable(&e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "Redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// `PING`: whether Redis answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>(redis::cmd("PING")).await.map(drop)
    }
}

/// A Redis error as the ranker reports it: a refused or missing password says where the
/// password comes from (never the password itself, which no Redis error carries).
fn unavailable(e: &redis::RedisError) -> StoreError {
    const WHERE: &str = "FLOWMESH_RANKER_REDIS_PASSWORD or --redis-password-file";
    let text =
        if e.kind() == redis::ErrorKind::AuthenticationFailed || e.code() == Some("WRONGPASS") {
            format!("Redis refused the password ({WHERE}): {e}")
        } else if e.code() == Some("NOAUTH") {
            format!("Redis requires a password and none was given ({WHERE}): {e}")
        } else {
            format!("Redis: {e}")
        };
    StoreError::Unavailable(text)
}

impl DocStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Document>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for id in ids {
            cmd.arg(self.key(id));
        }
        let values: Vec<Option<Vec<u8>>> = self.query(cmd).await?;
        values
            .into_iter()
            .map(|v| v.map(|bytes| decode(&bytes)).transpose())
            .collect()
    }

    async fn put_many(&self, docs: Vec<Document>) -> Result<(), StoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("MSET");
        for doc in &docs {
            cmd.arg(self.key(&doc.id)).arg(encode(doc)?);
        }
        self.query::<()>(cmd).await
    }

    async fn delete_many(&self, ids: &[String]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("DEL");
        for id in ids {
            cmd.arg(self.key(id));
        }
        self.query::<usize>(cmd).await
    }
}
