//! The replicated log of a mirrored shard: one NATS JetStream stream per shard.
//!
//! JetStream gives each write of a shard its position (the stream sequence: assigned in one
//! place, gap-free, never reused), keeps it on disk before acknowledging the append, replicates
//! it when NATS runs as a cluster, removes duplicate appends of a retried write (`Nats-Msg-Id`
//! within two minutes), and drops the oldest writes once the stream holds more than
//! `--log-max-bytes` (a copy that fell further behind than that copies a snapshot from a peer
//! and reads the rest from the log). The gateway appends; copies read.
//!
//! The connection authenticates with the mesh token when there is one: the NATS server of a
//! mirrored deployment is configured with the same token (`authorization { token }`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::OnceCell;

use super::{subject_of_stream, ENDPOINT_HEADER};
use crate::endpoint::Endpoint;
use crate::error::ApiError;
use crate::secret::{redact_url, Secret};

/// The environment variable of `--log-url`.
pub const LOG_URL_ENV: &str = "FLOWMESH_LOG_URL";

/// Default of `--log-max-bytes`: 1 GiB of writes per shard (about 650,000 vectors of 384
/// dimensions with their ids and envelopes).
pub const DEFAULT_LOG_MAX_BYTES: i64 = 1 << 30;

/// How long one read of the log may wait for the next record.
const READ_STALL: Duration = Duration::from_secs(10);

/// Records a reader asks the server for at once. The server sends a pull's records without
/// regard to their size, and drops a client with more than 64 MiB unread as a slow consumer:
/// with records of up to 8 MiB (NATS's largest payload), a few at a time stay below that. (A
/// pull of the default 500 records of about 1 MB each stalled a copy's catch-up for 10 s.)
const READ_BATCH: i64 = 4;

/// Where the replicated logs of mirrored copies are.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// The NATS server (JetStream) that holds the replicated log of each mirrored shard,
    /// `nats://host:port`. Executors given it are mirrored copies: they take writes only in log
    /// order; the gateway appends every write of a mirrored executor to it.
    #[arg(long, env = LOG_URL_ENV, value_name = "URL")]
    pub log_url: Option<String>,
    /// Bytes of writes each shard's log keeps; the oldest are dropped beyond it, and a copy that
    /// fell further behind copies a snapshot from a peer instead.
    #[arg(long, env = "FLOWMESH_LOG_MAX_BYTES", value_name = "BYTES", default_value_t = DEFAULT_LOG_MAX_BYTES)]
    pub log_max_bytes: i64,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            log_url: None,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
        }
    }
}

/// Why the log could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The NATS server cannot be reached or answered with an error.
    #[error("the replicated log is unavailable: {0}")]
    Unavailable(String),
    /// The write is larger than one log message may be.
    #[error("a write of {size} bytes is larger than the log's largest message ({max} bytes)")]
    TooLarge {
        /// The write's size.
        size: usize,
        /// NATS's `max_payload`.
        max: usize,
    },
    /// The records asked for were dropped (the log keeps `--log-max-bytes`).
    #[error("the log no longer holds record {wanted}: it starts at {first}")]
    Trimmed {
        /// The first record asked for.
        wanted: u64,
        /// The oldest record the log holds.
        first: u64,
    },
    /// A record cannot be read as a write.
    #[error("log record {seq} is unreadable: {message}")]
    Corrupt {
        /// Its position.
        seq: u64,
        /// Why.
        message: String,
    },
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            LogError::Unavailable(_) | LogError::Trimmed { .. } | LogError::Corrupt { .. } => {
                ApiError::Unavailable {
                    executor: "log".into(),
                    message: e.to_string(),
                }
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// A connection to the NATS server holding the logs.
#[derive(Clone)]
pub struct Log {
    client: async_nats::Client,
    js: jetstream::Context,
    max_bytes: i64,
    url: Arc<str>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Connects to `args.log_url` (`None` when it is not set), authenticating with `token`.
    /// The connection is made in the background and kept up for the life of the process: an
    /// unreachable server makes each operation fail, not the start.
    pub async fn connect(
        args: &LogArgs,
        name: &str,
        token: Option<Secret>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = args.log_url.as_deref() else {
            return Ok(None);
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(10)));
        if let Some(token) = token {
            options = options.token(token.expose().to_owned());
        }
        let shown = redact_url(url);
        let client = options
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the log at {shown}: {e}"))?;
        let js = jetstream::new(client.clone());
        Ok(Some(Self {
            client,
            js,
            max_bytes: args.log_max_bytes,
            url: shown.into(),
        }))
    }

    /// The log named `stream` (see [`super::stream_name`]); created on first use.
    pub fn shard(&self, stream: &str) -> ShardLog {
        ShardLog {
            log: self.clone(),
            name: stream.into(),
            subject: subject_of_stream(stream).into(),
            stream: Arc::new(OnceCell::new()),
        }
    }

    /// The server's address, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// The log of one shard.
#[derive(Clone)]
pub struct ShardLog {
    log: Log,
    name: Arc<str>,
    subject: Arc<str>,
    stream: Arc<OnceCell<stream::Stream>>,
}

impl std::fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLog")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The positions a log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// The oldest record held; `last + 1` when the log holds none.
    pub first: u64,
    /// The newest record (0 before the first write).
    pub last: u64,
    /// The log's identity: when its stream was created (RFC 3339). A log deleted and created
    /// again starts its positions over, and copies tell by this.
    pub id: String,
}

/// One write read back from the log.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its position.
    pub seq: u64,
    /// `/index`, `/update` or `/delete`.
    pub endpoint: Endpoint,
    /// The envelope as the gateway sent it (MessagePack).
    pub body: Bytes,
}

impl ShardLog {
    /// The log's name (its stream).
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn stream(&self) -> Result<&stream::Stream, LogError> {
        self.stream
            .get_or_try_init(|| async {
                let config = stream::Config {
                    name: self.name.to_string(),
                    subjects: vec![self.subject.to_string()],
                    storage: stream::StorageType::File,
                    max_bytes: self.log.max_bytes,
                    discard: stream::DiscardPolicy::Old,
                    duplicate_window: Duration::from_secs(120),
                    ..stream::Config::default()
                };
                self.log
                    .js
                    .get_or_create_stream(config)
                    .await
                    .map_err(unavailable)
            })
            .await
    }

    /// Appends a write; its position once the log has it on disk. `id` identifies the write
    /// (the request id, batch and shard), so that appending it again within two minutes
    /// returns the same position instead of a second record.
    pub async fn append(&self, endpoint: Endpoint, body: Bytes, id: &str) -> Result<u64, LogError> {
        let max = self.log.client.server_info().max_payload;
        // The headers take a few dozen bytes of the same limit.
        if max > 0 && body.len() + 256 > max {
            return Err(LogError::TooLarge {
                size: body.len(),
                max,
            });
        }
        self.stream().await?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ENDPOINT_HEADER, endpoint.path());
        headers.insert("Nats-Msg-Id", id);
        let ack = self
            .log
            .js
            .publish_with_headers(self.subject.to_string(), headers, body)
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(ack.sequence)
    }

    /// The positions the log holds now.
    pub async fn bounds(&self) -> Result<Bounds, LogError> {
        let mut stream = self.stream().await?.clone();
        let info = stream.info().await.map_err(unavailable)?;
        let state = &info.state;
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        Ok(Bounds {
            first,
            last: state.last_sequence,
            id: info.created.to_string(),
        })
    }

    /// Reads the records `from..=to` in order, `to` capped at the newest. Fails with
    /// [`LogError::Trimmed`] when `from` was dropped already.
    pub async fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, LogError> {
        let bounds = self.bounds().await?;
        let to = to.min(bounds.last);
        if from > to {
            return Ok(Vec::new());
        }
        if from < bounds.first {
            return Err(LogError::Trimmed {
                wanted: from,
                first: bounds.first,
            });
        }
        let stream = self.stream().await?;
        let reader = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                max_batch: READ_BATCH,
                ..consumer::pull::OrderedConfig::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = reader.messages().await.map_err(unavailable)?;
        let mut out = Vec::with_capacity(usize::try_from(to - from + 1).unwrap_or(0).min(4096));
        let mut expected = from;
        while expected <= to {
            let next = tokio::time::timeout(READ_STALL, messages.next())
                .await
                .map_err(|_| unavailable(format!("no record {expected} within {READ_STALL:?}")))?;
            let Some(message) = next else {
                return Err(unavailable("the log's reader ended early"));
            };
            let message = message.map_err(unavailable)?;
            let seq = message.info().map_err(unavailable)?.stream_sequence;
            if seq != expected {
                // Dropped between the bounds and the read: the start is gone.
                return Err(LogError::Trimmed {
                    wanted: expected,
                    first: seq,
                });
            }
            out.push(to_record(seq, &message.message)?);
            expected += 1;
        }
        Ok(out)
    }
}

fn to_record(seq: u64, message: &async_nats::Message) -> Result<Record, LogError> {
    let endpoint = message
        .headers
        .as_ref()
        .and_then(|h| h.get(ENDPOINT_HEADER))
        .map(|v| v.as_str().trim_start_matches('/').to_owned());
    let endpoint = endpoint
        .as_deref()
        .and_then(|e| e.parse::<Endpoint>().ok())
        .filter(|e| *e != Endpoint::Search)
        .ok_or_else(|| LogError::Corrupt {
            seq,
            message: format!("no write endpoint in its {ENDPOINT_HEADER} header"),
        })?;
    Ok(Record {
        seq,
        endpoint,
        body: message.payload.clone(),
    })
}
