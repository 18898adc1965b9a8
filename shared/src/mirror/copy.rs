//! The copy side of a mirrored shard: a copy applies the writes of its shard strictly in log
//! order, remembers the position it applied (`{data_dir}/MIRROR`), reads what it missed from the
//! log, and at start-up seeds an empty or too-old data directory from a peer's snapshot.
//!
//! The recorded position is written only after the store made the write durable, so it is never
//! ahead of the data: after a crash a copy re-applies a suffix of the log, which is harmless
//! because writes are upserts and deletes by id. A write that fails deterministically (a 4xx:
//! wrong dimension, update of an unknown id) is a no-op at its position on every copy, so it
//! advances the position; a 5xx (storage) does not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::log::{Log, LogArgs, LogError, ShardLog};
use crate::api::Envelope;
use crate::codec::Format;
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::secret::{redact_url, SecretSet};
use crate::tls::ClientTlsArgs;

/// The exit code of a copy that finds itself behind the log's first record while running: its
/// supervisor restarts it, and start-up seeds it from a peer's snapshot.
pub const EXIT_BEHIND_LOG: i32 = 75;

/// Records read from the log per batch when catching up.
const CATCH_UP_BATCH: u64 = 128;

/// How often a running copy compares its position with the log's newest record.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// How long a write that arrives before its predecessors waits for them to arrive from the
/// gateway too (concurrent requests overtake each other on the way) before it reads them from
/// the log instead.
const PREDECESSORS_WAIT: Duration = Duration::from_millis(100);

/// How often, at most, a copy rewrites its `MIRROR` file while writes arrive. The recorded
/// position may lag the applied one by this much: after a crash the copy applies those writes
/// again from the log, which changes nothing (they are upserts and deletes by id, in order).
/// A rewrite per write cost a fifth of a copy's CPU (a file replaced by rename is flushed by
/// ext4 at once).
const RECORD_EVERY: Duration = Duration::from_millis(200);

/// The response header of `GET /mirror/snapshot` naming the log the image belongs to.
pub const LOG_ID_HEADER: &str = "x-flowmesh-log-id";

/// The file in the data directory that records the applied position.
const MIRROR_FILE: &str = "MIRROR";

/// The options of a mirrored copy (indexer and ranker).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MirrorArgs {
    /// The replicated log (set: this process is a mirrored copy).
    #[command(flatten)]
    pub log: LogArgs,
    /// The log (JetStream stream) this copy follows, `FLOWMESH_{executor}_{shard}`; required
    /// with --log-url.
    #[arg(long, env = "FLOWMESH_LOG_STREAM", value_name = "NAME")]
    pub log_stream: Option<String>,
    /// Another copy of the same shard (repeatable), asked for a snapshot when this copy has to
    /// be seeded.
    #[arg(
        long = "peer",
        env = "FLOWMESH_PEERS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub peers: Vec<String>,
    /// A file with one peer URL per line, re-read whenever a peer is needed.
    #[arg(long, env = "FLOWMESH_PEERS_FILE", value_name = "PATH")]
    pub peers_file: Option<PathBuf>,
    /// At start, install this snapshot (the body of `GET /mirror/snapshot`) into the empty data
    /// directory first.
    #[arg(long, env = "FLOWMESH_RESTORE_FROM", value_name = "FILE")]
    pub restore_from: Option<PathBuf>,
    /// How long start-up waits for a peer to answer with a snapshot.
    #[arg(
        long,
        env = "FLOWMESH_MIRROR_START_TIMEOUT_SECS",
        default_value_t = 120
    )]
    pub start_timeout_secs: u64,
    /// TLS towards peers.
    #[command(flatten)]
    pub peer_tls: ClientTlsArgs,
}

impl MirrorArgs {
    /// Whether this process is a mirrored copy.
    pub fn is_mirrored(&self) -> bool {
        self.log.log_url.is_some()
    }

    fn peer_list(&self) -> Vec<String> {
        let mut peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(file) = &self.peers_file {
            match std::fs::read_to_string(file) {
                Ok(text) => peers.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_owned),
                ),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot read --peers-file");
                }
            }
        }
        peers
    }
}

/// What a store does for its copy.
pub trait MirrorStore: Send + Sync + 'static {
    /// Applies one write (the executor's own handling of `endpoint`).
    fn apply(
        &self,
        endpoint: Endpoint,
        request: Envelope,
    ) -> BoxFuture<'_, Result<Envelope, ApiError>>;
    /// Items stored.
    fn count(&self) -> u64;
    /// The content digest (see [`Digest`]); may scan everything (called off the async threads).
    fn digest(&self) -> String;
    /// A consistent image of the store, in the format its service's `install` reads. Called
    /// with applies paused, off the async threads.
    fn export(&self) -> Result<Vec<u8>, ApiError>;
}

/// An order-independent 128-bit digest of a store's content: for every item the first 16
/// bytes of SHA-256 over its id and value, summed (wrapping), then hashed with the count. Two
/// stores with the same items have the same digest whatever their insertion order.
#[derive(Debug, Default, Clone)]
pub struct Digest {
    sum: u128,
    count: u64,
}

impl Digest {
    /// An empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one item.
    pub fn add(&mut self, id: &[u8], value: &[u8]) {
        let mut h = Sha256::new();
        h.update((id.len() as u64).to_le_bytes());
        h.update(id);
        h.update(value);
        let out = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&out[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(first));
        self.count += 1;
    }

    /// The digest as 32 hex characters.
    pub fn finish(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.sum.to_le_bytes());
        h.update(self.count.to_le_bytes());
        let out = h.finalize();
        out[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The copy's state as `/stats` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MirrorState {
    /// Installing a snapshot.
    Restoring,
    /// Reading the writes it missed from the log; takes no reads.
    CatchingUp,
    /// Caught up (or not mirrored).
    Ready,
}

/// The `mirror` part of a stateful executor's `/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MirrorStats {
    /// The log this copy follows; null when the executor is not mirrored.
    pub log: Option<String>,
    /// The identity of that log (when its stream was created).
    pub log_id: String,
    /// The position of the last write applied (0 when not mirrored).
    pub position: u64,
    /// Items stored.
    pub count: u64,
    /// The content digest, 32 hex characters; equal content gives equal digests.
    pub digest: String,
    /// `restoring`, `catching_up` or `ready`.
    pub state: MirrorState,
}

/// The recorded position of a copy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Recorded {
    log: String,
    log_id: String,
    position: u64,
}

fn read_recorded(dir: &Path) -> Option<Recorded> {
    let text = std::fs::read(dir.join(MIRROR_FILE)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "the MIRROR file is unreadable: starting from position 0");
            None
        }
    }
}

fn write_recorded(dir: &Path, r: &Recorded) -> std::io::Result<()> {
    // No fsync: a position lost in a crash is only older, and re-applying is harmless; the
    // rename keeps the file whole.
    let tmp = dir.join("MIRROR.tmp");
    let bytes = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(MIRROR_FILE))
}

/// Whether `dir` holds nothing (or does not exist).
pub fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// Installs a snapshot image into an empty data directory (per service).
pub type Install = dyn Fn(&Path, &[u8]) -> anyhow::Result<()> + Send + Sync;

/// What start-up found and did before the store opens: the log to follow and the position the
/// data directory holds.
#[derive(Debug)]
pub struct Prepared {
    log: Option<ShardLog>,
    recorded: Recorded,
    dir: Option<PathBuf>,
}

impl Prepared {
    /// A stateful executor that is not mirrored.
    pub fn unmirrored() -> Self {
        Self {
            log: None,
            recorded: Recorded::default(),
            dir: None,
        }
    }
}

/// The peers of a copy and how to call them.
#[derive(Debug, Clone)]
struct Peers {
    args: MirrorArgs,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    mesh: Option<SecretSet>,
}

/// A snapshot fetched from a peer.
struct Fetched {
    body: Bytes,
    position: u64,
    log_id: String,
}

impl Peers {
    fn new(args: &MirrorArgs, mesh: Option<SecretSet>) -> anyhow::Result<Self> {
        let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let https = crate::tls::https_connector(conn, args.peer_tls.client_config()?);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Self {
            args: args.clone(),
            client,
            mesh,
        })
    }

    async fn fetch(&self, peer: &str) -> anyhow::Result<Fetched> {
        let uri: http::Uri = format!("{}/mirror/snapshot", peer.trim_end_matches('/')).parse()?;
        let mut req = http::Request::get(uri).body(Full::new(Bytes::new()))?;
        if let Some(token) = self.mesh.as_ref().and_then(SecretSet::first) {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))?;
            v.set_sensitive(true);
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        let resp = tokio::time::timeout(Duration::from_secs(600), self.client.request(req))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 600 s"))??;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let position = header(super::SEQ_HEADER).and_then(|v| v.parse::<u64>().ok());
        let log_id = header(LOG_ID_HEADER).unwrap_or_default();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            anyhow::bail!("status {status}: {}", String::from_utf8_lossy(&body));
        }
        let position =
            position.ok_or_else(|| anyhow::anyhow!("no {} header", super::SEQ_HEADER))?;
        Ok(Fetched {
            body,
            position,
            log_id,
        })
    }

    /// The first peer's snapshot that belongs to `log_id` and is not older than `first - 1`,
    /// trying every peer in turn until `timeout`.
    async fn snapshot(&self, log_id: &str, first: u64) -> anyhow::Result<(String, Fetched)> {
        let deadline = Instant::now() + Duration::from_secs(self.args.start_timeout_secs);
        let mut last_error = String::from("no peer configured (--peer, --peers-file)");
        loop {
            for peer in self.args.peer_list() {
                let shown = redact_url(&peer);
                match self.fetch(&peer).await {
                    Ok(f) if f.log_id == log_id && f.position + 1 >= first => {
                        return Ok((shown, f));
                    }
                    Ok(f) => {
                        last_error = format!(
                            "peer {shown} is not usable: its snapshot is at position {} of log \
                             {:?}, the log holds {first}.. of {log_id:?}",
                            f.position, f.log_id
                        );
                    }
                    Err(e) => last_error = format!("peer {shown}: {e:#}"),
                }
                tracing::info!(reason = %last_error, "no snapshot from this peer");
            }
            if Instant::now() >= deadline {
                anyhow::bail!("no peer gave a usable snapshot: {last_error}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Start-up before the store opens: connects to the log, installs `--restore-from`, decides
/// whether the data directory must be seeded from a peer and does it. `dir` is the store's
/// data directory (None: memory only). `install` writes a snapshot image into an empty
/// directory.
pub async fn prepare(
    args: &MirrorArgs,
    dir: Option<&Path>,
    mesh: Option<SecretSet>,
    service: &str,
    install: &Install,
) -> anyhow::Result<Prepared> {
    if let Some(file) = &args.restore_from {
        let Some(dir) = dir else {
            anyhow::bail!("--restore-from needs a data directory (--data-dir)");
        };
        if !dir_is_empty(dir) {
            anyhow::bail!(
                "--restore-from {}: the data directory {} is not empty; restore into an empty one",
                file.display(),
                dir.display()
            );
        }
        let started = Instant::now();
        let bytes = std::fs::read(file)
            .map_err(|e| anyhow::anyhow!("cannot read --restore-from {}: {e}", file.display()))?;
        std::fs::create_dir_all(dir)?;
        install(dir, &bytes)?;
        tracing::info!(
            file = %file.display(),
            seconds = started.elapsed().as_secs_f64(),
            "restored the snapshot file"
        );
    }
    if !args.is_mirrored() {
        return Ok(Prepared::unmirrored());
    }
    let Some(stream) = args.log_stream.clone() else {
        anyhow::bail!(
            "--log-url needs --log-stream (FLOWMESH_LOG_STREAM): the log this copy follows"
        );
    };
    let token = mesh.as_ref().and_then(SecretSet::first);
    let Some(log) = Log::connect(&args.log, service, token).await? else {
        anyhow::bail!("--log-url is not set");
    };
    let log = log.shard(&stream);
    let peers = Peers::new(args, mesh)?;
    // The log must answer before anything is decided.
    let deadline = Instant::now() + Duration::from_secs(args.start_timeout_secs);
    let bounds = loop {
        match log.bounds().await {
            Ok(b) => break b,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "waiting for the log");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("the log {stream} is unavailable: {e}"),
        }
    };
    let empty = dir.is_none_or(dir_is_empty);
    let recorded = dir.and_then(read_recorded).unwrap_or_default();
    let log_empty = bounds.first > bounds.last;
    let mut start = Recorded {
        log: stream.clone(),
        log_id: bounds.id.clone(),
        position: 0,
    };
    let same_log = recorded.log_id == bounds.id;
    let restored_file = args.restore_from.is_some();
    // Whether replaying the log from 1 onto what the directory holds gives the log's content.
    let log_whole = bounds.first <= 1;
    let need_snapshot = if log_empty {
        if !same_log && !empty {
            tracing::info!(
                log = %stream,
                "the log is new and empty: keeping the data, starting at its position 0"
            );
        }
        if same_log {
            start.position = recorded.position;
        }
        false
    } else if empty || restored_file {
        // Nothing held (or a file of unknown position): the log from 1, or a peer's image.
        !log_whole
    } else if same_log {
        start.position = recorded.position;
        recorded.position + 1 < bounds.first
    } else {
        true
    };
    let need_snapshot = need_snapshot || (empty && !log_empty && !args.peer_list().is_empty());
    if need_snapshot {
        let Some(dir) = dir else {
            anyhow::bail!("a mirrored copy without a data directory cannot install a snapshot");
        };
        let started = Instant::now();
        match peers.snapshot(&bounds.id, bounds.first).await {
            Ok((peer, fetched)) => {
                // The directory's content is replaced by the peer's image. The directory itself
                // stays: it is often a mount point or sits in a folder this user cannot write.
                clear_dir(dir)?;
                install(dir, &fetched.body)?;
                start.position = fetched.position;
                start.log_id = fetched.log_id;
                tracing::info!(
                    "restored {} bytes from peer {peer} at position {} in {:.3}s",
                    fetched.body.len(),
                    fetched.position,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) if (empty || restored_file) && log_whole => {
                tracing::warn!(error = %e, "no snapshot from a peer: replaying the whole log");
            }
            Err(e) => return Err(e.context("this copy must be seeded from a peer")),
        }
    }
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
        write_recorded(dir, &start)?;
    }
    Ok(Prepared {
        log: Some(log),
        recorded: start,
        dir: dir.map(Path::to_path_buf),
    })
}

/// Removes everything in `dir` (creating it when absent), but not `dir` itself.
fn clear_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

const RESTORING: u8 = 0;
const CATCHING_UP: u8 = 1;
const READY: u8 = 2;

/// A copy's mirror: applied position, serialised applies, catch-up and state.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

struct Inner {
    log: Option<ShardLog>,
    store: Arc<dyn MirrorStore>,
    dir: Option<PathBuf>,
    position: AtomicU64,
    log_id: Mutex<String>,
    state: AtomicU8,
    applying: tokio::sync::Mutex<()>,
    /// Woken whenever the applied position moves.
    advanced: tokio::sync::Notify,
    /// When the `MIRROR` file was last written, and the position it holds; held while it is
    /// written, so that writers never interleave.
    recorded: Mutex<(Option<Instant>, u64)>,
    digest: Mutex<Option<(u64, String)>>,
}

impl Mirror {
    /// The mirror of a store opened after [`prepare`]. A mirrored one starts catching up in the
    /// background (state `catching_up`, `/readyz` 503) and then follows the log.
    pub fn start(prepared: Prepared, store: Arc<dyn MirrorStore>) -> Self {
        let mirrored = prepared.log.is_some();
        let mirror = Self {
            inner: Arc::new(Inner {
                log: prepared.log,
                store,
                dir: prepared.dir,
                position: AtomicU64::new(prepared.recorded.position),
                log_id: Mutex::new(prepared.recorded.log_id),
                state: AtomicU8::new(if mirrored { CATCHING_UP } else { READY }),
                applying: tokio::sync::Mutex::new(()),
                advanced: tokio::sync::Notify::new(),
                recorded: Mutex::new((None, prepared.recorded.position)),
                digest: Mutex::new(None),
            }),
        };
        if mirrored {
            let weak = Arc::downgrade(&mirror.inner);
            tokio::spawn(follow(weak));
        }
        mirror
    }

    /// Whether this is a mirrored copy (it follows a log).
    pub fn is_mirrored(&self) -> bool {
        self.inner.log.is_some()
    }

    /// The position of the last write applied.
    pub fn position(&self) -> u64 {
        self.inner.position.load(Ordering::Acquire)
    }

    /// The log's identity as this copy knows it.
    pub fn log_id(&self) -> String {
        self.inner
            .log_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The state.
    pub fn state(&self) -> MirrorState {
        match self.inner.state.load(Ordering::Acquire) {
            RESTORING => MirrorState::Restoring,
            CATCHING_UP => MirrorState::CatchingUp,
            _ => MirrorState::Ready,
        }
    }

    /// Why reads should not come here now, or `None`.
    pub fn not_ready(&self, min: Option<u64>) -> Option<String> {
        match self.state() {
            MirrorState::Ready => {}
            MirrorState::CatchingUp => {
                return Some(format!(
                    "the copy is catching up with the log (applied {})",
                    self.position()
                ))
            }
            MirrorState::Restoring => return Some("the copy is restoring a snapshot".into()),
        }
        let applied = self.position();
        match min {
            Some(min) if applied < min => Some(format!(
                "the copy has applied {applied} of {min} writes of its log"
            )),
            _ => None,
        }
    }

    /// Applies the write at `seq`: at once when it is the next one, after the missing ones
    /// (read from the log) when it is ahead, not at all when applied already (then the answer
    /// is the request unchanged). Runs to its end even when the caller goes away.
    pub async fn write(
        &self,
        seq: u64,
        endpoint: Endpoint,
        request: Envelope,
    ) -> Result<Envelope, ApiError> {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            inner
                .wait_for(seq.saturating_sub(1), PREDECESSORS_WAIT)
                .await;
            let _applying = inner.applying.lock().await;
            let applied = inner.position.load(Ordering::Acquire);
            if seq <= applied {
                return Ok(request);
            }
            if seq > applied + 1 {
                inner.catch_up_locked(seq - 1).await?;
            }
            inner.apply_at(seq, endpoint, request).await
        })
        .await
        .map_err(|e| ApiError::Internal(format!("apply task failed: {e}")))?
    }

    /// Catches up to the log's newest record now (tests; the background task does it too).
    pub async fn catch_up(&self) -> Result<u64, ApiError> {
        self.inner.catch_up_to_last().await
    }

    /// `/stats`' `mirror` part.
    pub async fn stats(&self) -> Result<MirrorStats, ApiError> {
        let inner = Arc::clone(&self.inner);
        let mirrored = self.is_mirrored();
        // Position and digest must agree: no write between them.
        let _applying = inner.applying.lock().await;
        let position = inner.position.load(Ordering::Acquire);
        let cached = inner
            .digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| mirrored && *at == position);
        let store = Arc::clone(&inner.store);
        let (count, digest) = tokio::task::spawn_blocking(move || {
            let count = store.count();
            let digest = match cached {
                Some((_, d)) => d,
                None => store.digest(),
            };
            (count, digest)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("digest task failed: {e}")))?;
        if mirrored {
            *inner.digest.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((position, digest.clone()));
        }
        Ok(MirrorStats {
            log: inner.log.as_ref().map(|l| l.name().to_owned()),
            log_id: self.log_id(),
            position,
            count,
            digest,
            state: self.state(),
        })
    }

    /// A consistent image of the store, with the position and log id it holds.
    pub async fn snapshot(&self) -> Result<(u64, String, Vec<u8>), ApiError> {
        let _applying = self.inner.applying.lock().await;
        let position = self.position();
        let store = Arc::clone(&self.inner.store);
        let started = Instant::now();
        let bytes = tokio::task::spawn_blocking(move || store.export())
            .await
            .map_err(|e| ApiError::Internal(format!("snapshot task failed: {e}")))??;
        tracing::info!(
            position,
            bytes = bytes.len(),
            seconds = started.elapsed().as_secs_f64(),
            "snapshot taken"
        );
        Ok((position, self.log_id(), bytes))
    }
}

impl Inner {
    /// Applies `request` at `seq` (the next position) and records it.
    async fn apply_at(
        &self,
        seq: u64,
        endpoint: Endpoint,
        request: Envelope,
    ) -> Result<Envelope, ApiError> {
        let result = self.store.apply(endpoint, request).await;
        match &result {
            Ok(_) => self.advance(seq)?,
            Err(e) if e.status().is_client_error() => {
                tracing::debug!(seq, error = %e, "write refused: a no-op at its position");
                self.advance(seq)?;
            }
            Err(_) => {}
        }
        result
    }

    fn advance(&self, seq: u64) -> Result<(), ApiError> {
        self.position.store(seq, Ordering::Release);
        self.advanced.notify_waiters();
        self.record(false)
    }

    /// Writes the applied position to the `MIRROR` file: when `force`d, or when it changed and
    /// the last write is [`RECORD_EVERY`] old. Only positions already applied (durable in the
    /// store) are written, so the file is never ahead of the data.
    fn record(&self, force: bool) -> Result<(), ApiError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        // Most writes land inside the interval: they stop here, before any copy is made.
        if !force && recorded.0.is_some_and(|at| at.elapsed() < RECORD_EVERY) {
            return Ok(());
        }
        // The log's id before the position: a new log resets the position before it is named,
        // so a position read after the new name belongs to the new log.
        let log_id = self
            .log_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let position = self.position.load(Ordering::Acquire);
        if !force && position == recorded.1 {
            return Ok(());
        }
        let file = Recorded {
            log: self
                .log
                .as_ref()
                .map(|l| l.name().to_owned())
                .unwrap_or_default(),
            log_id,
            position,
        };
        write_recorded(dir, &file)
            .map_err(|e| ApiError::Internal(format!("cannot record the applied position: {e}")))?;
        *recorded = (Some(Instant::now()), position);
        Ok(())
    }

    /// Waits until the applied position reaches `position`, at most `limit`.
    async fn wait_for(&self, position: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            // Registered before the position is read, so that no advance slips between.
            advanced.as_mut().enable();
            if self.position.load(Ordering::Acquire) >= position {
                return;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return;
            }
        }
    }

    /// Reads and applies the records after the applied position up to `to` (applies held).
    async fn catch_up_locked(&self, to: u64) -> Result<u64, ApiError> {
        let Some(log) = &self.log else { return Ok(0) };
        let mut done = 0;
        loop {
            let from = self.position.load(Ordering::Acquire) + 1;
            if from > to {
                return Ok(done);
            }
            let records = log
                .read(from, to.min(from + CATCH_UP_BATCH - 1))
                .await
                .map_err(|e| self.log_failed(e))?;
            if records.is_empty() {
                return Err(ApiError::Unavailable {
                    executor: "log".into(),
                    message: format!("the log does not hold position {from} yet"),
                });
            }
            for record in records {
                let request = Format::MsgPack.decode::<Envelope>(&record.body);
                match request {
                    Ok(request) => {
                        match self.apply_at(record.seq, record.endpoint, request).await {
                            Ok(_) => {}
                            Err(e) if e.status().is_client_error() => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) => {
                        // The gateway appends only what it decoded: an undecodable record is a
                        // no-op on every copy alike.
                        tracing::warn!(seq = record.seq, error = %e, "log record is not an envelope");
                        self.advance(record.seq)?;
                    }
                }
                done += 1;
            }
        }
    }

    fn log_failed(&self, e: LogError) -> ApiError {
        if let LogError::Trimmed { wanted, first } = e {
            tracing::error!(
                wanted,
                first,
                "this copy is behind the log's first record: it must be seeded from a peer"
            );
            self.state.store(RESTORING, Ordering::Release);
        }
        e.into()
    }

    /// Catches up to the log's newest record, following a log that was created anew.
    async fn catch_up_to_last(&self) -> Result<u64, ApiError> {
        let Some(log) = &self.log else { return Ok(0) };
        let bounds = log.bounds().await?;
        let _applying = self.applying.lock().await;
        let known = self
            .log_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if known != bounds.id {
            if bounds.first > 1 {
                self.state.store(RESTORING, Ordering::Release);
                return Err(LogError::Trimmed {
                    wanted: 1,
                    first: bounds.first,
                }
                .into());
            }
            tracing::warn!(
                log = log.name(),
                "the log was created anew: applying it from its start over the data held"
            );
            // The position first: the follower may record the file meanwhile, and must never
            // pair the new log with the old log's position.
            self.position.store(0, Ordering::Release);
            *self.log_id.lock().unwrap_or_else(PoisonError::into_inner) = bounds.id.clone();
            *self.digest.lock().unwrap_or_else(PoisonError::into_inner) = None;
            // At once: the file must name the new log.
            self.record(true)?;
        }
        self.catch_up_locked(bounds.last).await
    }
}

/// The background task of a mirrored copy: catches up at start, then every
/// [`FOLLOW_EVERY`]; ends with the copy. Exits the process when the copy fell behind the log.
async fn follow(inner: std::sync::Weak<Inner>) {
    let mut first = true;
    let started = Instant::now();
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let caught_up = inner.catch_up_to_last().await;
        // The position of the last writes, which the throttle may have left unwritten.
        if let Err(e) = inner.record(false) {
            tracing::warn!(error = %e, "cannot record the applied position");
        }
        match caught_up {
            Ok(n) => {
                if first {
                    tracing::info!(
                        "caught up {n} writes from the log in {:.3}s",
                        started.elapsed().as_secs_f64()
                    );
                    inner.state.store(READY, Ordering::Release);
                    first = false;
                } else if n > 0 {
                    tracing::info!(writes = n, "caught up writes the gateway did not deliver");
                }
            }
            Err(e) => {
                if inner.state.load(Ordering::Acquire) == RESTORING {
                    tracing::error!(
                        error = %e,
                        "this copy fell behind the log's first record; exiting so that its \
                         restart seeds it from a peer"
                    );
                    std::process::exit(EXIT_BEHIND_LOG);
                }
                tracing::warn!(error = %e, "cannot catch up with the log now");
            }
        }
        drop(inner);
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_ignore_order_and_see_content() {
        let mut a = Digest::new();
        a.add(b"x", b"1");
        a.add(b"y", b"2");
        let mut b = Digest::new();
        b.add(b"y", b"2");
        b.add(b"x", b"1");
        assert_eq!(a.finish(), b.finish());
        assert_eq!(a.finish().len(), 32);
        let mut c = Digest::new();
        c.add(b"y", b"2");
        c.add(b"x", b"3");
        assert_ne!(a.finish(), c.finish());
        assert_ne!(Digest::new().finish(), a.finish());
    }

    #[test]
    fn the_recorded_position_round_trips() {
        let dir = std::env::temp_dir().join(format!("flowmesh-mirror-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Recorded {
            log: "FLOWMESH_i_0".into(),
            log_id: "2026".into(),
            position: 42,
        };
        write_recorded(&dir, &r).unwrap();
        assert_eq!(read_recorded(&dir), Some(r));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
