//! What the indexer's integration tests share: the router built from flags, `/stats`, and the
//! real `flowmesh-indexer` process on `127.0.0.1:0`.

// Each test crate uses its own part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use flowmesh_shared::codec::Format;
use flowmesh_shared::testing::send;
use flowmesh_shared::Envelope;
use http::Uri;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The indexer's routes, configured by command-line `args`.
pub(crate) fn app(args: &[&str]) -> Router {
    let argv = std::iter::once("flowmesh-indexer").chain(args.iter().copied());
    let config = flowmesh_indexer::Config::try_parse_from(argv).expect("valid flags");
    flowmesh_indexer::app(&config).expect("valid configuration")
}

/// `GET /stats`, answered 200, without its `mirror` part (checked to be there: a shard that
/// is not mirrored follows no log and is at position 0).
pub(crate) async fn stats(app: &Router) -> Value {
    let request = Request::get("/stats").body(Body::empty()).expect("request");
    let (status, mut body) = send(app, request).await;
    assert_eq!(status, StatusCode::OK);
    let mirror = body
        .as_object_mut()
        .and_then(|o| o.remove("mirror"))
        .expect("a mirror part");
    assert_eq!(mirror["log"], Value::Null);
    assert_eq!(mirror["position"], 0);
    body
}

/// A running `flowmesh-indexer` on 127.0.0.1:0.
pub(crate) struct Process {
    pub(crate) child: Child,
    /// `http://127.0.0.1:{port}`.
    pub(crate) base: String,
}

impl Process {
    /// Starts `prefix... flowmesh-indexer --listen 127.0.0.1:0 args...` (`prefix` is e.g.
    /// `prlimit --as=N`), with no data directory from the environment, and waits for its
    /// `listening on` line.
    pub(crate) async fn start(prefix: &[&str], args: &[&str]) -> Self {
        let binary = env!("CARGO_BIN_EXE_flowmesh-indexer");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("FLOWMESH_WORKSPACE")
            .env_remove("FLOWMESH_INDEXER_DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the indexer prints its address within a minute")
            .unwrap()
            .expect("a `listening on` line");
        let base = line
            .split_once("listening on ")
            .map(|(_, url)| url.trim().to_owned())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, base }
    }

    /// The URI of `path` on this process.
    pub(crate) fn uri(&self, path: &str) -> Uri {
        format!("{}/{path}", self.base).parse().unwrap()
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Fails the test if the process has exited.
    pub(crate) fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the indexer process exited"
        );
    }

    /// `kill -9`: no shutdown hook runs.
    pub(crate) async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, and waits (30 s at most) for it to exit.
    pub(crate) async fn stop(mut self) {
        let pid = self.pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("stops on SIGTERM")
            .unwrap();
    }

    /// `POST /{endpoint}` with `body` in `format`, and `headers`; the status and the body.
    pub(crate) async fn post(
        &self,
        endpoint: &str,
        format: Format,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> (u16, Bytes) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut request = http::Request::post(format!("{}/{endpoint}", self.base))
            .header("content-type", format.mime())
            .header("accept", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = client
            .request(request.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    pub(crate) async fn post_envelope(&self, endpoint: &str, envelope: &Envelope) -> (u16, Value) {
        let body = Format::MsgPack.encode(envelope).unwrap();
        let (status, body) = self.post(endpoint, Format::MsgPack, body, &[]).await;
        (status, serde_json::from_slice(&body).unwrap())
    }
}
