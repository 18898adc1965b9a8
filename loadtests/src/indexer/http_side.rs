//! The service side of `flowmesh-bench indexer`: starts `flowmesh-indexer` with a backend's
//! flags on a temporary data directory, loads it over HTTP as the gateway would (MessagePack
//! envelopes through [`ExecutorClient`]), waits for its build, and measures its searches.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use flowmesh_shared::client::ExecutorClient;
use flowmesh_shared::codec::Format;
use flowmesh_shared::{Document, Envelope};
use serde_json::Value;

use super::measure::{self, row_id, Calls, Slice, Workload};
use super::spec::BackendSpec;
use super::{DataSet, IndexerArgs};
use crate::launch::Launched;

/// The service of one backend, loaded and built.
pub(super) struct Service {
    launched: Launched,
    client: ExecutorClient,
    http: crate::load::HttpClient,
    search_url: http::Uri,
    /// How long indexing and building took.
    pub(super) loading: Loading,
}

/// How long the service took to take the data set in (reported as `http_index_s` and
/// `http_load_s`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(super) struct Loading {
    /// Seconds to index every vector over HTTP (each request logged and fsynced).
    #[serde(rename = "http_index_s")]
    pub(super) index_s: f64,
    /// Seconds from the first index request until the build had taken every vector in.
    #[serde(rename = "http_load_s")]
    pub(super) load_s: f64,
}

impl Service {
    /// Starts `flowmesh-indexer` with `spec`'s flags on a fresh data directory, indexes the
    /// data set over HTTP and waits for its build.
    pub(super) async fn start(
        args: &IndexerArgs,
        spec: &BackendSpec,
        set: &DataSet,
    ) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "flowmesh-bench-indexer-{}-{}",
            std::process::id(),
            set.workload.dim
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut flags = args.flags(spec);
        flags.push("--data-dir".into());
        flags.push(dir.display().to_string());
        let launched = Launched::service_in("flowmesh-indexer", &flags, dir.clone()).await?;
        let client = ExecutorClient::new();
        let base = launched.base.clone();
        let started = Instant::now();
        let loaded = async {
            index(
                &client,
                &base,
                &set.data,
                set.workload.dim,
                args.index_batch,
            )
            .await?;
            let index_s = started.elapsed().as_secs_f64();
            wait_for_build(&base, args.shape.n, Duration::from_secs(args.build_timeout)).await?;
            anyhow::Ok(index_s)
        };
        let index_s = match loaded.await {
            Ok(s) => s,
            Err(e) => {
                launched.stop().await;
                return Err(e);
            }
        };
        let load_s = started.elapsed().as_secs_f64();
        wait_for_snapshots(&dir).await;
        eprintln!("  {spec} over HTTP: indexed in {index_s:.1}s, built by {load_s:.1}s");
        Ok(Self {
            search_url: format!("{base}/search").parse()?,
            launched,
            client,
            http: crate::load::http_client(),
            loading: Loading { index_s, load_s },
        })
    }

    /// One slice of the HTTP measurement (`bodies` from [`measure::search_bodies`]).
    pub(super) async fn slice(
        &self,
        w: &Arc<Workload>,
        bodies: &Arc<Vec<Bytes>>,
        calls: Calls,
    ) -> Slice {
        let before = self.search_seconds().await;
        let mut slice = measure::over_http(&self.client, &self.search_url, w, bodies, calls).await;
        if let (Ok((s0, n0)), Ok((s1, n1))) = (before, self.search_seconds().await) {
            slice.server = Some((s1 - s0, n1 - n0));
        }
        slice
    }

    /// What encoding and decoding cost per call, timed here on the real bodies (outside the
    /// measurements): the service decodes the request and encodes its answer, the client decodes
    /// the answer. In ms, the mean of up to 50 rounds (at most 2 s).
    pub(super) async fn codec_ms(&self, request: &Bytes) -> anyhow::Result<(f64, f64)> {
        let answer = self
            .client
            .post(self.search_url.clone(), request.clone(), "bench-codec")
            .await?;
        tokio::task::block_in_place(|| {
            let answer_bytes = Format::MsgPack.encode(&answer)?;
            let (mut service, mut client, mut rounds) = (0.0, 0.0, 0u32);
            let deadline = Instant::now() + Duration::from_secs(2);
            while rounds < 50 && Instant::now() < deadline {
                let t0 = Instant::now();
                let decoded: Envelope = Format::MsgPack.decode(request)?;
                let encoded = Format::MsgPack.encode(&answer)?;
                let t1 = Instant::now();
                let back: Envelope = Format::MsgPack.decode(&answer_bytes)?;
                let t2 = Instant::now();
                anyhow::ensure!(
                    decoded.data.len() == back.data.len() && encoded.len() == answer_bytes.len(),
                    "the codec round trip changed the envelopes"
                );
                service += (t1 - t0).as_secs_f64();
                client += (t2 - t1).as_secs_f64();
                rounds += 1;
            }
            let rounds = f64::from(rounds.max(1));
            Ok((service / rounds * 1e3, client / rounds * 1e3))
        })
    }

    /// The total seconds and count of the service's `POST /search` requests so far, from the
    /// `flowmesh_http_request_duration_seconds` histogram at `/metrics`.
    async fn search_seconds(&self) -> anyhow::Result<(f64, f64)> {
        let text = get(&self.http, &format!("{}/metrics", self.launched.base)).await?;
        let total = |suffix: &str| -> f64 {
            let name = format!("flowmesh_http_request_duration_seconds_{suffix}{{");
            text.lines()
                .filter(|l| l.starts_with(&name) && l.contains("path=\"/{endpoint}\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        // Every executor endpoint shares the route `/{endpoint}`; only searches run meanwhile.
        Ok((total("sum"), total("count")))
    }

    pub(super) async fn stop(self) {
        self.launched.stop().await;
    }
}

/// Posts every row of `data` to `/index`, `batch` vectors a request, one request at a time
/// (writes take the shard's writer lock in turn anyway).
async fn index(
    client: &ExecutorClient,
    base: &str,
    data: &[f32],
    dim: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let url: http::Uri = format!("{base}/index").parse()?;
    let n = data.len() / dim;
    for first in (0..n).step_by(batch) {
        let last = (first + batch).min(n);
        let docs = (first..last)
            .map(|row| Document {
                id: row_id(row),
                embedding: Some(data[row * dim..(row + 1) * dim].to_vec()),
                ..Document::default()
            })
            .collect();
        let body = Format::MsgPack.encode(&Envelope::new(docs))?;
        let answer = client
            .post(url.clone(), body, "bench-index")
            .await
            .with_context(|| format!("indexing rows {first}..{last}"))?;
        if answer.data.len() != last - first {
            bail!(
                "index answered {} documents for {}",
                answer.data.len(),
                last - first
            );
        }
    }
    Ok(())
}

/// `GET {base}/stats` as JSON.
async fn stats(client: &crate::load::HttpClient, base: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(
        &get(client, &format!("{base}/stats")).await?,
    )?)
}

/// `GET url`'s body, when the answer is 200.
async fn get(client: &crate::load::HttpClient, url: &str) -> anyhow::Result<String> {
    let answer = crate::load::get(client, url).await?;
    if !(200..300).contains(&answer.status) {
        bail!(
            "GET {url}: {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(String::from_utf8_lossy(&answer.body).into_owned())
}

/// Waits until the service holds `n` vectors and, for approximate backends, no build runs and
/// every vector is in the built structure (`building == false`, `fresh == 0`).
async fn wait_for_build(base: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let client = crate::load::http_client();
    let deadline = Instant::now() + timeout;
    loop {
        let s = stats(&client, base).await?;
        let count = s["count"].as_u64().unwrap_or(0);
        let build = &s["build"];
        let built = build.is_null()
            || (build["building"] == Value::Bool(false) && build["fresh"].as_u64() == Some(0));
        if count == n as u64 && built {
            return Ok(());
        }
        if let Some(e) = build["last_error"].as_str() {
            bail!("the build failed: {e}");
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("no complete build within {timeout:?}: {s}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most a minute) until no snapshot is being written in the data directory, so that
/// the measurements do not share the disk and a core with one. A snapshot is written to a
/// `.tmp` file and renamed; two looks a second apart without one mean none is running.
async fn wait_for_snapshots(dir: &Path) {
    let writing = || {
        std::fs::read_dir(dir).is_ok_and(|items| {
            items
                .flatten()
                .any(|i| i.file_name().to_string_lossy().ends_with(".tmp"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet = 0;
    while quiet < 2 && Instant::now() < deadline {
        quiet = if writing() { 0 } else { quiet + 1 };
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
