//! A latency histogram with fixed buckets that many threads record into without a lock, read as
//! Prometheus's cumulative `_bucket`, `_sum` and `_count` series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds (the last bucket, +Inf, is implicit): from
/// 100 µs to 10 s, roughly three per decade, like Prometheus's default latency buckets.
pub const BUCKET_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Counts of durations per bucket, their sum and their number.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKET_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// What a histogram held when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// For each bound of [`BUCKET_BOUNDS_US`] and then +Inf: the durations at or below it
    /// (cumulative, as Prometheus wants them).
    pub cumulative: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram (usable in a `static`).
    #[must_use]
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKET_BOUNDS_US.len() + 1],
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_US.partition_point(|bound| *bound < us);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now (concurrent records may land in some series and not yet in others).
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|bucket| {
                total += bucket.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let histogram = LatencyHistogram::default();
        histogram.record(Duration::from_micros(100));
        histogram.record(Duration::from_micros(101));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.sum_us, 100 + 101 + 3_000 + 60_000_000);
        assert_eq!(
            snapshot.cumulative[0], 1,
            "100 µs is within the 100 µs bound"
        );
        assert_eq!(snapshot.cumulative[1], 2);
        assert_eq!(snapshot.cumulative[4], 2, "3 ms is above 2.5 ms");
        assert_eq!(snapshot.cumulative[5], 3);
        assert_eq!(snapshot.cumulative[BUCKET_BOUNDS_US.len() - 1], 3);
        assert_eq!(
            snapshot.cumulative[BUCKET_BOUNDS_US.len()],
            4,
            "+Inf counts all"
        );
    }
}
