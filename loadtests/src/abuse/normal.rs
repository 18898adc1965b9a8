//! The normal traffic of `flowmesh-bench abuse`: closed-loop search clients, bounded by a
//! request count and a duration, their latencies in a histogram.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use super::tally::{Latencies, PhaseSummary};
use crate::load::{post, HttpClient};

/// The same load for every phase.
#[derive(Debug, Clone)]
pub(crate) struct NormalLoad {
    pub(crate) url: String,
    pub(crate) clients: usize,
    pub(crate) max_requests: usize,
    pub(crate) duration: Duration,
    pub(crate) top_k: usize,
    /// A request not answered in this time counts as an error.
    pub(crate) timeout: Duration,
}

/// What one client saw.
#[derive(Default)]
struct ClientResult {
    latencies: Latencies,
    errors: u64,
    error_samples: Vec<String>,
}

/// The `i`-th normal query: a short sentence unlike the indexed ones, `top_k` matches.
fn query(i: usize, top_k: usize) -> Bytes {
    Bytes::from(
        json!({"data": [{"text": crate::text(1_000_003 + i)}], "parameters": {"top_k": top_k}})
            .to_string(),
    )
}

/// One normal request: its latency, or why it failed.
async fn one(client: &HttpClient, load: &NormalLoad, i: usize) -> Result<Duration, String> {
    let started = Instant::now();
    let answer = tokio::time::timeout(load.timeout, post(client, &load.url, query(i, load.top_k)))
        .await
        .map_err(|_| format!("no answer in {:?}", load.timeout))?
        .map_err(|e| e.to_string())?;
    if answer.status != 200 {
        let n = answer.body.len().min(200);
        return Err(format!(
            "status {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body[..n])
        ));
    }
    crate::check_matches(&answer.body, load.top_k)?;
    Ok(started.elapsed())
}

/// Runs `load` once: its clients send requests until `max_requests` are sent or `duration` has
/// passed (each request bounded by `timeout`, so the phase ends by `duration + timeout`).
pub(crate) async fn run(client: &HttpClient, load: &NormalLoad) -> PhaseSummary {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let until = started + load.duration;
    let mut tasks = Vec::with_capacity(load.clients);
    for _ in 0..load.clients {
        let (client, load, next) = (client.clone(), load.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = ClientResult::default();
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= load.max_requests {
                    break;
                }
                match one(&client, &load, i).await {
                    Ok(latency) => r.latencies.record(latency),
                    Err(e) => {
                        r.errors += 1;
                        if r.error_samples.len() < 3 {
                            r.error_samples.push(e);
                        }
                    }
                }
            }
            r
        }));
    }
    let mut total = ClientResult::default();
    for t in tasks {
        match t.await {
            Ok(r) => {
                total.latencies.add(&r.latencies);
                total.errors += r.errors;
                total.error_samples.extend(r.error_samples);
            }
            Err(e) => {
                total.errors += 1;
                total.error_samples.push(format!("client task failed: {e}"));
            }
        }
    }
    total.error_samples.truncate(5);
    PhaseSummary::new(
        &total.latencies,
        total.errors,
        total.error_samples,
        started.elapsed(),
    )
}
