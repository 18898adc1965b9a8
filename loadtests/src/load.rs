//! A closed-loop load generator: `concurrency` clients, each sending its next request as soon as
//! the previous one is answered, bounded by a request count and a duration.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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

/// What one load phase measured.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// Latency of every successful request, in seconds.
    pub(crate) latencies: Vec<f64>,
    /// Failed requests (transport error, non-200 status, or a failed validation).
    pub(crate) errors: usize,
    /// The first few error messages.
    pub(crate) error_samples: Vec<String>,
    /// Wall-clock duration of the phase.
    pub(crate) elapsed: Duration,
    /// Server-Timing durations per executor, in milliseconds, one list per executor.
    pub(crate) executor_ms: std::collections::BTreeMap<String, Vec<f64>>,
}

/// Runs requests `make(i)` from `concurrency` clients until `max_requests` are sent or
/// `duration` has passed. `check` validates a 200 answer's body.
pub(crate) async fn run<M, C>(
    client: &HttpClient,
    url: &str,
    concurrency: usize,
    max_requests: usize,
    duration: Duration,
    make: M,
    check: C,
) -> Measured
where
    M: Fn(usize) -> Bytes + Send + Sync + 'static,
    C: Fn(&[u8]) -> Result<(), String> + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let check = Arc::new(check);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, url, next, make, check) = (
            client.clone(),
            url.to_owned(),
            next.clone(),
            make.clone(),
            check.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut m = Measured::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max_requests {
                    break;
                }
                let body = make(i);
                let t0 = Instant::now();
                let outcome = match post(&client, &url, body).await {
                    Ok(a) if a.status == 200 => check(&a.body).map(|()| a.server_timing),
                    Ok(a) => Err(format!(
                        "status {}: {}",
                        a.status,
                        String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
                    )),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(timing) => {
                        m.latencies.push(t0.elapsed().as_secs_f64());
                        for (name, ms) in timing.iter().flat_map(|t| parse_server_timing(t)) {
                            m.executor_ms.entry(name).or_default().push(ms);
                        }
                    }
                    Err(e) => {
                        m.errors += 1;
                        if m.error_samples.len() < 3 {
                            m.error_samples.push(e);
                        }
                    }
                }
            }
            m
        }));
    }
    let mut total = Measured::default();
    for t in tasks {
        if let Ok(m) = t.await {
            total.latencies.extend(m.latencies);
            total.errors += m.errors;
            total.error_samples.extend(m.error_samples);
            for (k, v) in m.executor_ms {
                total.executor_ms.entry(k).or_default().extend(v);
            }
        }
    }
    total.elapsed = start.elapsed();
    total
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

/// The `q`-quantile (0..=1) of sorted values.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[pos.min(sorted.len() - 1)]
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

    #[test]
    fn quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 51.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
