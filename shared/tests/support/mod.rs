//! A real server on 127.0.0.1:0 serving a small executor, and raw HTTP(S) requests to it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use flowmesh_shared::api::{Document, Envelope};
use flowmesh_shared::codec::Format;
use flowmesh_shared::health::Readiness;
use flowmesh_shared::server::{bind, executor_router, serve, Executor, Limits};
use flowmesh_shared::{ApiError, Deadline, Endpoint};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;

/// An executor that tags every document with the endpoint it was called on.
pub struct Echo;

impl Executor for Echo {
    async fn call(
        &self,
        endpoint: Endpoint,
        mut request: Envelope,
        _deadline: Deadline,
    ) -> Result<Envelope, ApiError> {
        for doc in &mut request.data {
            doc.text = Some(format!("{endpoint}"));
        }
        Ok(request)
    }
}

/// The test executor's routes, plus `GET /peer` answering the peer address the serve loop put
/// in the request's extensions.
pub fn echo_router() -> Router {
    let extra = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    executor_router(
        "test",
        Arc::new(Echo),
        Readiness::ready(),
        &Limits::default(),
        extra,
    )
}

/// A server running until dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `app` on 127.0.0.1:0, over TLS with `tls`.
pub async fn start(app: Router, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
    let listener = bind("test", "127.0.0.1:0".parse().unwrap(), tls.is_some())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let limits = Limits::default();
        serve(listener, app, &limits, tls, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        stop: Some(stop),
    }
}

/// An encoded one-document envelope.
pub fn one_doc() -> Bytes {
    let doc = Document {
        id: "a".into(),
        ..Document::default()
    };
    Format::MsgPack.encode(&Envelope::new(vec![doc])).unwrap()
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// `METHOD url` over plain HTTP, with `Authorization: authorization` when given.
pub async fn call(method: &str, url: &str, authorization: Option<&str>) -> Result<Answer, String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(a) = authorization {
        req = req.header(http::header::AUTHORIZATION, a);
    }
    let body = if method == "POST" {
        req = req.header(http::header::CONTENT_TYPE, Format::MsgPack.mime());
        one_doc()
    } else {
        Bytes::new()
    };
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
