//! A small JSON HTTP/1 client for the tests, and base64 for image blobs.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use flowmesh_deploy_tests::wait_until;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(2000)]).into_owned()
    }
}

/// A JSON HTTP/1 client with a keep-alive pool, as a user's client would be, sending an API key
/// (`api-key`) when it has one.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    api_key: Option<String>,
}

impl Http {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            api_key: None,
        }
    }

    /// The same client (and pool) sending `api_key` instead.
    pub fn with_key(&self, api_key: &str) -> Self {
        Self {
            client: self.client.clone(),
            api_key: Some(api_key.to_owned()),
        }
    }

    async fn send(&self, mut req: Request<Full<Bytes>>, limit: Duration) -> anyhow::Result<Answer> {
        let uri = req.uri().clone();
        if let Some(key) = &self.api_key {
            req.headers_mut().insert("api-key", key.parse()?);
        }
        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer { status, body })
        };
        tokio::time::timeout(limit, call)
            .await
            .with_context(|| format!("{uri}: no answer in {}s", limit.as_secs()))?
            .with_context(|| format!("{uri}"))
    }

    /// `POST url` with a JSON body.
    pub async fn post(&self, url: &str, body: &Value, limit: Duration) -> anyhow::Result<Answer> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        self.send(req, limit).await
    }

    /// `GET url`.
    pub async fn get(&self, url: &str, limit: Duration) -> anyhow::Result<Answer> {
        let req = Request::builder().uri(url).body(Full::new(Bytes::new()))?;
        self.send(req, limit).await
    }

    /// Waits until `GET url` answers 200.
    pub async fn wait_ok(&self, url: &str, limit: Duration) -> anyhow::Result<()> {
        let what = format!("{url} answers 200");
        wait_until(&what, limit, Duration::from_millis(250), || async {
            let answer = self.get(url, Duration::from_secs(5)).await?;
            ensure!(answer.status == 200, "{}: {}", answer.status, answer.text());
            Ok(true)
        })
        .await
    }
}

/// Standard base64 with padding (image blobs in JSON).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
