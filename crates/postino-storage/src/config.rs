//! Per-log settings: durability policy, segment and batch limits, retention.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES};
use crate::error::LogError;

/// When an append counts as durable, and so when its confirmation may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Confirmed after `fdatasync`; syncs are group-committed (one covers every append that
    /// arrived while the previous one ran). Survives power failure.
    #[default]
    Fsync,
    /// Confirmed once written to the OS; a background sync runs every interval. A power failure
    /// loses at most the last interval; a process crash loses nothing.
    Interval(Duration),
    /// Confirmed once written to the OS and never synced while open (a clean close syncs). A
    /// power failure may lose or tear anything not yet written back by the kernel.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Fsync => f.write_str("fsync"),
            Durability::Interval(every) => write!(f, "interval({}ms)", every.as_millis()),
            Durability::None => f.write_str("none"),
        }
    }
}

impl FromStr for Durability {
    type Err = LogError;

    /// Parses `fsync`, `none`, or `interval(MS)` (also `interval(MSms)`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || LogError::Config {
            key: "durability",
            reason: format!("{text:?} is not fsync, none or interval(MS)"),
        };
        match text.trim() {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            other => {
                let millis = other
                    .strip_prefix("interval(")
                    .and_then(|rest| rest.strip_suffix(')'))
                    .map(|inner| inner.trim_end_matches("ms"))
                    .and_then(|digits| digits.parse::<u64>().ok())
                    .filter(|millis| *millis > 0)
                    .ok_or_else(invalid)?;
                Ok(Durability::Interval(Duration::from_millis(millis)))
            }
        }
    }
}

/// Settings of one log. Every limit has a documented behaviour when reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// When appends become durable (default `fsync`).
    pub durability: Durability,
    /// A segment rolls before an append would make it larger than this (default 128 MiB; at
    /// most 2 GiB because index positions are 32-bit).
    pub segment_bytes_max: u64,
    /// A non-empty segment rolls at the first append after it is this old (default: never).
    pub segment_age_max: Option<Duration>,
    /// Appends of larger batches fail with `BatchTooLarge` (default 128 MiB, so that a
    /// 128 MiB message, RabbitMQ 3's largest, fits one batch).
    pub batch_bytes_max: usize,
    /// Bytes between two entries of the sparse offset and time indexes (default 4 KiB): reads
    /// scan at most this much before the batch they want.
    pub index_interval_bytes: u32,
    /// Oldest sealed segments are deleted while the log minus them stays at least this large.
    pub retention_bytes: Option<u64>,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention: Option<Duration>,
    /// Appends reserve disk blocks this far ahead of the write position with `fallocate`
    /// (default 8 MiB; 0 turns it off). Reserved blocks make page-cache writes cheaper; the
    /// reservation stops at `segment_bytes_max` and is given back when a segment is sealed.
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            segment_bytes_max: 128 << 20,
            segment_age_max: None,
            batch_bytes_max: 128 << 20,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention: None,
            preallocate_bytes: 8 << 20,
        }
    }
}

impl LogConfig {
    /// Checks the limits against each other.
    ///
    /// # Errors
    /// [`LogError::Config`] naming the first unusable key.
    pub fn validate(&self) -> Result<(), LogError> {
        let max_segment = u64::from(i32::MAX as u32);
        if self.segment_bytes_max < 1024 || self.segment_bytes_max > max_segment {
            return Err(LogError::Config {
                key: "segment_bytes_max",
                reason: format!("{} is outside 1024..={max_segment}", self.segment_bytes_max),
            });
        }
        if self.batch_bytes_max < HEADER_BYTES
            || self.batch_bytes_max as u64 > self.segment_bytes_max
        {
            return Err(LogError::Config {
                key: "batch_bytes_max",
                reason: format!(
                    "{} is outside {HEADER_BYTES}..=segment_bytes_max ({})",
                    self.batch_bytes_max, self.segment_bytes_max
                ),
            });
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::Config {
                key: "index_interval_bytes",
                reason: "must be positive".to_owned(),
            });
        }
        if let Durability::Interval(every) = self.durability
            && every.is_zero()
        {
            return Err(LogError::Config {
                key: "durability",
                reason: "interval must be positive".to_owned(),
            });
        }
        Ok(())
    }
}

/// What the roll and retention rules need to know of a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentShape {
    pub(crate) base: u64,
    pub(crate) size: u64,
    pub(crate) max_timestamp: i64,
}

impl LogConfig {
    /// Checks that `batch` is exactly one valid batch within `batch_bytes_max`.
    pub(crate) fn check_batch(&self, batch: &[u8]) -> Result<BatchHeader, LogError> {
        if batch.len() > self.batch_bytes_max {
            return Err(LogError::BatchTooLarge {
                size: batch.len(),
                max: self.batch_bytes_max,
            });
        }
        let header = batch::validate(batch)?;
        if header.total_bytes() != batch.len() {
            return Err(BatchError::BadLength {
                length: header.length,
            }
            .into());
        }
        Ok(header)
    }

    /// Whether an append of `batch_bytes` reaching offset `next` must start a new segment after
    /// `active`, which was started at `active_since_ms`.
    pub(crate) fn must_roll(
        &self,
        active: SegmentShape,
        batch_bytes: usize,
        next: u64,
        now_ms: i64,
        active_since_ms: i64,
    ) -> bool {
        let too_big = active.size + batch_bytes as u64 > self.segment_bytes_max;
        // Index entries hold offsets relative to the segment base in 32 bits.
        let too_many_offsets = next - active.base > u64::from(u32::MAX);
        let too_old = self
            .segment_age_max
            .is_some_and(|age| now_ms.saturating_sub(active_since_ms) >= age.as_millis() as i64);
        active.size > 0 && (too_big || too_many_offsets || too_old)
    }

    /// How many of the oldest `segments` retention deletes; the last (active) one never goes.
    pub(crate) fn expired_segments(&self, segments: &[SegmentShape], now_ms: i64) -> usize {
        let mut total: u64 = segments.iter().map(|segment| segment.size).sum();
        let sealed = segments.len().saturating_sub(1);
        let mut expired = 0;
        for segment in &segments[..sealed] {
            let too_old = self.retention.is_some_and(|age| {
                segment.max_timestamp < now_ms.saturating_sub(age.as_millis() as i64)
            });
            let too_big = self
                .retention_bytes
                .is_some_and(|limit| total - segment.size >= limit);
            if !(too_old || too_big) {
                break;
            }
            total -= segment.size;
            expired += 1;
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_its_display_form() {
        for policy in [
            Durability::Fsync,
            Durability::None,
            Durability::Interval(Duration::from_millis(250)),
        ] {
            assert_eq!(policy.to_string().parse::<Durability>().ok(), Some(policy));
        }
        assert_eq!(
            "interval(40)".parse::<Durability>().ok(),
            Some(Durability::Interval(Duration::from_millis(40)))
        );
        assert!("interval(0)".parse::<Durability>().is_err());
        assert!("sometimes".parse::<Durability>().is_err());
    }

    #[test]
    fn a_batch_limit_above_the_segment_size_is_rejected() {
        let config = LogConfig {
            segment_bytes_max: 4096,
            batch_bytes_max: 8192,
            ..LogConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(LogError::Config {
                key: "batch_bytes_max",
                ..
            })
        ));
        assert!(LogConfig::default().validate().is_ok());
    }
}
