//! Distributed traces: one OpenTelemetry trace per request, with a span for every hop, exported
//! over OTLP/HTTP or OTLP/gRPC, plain or over TLS.
//!
//! Traces are on only when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//! is set when [`init_traces`] runs. Off, every function here returns after one check of a
//! `OnceLock`, so a request pays nothing for them. On, every service opens a server span per
//! request ([`server_span`], continuing the caller's W3C `traceparent`), the gateway an internal
//! span per executor it runs ([`internal_span`]) and a client span per call to a replica
//! ([`client_span`]) whose context travels in the call's `traceparent` header ([`inject`]).
//!
//! Spans go through the SDK's batch processor (its own thread, configured by the `OTEL_BSP_*`
//! variables) to the OTLP exporter. Over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf`, the
//! default, or `http/json`) its client is the workspace's hyper client running on the service's
//! Tokio runtime (no reqwest); over gRPC (`grpc`) it is a tonic channel whose connections this
//! module makes ([`GrpcConnector`]), so that TLS is rustls with `ring` as everywhere else.
//!
//! An `https://` collector is verified against the CA of `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`
//! or `OTEL_EXPORTER_OTLP_CERTIFICATE` (the OTel standard variables) when one is set, and
//! otherwise against the system's roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the platform's
//! store) plus the CA of `FLOWMESH_TLS_CA` if set. A client certificate for mutual TLS comes
//! from `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE` and `..._CLIENT_KEY`, or else
//! `FLOWMESH_TLS_CLIENT_CERT` and `FLOWMESH_TLS_CLIENT_KEY`. [`Traces::shutdown`] exports what
//! is still buffered.
//!
//! Spans record the method, route, service, request id, executor and status of a call, never a
//! header's value: the `Authorization` header (API keys, the mesh token) is never recorded.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{
    Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// The tracer, set once by [`init_traces`] when an OTLP endpoint is configured.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The largest collector answer read; OTLP answers are a few bytes.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Whether traces are recorded and exported.
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The trace pipeline of this process; [`Traces::shutdown`] flushes it.
#[derive(Debug)]
#[must_use = "call `shutdown` before exiting, or buffered spans are lost"]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Exports the spans still buffered and stops the exporter. Blocks a pool thread, not the
    /// runtime, because the exporter's HTTP calls run on this runtime.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => tracing::debug!("traces flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot flush traces"),
            Err(e) => tracing::warn!(error = %e, "cannot flush traces"),
        }
    }
}

/// Starts exporting traces when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; otherwise does nothing. `service` names the
/// service (`gateway`, `encoder`, ...): its `service.name` is `OTEL_SERVICE_NAME` or
/// `flowmesh-<service>`. Must be called inside a Tokio runtime, whose handle runs the exports.
/// A configuration error is logged and leaves traces off: telemetry never stops a service.
pub fn init_traces(service: &str) -> Traces {
    if !endpoint_configured() {
        return Traces { provider: None };
    }
    match build_provider(service) {
        Ok(provider) => {
            if TRACER.set(provider.tracer("flowmesh")).is_err() {
                tracing::debug!("traces were already set up in this process");
            }
            tracing::info!(protocol = ?protocol(), "exporting traces over OTLP");
            Traces {
                provider: Some(provider),
            }
        }
        Err(e) => {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot set up the OTLP trace exporter; traces are off"
            );
            Traces { provider: None }
        }
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn endpoint_configured() -> bool {
    env_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env_var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// `http/protobuf` unless the environment asks for `http/json` or `grpc`, as the OTel
/// specification says (the exporter crate itself would default to JSON once its JSON feature is
/// on).
fn protocol() -> Protocol {
    let named = env_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env_var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match named.as_deref().map(str::trim) {
        Some("http/json") => Protocol::HttpJson,
        Some("grpc") => Protocol::Grpc,
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some(other) => {
            tracing::warn!(
                protocol = other,
                "unsupported OTLP protocol; using http/protobuf"
            );
            Protocol::HttpBinary
        }
    }
}

/// The collector's address as configured: the traces endpoint, else the base one. (Over HTTP
/// the exporter adds `/v1/traces` to the base itself; over gRPC both are used as they are.)
fn configured_endpoint() -> Option<String> {
    env_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env_var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The export timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`
/// (milliseconds), default 10 s.
fn export_timeout() -> Duration {
    env_var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| env_var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The first of the variables `names` that is set.
fn first_var(names: &[&str]) -> Option<std::path::PathBuf> {
    names
        .iter()
        .find_map(|n| env_var(n))
        .map(std::path::PathBuf::from)
}

/// The TLS configuration for an `https://` collector (see the module's documentation for whom
/// it trusts), with no ALPN protocols: each transport sets its own.
fn export_tls() -> anyhow::Result<rustls::ClientConfig> {
    let roots = match first_var(&[
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]) {
        Some(ca) => crate::tls::read_roots(&ca)?,
        None => {
            let mut roots = system_roots();
            if let Some(ca) = first_var(&["FLOWMESH_TLS_CA"]) {
                for cert in crate::tls::read_certificates(&ca)? {
                    roots.add(cert).with_context(|| {
                        format!("{} holds a certificate that is not a CA", ca.display())
                    })?;
                }
            }
            roots
        }
    };
    let cert = first_var(&[
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "FLOWMESH_TLS_CLIENT_CERT",
    ]);
    let key = first_var(&[
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "FLOWMESH_TLS_CLIENT_KEY",
    ]);
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_root_certificates(roots);
    Ok(match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = crate::tls::read_certificates(&cert)?;
            let private = crate::tls::read_private_key(&key)?;
            builder
                .with_client_auth_cert(chain, private)
                .with_context(|| {
                    format!(
                        "the key {} does not match the client certificate {}",
                        key.display(),
                        cert.display()
                    )
                })?
        }
        _ => anyhow::bail!(
            "a client certificate for the OTLP collector needs its key, and a key its certificate"
        ),
    })
}

/// The system's trusted roots (`SSL_CERT_FILE`, `SSL_CERT_DIR`, or the platform's store); none
/// when they cannot be read, which is logged.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read some of the system's CA certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no usable system CA certificate: an https:// collector needs \
             OTEL_EXPORTER_OTLP_CERTIFICATE"
        );
    }
    roots
}

/// Whether the collector is reached over TLS.
fn is_https(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
}

fn build_provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let timeout = export_timeout();
    let endpoint = configured_endpoint();
    // The system's roots are read only for an https:// collector.
    let tls = if is_https(endpoint.as_deref()) {
        Some(export_tls()?)
    } else {
        None
    };
    let exporter = match protocol() {
        Protocol::Grpc => {
            let endpoint = endpoint.unwrap_or_default();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(grpc_channel(&endpoint, tls, timeout)?)
                .with_timeout(timeout)
                .build()?
        }
        protocol => {
            let connector =
                crate::tls::https_connector(HttpConnector::new(), tls.map(std::sync::Arc::new));
            let client = ExportClient {
                http: Client::builder(TokioExecutor::new()).build(connector),
                runtime: tokio::runtime::Handle::current(),
                timeout,
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_timeout(timeout)
                .with_http_client(client)
                .build()?
        }
    };
    Ok(SdkTracerProvider::builder()
        .with_resource(resource(service))
        .with_batch_exporter(exporter)
        .build())
}

/// The tonic channel to the gRPC collector at `endpoint`, connecting lazily (a collector that
/// is down costs a failed export, not a failed start). With `tls`, connections are TLS with
/// ALPN `h2`, made by [`GrpcConnector`]; tonic is given the address as `http://` so that it
/// never tries TLS of its own.
fn grpc_channel(
    endpoint: &str,
    tls: Option<rustls::ClientConfig>,
    timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    let uri: http::Uri = endpoint
        .trim()
        .parse()
        .with_context(|| format!("invalid OTLP endpoint {endpoint:?}"))?;
    let host = uri
        .host()
        .with_context(|| format!("the OTLP endpoint {endpoint:?} has no host"))?
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let authority = match uri.authority() {
        Some(a) if a.port().is_some() => a.as_str().to_owned(),
        _ if host.contains(':') && !host.starts_with('[') => format!("[{host}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    let tls = match tls {
        None => None,
        Some(mut config) => {
            config.alpn_protocols = vec![b"h2".to_vec()];
            let bare = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name = rustls::pki_types::ServerName::try_from(bare)
                .with_context(|| format!("{host} is not a valid TLS server name"))?;
            Some((
                tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
                name,
            ))
        }
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .with_context(|| format!("invalid OTLP endpoint {endpoint:?}"))?
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect_with_connector_lazy(GrpcConnector {
            tls: tls.map(std::sync::Arc::new),
        });
    Ok(channel)
}

/// A byte stream tonic's HTTP/2 runs over: TCP, or TLS over TCP.
trait GrpcIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> GrpcIo for T {}

/// Opens the gRPC exporter's connections: TCP to the URI's host and port, then TLS when the
/// collector is `https://`, verifying the configured name (not the URI's, which is the same).
#[derive(Clone)]
struct GrpcConnector {
    tls: Option<
        std::sync::Arc<(
            tokio_rustls::TlsConnector,
            rustls::pki_types::ServerName<'static>,
        )>,
    >,
}

impl tower::Service<http::Uri> for GrpcConnector {
    type Response = TokioIo<Box<dyn GrpcIo>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "no host");
            let host = uri.host().ok_or_else(invalid)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn GrpcIo> = match tls.as_deref() {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// `service.name` and where in the Flow this process sits (the launcher's `FLOWMESH_*`
/// variables), on top of what `OTEL_RESOURCE_ATTRIBUTES` says.
fn resource(service: &str) -> Resource {
    let mut builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    // The SDK takes the name from `OTEL_SERVICE_NAME`, else `OTEL_RESOURCE_ATTRIBUTES`, else
    // calls it `unknown_service`: only then is ours the default.
    let named = Resource::builder()
        .build()
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if !named {
        builder = builder.with_service_name(format!("flowmesh-{service}"));
    }
    for (var, key) in [
        ("FLOWMESH_EXECUTOR", "flowmesh.executor"),
        ("FLOWMESH_SHARD", "flowmesh.shard"),
        ("FLOWMESH_REPLICA", "flowmesh.replica"),
    ] {
        if let Some(value) = env_var(var) {
            builder = builder.with_attribute(KeyValue::new(key, value));
        }
    }
    builder.build()
}

/// The exporter's HTTP client: hyper on the service's runtime. The SDK calls it from its own
/// batch thread, where no runtime runs, so each request is spawned onto the captured handle.
#[derive(Debug)]
struct ExportClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let exchange = async move {
            let response = http.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let timeout = self.timeout;
        self.runtime
            .spawn(async move {
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map_err(|_| HttpError::from(format!("no answer in {timeout:?}")))?
            })
            .await?
    }
}

/// A span that ends when this guard is dropped (so a cancelled request still ends its spans).
/// Without traces it holds nothing.
#[derive(Debug, Default)]
pub struct SpanGuard(Option<Context>);

impl SpanGuard {
    /// The context to parent further spans on: this span's, or an empty one without traces.
    pub fn context(&self) -> Context {
        self.0.clone().unwrap_or_default()
    }

    /// Adds an attribute.
    pub fn set_attribute(&self, attribute: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(attribute);
        }
    }

    /// Marks the span as failed with `message`.
    pub fn set_error(&self, message: impl std::fmt::Display) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message.to_string()));
        }
    }

    /// Sets `http.response.status_code`, and an error status for 5xx (for a server span) or any
    /// 4xx/5xx (for a client span), as the HTTP semantic conventions say.
    pub fn set_http_status(&self, status: u16, client: bool) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 || (client && status >= 400) {
                span.set_status(Status::error(String::new()));
            }
        }
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// Opens the server span of an incoming request named `METHOD route`, continuing the trace of
/// its `traceparent`/`tracestate` headers when they are valid. Empty without traces.
pub fn server_span(
    service: &'static str,
    method: &str,
    route: &str,
    headers: &HeaderMap,
) -> SpanGuard {
    let Some(tracer) = TRACER.get() else {
        return SpanGuard(None);
    };
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.to_owned()),
        KeyValue::new("http.route", route.to_owned()),
        KeyValue::new("flowmesh.service", service),
    ];
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new("flowmesh.request_id", id.to_owned()));
    }
    let span = tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    SpanGuard(Some(parent.with_span(span)))
}

/// Opens an internal span `name` under `parent` (the gateway's built-in executors, and each
/// executor's part of a request).
pub fn internal_span(parent: &Context, name: &str, attributes: Vec<KeyValue>) -> SpanGuard {
    let Some(tracer) = TRACER.get() else {
        return SpanGuard(None);
    };
    let span = tracer
        .span_builder(name.to_owned())
        .with_kind(SpanKind::Internal)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    SpanGuard(Some(parent.with_span(span)))
}

/// Opens the client span of one call to one replica: `POST /search` to `base`.
pub fn client_span(
    parent: &Context,
    path: &str,
    base: &str,
    attributes: Vec<KeyValue>,
) -> SpanGuard {
    let Some(tracer) = TRACER.get() else {
        return SpanGuard(None);
    };
    let mut attributes = attributes;
    // An address never carries credentials in flowmesh, but a password in one is not recorded.
    let base = crate::secret::redact_url(base);
    let base = base.as_str();
    attributes.push(KeyValue::new("http.request.method", "POST"));
    attributes.push(KeyValue::new("url.full", format!("{base}{path}")));
    if let Some(authority) = base.split("://").nth(1) {
        attributes.push(KeyValue::new("server.address", authority.to_owned()));
    }
    let span = tracer
        .span_builder(format!("POST {path}"))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    SpanGuard(Some(parent.with_span(span)))
}

/// The current span's context, for code that runs under a server span (set as current by
/// [`crate::telemetry::track_requests`]). Empty without traces.
pub fn current() -> Context {
    if enabled() {
        Context::current()
    } else {
        Context::new()
    }
}

/// Adds the attribute `make` builds to the current span (the request's server span inside a
/// handler); `make` is not even called without traces.
pub fn set_current_attribute(make: impl FnOnce() -> KeyValue) {
    if enabled() {
        Context::current().span().set_attribute(make());
    }
}

/// Writes `traceparent` (and `tracestate`) for `cx` into `headers`; nothing when `cx` has no
/// valid span.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    if cx.has_active_span() {
        TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
    }
}

/// Reads the W3C trace context of `headers`; an empty context when there is none or it is
/// malformed.
pub fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                *k,
                v.parse()
                    .unwrap_or_else(|_| http::HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn a_traceparent_is_read_and_written_back_unchanged() {
        let cx = extract(&headers(&[
            ("traceparent", PARENT),
            ("tracestate", "vendor=x"),
        ]));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], PARENT);
        assert_eq!(out["tracestate"], "vendor=x");
    }

    #[test]
    fn malformed_or_missing_traceparents_give_an_empty_context() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let cx = extract(&headers(&[("traceparent", bad)]));
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
            let mut out = HeaderMap::new();
            inject(&cx, &mut out);
            assert!(out.is_empty(), "{bad:?} wrote {out:?}");
        }
        assert!(!extract(&HeaderMap::new()).has_active_span());
    }

    #[test]
    fn an_unsampled_parent_stays_unsampled_downstream() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
        );
    }

    #[test]
    fn without_an_endpoint_spans_are_free_and_empty() {
        // No test in this crate sets an OTLP endpoint, so traces are off.
        assert!(!enabled());
        let guard = server_span(
            "test",
            "POST",
            "/search",
            &headers(&[("traceparent", PARENT)]),
        );
        assert!(!guard.context().has_active_span());
        let child = client_span(
            &guard.context(),
            "/search",
            "http://127.0.0.1:1",
            Vec::new(),
        );
        child.set_http_status(500, true);
        assert!(!child.context().has_active_span());
    }
}
