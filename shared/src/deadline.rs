//! A request's deadline, set once at the gateway and carried to every executor call.
//!
//! On the wire it is the header `x-flowmesh-deadline-ms`: the milliseconds the caller still has
//! when it sends the call. A budget rather than a point in time, so that the hosts' clocks need
//! not agree; the time a call spends on the network is taken from the callee's share. An
//! executor stops work whose deadline has passed ([`Deadline::run`], and the services' own checks
//! between units of work) and answers 504 `deadline_exceeded`.

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::error::ApiError;

/// The header that carries a call's remaining budget, in whole milliseconds.
pub const DEADLINE_HEADER: &str = "x-flowmesh-deadline-ms";

/// The largest budget [`DEADLINE_HEADER`] may carry (the largest signed 64-bit integer, as the
/// OpenAPI documents say; about 292 million years).
pub const MAX_DEADLINE_MS: i64 = i64::MAX;

/// When a request must be answered by; [`Deadline::NONE`] when no caller set one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: the work runs until done (calls made directly, without the header).
    pub const NONE: Self = Self(None);

    /// A deadline `budget` from now; no deadline when `budget` is beyond what the clock can
    /// represent (it would never pass).
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now().checked_add(budget))
    }

    /// The point in time, when there is one.
    pub fn instant(&self) -> Option<Instant> {
        self.0
    }

    /// Time left: `None` without a deadline, zero once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        self.remaining().is_some_and(|d| d.is_zero())
    }

    /// `timeout`, shortened to the time left when that is less.
    pub fn cap(&self, timeout: Duration) -> Duration {
        self.remaining().map_or(timeout, |left| left.min(timeout))
    }

    /// The earlier of the two deadlines.
    pub fn min(self, other: Self) -> Self {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Self(Some(a.min(b))),
            (a, b) => Self(a.or(b)),
        }
    }

    /// Reads [`DEADLINE_HEADER`]; absent is [`Deadline::NONE`], a malformed value is a 400.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(DEADLINE_HEADER) else {
            return Ok(Self::NONE);
        };
        let ms = value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|ms| *ms >= 1)
            .ok_or_else(|| ApiError::InvalidParameter {
                name: DEADLINE_HEADER.into(),
                message: format!(
                    "must be a whole number of milliseconds from 1 to {MAX_DEADLINE_MS}"
                ),
            })?;
        Ok(Self::after(Duration::from_millis(ms.unsigned_abs())))
    }

    /// The header value for a call sent now: the milliseconds left, rounded up, so that it is
    /// at least 1 (a deadline that has passed is answered by the caller itself, not sent on);
    /// `None` without a deadline.
    pub fn header_value(&self) -> Option<HeaderValue> {
        let left = self.remaining()?;
        let ms = left.as_nanos().div_ceil(1_000_000).max(1);
        Some(HeaderValue::from(
            i64::try_from(ms).unwrap_or(MAX_DEADLINE_MS),
        ))
    }

    /// Adds [`DEADLINE_HEADER`] to `headers` when there is a deadline.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        if let Some(v) = self.header_value() {
            headers.insert(DEADLINE_HEADER, v);
        }
    }

    /// The error for work cut off by this deadline.
    pub fn exceeded(&self, what: &str) -> ApiError {
        ApiError::DeadlineExceeded(format!("{what}: the request's deadline passed"))
    }

    /// Runs `work` until it finishes or the deadline passes; then `work` is dropped (cancelled)
    /// and the answer is [`ApiError::DeadlineExceeded`].
    pub async fn run<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match self.0 {
            None => work.await,
            Some(at) => match tokio::time::timeout_at(at, work).await {
                Ok(out) => out,
                Err(_) => Err(self.exceeded(what)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_header_carries_the_budget_left() {
        let d = Deadline::after(Duration::from_millis(1500));
        tokio::time::advance(Duration::from_millis(500)).await;
        let mut h = HeaderMap::new();
        d.insert_into(&mut h);
        assert_eq!(h[DEADLINE_HEADER], "1000");
        let back = Deadline::from_headers(&h).unwrap();
        assert_eq!(back.remaining(), Some(Duration::from_millis(1000)));
        assert!(!back.is_expired());
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(back.is_expired());
    }

    #[test]
    fn no_header_is_no_deadline_and_garbage_is_a_400() {
        assert_eq!(
            Deadline::from_headers(&HeaderMap::new()).unwrap(),
            Deadline::NONE
        );
        assert_eq!(Deadline::NONE.header_value(), None);
        for bad in ["soon", "0", "-5", "9223372036854775808", "1.5"] {
            let mut h = HeaderMap::new();
            h.insert(DEADLINE_HEADER, HeaderValue::from_static(bad));
            let err = Deadline::from_headers(&h).unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
        }
        // The largest value is accepted, and does not overflow the clock.
        let mut h = HeaderMap::new();
        h.insert(DEADLINE_HEADER, HeaderValue::from(i64::MAX));
        assert!(!Deadline::from_headers(&h).unwrap().is_expired());
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_under_a_millisecond_is_sent_as_one() {
        let d = Deadline::after(Duration::from_micros(300));
        assert_eq!(d.header_value().unwrap(), "1");
    }

    #[tokio::test(start_paused = true)]
    async fn run_cancels_work_past_the_deadline() {
        let d = Deadline::after(Duration::from_millis(100));
        let err = d
            .run("encoding", async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, ApiError>(())
            })
            .await
            .unwrap_err();
        assert_eq!(err.status(), 504);
        assert_eq!(err.kind(), "deadline_exceeded");
        assert_eq!(
            Deadline::NONE
                .run("x", async { Ok::<_, ApiError>(7) })
                .await
                .unwrap(),
            7
        );
    }

    #[test]
    fn cap_and_min_take_the_earlier() {
        let near = Deadline::after(Duration::from_secs(1));
        let far = Deadline::after(Duration::from_secs(100));
        assert_eq!(near.min(far), near);
        assert_eq!(Deadline::NONE.min(far), far);
        assert!(near.cap(Duration::from_secs(30)) <= Duration::from_secs(1));
        assert_eq!(
            Deadline::NONE.cap(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}
