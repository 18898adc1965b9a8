//! The HTTP side of the load: a keep-alive client, and one request sent and its answer read.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::Failure;

/// A keep-alive HTTP client with `TCP_NODELAY`.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(conn)
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
