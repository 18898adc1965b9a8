//! Binding and serving: the `listening on` line, and a serve loop that bounds connections,
//! runs TLS handshakes when asked, and drains the connections on shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::args::ServeArgs;
use crate::limits::Limits;

/// Binds `addr` and prints the `listening on` line the launcher waits for:
/// `SERVICE listening on https://ADDR` when `tls`, else `http://`.
pub async fn bind(service: &str, addr: SocketAddr, tls: bool) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scheme = if tls { "https" } else { "http" };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{service} listening on {scheme}://{local}")?;
    out.flush()?;
    tracing::info!(%local, tls, "{service} listening");
    Ok(listener)
}

/// Warns (once, at start) that `service` listens on `local`, an address other hosts can reach,
/// without `missing` (such as "a mesh token" or "an API key"): anyone who reaches the port may
/// call it. Says nothing for loopback addresses. Returns whether it warned.
pub fn warn_if_exposed(service: &str, local: SocketAddr, missing: &str) -> bool {
    if local.ip().is_loopback() {
        return false;
    }
    tracing::warn!(
        %local,
        "{service} listens on a non-loopback address without {missing}: anyone who can reach it \
         can call it"
    );
    true
}

/// Serves `app` on `listener` over HTTP/1.1 with `TCP_NODELAY` until `shutdown` resolves, then
/// drains the open connections. With `tls`, every connection is a TLS one (a plain HTTP request
/// fails its handshake).
///
/// At most `limits.max_connections` connections are open at once (the next waits in the accept
/// queue), and hyper closes a connection that has not sent a request's headers within
/// `limits.header_timeout_secs` of opening or of its previous answer: slow-header and idle
/// keep-alive connections do not pile up. The TLS handshake must finish within that time too;
/// a client that never finishes it holds its connection permit only until then. A body must
/// arrive whole within `limits.body_timeout_secs` (408 after it). Every request carries its
/// peer's address as [`ConnectInfo<SocketAddr>`] in its extensions.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout());
    let app = app.layer(axum::Extension(limits.body_timeout()));
    let handshake_timeout = limits.header_timeout();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted: wait a
                    // little rather than spin, as axum::serve does.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = Connection {
            http: http.clone(),
            app: app.clone(),
            remote,
            // Taken before the shutdown signal, so that a connection whose handshake ends
            // after it is still told to close.
            watcher: graceful.watcher(),
            permit,
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(tcp));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One accepted connection, served in its own task.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    app: Router,
    remote: SocketAddr,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let remote = self.remote;
        let app = self.app;
        let service = tower::ServiceBuilder::new()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            })
            .service(app);
        let conn = self
            .http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(%remote, error = %e, "connection closed with an error");
        }
        drop(self.permit);
    }
}

/// Binds `args.listen` (printing the `listening on` line) and serves `app` until `shutdown`
/// resolves, with TLS when `args.tls` asks for it: the tail of every service's `run`. The TLS
/// configuration is read before binding, so a bad one never prints a `listening on` line.
pub async fn bind_and_serve(
    service: &str,
    args: &ServeArgs,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = args.tls.acceptor().context("invalid TLS configuration")?;
    let addr = args.listen;
    let listener = bind(service, addr, tls.is_some())
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    serve(listener, app, &args.limits, tls, shutdown).await?;
    Ok(())
}
