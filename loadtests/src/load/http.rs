//! The HTTP side of the load: a keep-alive client, and one request sent and its answer read.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use super::Failure;

/// A keep-alive HTTP client with `TCP_NODELAY`, for `http://` and, given a CA, `https://`
/// targets; it sends an API key with every request when it holds one.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `Authorization: Bearer KEY`, marked sensitive.
    auth: Option<HeaderValue>,
}

impl HttpClient {
    /// Sends `req`, with the client's API key.
    pub(crate) fn request(&self, mut req: http::Request<Full<Bytes>>) -> ResponseFuture {
        if let Some(auth) = &self.auth {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, auth.clone());
        }
        self.inner.request(req)
    }
}

/// A plain client: `http://` only, no API key.
pub(crate) fn http_client() -> HttpClient {
    build(None, None).expect("ring supports rustls' default protocol versions")
}

/// A client that verifies `https://` targets against the CA in `ca` and sends `api_key`.
pub(crate) fn secure_client(ca: &Path, api_key: &str) -> anyhow::Result<HttpClient> {
    build(Some(ca), Some(api_key))
}

/// A client for `http://` targets that sends `Authorization: Bearer TOKEN` (an executor's mesh
/// token).
pub(crate) fn bearer_client(token: &str) -> anyhow::Result<HttpClient> {
    build(None, Some(token))
}

fn build(ca: Option<&Path>, api_key: Option<&str>) -> anyhow::Result<HttpClient> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.enforce_http(false);
    let tls = match ca {
        Some(ca) => flowmesh_shared::tls::client_config_with(ca, None, None)?,
        // No CA: `https://` targets fail to verify against an empty root store.
        None => std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(flowmesh_shared::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(conn);
    let auth = match api_key {
        Some(key) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}"))?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let inner = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    Ok(HttpClient { inner, auth })
}

/// One answer: status, body, and the `Server-Timing` header.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    pub(crate) server_timing: Option<String>,
}

/// POSTs a JSON body.
pub(crate) async fn post(client: &HttpClient, url: &str, body: Bytes) -> anyhow::Result<Answer> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let server_timing = resp
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body,
        server_timing,
    })
}

/// POSTs `body` to `url` within `timeout`: a 200 answer, or why not (`timeout`, `transport`,
/// `http_<status>` with the start of the body).
pub(crate) async fn post_ok(
    client: &HttpClient,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, Failure> {
    match tokio::time::timeout(timeout, post(client, url, body)).await {
        Err(_) => Err(Failure::new("timeout", format!("no answer in {timeout:?}"))),
        Ok(Err(e)) => Err(Failure::new("transport", format!("{e:#}"))),
        Ok(Ok(a)) if a.status != 200 => Err(Failure::new(
            &format!("http_{}", a.status),
            format!(
                "status {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
            ),
        )),
        Ok(Ok(a)) => Ok(a),
    }
}

/// GETs `url`.
pub(crate) async fn get(client: &HttpClient, url: &str) -> anyhow::Result<Answer> {
    let req = http::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body,
        server_timing: None,
    })
}

/// `encoder;dur=0.123, indexer;dur=0.4` as `(name, ms)` pairs.
pub(crate) fn parse_server_timing(header: &str) -> Vec<(String, f64)> {
    header
        .split(',')
        .filter_map(|part| {
            let mut it = part.trim().split(';');
            let name = it.next()?.trim().to_owned();
            let dur = it
                .find_map(|p| p.trim().strip_prefix("dur="))?
                .parse()
                .ok()?;
            Some((name, dur))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_parses() {
        assert_eq!(
            parse_server_timing("encoder;dur=0.5, indexer;desc=x;dur=2"),
            vec![("encoder".to_owned(), 0.5), ("indexer".to_owned(), 2.0)]
        );
    }
}
