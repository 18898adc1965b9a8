//! When work running off the async threads stops: once its request's deadline has passed, or
//! once its caller has gone (the route dropped the call's future, at the deadline or because the
//! client disconnected). A blocking scan cannot be dropped; it asks [`Stop::check`] between
//! units of work instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use flowmesh_shared::{ApiError, Deadline};

/// The stop condition of one call, checked by the blocking work.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    deadline: Deadline,
    abandoned: Arc<AtomicBool>,
}

/// Marks its [`Stop`] abandoned when dropped: held by the call's future, so that dropping the
/// future (deadline, client gone) tells the blocking work to stop.
#[derive(Debug)]
pub(crate) struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Stop {
    /// The stop condition for a call with `deadline`, and the guard the call's future holds.
    pub(crate) fn new(deadline: Deadline) -> (Self, AbandonOnDrop) {
        let abandoned = Arc::new(AtomicBool::new(false));
        let guard = AbandonOnDrop(Arc::clone(&abandoned));
        (
            Self {
                deadline,
                abandoned,
            },
            guard,
        )
    }

    /// A condition that never stops the work (direct calls, tests).
    #[cfg(test)]
    pub(crate) fn never() -> Self {
        Self {
            deadline: Deadline::NONE,
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `Err` (504 `deadline_exceeded`, naming `what`) once the work should stop.
    pub(crate) fn check(&self, what: &str) -> Result<(), ApiError> {
        if self.abandoned.load(Ordering::Acquire) {
            return Err(ApiError::DeadlineExceeded(format!(
                "{what}: the caller went away"
            )));
        }
        if self.deadline.is_expired() {
            return Err(self.deadline.exceeded(what));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dropping_the_guard_stops_the_work() {
        let (stop, guard) = Stop::new(Deadline::NONE);
        assert!(stop.check("search").is_ok());
        drop(guard);
        let err = stop.check("search").unwrap_err();
        assert_eq!(err.status(), 504);
    }

    #[test]
    fn a_passed_deadline_stops_the_work() {
        let (stop, _guard) = Stop::new(Deadline::after(Duration::ZERO));
        assert_eq!(stop.check("search").unwrap_err().status(), 504);
        assert!(Stop::never().check("search").is_ok());
    }
}
