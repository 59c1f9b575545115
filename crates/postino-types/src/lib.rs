//! Shared vocabulary of postino: the types every layer names.
//!
//! Main types: [`Offset`], the position of a record in a log; [`Clock`], the one way any layer
//! below the binary learns the time (so tests and simulations control it); [`Message`], the
//! protocol-neutral message with its [`Properties`] and broker [`Annotations`];
//! [`LatencyHistogram`], the lock-free latency histogram the metrics read.
//!
//! This crate does no I/O, spawns nothing and knows no protocol.

mod histogram;
mod message;

pub use histogram::{BUCKET_BOUNDS_US, HistogramSnapshot, LatencyHistogram};

pub use message::{
    Annotations, Death, DeathReason, DeliveryMode, HeaderValue, Headers, Message, Properties,
};

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The position of a record in a log: the first record ever appended has offset 0 and every
/// later record the next integer. Offsets are never reused except after an explicit truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset `count` records after this one.
    #[must_use]
    pub fn plus(self, count: u64) -> Offset {
        Offset(self.0 + count)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Offset {
    fn from(value: u64) -> Self {
        Offset(value)
    }
}

/// Wall-clock time in milliseconds since the Unix epoch, injected wherever time decides
/// behaviour (segment age, retention, leases) so that tests and simulations can move it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> i64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
            })
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use postino_types::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance_ms(500);
/// assert_eq!(clock.now_ms(), 1_500);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock that reads `now_ms` until advanced.
    #[must_use]
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(now_ms)),
        }
    }

    /// Moves the clock forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: i64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now_ms`.
    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_plus_counts_records() {
        assert_eq!(Offset(5).plus(3), Offset(8));
        assert_eq!(Offset(7).to_string(), "7");
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(10);
        let other = clock.clone();
        clock.set_ms(42);
        assert_eq!(other.now_ms(), 42);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
