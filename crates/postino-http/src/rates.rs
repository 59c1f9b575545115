//! Message rates of queues, from the counters of two reads of the same queue at least a
//! second apart (a first read shows 0.0): what RabbitMQ's `*_details.rate` fields show,
//! without a sampler running for queues nobody looks at.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use postino_core::QueueStats;

/// Reads closer together than this keep the previous rates.
const INTERVAL_MIN: Duration = Duration::from_secs(1);

/// Per second: published, delivered, acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueRates {
    pub publish: f64,
    pub deliver: f64,
    pub ack: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    stats: QueueStats,
    rates: QueueRates,
}

/// The last sample of each queue read.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<HashMap<(String, String), Sample>>,
}

fn per_second(now: u64, before: u64, seconds: f64) -> f64 {
    now.saturating_sub(before) as f64 / seconds
}

impl Rates {
    /// The rates of `vhost`/`queue` given its counters read now.
    pub fn observe(&self, vhost: &str, queue: &str, stats: QueueStats) -> QueueRates {
        self.observe_at(vhost, queue, stats, Instant::now())
    }

    fn observe_at(&self, vhost: &str, queue: &str, stats: QueueStats, at: Instant) -> QueueRates {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (vhost.to_owned(), queue.to_owned());
        let rates = match samples.get(&key) {
            Some(previous) if at.duration_since(previous.at) < INTERVAL_MIN => {
                return previous.rates;
            }
            // Counters restart with the queue's owner: a drop means a new queue.
            Some(previous) if stats.published >= previous.stats.published => {
                let seconds = at.duration_since(previous.at).as_secs_f64();
                QueueRates {
                    publish: per_second(stats.published, previous.stats.published, seconds),
                    deliver: per_second(stats.delivered, previous.stats.delivered, seconds),
                    ack: per_second(stats.acknowledged, previous.stats.acknowledged, seconds),
                }
            }
            _ => QueueRates::default(),
        };
        samples.insert(key, Sample { at, stats, rates });
        rates
    }

    /// Forgets a deleted queue.
    pub fn forget(&self, vhost: &str, queue: &str) {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(vhost.to_owned(), queue.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_reads_a_second_apart() {
        let rates = Rates::default();
        let start = Instant::now();
        let stats = |published, delivered, acknowledged| QueueStats {
            published,
            delivered,
            acknowledged,
            ..QueueStats::default()
        };
        assert_eq!(
            rates.observe_at("/", "q", stats(10, 0, 0), start),
            QueueRates::default()
        );
        let later = start + Duration::from_secs(2);
        let seen = rates.observe_at("/", "q", stats(30, 10, 4), later);
        assert_eq!(
            seen,
            QueueRates {
                publish: 10.0,
                deliver: 5.0,
                ack: 2.0
            }
        );
        let soon = later + Duration::from_millis(100);
        assert_eq!(rates.observe_at("/", "q", stats(1000, 10, 4), soon), seen);
        rates.forget("/", "q");
        assert_eq!(
            rates.observe_at("/", "q", stats(1000, 10, 4), soon),
            QueueRates::default()
        );
    }
}
