//! The gateway as `flowmesh index` and `flowmesh search` call it: JSON posts with the API key
//! `flowmesh snapshot` uses (`FLOWMESH_API_KEY`, sent as `api-key`), or the first key of
//! `--api-key-file`, verified with `--tls-ca` for `https://` gateways; errors read from the
//! gateway's `ErrorBody`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use flowmesh_shared::secret::{read_secret_file, secret_from_env, Secret};
use flowmesh_shared::tls::ClientTlsArgs;
use flowmesh_shared::ErrorBody;

use crate::auth::keys::API_KEY_ENV;

/// How `flowmesh index` and `flowmesh search` reach the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The running gateway, `http://host:port` or `https://host:port`.
    #[arg(long, env = "FLOWMESH_GATEWAY", value_name = "URL")]
    pub gateway: String,
    /// A file holding the API key (its first key is sent); without it, `FLOWMESH_API_KEY`.
    /// Never give a key on the command line.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Longest wait for one answer ("60s", "5m").
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How an `https://` gateway is verified (`--tls-ca`).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// One failed call: what the gateway said, or why it said nothing.
#[derive(Debug)]
pub enum CallError {
    /// An answer other than 200: its status and its `ErrorBody` (or the raw body).
    Status {
        status: StatusCode,
        body: Option<ErrorBody>,
        raw: String,
        /// `Retry-After`, in seconds, when the gateway sent one.
        retry_after: Option<u64>,
    },
    /// No answer: the connection failed or the timeout passed.
    Transport(String),
}

impl CallError {
    /// Whether sending the same request again may succeed: overload (429), unavailable or
    /// partly written (503), a bad gateway or a timeout (502, 504), or no answer at all. Writes
    /// are upserts, so a repeated batch writes nothing twice.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            Self::Transport(_) => true,
        }
    }

    /// The `kind` of the gateway's `ErrorBody`, if it sent one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            Self::Status { body: Some(b), .. } => Some(&b.kind),
            _ => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status {
                status,
                body: Some(b),
                ..
            } => {
                write!(f, "{status} ({}): {}", b.kind, b.error)?;
                if let Some(ids) = &b.not_written {
                    write!(f, " (not written: {})", ids.join(", "))?;
                }
                Ok(())
            }
            Self::Status { status, raw, .. } if raw.trim().is_empty() => write!(f, "{status}"),
            Self::Status { status, raw, .. } => {
                let raw: String = raw.trim().chars().take(300).collect();
                write!(f, "{status}: {raw}")
            }
            Self::Transport(e) => write!(f, "no answer: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// A client of one gateway.
pub struct Gateway {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The base URL, without a trailing `/`.
    pub base: String,
    key: Option<Secret>,
    timeout: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A client for `args.gateway`, with its key and TLS settings.
    pub fn new(args: &GatewayArgs) -> anyhow::Result<Self> {
        let key = match &args.api_key_file {
            Some(path) => read_secret_file(path)?.into_iter().next(),
            None => secret_from_env(API_KEY_ENV).and_then(|keys| keys.into_iter().next()),
        };
        if let Some(key) = &key {
            HeaderValue::from_str(key.expose())
                .map_err(|_| anyhow!("the API key is not a valid header value"))?;
        }
        let tls = args
            .tls
            .client_config()
            .context("invalid client TLS configuration (--tls-ca)")?;
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        let base = args.gateway.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "--gateway must start with http:// or https://, not {base:?}"
        );
        Ok(Self {
            http: Client::builder(TokioExecutor::new())
                .build(flowmesh_shared::tls::https_connector(conn, tls)),
            base,
            key,
            timeout: args.timeout,
        })
    }

    /// `POST {base}{path}` with `body` as JSON; the answer's body when it is a 200.
    pub async fn post(&self, path: &str, body: Bytes) -> Result<Bytes, CallError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(format!("invalid URL {url}: {e}")))?;
        if let Some(key) = &self.key {
            if let Ok(mut value) = HeaderValue::from_str(key.expose()) {
                value.set_sensitive(true);
                req.headers_mut().insert("api-key", value);
            }
        }
        let call = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| CallError::Transport(error_chain(&e)))?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Transport(format!("the answer broke off: {e}")))?
                .to_bytes();
            if status == StatusCode::OK {
                return Ok(body);
            }
            Err(CallError::Status {
                status,
                body: serde_json::from_slice(&body).ok(),
                raw: String::from_utf8_lossy(&body).into_owned(),
                retry_after,
            })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Transport(format!(
                "no answer from {url} in {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

/// An error and its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
