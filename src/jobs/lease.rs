//! A running job's lease as this instance sees it: renewed in the background, lost when the database says so,
//! and expiring by the local clock a margin before the database's expiry, so writes stop before any other
//! instance can take the job over.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// When this instance's hold on a job ends, by its own clock: a renewal asked at `t` holds until
/// `t + lease`, and writes stop a margin before, so they end before any other instance may take the job over.
pub(super) struct LeaseClock {
    lease: Duration,
    valid_until: Mutex<Instant>,
    lost: tokio::sync::Notify,
    is_lost: AtomicBool,
}

impl LeaseClock {
    pub(super) fn new(lease: Duration) -> LeaseClock {
        LeaseClock {
            lease,
            valid_until: Mutex::new(Instant::now() + lease - lease / 4),
            lost: tokio::sync::Notify::new(),
            is_lost: AtomicBool::new(false),
        }
    }

    pub(super) fn renewed(&self, asked: Instant) {
        *self.valid_until.lock().expect("never poisoned") = asked + self.lease - self.lease / 4;
    }

    pub(super) fn lose(&self) {
        self.is_lost.store(true, Ordering::SeqCst);
        self.lost.notify_waiters();
    }

    pub(super) fn is_valid(&self) -> bool {
        !self.is_lost.load(Ordering::SeqCst) && Instant::now() < *self.valid_until.lock().expect("never poisoned")
    }

    pub(super) async fn lost(&self) {
        let notified = self.lost.notified();
        if self.is_lost.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}
