//! Binding and serving: the `listening on` line, and a serve loop that bounds connections and
//! drains them on shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::args::ServeArgs;
use crate::limits::Limits;

/// Binds `addr` and prints the `listening on` line the launcher waits for.
pub async fn bind(service: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{service} listening on http://{local}")?;
    out.flush()?;
    tracing::info!(%local, "{service} listening");
    Ok(listener)
}

/// Serves `app` on `listener` over HTTP/1.1 with `TCP_NODELAY` until `shutdown` resolves, then
/// drains the open connections.
///
/// At most `limits.max_connections` connections are open at once (the next waits in the accept
/// queue), and hyper closes a connection that has not sent a request's headers within
/// `limits.header_timeout_secs` of opening or of its previous answer: slow-header and idle
/// keep-alive connections do not pile up. A body must arrive whole within
/// `limits.body_timeout_secs` (408 after it).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout());
    let app = app.layer(axum::Extension(limits.body_timeout()));
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
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%remote, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Binds `addr` (printing the `listening on` line) and serves `app` until `shutdown` resolves:
/// the tail of every service's `run`.
pub async fn bind_and_serve(
    service: &str,
    args: &ServeArgs,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = args.listen;
    let listener = bind(service, addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    serve(listener, app, &args.limits, shutdown).await
}
