//! Jina's gRPC protocol, so that `jina.Client(host='grpc://HOST:PORT')` (Jina's default) works
//! against the gateway: served on its own address (`--grpc-listen`, or the Flow's
//! `with: grpc_listen`), next to the HTTP API, with tonic's HTTP/2 server.
//!
//! The methods served:
//! - `jina.JinaRPC/Call` (a stream of data requests, what `Client.post` uses by default) and
//!   `jina.JinaSingleDataRequestRPC/process_single_data` (one request, `post(..., stream=False)`):
//!   each request runs through the same Flow, limits and deadline as `POST /index`, `/search`, ...
//!   ([`crate::http::run_flow`]); its documents are converted by [`convert`].
//! - `jina.JinaGatewayDryRunRPC/dry_run` (`Client.is_flow_ready()`, `jina ping flow`):
//!   `SUCCESS` when every shard of every executor has a healthy replica, as `/readyz`. Like
//!   `/readyz` it needs no API key (`jina ping` cannot send one).
//! - `jina.JinaDiscoverEndpointsRPC/endpoint_discovery` and `jina.JinaInfoRPC/_status`.
//!
//! Credentials are the HTTP API's, read from the call's metadata (`api-key: KEY`, or
//! `authorization: Bearer KEY`): without a valid one a call fails with `UNAUTHENTICATED`, and a
//! write with a read-only key with `PERMISSION_DENIED`; writes are audited as over HTTP.
//! A request the Flow refuses or fails (an unknown endpoint, a limit, an executor down, the
//! deadline) is answered with Jina's convention instead of ending the stream: a response with
//! no documents whose `header.status` is `ERROR`, the error's kind as `exception.name` and its
//! message as `exception.args` (Jina's client raises it as `BadServer`). Messages are bounded by
//! `--max-body-bytes` (`OUT_OF_RANGE` beyond), requests in flight by
//! `--max-concurrent-requests` (the same budget as the HTTP API's, answered `overloaded`
//! beyond), connections by `--max-connections` (a budget of its own, beside HTTP's).
//! With the gateway's certificate (`--tls-cert`), gRPC is served over TLS too (`grpcs://`).

pub mod convert;
pub mod proto;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls::ServerConfig;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::Grpc;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use flowmesh_shared::{ApiError, Endpoint};

use crate::auth::{audit, forbidden, keys, presented_key, Caller, WriteAudit};
use crate::http::AppState;
use proto::{DataRequestProto, EndpointsProto, JinaInfoProto, StatusCode, StatusProto};

/// The methods, as their HTTP/2 paths.
const CALL: &str = "/jina.JinaRPC/Call";
const SINGLE: &str = "/jina.JinaSingleDataRequestRPC/process_single_data";
const DRY_RUN: &str = "/jina.JinaGatewayDryRunRPC/dry_run";
const DISCOVER: &str = "/jina.JinaDiscoverEndpointsRPC/endpoint_discovery";
const STATUS: &str = "/jina.JinaInfoRPC/_status";

/// Requests of one `Call` stream worked on at once (each also takes one of the gateway's
/// `--max-concurrent-requests`).
const PER_STREAM: usize = 16;

/// How long the requests of a `Call` without a valid key are read (and dropped) before it is
/// refused.
const REFUSED_DRAIN: Duration = Duration::from_secs(2);

/// The slot, even if a thread panicked holding it.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The gRPC service: one tower service that routes the methods above.
#[derive(Clone)]
pub struct JinaGrpc {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JinaGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinaGrpc").finish_non_exhaustive()
    }
}

struct Inner {
    state: AppState,
}

impl JinaGrpc {
    /// The service of a gateway with `state` (its Flow, limits and API keys).
    pub fn new(state: AppState) -> Self {
        Self {
            inner: Arc::new(Inner { state }),
        }
    }
}

impl tower::Service<http::Request<Body>> for JinaGrpc {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.dispatch(req).await) })
    }
}

/// A codec-level server for messages `Enc` out, `Dec` in, bounded by `--max-body-bytes`.
fn grpc<Enc, Dec>(max_message: usize) -> Grpc<ProstCodec<Enc, Dec>>
where
    Enc: prost::Message + Send + 'static,
    Dec: prost::Message + Default + Send + 'static,
{
    Grpc::new(ProstCodec::default()).max_decoding_message_size(max_message)
}

impl Inner {
    async fn dispatch(self: Arc<Self>, req: http::Request<Body>) -> http::Response<Body> {
        let max = self.state.limits.max_body_bytes;
        match req.uri().path() {
            CALL => {
                let this = Arc::clone(&self);
                let service = tower::service_fn(move |r| Arc::clone(&this).call_stream(r));
                grpc::<DataRequestProto, DataRequestProto>(max)
                    .streaming(service, req)
                    .await
            }
            SINGLE => {
                let this = Arc::clone(&self);
                let service = tower::service_fn(move |r| Arc::clone(&this).single(r));
                grpc::<DataRequestProto, DataRequestProto>(max)
                    .unary(service, req)
                    .await
            }
            DRY_RUN => {
                let this = Arc::clone(&self);
                let service = tower::service_fn(move |_: Request<()>| {
                    let answer = this.dry_run();
                    async move { Ok::<_, Status>(Response::new(answer)) }
                });
                grpc::<StatusProto, ()>(max).unary(service, req).await
            }
            DISCOVER => {
                let this = Arc::clone(&self);
                let service = tower::service_fn(move |r: Request<()>| {
                    let answer = this
                        .caller(r.metadata(), r.remote_addr(), None)
                        .map(|_| Response::new(endpoints()));
                    async move { answer }
                });
                grpc::<EndpointsProto, ()>(max).unary(service, req).await
            }
            STATUS => {
                let this = Arc::clone(&self);
                let service = tower::service_fn(move |r: Request<()>| {
                    let answer = this
                        .caller(r.metadata(), r.remote_addr(), None)
                        .map(|_| Response::new(info()));
                    async move { answer }
                });
                grpc::<JinaInfoProto, ()>(max).unary(service, req).await
            }
            path => {
                // As over HTTP, an unknown method needs a key too: what exists cannot be probed.
                let metadata = MetadataMap::from_headers(req.headers().clone());
                let status = match self.caller(&metadata, None, None) {
                    Err(status) => status,
                    Ok(_) => Status::unimplemented(format!(
                        "the gateway does not serve the gRPC method {path}"
                    )),
                };
                status.into_http()
            }
        }
    }

    /// The caller of a call: the API key in its metadata, when the gateway has keys. A refused
    /// data call (`method`) is audited: it may have been a write.
    fn caller(
        &self,
        metadata: &MetadataMap,
        client: Option<SocketAddr>,
        method: Option<&str>,
    ) -> Result<Caller, Status> {
        let api_keys = &self.state.keys;
        if !api_keys.is_enabled() {
            return Ok(Caller::anonymous());
        }
        let headers = metadata.clone().into_headers();
        let (reason, key, message) = match presented_key(&headers).map(|k| api_keys.identify(k)) {
            Some(Some(caller)) => return Ok(caller),
            None => (
                "missing",
                "missing",
                "an API key is required: send it as gRPC metadata `api-key: KEY` or \
                 `authorization: Bearer KEY`",
            ),
            Some(None) => ("wrong", "invalid", "the API key is not valid"),
        };
        keys::count_failure(reason);
        if let Some(method) = method {
            audit::grpc_write("-", key, client, method, 0, 401, Some("unauthorized"));
        }
        Err(Status::unauthenticated(message))
    }

    /// `Call`: the requests of the stream, answered as they finish (in order when the client
    /// asks with `__results_in_order__: true`), at most [`PER_STREAM`] at once.
    ///
    /// A call that fails (no valid key, or a write with a read-only key) fails once the client
    /// has sent its requests, not while it is still sending: Jina's client reports a status that
    /// arrives during its sends as an opaque `INTERNAL` error instead. The requests after a
    /// refused write are read and dropped; without a valid key they are read for at most
    /// [`REFUSED_DRAIN`].
    async fn call_stream(
        self: Arc<Self>,
        request: Request<Streaming<DataRequestProto>>,
    ) -> Result<Response<BoxStream<'static, Result<DataRequestProto, Status>>>, Status> {
        let client = request.remote_addr();
        let caller = match self.caller(request.metadata(), client, Some(CALL)) {
            Ok(caller) => caller,
            Err(status) => {
                let mut input = request.into_inner();
                let _ = tokio::time::timeout(REFUSED_DRAIN, async {
                    while let Some(Ok(_)) = input.next().await {}
                })
                .await;
                return Err(status);
            }
        };
        let in_order = request
            .metadata()
            .get("__results_in_order__")
            .is_some_and(|v| v == "true");
        // The first refusal; once set, the stream's other requests are dropped unrun.
        let refused: Arc<std::sync::Mutex<Option<Status>>> = Arc::default();
        let refusal = Arc::clone(&refused);
        let answers = request.into_inner().map(move |item| {
            let this = Arc::clone(&self);
            let caller = caller.clone();
            let refusal = Arc::clone(&refusal);
            async move {
                let request = match item {
                    Ok(request) => request,
                    // The input broke (a message over the limit): nothing more will come.
                    Err(status) => return Some(Err(status)),
                };
                if lock(&refusal).is_some() {
                    return None;
                }
                match this.data_request(&caller, client, request).await {
                    Ok(answer) => Some(Ok(answer)),
                    Err(status) => {
                        lock(&refusal).get_or_insert(status);
                        None
                    }
                }
            }
        });
        let answers = if in_order {
            answers.buffered(PER_STREAM).boxed()
        } else {
            answers.buffer_unordered(PER_STREAM).boxed()
        };
        let last = futures::stream::once(async move { lock(&refused).take().map(Err) });
        let answers = answers
            .chain(last)
            .filter_map(futures::future::ready)
            .boxed();
        Ok(Response::new(answers))
    }

    /// `process_single_data`: one request.
    async fn single(
        self: Arc<Self>,
        request: Request<DataRequestProto>,
    ) -> Result<Response<DataRequestProto>, Status> {
        let client = request.remote_addr();
        let caller = self.caller(request.metadata(), client, Some(SINGLE))?;
        let answer = self
            .data_request(&caller, client, request.into_inner())
            .await?;
        Ok(Response::new(answer))
    }

    /// The answer to an endpoint no executor serves, as Jina gives it: the request itself, its
    /// documents as the client sent them (every field of its schema kept), with a request id and
    /// a SUCCESS status; within the same limits as HTTP's `/post` pass-through. Nothing runs and
    /// nothing is written, so a read-only key may do it.
    fn pass_through(&self, mut request: DataRequestProto) -> DataRequestProto {
        let read = convert::envelope_from_proto(request.clone()).and_then(|envelope| {
            self.state
                .guard
                .check(&self.state.limits, &envelope)
                .map_err(|e| Box::new((envelope.header, e)))
        });
        if let Err(refused) = read {
            let (header, error) = *refused;
            return convert::error_to_proto(header, &error);
        }
        let header = request.header.get_or_insert_with(Default::default);
        if header.request_id.is_empty() {
            header.request_id = uuid::Uuid::new_v4().simple().to_string();
        }
        header.status = Some(StatusProto {
            code: StatusCode::Success as i32,
            ..StatusProto::default()
        });
        request
    }

    /// One data request: authorized for its endpoint, run through the Flow, audited when it
    /// writes. Only a write with a read-only key fails the call (`PERMISSION_DENIED`); every
    /// other error is answered in the response's header.
    async fn data_request(
        &self,
        caller: &Caller,
        client: Option<SocketAddr>,
        request: DataRequestProto,
    ) -> Result<DataRequestProto, Status> {
        let named = request
            .header
            .as_ref()
            .and_then(|h| h.exec_endpoint.clone())
            .unwrap_or_default();
        if let Ok(endpoint) = named.trim_start_matches('/').parse::<Endpoint>() {
            if WriteAudit::is_write(endpoint) && !caller.may_write() {
                keys::count_failure("read_only");
                let id = request
                    .header
                    .as_ref()
                    .map(|h| h.request_id.as_str())
                    .filter(|id| audit::is_printable_id(id))
                    .unwrap_or("-");
                audit::grpc_write(
                    id,
                    caller.name(),
                    client,
                    endpoint.path(),
                    0,
                    403,
                    Some("forbidden"),
                );
                return Err(Status::permission_denied(
                    forbidden(endpoint.path()).to_string(),
                ));
            }
        }
        if named.trim_start_matches('/').parse::<Endpoint>().is_err() {
            return Ok(self.pass_through(request));
        }
        let (endpoint, mut envelope) = match convert::request_from_proto(request) {
            Ok(read) => read,
            Err(refused) => {
                let (header, error) = *refused;
                return Ok(convert::error_to_proto(header, &error));
            }
        };
        let request_id = crate::http::ensure_request_id(&mut envelope.header);
        let header = envelope.header.clone();
        let docs = envelope.data.len();
        let result = match Arc::clone(&self.state.in_flight).try_acquire_owned() {
            Ok(_permit) => crate::http::run_flow(&self.state, endpoint, envelope).await,
            Err(_) => {
                metrics::counter!("flowmesh_requests_shed_total").increment(1);
                Err(ApiError::Overloaded(
                    "too many requests in flight (--max-concurrent-requests, \
                     FLOWMESH_MAX_CONCURRENT_REQUESTS); retry later"
                        .into(),
                ))
            }
        };
        if WriteAudit::is_write(endpoint) {
            let (status, kind) = match &result {
                Ok(_) => (200, None),
                Err(e) => (e.status().as_u16(), Some(e.kind())),
            };
            audit::grpc_write(
                &request_id,
                caller.name(),
                client,
                endpoint.path(),
                docs,
                status,
                kind,
            );
        }
        Ok(match result {
            Ok(answer) => convert::response_to_proto(answer.envelope),
            Err(error) => {
                if error.status().is_server_error() {
                    tracing::warn!(error = %error, kind = error.kind(), "gRPC request failed");
                }
                convert::error_to_proto(header, &error)
            }
        })
    }

    /// `dry_run`: whether the Flow can serve, as `/readyz` says.
    fn dry_run(&self) -> StatusProto {
        if self.state.flow.is_ready() {
            StatusProto {
                code: StatusCode::Success as i32,
                ..StatusProto::default()
            }
        } else {
            StatusProto {
                code: StatusCode::Error as i32,
                description: "some executor shard has no healthy replica; see /status".into(),
                exception: Some(proto::ExceptionProto {
                    name: "not_ready".into(),
                    args: vec!["some executor shard has no healthy replica".into()],
                    ..proto::ExceptionProto::default()
                }),
            }
        }
    }
}

/// The endpoints every Flow serves, and which of them write.
fn endpoints() -> EndpointsProto {
    EndpointsProto {
        endpoints: Endpoint::ALL.iter().map(|e| e.path().to_owned()).collect(),
        write_endpoints: Endpoint::ALL
            .iter()
            .filter(|e| WriteAudit::is_write(**e))
            .map(|e| e.path().to_owned())
            .collect(),
        schemas: None,
    }
}

/// `_status`: the gateway's version (no environment).
fn info() -> JinaInfoProto {
    let mut jina = std::collections::BTreeMap::new();
    jina.insert("flowmesh".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
    jina.insert("protocol".to_owned(), "jina-grpc".to_owned());
    JinaInfoProto {
        jina,
        envs: std::collections::BTreeMap::new(),
    }
}

/// Binds `addr` for gRPC and prints `flowmesh-gateway serves gRPC on grpc://ADDR` (`grpcs://`
/// with `tls`): not a `listening on` line, which names the HTTP address.
pub async fn bind(addr: SocketAddr, tls: bool) -> anyhow::Result<TcpListener> {
    use std::io::Write as _;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {addr} (--grpc-listen)"))?;
    let local = listener.local_addr()?;
    let scheme = if tls { "grpcs" } else { "grpc" };
    let mut out = std::io::stdout().lock();
    writeln!(out, "flowmesh-gateway serves gRPC on {scheme}://{local}")?;
    out.flush()?;
    tracing::info!(%local, tls, "flowmesh-gateway serves gRPC");
    Ok(listener)
}

/// Serves Jina's gRPC protocol for `state` on `listener` until `shutdown` resolves, over TLS
/// with `tls` (the gateway's HTTPS configuration; ALPN `h2` here), then drains the calls in
/// flight.
///
/// As the HTTP listener: at most `--max-connections` connections are open at once (the next
/// waits in the accept queue), a TLS handshake must finish within `--header-timeout-secs`, and
/// data requests take their permits from the HTTP API's `--max-concurrent-requests`. A
/// connection carries at most [`MAX_STREAMS`] calls at once, and one whose peer stops answering
/// HTTP/2 pings ([`KEEPALIVE`]) is closed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let handshake_timeout = state.limits.header_timeout();
    let max_connections = state.limits.max_connections;
    let service = JinaGrpc::new(state);
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE));
    match tls {
        None => {
            let incoming =
                bounded_incoming(listener, max_connections, |tcp, _| async move { Some(tcp) });
            server
                .serve_with_incoming_shutdown(service, incoming, shutdown)
                .await
        }
        Some(config) => {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let incoming = bounded_incoming(listener, max_connections, move |tcp, remote| {
                let acceptor = acceptor.clone();
                async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => Some(stream),
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            None
                        }
                    }
                }
            });
            server
                .serve_with_incoming_shutdown(service, incoming, shutdown)
                .await
        }
    }
    .context("the gRPC server failed")
}

/// Calls one gRPC connection carries at once.
const MAX_STREAMS: u32 = 128;

/// How often an idle gRPC connection is pinged, and how long the peer has to answer.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// The connections of `listener`, each opened by `open` (plain TCP as it is, or a TLS
/// handshake: `None` drops the connection) in its own task, so that a slow one does not hold up
/// the others. At most `max_connections` are open at once: each holds a permit until it closes,
/// and the next connection is accepted only when a permit is free.
fn bounded_incoming<S, F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    open: F,
) -> BoxStream<'static, std::io::Result<Bounded<S>>>
where
    S: Send + 'static,
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<S>> + Send + 'static,
{
    let connections = Arc::new(Semaphore::new(max_connections.max(1)));
    let open = Arc::new(open);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                // The server stopped and dropped the stream.
                () = tx.closed() => break,
                permit = Arc::clone(&connections).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (tcp, remote) = tokio::select! {
                () = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before it was accepted.
                        tracing::debug!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let (open, tx) = (Arc::clone(&open), tx.clone());
            tokio::spawn(async move {
                if let Some(io) = open(tcp, remote).await {
                    let _ = tx
                        .send(Bounded {
                            io,
                            _permit: permit,
                        })
                        .await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|stream| (Ok(stream), rx))
    })
    .boxed()
}

/// A connection holding one of the listener's `--max-connections` permits until it is dropped.
struct Bounded<S> {
    io: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: Connected> Connected for Bounded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
