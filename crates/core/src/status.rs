//! What a sink's worker is doing right now, for the health endpoints: the
//! error it is blocked on (if any) and when it last made progress.
//!
//! The worker writes it; readers (HTTP) only look. A sink counts as blocked
//! from its first failed attempt until an apply succeeds again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A cheap, cloneable view of one worker's state.
#[derive(Debug, Clone)]
pub struct SinkStatus {
    inner: Arc<StatusInner>,
}

#[derive(Debug)]
struct StatusInner {
    /// The error of the last failed attempt while no apply succeeded since.
    blocked_on: Mutex<Option<String>>,
    /// Unix milliseconds of the last successful apply (or of the worker's start).
    last_progress_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Default for SinkStatus {
    fn default() -> Self {
        SinkStatus {
            inner: Arc::new(StatusInner { blocked_on: Mutex::new(None), last_progress_ms: AtomicU64::new(now_ms()) }),
        }
    }
}

impl SinkStatus {
    /// Records a failed attempt; the sink is blocked until [`progressed`](Self::progressed).
    pub fn blocked(&self, error: String) {
        *self.inner.blocked_on.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
    }

    /// Records a successful apply.
    pub fn progressed(&self) {
        *self.inner.blocked_on.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.inner.last_progress_ms.store(now_ms(), Ordering::Release);
    }

    /// The error the sink is blocked on, if it is.
    pub fn blocked_on(&self) -> Option<String> {
        self.inner.blocked_on.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Time since the last successful apply (or since the worker started).
    pub fn since_progress(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.inner.last_progress_ms.load(Ordering::Acquire)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_until_progress() {
        let status = SinkStatus::default();
        assert_eq!(status.blocked_on(), None);
        status.clone().blocked("cannot reach redis".into());
        assert_eq!(status.blocked_on().as_deref(), Some("cannot reach redis"));
        status.progressed();
        assert_eq!(status.blocked_on(), None);
        assert!(status.since_progress() < Duration::from_secs(5));
    }
}
