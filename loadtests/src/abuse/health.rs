//! Whether every process of the mesh is alive: the gateway's `GET /status` and each executor's
//! `GET /livez`, each bounded by a timeout.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;

use crate::load::{get, HttpClient};

/// How long one health call may take before the process counts as not alive.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// One executor replica, from the gateway's `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Replica {
    pub(crate) executor: String,
    pub(crate) address: String,
}

/// The replicas in a gateway's `/status` body: `executors[].shards[][].address`.
pub(crate) fn replicas(status: &Value) -> Vec<Replica> {
    let mut out = Vec::new();
    for e in status["executors"].as_array().into_iter().flatten() {
        let executor = e["name"].as_str().unwrap_or("?").to_owned();
        for shard in e["shards"].as_array().into_iter().flatten() {
            for r in shard.as_array().into_iter().flatten() {
                if let Some(address) = r["address"].as_str() {
                    out.push(Replica {
                        executor: executor.clone(),
                        address: address.trim_end_matches('/').to_owned(),
                    });
                }
            }
        }
    }
    out
}

/// The gateway's `/status` body.
pub(crate) async fn status(client: &HttpClient, gateway: &str) -> anyhow::Result<Value> {
    let answer = tokio::time::timeout(HEALTH_TIMEOUT, get(client, &format!("{gateway}/status")))
        .await
        .context("the gateway's /status did not answer in 5 s")??;
    anyhow::ensure!(
        answer.status == 200,
        "the gateway's /status answered {}",
        answer.status
    );
    Ok(serde_json::from_slice(&answer.body)?)
}

/// What a health check found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Alive {
    /// The gateway answered `/status` with 200.
    pub(crate) gateway: bool,
    /// `/status` said `ready: true`.
    pub(crate) ready: bool,
    /// The replicas whose `/livez` did not answer 200 in time.
    pub(crate) dead: Vec<String>,
    pub(crate) all_alive: bool,
}

/// Checks the gateway and every replica in `replicas`.
pub(crate) async fn check(client: &HttpClient, gateway: &str, replicas: &[Replica]) -> Alive {
    let status = status(client, gateway).await;
    let ready = status
        .as_ref()
        .is_ok_and(|s| s["ready"].as_bool() == Some(true));
    let mut dead = Vec::new();
    for r in replicas {
        let live =
            tokio::time::timeout(HEALTH_TIMEOUT, get(client, &format!("{}/livez", r.address)))
                .await;
        if !matches!(live, Ok(Ok(ref a)) if a.status == 200) {
            dead.push(format!("{} {}", r.executor, r.address));
        }
    }
    Alive {
        gateway: status.is_ok(),
        ready,
        all_alive: status.is_ok() && dead.is_empty(),
        dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_read_from_status() {
        let status = serde_json::json!({"executors": [
            {"name": "encoder", "shards": [[{"address": "http://a:1"}, {"address": "http://a:2/"}]]},
            {"name": "indexer", "shards": [[{"address": "http://b:1"}], [{"address": "http://b:2"}]]},
            {"name": "broken", "shards": [[{"up": false}]]},
        ]});
        let got: Vec<String> = replicas(&status)
            .into_iter()
            .map(|r| format!("{} {}", r.executor, r.address))
            .collect();
        assert_eq!(
            got,
            [
                "encoder http://a:1",
                "encoder http://a:2",
                "indexer http://b:1",
                "indexer http://b:2"
            ]
        );
        assert!(replicas(&serde_json::json!({})).is_empty());
    }
}
