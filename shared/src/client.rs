//! The executor client: posts an encoded envelope to an executor over a pooled keep-alive HTTP/1
//! connection and decodes the answer.
//!
//! [`ExecutorClient::new`] speaks plain HTTP; [`ExecutorClient::secured`] speaks `https://` too
//! (verified against `--tls-ca`, presenting a client certificate for mutual TLS when given) and
//! sends the mesh token as `Authorization: Bearer` on every call.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::api::Envelope;
use crate::codec::Format;
use crate::deadline::Deadline;
use crate::error::ErrorBody;
use crate::secret::SecretSet;
use crate::tls::ClientTlsArgs;

/// Why a call to one executor replica failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The replica could not be reached or dropped the connection: it is probably dead.
    #[error("transport error: {0}")]
    Transport(String),
    /// The replica is marked down; it is not called until a health check brings it back.
    #[error("replica is down")]
    Down,
    /// The replica answered with an error status.
    #[error("status {status}: {}", body.error)]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error body (synthesised when the body was not the mesh's error JSON).
        body: ErrorBody,
    },
    /// The replica answered 200 with a body that does not decode.
    #[error("undecodable answer: {0}")]
    Decode(String),
}

impl CallError {
    /// Whether another replica may succeed where this one failed: the replica died, is down,
    /// is overloaded (429) or not ready (503).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Down => true,
            Self::Status { status, .. } => *status == 429 || *status == 503,
            Self::Decode(_) => false,
        }
    }
}

/// A cheap-to-clone HTTP client for executor calls.
#[derive(Clone, Debug)]
pub struct ExecutorClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Whether `https://` URIs can be called (a CA was given).
    tls: bool,
    /// The mesh tokens; the first is sent on every call.
    mesh: Option<SecretSet>,
}

impl Default for ExecutorClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecutorClient {
    /// A plain-HTTP client with `TCP_NODELAY` (no Nagle stalls on small bodies) and a
    /// keep-alive pool, sending no credential.
    pub fn new() -> Self {
        Self::build(None, None)
    }

    /// A client for a secured mesh: `https://` URIs are verified against `tls.tls_ca` (with
    /// the client certificate of `tls` presented when given), `http://` URIs still work, and
    /// every call carries `Authorization: Bearer T` with `T` the first of `mesh`'s tokens at
    /// the time of the call (so a reloaded token file takes effect at once).
    pub fn secured(tls: &ClientTlsArgs, mesh: Option<SecretSet>) -> anyhow::Result<Self> {
        let config = tls.client_config()?;
        Ok(Self::build(config, mesh))
    }

    fn build(tls: Option<Arc<rustls::ClientConfig>>, mesh: Option<SecretSet>) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let secure = tls.is_some();
        // Without a CA there is nothing to verify a server against: the connector trusts no
        // one, and `send` refuses `https://` URIs before connecting with a clear error.
        let https = crate::tls::https_connector(conn, tls);
        let http = Client::builder(TokioExecutor::new())
            // Shorter than the services' header timeout (20 s by default), after which they close an
            // idle connection: a pooled connection is never reused just as its server closes it.
            .pool_idle_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build(https);
        Self {
            http,
            tls: secure,
            mesh,
        }
    }

    /// Whether this client sends a mesh token.
    pub fn sends_token(&self) -> bool {
        self.mesh.is_some()
    }

    /// Posts an already encoded MessagePack envelope to `uri` and decodes the answer.
    pub async fn post(
        &self,
        uri: Uri,
        body: Bytes,
        request_id: &str,
    ) -> Result<Envelope, CallError> {
        self.post_traced(
            uri,
            body,
            request_id,
            &opentelemetry::Context::new(),
            Deadline::NONE,
        )
        .await
    }

    /// [`post`](Self::post) as part of the trace of `trace` (the call's client span), whose
    /// context goes along in the `traceparent` header, and the time left before `deadline` in
    /// `x-flowmesh-deadline-ms` (absent for [`Deadline::NONE`]).
    pub async fn post_traced(
        &self,
        uri: Uri,
        body: Bytes,
        request_id: &str,
        trace: &opentelemetry::Context,
        deadline: Deadline,
    ) -> Result<Envelope, CallError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, Format::MsgPack.mime())
            .header(header::ACCEPT, Format::MsgPack.mime())
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        // The id is the client's: one that is not a valid header value is not sent rather than
        // failing the call (which would look like a dead replica).
        if let Ok(id) = http::HeaderValue::from_str(request_id) {
            req.headers_mut().insert("x-request-id", id);
        }
        self.authorize(req.headers_mut());
        crate::trace::inject(trace, req.headers_mut());
        deadline.insert_into(req.headers_mut());
        let (status, headers, bytes) = self.send(req).await?;
        if status != StatusCode::OK {
            return Err(status_error(status, &bytes));
        }
        let format = Format::of_content_type(&headers);
        format
            .decode::<Envelope>(&bytes)
            .map_err(|e| CallError::Decode(e.to_string()))
    }

    /// `GET uri`; `Ok` when the answer is 200.
    pub async fn get_ok(&self, uri: Uri) -> Result<(), CallError> {
        let req = Request::builder()
            .uri(uri)
            .body(Full::new(Bytes::new()))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let mut req = req;
        self.authorize(req.headers_mut());
        let (status, _, bytes) = self.send(req).await?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(status_error(status, &bytes))
        }
    }

    /// `method uri` with `headers` added to the usual ones (mesh token, trace context, time
    /// left before `deadline`) and `body` (MessagePack when not empty): the answer's status,
    /// headers and body as they came, whatever the status. For calls that read response headers
    /// (the applied position of a mirrored copy, `x-flowmesh-log-seq`).
    pub async fn exchange(
        &self,
        method: Method,
        uri: Uri,
        headers: http::HeaderMap,
        body: Bytes,
        trace: &opentelemetry::Context,
        deadline: Deadline,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), CallError> {
        let has_body = !body.is_empty();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if has_body {
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(Format::MsgPack.mime()),
            );
            req.headers_mut().insert(
                header::ACCEPT,
                http::HeaderValue::from_static(Format::MsgPack.mime()),
            );
        }
        req.headers_mut().extend(headers);
        self.authorize(req.headers_mut());
        crate::trace::inject(trace, req.headers_mut());
        deadline.insert_into(req.headers_mut());
        self.send(req).await
    }

    /// Adds `Authorization: Bearer` with the first mesh token, marked sensitive (hyper never
    /// logs it; traces never record request headers).
    fn authorize(&self, headers: &mut http::HeaderMap) {
        let Some(token) = self.mesh.as_ref().and_then(SecretSet::first) else {
            return;
        };
        if let Ok(mut value) = http::HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), CallError> {
        if !self.tls && req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            return Err(CallError::Transport(format!(
                "cannot call {}: https:// executors need --tls-ca (FLOWMESH_TLS_CA)",
                req.uri()
            )));
        }
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e)))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}

/// The [`CallError`] of an answer with a non-200 `status` and body `bytes`.
pub fn status_error(status: StatusCode, bytes: &[u8]) -> CallError {
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| {
        ErrorBody::new(
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]),
            if status.is_client_error() {
                "bad_request"
            } else {
                "executor_error"
            },
        )
    });
    CallError::Status {
        status: status.as_u16(),
        body,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
