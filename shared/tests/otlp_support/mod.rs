//! OTLP collectors for the trace export tests, on 127.0.0.1 sockets the test binds: an OTLP/gRPC
//! receiver (tonic, plain or TLS with ALPN `h2`) and an OTLP/HTTP one over TLS (axum), each
//! passing on the spans it decodes; and the span every test exports.
//!
//! The exporter reads its configuration from the environment once per process, so each test
//! binary holds one test, which sets the environment before its runtime starts.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use flowmesh_shared::testing::pki::TestCa;

/// One received span and the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub attributes: HashMap<String, String>,
}

pub type Inbox = mpsc::UnboundedReceiver<Span>;

/// Every variable the exporter reads, so that the test's environment decides alone.
const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "FLOWMESH_TLS_CA",
    "FLOWMESH_TLS_CLIENT_CERT",
    "FLOWMESH_TLS_CLIENT_KEY",
    "FLOWMESH_EXECUTOR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Sets exactly `vars` of the exporter's variables. Call before any thread starts (before the
/// runtime): the environment is not safe to change while other threads read it.
pub fn set_env(vars: &[(&str, String)]) {
    for var in OTEL_VARS {
        std::env::remove_var(var);
    }
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
}

/// A listener on 127.0.0.1:0, bound before the runtime starts (its port goes into the
/// environment).
pub fn listener() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A CA and a certificate for `localhost` and 127.0.0.1, written to `dir`: the CA's path, and
/// the server's TLS configuration with ALPN `alpn`.
pub fn pki(dir: &std::path::Path, alpn: &[u8]) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("flowmesh OTLP test CA");
    let (cert, key) = ca
        .issue(&["localhost", "127.0.0.1"])
        .write(dir, "collector");
    let mut config = rustls::ServerConfig::builder_with_provider(flowmesh_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            flowmesh_shared::tls::read_certificates(&cert).unwrap(),
            flowmesh_shared::tls::read_private_key(&key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    (ca.write(dir, "ca"), Arc::new(config))
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn pass_on(request: ExportTraceServiceRequest, to: &mpsc::UnboundedSender<Span>) {
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(value_text)
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            let _ = to.send(Span {
                service: service.clone(),
                name: span.name,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), value_text(kv)))
                    .collect(),
            });
        }
    }
}

struct GrpcReceiver(mpsc::UnboundedSender<Span>);

#[async_trait::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        pass_on(request.into_inner(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A TLS connection as tonic's server takes it.
struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Serves OTLP/gRPC on `listener`, over TLS with `tls`; the spans it receives.
pub fn grpc_receiver(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Inbox {
    let (tx, rx) = mpsc::unbounded_channel();
    let service = TraceServiceServer::new(GrpcReceiver(tx));
    let listener = TcpListener::from_std(listener).unwrap();
    match tls {
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(
                tonic::transport::Server::builder().serve_with_incoming(service, incoming),
            );
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let incoming =
                futures::stream::unfold((listener, acceptor), |(listener, acceptor)| async move {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        // A failed handshake (a client that does not trust us) is skipped.
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            return Some((
                                Ok::<_, std::io::Error>(TlsIo(tls)),
                                (listener, acceptor),
                            ));
                        }
                    }
                });
            tokio::spawn(
                tonic::transport::Server::builder().serve_with_incoming(service, incoming),
            );
        }
    }
    rx
}

async fn http_receive(State(tx): State<mpsc::UnboundedSender<Span>>, body: Bytes) -> Vec<u8> {
    pass_on(ExportTraceServiceRequest::decode(body).unwrap(), &tx);
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// Serves OTLP/HTTP (`POST /v1/traces`, protobuf) over TLS with `tls` on `listener`; the spans
/// it receives.
pub fn https_receiver(listener: std::net::TcpListener, tls: Arc<rustls::ServerConfig>) -> Inbox {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/v1/traces", post(http_receive))
        .with_state(tx);
    let listener = TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    rx
}

/// Starts the traces of the service `test` as a service binary does, records one server span
/// (`POST /search` with request id `req-42`) and flushes it; then the first span received
/// within 20 s.
pub async fn export_one_span(inbox: &mut Inbox) -> Span {
    let traces = flowmesh_shared::trace::init_traces("test");
    assert!(
        flowmesh_shared::trace::enabled(),
        "traces did not start (see the log above)"
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("x-request-id", http::HeaderValue::from_static("req-42"));
    drop(flowmesh_shared::trace::server_span(
        "test", "POST", "/search", &headers,
    ));
    traces.shutdown().await;
    tokio::time::timeout(Duration::from_secs(20), inbox.recv())
        .await
        .expect("no span reached the collector in 20 s")
        .expect("the collector stopped")
}

/// What every test checks of the span it exported.
pub fn assert_is_the_span(span: &Span) {
    assert_eq!(span.service, "flowmesh-test", "{span:?}");
    assert_eq!(span.name, "POST /search", "{span:?}");
    assert_eq!(span.attributes["flowmesh.request_id"], "req-42", "{span:?}");
    assert_eq!(span.attributes["http.route"], "/search", "{span:?}");
}
