//! `flowmesh snapshot --gateway URL --out DIR`: a snapshot of every shard of every executor that
//! keeps data, through a running gateway's `GET /snapshot/{executor}/{shard}`, written to
//! `DIR/{executor}/shard-{s}.snap`, and `DIR/manifest.json` naming each file with the position it
//! holds, its log, its size and its SHA-256. `flowmesh up --restore-from DIR` starts a Flow from it.
//!
//! The API key is `FLOWMESH_API_KEY` (a read-write key: a snapshot holds every document);
//! `https://` gateways are verified with `--tls-ca`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use flowmesh_shared::mirror::SEQ_HEADER;
use flowmesh_shared::secret::{secret_from_env, Secret};
use flowmesh_shared::tls::ClientTlsArgs;

use crate::auth::keys::API_KEY_ENV;
use crate::snapshot::LOG_ID_HEADER;

/// The manifest of a snapshot folder.
pub(super) const MANIFEST: &str = "manifest.json";

/// How long the gateway may take to start answering one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// `flowmesh snapshot` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// The running gateway, `http://host:port` or `https://host:port`.
    #[arg(long, env = "FLOWMESH_GATEWAY", value_name = "URL")]
    pub gateway: String,
    /// The folder to write (created; it must be empty if it exists).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// How an `https://` gateway is verified (`--tls-ca`).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

struct Gateway {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    base: String,
    key: Option<Secret>,
}

impl Gateway {
    async fn get(&self, path: &str) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::get(&url)
            .body(Empty::new())
            .with_context(|| format!("invalid URL {url}"))?;
        if let Some(key) = &self.key {
            let mut value = HeaderValue::from_str(key.expose())
                .map_err(|_| anyhow!("{API_KEY_ENV} is not a valid header value"))?;
            value.set_sensitive(true);
            req.headers_mut().insert("api-key", value);
        }
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| anyhow!("GET {url}: no answer in {}s", CALL_TIMEOUT.as_secs()))?
            .with_context(|| format!("GET {url}"))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let text = body.map_or_else(
                |_| String::new(),
                |b| String::from_utf8_lossy(&b).into_owned(),
            );
            bail!("GET {url}: {status}: {}", text.trim());
        }
        Ok(resp)
    }
}

/// The executors of a gateway's `/status` that keep data, with their number of shards.
fn stateful_executors(status: &Value) -> anyhow::Result<Vec<(String, usize)>> {
    let executors = status["executors"]
        .as_array()
        .ok_or_else(|| anyhow!("the gateway's /status lists no executors"))?;
    Ok(executors
        .iter()
        .filter(|e| match e["kind"].as_str() {
            Some(kind) => kind == "stateful",
            // A gateway that does not say: the services that can keep data.
            None => matches!(e["uses"].as_str(), Some("indexer" | "ranker")),
        })
        .filter_map(|e| {
            let name = e["name"].as_str()?.to_owned();
            let shards = e["shards"].as_array()?.len();
            Some((name, shards))
        })
        .collect())
}

/// Writes a snapshot of every stateful shard behind `args.gateway` to `args.out`.
pub async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let out = &args.out;
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty; give a new folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let tls = args
        .tls
        .client_config()
        .context("invalid client TLS configuration (--tls-ca)")?;
    let gateway = Gateway {
        http: Client::builder(TokioExecutor::new()).build(flowmesh_shared::tls::https_connector(
            HttpConnector::new(),
            tls,
        )),
        base: args.gateway.trim_end_matches('/').to_owned(),
        key: secret_from_env(API_KEY_ENV).and_then(|keys| keys.into_iter().next()),
    };
    let status_body = gateway.get("/status").await?.into_body().collect().await?;
    let status: Value = serde_json::from_slice(&status_body.to_bytes())
        .context("the gateway's /status is not JSON")?;
    let flow = status["flow"].as_str().unwrap_or_default().to_owned();
    let executors = stateful_executors(&status)?;
    if executors.is_empty() {
        bail!("flow {flow:?} has no executor that keeps data: nothing to snapshot");
    }
    let mut shards = Vec::new();
    for (executor, count) in &executors {
        for shard in 0..*count {
            let entry = download(&gateway, out, executor, shard).await?;
            shards.push(entry);
        }
    }
    let manifest = json!({
        "flow": flow,
        "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "gateway": gateway.base,
        "shards": shards,
    });
    let path = out.join(MANIFEST);
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "snapshot of flow {flow:?}: {} shard(s) in {} ({:.1}s)",
        shards.len(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Downloads one shard's snapshot to `out/{executor}/shard-{shard}.snap`; its manifest entry.
async fn download(
    gateway: &Gateway,
    out: &Path,
    executor: &str,
    shard: usize,
) -> anyhow::Result<Value> {
    let began = Instant::now();
    let resp = gateway
        .get(&format!("/snapshot/{executor}/{shard}"))
        .await
        .with_context(|| format!("snapshot of {executor} shard {shard}"))?;
    let header_text = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let position: u64 = header_text(SEQ_HEADER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let log_id = header_text(LOG_ID_HEADER).unwrap_or_default();
    let dir = out.join(executor);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join(format!("shard-{shard}.snap"));
    let tmp = file.with_extension("snap.tmp");
    let mut writer = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?,
    );
    let mut hash = Sha256::new();
    let mut bytes: u64 = 0;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.with_context(|| format!("snapshot of {executor} shard {shard} broke off"))?;
        if let Some(data) = frame.data_ref() {
            hash.update(data);
            writer
                .write_all(data)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            bytes += data.len() as u64;
        }
    }
    writer
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", tmp.display(), e.error()))?
        .sync_all()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    let sha256: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    eprintln!(
        "{executor} shard {shard}: {bytes} bytes at position {position} in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(json!({
        "executor": executor,
        "shard": shard,
        "file": format!("{executor}/shard-{shard}.snap"),
        "position": position,
        "log_id": log_id,
        "bytes": bytes,
        "sha256": sha256,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stateful_executors_are_read_from_status() {
        let status = json!({"executors": [
            {"name": "encoder", "uses": "encoder", "shards": [[{}]]},
            {"name": "indexer", "uses": "indexer", "kind": "stateful", "shards": [[{}], [{}]]},
            {"name": "ranker", "uses": "ranker", "kind": "stateless", "shards": [[{}]]},
            {"name": "docs", "uses": "ranker", "shards": [[{}]]},
        ]});
        assert_eq!(
            stateful_executors(&status).unwrap(),
            [("indexer".to_owned(), 2), ("docs".to_owned(), 1)]
        );
        assert!(stateful_executors(&json!({})).is_err());
    }
}
