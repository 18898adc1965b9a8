//! The copies of a mirrored shard: a write goes to every copy with its log position, and reads
//! go only to copies known to hold every write acknowledged to a client.
//!
//! The shard keeps `committed`, the highest position acknowledged to a client, and each
//! [`Replica`] the highest position it is known to have applied (from the `x-flowmesh-log-seq`
//! of its answers and of its `/readyz`). A copy that failed a write, or had not answered it when
//! the write was acknowledged, is taken out of the balancer at once (as a dead replica is); the
//! health monitor probes it with `x-flowmesh-min-seq: committed` and puts it back once it
//! answers that it has caught up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use super::replica::Replica;
use super::retry::Failure;
use super::{Call, ReplicaSet};
use crate::api::Envelope;
use crate::client::{status_error, CallError, ExecutorClient};
use crate::codec::Format;
use crate::deadline::Deadline;
use crate::error::ApiError;
use crate::mirror::{MIN_SEQ_HEADER, SEQ_HEADER};

/// How long a mirrored write waits, after enough copies acknowledged it, for the others before
/// it is answered; copies that have not answered by then are kept from reads until they catch up.
pub const MIRROR_GRACE: Duration = Duration::from_millis(50);

/// What the gateway knows of a mirrored shard as a whole.
#[derive(Debug, Default)]
pub struct MirrorState {
    /// The highest log position acknowledged to a client.
    committed: AtomicU64,
}

impl MirrorState {
    /// The highest log position acknowledged to a client.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }
}

/// The position in `x-flowmesh-log-seq` of an answer, when it has one.
pub(super) fn position_of(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The answer of one copy to one write.
type CopyAnswer = Result<(Envelope, Option<u64>), (Failure, Option<u64>)>;

/// Sends a write at log position `seq` to one copy.
async fn write_copy(
    client: &ExecutorClient,
    replica: &Replica,
    call: &Call,
    seq: u64,
    timeout: Duration,
) -> CopyAnswer {
    replica.count_call();
    if call.deadline.is_expired() {
        return Err((Failure::DeadlinePassed, None));
    }
    let uri = replica
        .uri(&call.endpoint)
        .map_err(|e| (Failure::Call(e), None))?;
    let mut headers = HeaderMap::new();
    headers.insert(SEQ_HEADER, HeaderValue::from(seq));
    if let Ok(id) = HeaderValue::from_str(&call.request_id) {
        headers.insert("x-request-id", id);
    }
    send_to_copy(
        client,
        Method::POST,
        uri,
        headers,
        call.body.clone(),
        call,
        timeout,
    )
    .await
}

/// One call to one copy, outside the balancer, under `timeout` and the call's deadline.
async fn send_to_copy(
    client: &ExecutorClient,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
    call: &Call,
    timeout: Duration,
) -> CopyAnswer {
    let deadline = call.deadline;
    let timeout = deadline.cap(timeout);
    let sent = client.exchange(method, uri, headers, body, &call.trace, deadline);
    let (status, headers, bytes) = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err((Failure::Call(e), None)),
        Err(_) if deadline.is_expired() => return Err((Failure::DeadlinePassed, None)),
        Err(_) => return Err((Failure::TimedOut(timeout), None)),
    };
    let position = position_of(&headers);
    if status != StatusCode::OK {
        return Err((Failure::Call(status_error(status, &bytes)), position));
    }
    match Format::of_content_type(&headers).decode::<Envelope>(&bytes) {
        Ok(envelope) => Ok((envelope, position)),
        Err(e) => Err((Failure::Call(CallError::Decode(e.to_string())), position)),
    }
}

/// The answers of the copies to one write so far.
struct Tally {
    answered: Vec<bool>,
    count: usize,
    /// Copies that applied the write (acknowledged it, or refused it deterministically).
    applied: usize,
    envelope: Option<Envelope>,
    rejected: Option<(usize, Failure)>,
    failures: Vec<(usize, Failure)>,
}

impl Tally {
    fn take(&mut self, (i, answer): (usize, CopyAnswer)) {
        self.answered[i] = true;
        self.count += 1;
        match answer {
            Ok((env, _)) => {
                self.applied += 1;
                self.envelope.get_or_insert(env);
            }
            Err((failure, _)) if is_rejection(&failure) => {
                self.applied += 1;
                self.rejected.get_or_insert((i, failure));
            }
            Err((failure, _)) => self.failures.push((i, failure)),
        }
    }
}

/// Whether a failure is the copy's deterministic refusal of the write (a 4xx other than 429):
/// every copy refuses it the same way, and the copy still counts it as applied.
fn is_rejection(failure: &Failure) -> bool {
    matches!(failure, Failure::Call(CallError::Status { status, .. })
        if (400..500).contains(status) && *status != 429 && *status != 409)
}

impl ReplicaSet {
    /// Whether this shard's replicas are mirrored copies.
    pub fn is_mirrored(&self) -> bool {
        self.mirror.is_some()
    }

    /// For mirrored copies: what the gateway knows of the shard.
    pub fn mirror_state(&self) -> Option<&MirrorState> {
        self.mirror.as_deref()
    }

    /// Whether replica `i` takes reads: it is in the pool (alive and, for a mirrored copy,
    /// holding every acknowledged write).
    pub fn takes_reads(&self, i: usize) -> bool {
        self.replicas.get(i).is_some_and(|r| r.is_up())
    }

    /// Takes copy `replica` from reads when it is not known to hold position `seq`.
    fn mark_behind(replica: &Replica, seq: u64, down: &Notify) {
        if replica.position() < seq && replica.is_up() {
            tracing::warn!(copy = %replica.base(), position = replica.position(), seq, "copy is behind: kept from reads until it catches up");
            replica.set_up(false);
            down.notify_one();
        }
    }

    /// Sends the write `call`, at position `seq` of the shard's log, to every copy at once (no
    /// balancer, no retry on another copy), and answers once `required` copies applied it and
    /// every copy answered, or [`MIRROR_GRACE`] after that. Copies that failed or had not
    /// answered by then are kept from reads until their `/readyz` says they caught up; their
    /// calls go on in the background. A copy's 4xx (every copy refuses such a write the same
    /// way) is the answer; too few acknowledgements are a 503 that says how many there were.
    pub async fn write_mirrored(
        &self,
        call: Call,
        seq: u64,
        required: usize,
    ) -> Result<Envelope, ApiError> {
        let Some(mirror) = self.mirror.clone() else {
            return self.call(call).await;
        };
        let n = self.replicas.len();
        let required = required.clamp(1, n.max(1));
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, CopyAnswer)>();
        for (i, replica) in self.replicas.iter().enumerate() {
            let replica = replica.clone();
            let client = self.client.clone();
            let call = call.clone();
            let tx = tx.clone();
            let down = self.down.clone();
            let timeout = self.timeout;
            tokio::spawn(async move {
                let answer = write_copy(&client, &replica, &call, seq, timeout).await;
                match &answer {
                    Ok((_, position)) => replica.advance(position.unwrap_or(seq).max(seq)),
                    Err((failure, position)) if is_rejection(failure) => {
                        replica.advance(position.unwrap_or(seq).max(seq));
                    }
                    Err((failure, position)) => {
                        if let Some(p) = position {
                            replica.advance(*p);
                        }
                        if matches!(failure, Failure::Call(CallError::Transport(_))) {
                            tracing::warn!(copy = %replica.base(), "copy marked down");
                        }
                        Self::mark_behind(&replica, seq, &down);
                    }
                }
                // The write may have been answered already: nobody listens any more.
                let _ = tx.send((i, answer));
            });
        }
        drop(tx);
        let mut tally = Tally {
            answered: vec![false; n],
            count: 0,
            applied: 0,
            envelope: None,
            rejected: None,
            failures: Vec::new(),
        };
        // Until enough copies applied the write (or every copy answered)...
        while tally.count < n && tally.applied < required {
            let Some(answer) = rx.recv().await else { break };
            tally.take(answer);
        }
        // ...then a short grace for the others.
        if tally.count < n {
            let rest = async {
                while tally.count < n {
                    let Some(answer) = rx.recv().await else { break };
                    tally.take(answer);
                }
            };
            let _ = tokio::time::timeout(MIRROR_GRACE, rest).await;
        }
        let Tally {
            answered,
            applied,
            envelope,
            rejected,
            failures,
            ..
        } = tally;
        // Copies that had not answered: kept from reads until they catch up.
        for (i, replica) in self.replicas.iter().enumerate() {
            if !answered[i] {
                Self::mark_behind(replica, seq, &self.down);
            }
        }
        if applied >= required {
            mirror.committed.fetch_max(seq, Ordering::AcqRel);
        }
        if let Some((i, failure)) = rejected {
            return Err(self.copy_error(i, failure));
        }
        if applied >= required {
            if let Some(env) = envelope {
                return Ok(env);
            }
        }
        let why = failures
            .into_iter()
            .next()
            .map(|(i, f)| self.copy_error(i, f).to_string())
            .unwrap_or_else(|| "no answer in time".to_owned());
        Err(ApiError::Unavailable {
            executor: self.label(&[]),
            message: format!(
                "{applied} of {required} required copies acknowledged write {seq} of the shard's \
                 log ({why}); the log holds the write, so copies that come back apply it and it \
                 may still appear"
            ),
        })
    }

    /// The error of copy `i`.
    fn copy_error(&self, i: usize, failure: Failure) -> ApiError {
        let tried: super::replica::Tried = Arc::default();
        if let Some(r) = self.replicas.get(i) {
            tried
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(r.base().to_owned());
        }
        self.to_api_error(failure, &tried)
    }

    /// A read when no copy of a mirrored shard is known to hold every acknowledged write: the
    /// most advanced copies are tried, in order, rather than failing the read.
    pub(super) async fn read_most_advanced(&self, call: Call) -> Result<Envelope, ApiError> {
        let mut order: Vec<usize> = (0..self.replicas.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.replicas[i].position()));
        let mut last = None;
        for i in order.into_iter().take(self.retries as usize + 1) {
            let replica = &self.replicas[i];
            replica.count_call();
            let uri = match replica.uri(&call.endpoint) {
                Ok(uri) => uri,
                Err(e) => {
                    last = Some((i, Failure::Call(e)));
                    continue;
                }
            };
            let mut headers = HeaderMap::new();
            if let Ok(id) = HeaderValue::from_str(&call.request_id) {
                headers.insert("x-request-id", id);
            }
            let answer = send_to_copy(
                &self.client,
                Method::POST,
                uri,
                headers,
                call.body.clone(),
                &call,
                self.timeout,
            )
            .await;
            match answer {
                Ok((env, _)) => return Ok(env),
                Err((failure, _)) => {
                    let retry = failure.retry_kind(self.replicas.len()).0;
                    last = Some((i, failure));
                    if !retry {
                        break;
                    }
                }
            }
        }
        match last {
            Some((i, failure)) => Err(self.copy_error(i, failure)),
            None => Err(ApiError::Unavailable {
                executor: self.label(&[]),
                message: "no copy".into(),
            }),
        }
    }

    /// Each copy's `GET /stats` (`None` when it did not answer 200 JSON within `timeout`),
    /// asked of every copy at once.
    pub async fn copy_stats(&self, timeout: Duration) -> Vec<Option<Value>> {
        let asks = self.replicas.iter().map(|r| async move {
            let uri = r.uri("/stats").ok()?;
            let no_trace = opentelemetry::Context::new();
            let asked = self.client.exchange(
                Method::GET,
                uri,
                HeaderMap::new(),
                Bytes::new(),
                &no_trace,
                Deadline::NONE,
            );
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok((StatusCode::OK, _, body))) => serde_json::from_slice(&body).ok(),
                _ => None,
            }
        });
        futures::future::join_all(asks).await
    }
}

/// The `/readyz` probe of a mirrored copy: ready only once it holds every write up to
/// `committed` (the copy checks `x-flowmesh-min-seq`; its answer's `x-flowmesh-log-seq` is
/// checked again against the newest `committed`, which may have moved while the probe ran).
pub(super) async fn probe_copy(
    client: &ExecutorClient,
    replica: &Replica,
    mirror: &MirrorState,
    timeout: Duration,
) -> bool {
    let Ok(uri) = replica.uri("/readyz") else {
        return false;
    };
    let mut headers = HeaderMap::new();
    headers.insert(MIN_SEQ_HEADER, HeaderValue::from(mirror.committed()));
    let no_trace = opentelemetry::Context::new();
    let asked = client.exchange(
        Method::GET,
        uri,
        headers,
        Bytes::new(),
        &no_trace,
        Deadline::NONE,
    );
    let Ok(Ok((status, headers, _))) = tokio::time::timeout(timeout, asked).await else {
        return false;
    };
    let position = position_of(&headers);
    if let Some(p) = position {
        replica.set_position(p);
    }
    status == StatusCode::OK && position.is_none_or(|p| p >= mirror.committed())
}
