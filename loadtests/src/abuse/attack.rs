//! The abusive clients of `flowmesh-bench abuse`: oversized and invalid requests sent in a
//! closed loop, slowloris connections and idle connections, each bounded in count and time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::tally::{Outcome, Tally};
use crate::load::HttpClient;

/// One kind of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Kind {
    /// `/search` with `top_k` 10^12 (an integer).
    #[value(name = "top-k-1e12")]
    TopK1e12,
    /// `/search` with `top_k` 1e9 (a float).
    #[value(name = "top-k-1e9")]
    TopK1e9,
    /// `/search` with one 5 MB text (`"The quick brown fox jumps over the lazy dog. " * 111111`).
    HugeText,
    /// `/search` with a body that is not JSON.
    MalformedJson,
    /// `/search` with one document more than `--max-documents`.
    TooManyDocuments,
    /// An executor's `/search` with a MessagePack body whose `embedding` array header claims
    /// 2^32-1 floats that never follow.
    MsgpackLengthHeader,
    /// Connections that send a request's headers one byte a second.
    Slowloris,
    /// Connections that send nothing.
    Idle,
}

impl Kind {
    /// The name in reports, as on the command line.
    pub(crate) fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}

/// One abusive request, ready to send again and again.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) kind: Kind,
    pub(crate) url: String,
    pub(crate) content_type: &'static str,
    pub(crate) body: Bytes,
    /// Most sent per abused round (the heavy kinds are sent rarely, so that one round cannot
    /// pile them up), `usize::MAX` for no bound other than the round's.
    pub(crate) per_round: usize,
}

/// What the requests need to know about the mesh and the limits under test.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    pub(crate) gateway: &'a str,
    /// Executor addresses from the gateway's `/status`, sent the MessagePack bodies in turn.
    pub(crate) executors: &'a [String],
    pub(crate) max_documents: usize,
    pub(crate) huge_texts_per_round: usize,
}

/// `{"embedding": <array32 header of 2^32-1>}` in a one-document envelope, no floats after it.
pub(crate) fn msgpack_lying_header() -> Bytes {
    let mut body = vec![0x81, 0xa4];
    body.extend_from_slice(b"data");
    body.extend_from_slice(&[0x91, 0x81, 0xa9]);
    body.extend_from_slice(b"embedding");
    body.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    Bytes::from(body)
}

/// The issue's 5 MB text: about 111,000 sentences.
pub(crate) fn huge_text() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(111_111)
}

fn search(text: &str, top_k: &serde_json::Value) -> Bytes {
    Bytes::from(json!({"data": [{"text": text}], "parameters": {"top_k": top_k}}).to_string())
}

/// The requests of the HTTP kinds in `kinds`.
pub(crate) fn requests(kinds: &[Kind], target: &Target<'_>) -> Vec<Request> {
    let gateway_search = format!("{}/search", target.gateway);
    let json_request = |kind, body, per_round| Request {
        kind,
        url: gateway_search.clone(),
        content_type: "application/json",
        body,
        per_round,
    };
    let mut out = Vec::new();
    for &kind in kinds {
        match kind {
            Kind::TopK1e12 => out.push(json_request(
                kind,
                search("a horse", &json!(1_000_000_000_000_u64)),
                usize::MAX,
            )),
            Kind::TopK1e9 => out.push(json_request(
                kind,
                search("a horse", &json!(1e9)),
                usize::MAX,
            )),
            Kind::HugeText => out.push(json_request(
                kind,
                search(&huge_text(), &json!(10)),
                target.huge_texts_per_round,
            )),
            Kind::MalformedJson => out.push(json_request(
                kind,
                Bytes::from_static(b"{\"data\": [{\"text\": \"a horse\"}"),
                usize::MAX,
            )),
            Kind::TooManyDocuments => {
                let data: Vec<_> = (0..=target.max_documents)
                    .map(|i| json!({"text": format!("w{i}")}))
                    .collect();
                out.push(json_request(
                    kind,
                    Bytes::from(json!({"data": data}).to_string()),
                    usize::MAX,
                ));
            }
            Kind::MsgpackLengthHeader => {
                for address in target.executors {
                    out.push(Request {
                        kind,
                        url: format!("{}/search", address.trim_end_matches('/')),
                        content_type: "application/msgpack",
                        body: msgpack_lying_header(),
                        per_round: usize::MAX,
                    });
                }
            }
            Kind::Slowloris | Kind::Idle => {}
        }
    }
    out
}

/// Sends `request` once and waits at most `timeout` for the whole answer.
async fn send(client: &HttpClient, request: &Request, timeout: Duration) -> Outcome {
    let exchange = async {
        let req = http::Request::post(&request.url)
            .header("content-type", request.content_type)
            .body(Full::new(request.body.clone()))
            .ok()?;
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        // The body is read to its end, so that a status sent before a stalled body counts as
        // the hang it is.
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Some(status)) => Outcome::Status(status),
        Ok(None) => Outcome::ConnectionError,
        Err(_) => Outcome::Timeout,
    }
}

/// `clients` closed-loop clients sending `requests` in turn until `until`; a request in flight
/// then is waited for, at most `timeout`. At most `max_requests` in all.
pub(crate) async fn requests_loop(
    client: &HttpClient,
    requests: Arc<Vec<Request>>,
    clients: usize,
    max_requests: usize,
    until: Instant,
    timeout: Duration,
) -> Tally {
    if requests.is_empty() {
        return Tally::default();
    }
    let next = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Vec<AtomicUsize>> =
        Arc::new(requests.iter().map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (client, requests, next, sent) =
            (client.clone(), requests.clone(), next.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // Each turn takes the next request whose per-round bound is not reached; a turn
            // that finds none left ends this client.
            'clients: while Instant::now() < until {
                let mut tries = 0;
                let request = loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max_requests || tries == requests.len() {
                        break 'clients;
                    }
                    tries += 1;
                    let j = i % requests.len();
                    if sent[j].fetch_add(1, Ordering::Relaxed) < requests[j].per_round {
                        break &requests[j];
                    }
                };
                let started = Instant::now();
                let outcome = send(&client, request, timeout).await;
                tally.count_timed(&request.kind.name(), &outcome, started.elapsed());
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for t in tasks {
        if let Ok(tally) = t.await {
            total.merge(&tally);
        }
    }
    total
}

/// The head of a request sent a byte a second by slowloris connections; longer than any round.
const SLOW_HEAD: &[u8] = b"POST /search HTTP/1.1\r\nHost: flowmesh\r\nContent-Type: application/json\r\nX-Slowloris: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// One slowloris (`trickle`) or idle connection to `addr` held until `until`: whether the
/// server closed it first.
async fn hold(addr: &str, trickle: bool, until: Instant) -> Outcome {
    let connect = tokio::time::timeout_at(until, TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connect else {
        return Outcome::ConnectionError;
    };
    let mut sent = 0;
    let mut buf = [0_u8; 256];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return Outcome::OpenAtRoundEnd,
            // Anything read (a 408, say) or the end of the stream means the server gave up on us.
            read = stream.read(&mut buf) => {
                return match read {
                    Ok(_) | Err(_) => Outcome::ClosedByServer,
                };
            }
            _ = tick.tick(), if trickle => {
                let byte = SLOW_HEAD.get(sent % SLOW_HEAD.len()).copied().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    return Outcome::ClosedByServer;
                }
                sent += 1;
            }
        }
    }
}

/// `slowloris` slowloris and `idle` idle connections to `gateway` (`http://host:port`), all held
/// until `until`.
pub(crate) async fn connections(
    gateway: &str,
    slowloris: usize,
    idle: usize,
    until: Instant,
) -> Tally {
    let addr = gateway
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut tasks = Vec::with_capacity(slowloris + idle);
    for i in 0..slowloris + idle {
        let (addr, trickle) = (addr.clone(), i < slowloris);
        tasks.push(tokio::spawn(async move {
            let kind = if trickle { Kind::Slowloris } else { Kind::Idle };
            let started = Instant::now();
            let outcome = hold(&addr, trickle, until).await;
            (kind, outcome, started.elapsed())
        }));
    }
    let mut tally = Tally::default();
    for t in tasks {
        if let Ok((kind, outcome, held)) = t.await {
            tally.count_timed(&kind.name(), &outcome, held);
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bodies_are_the_issues() {
        let text = huge_text();
        assert_eq!(text.len(), 45 * 111_111, "about 5 MB");
        let mp = msgpack_lying_header();
        assert_eq!(mp.len(), 23);
        assert_eq!(&mp[mp.len() - 5..], &[0xdd, 0xff, 0xff, 0xff, 0xff]);
        let executors = [
            "http://127.0.0.1:1".to_owned(),
            "http://127.0.0.1:2/".to_owned(),
        ];
        let target = Target {
            gateway: "http://gw",
            executors: &executors,
            max_documents: 3,
            huge_texts_per_round: 1,
        };
        let all = requests(Kind::value_variants(), &target);
        // One request per HTTP kind, and one MessagePack request per executor.
        assert_eq!(all.len(), 5 + executors.len());
        let many = all
            .iter()
            .find(|r| r.kind == Kind::TooManyDocuments)
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                v["data"].as_array().map_or(0, Vec::len)
            });
        assert_eq!(many, Some(4), "one over --max-documents");
        let mp_urls: Vec<&str> = all
            .iter()
            .filter(|r| r.kind == Kind::MsgpackLengthHeader)
            .map(|r| r.url.as_str())
            .collect();
        assert_eq!(
            mp_urls,
            ["http://127.0.0.1:1/search", "http://127.0.0.1:2/search"]
        );
        assert!(all
            .iter()
            .all(|r| !matches!(r.kind, Kind::Slowloris | Kind::Idle)));
        assert_eq!(Kind::TopK1e12.name(), "top-k-1e12");
        assert_eq!(Kind::MsgpackLengthHeader.name(), "msgpack-length-header");
    }
}
