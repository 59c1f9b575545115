//! postino's one storage primitive: the log, an append-only, offset-addressed sequence of
//! Kafka RecordBatch v2 batches, split into segments.
//!
//! Main types: the [`Log`] trait; [`FileLog`], the durable store (segments, sparse offset and
//! time indexes, group-committed `fdatasync`, recovery on open, retention); [`MemLog`], the same
//! behaviour in memory; [`batch`], the batch codec; [`fs`] and [`fault`], the file-system seam
//! and a fault-injecting layer for tests.
//!
//! Invariants: offsets are dense and assigned by the log; a batch is returned only after its
//! CRC32C and its offset chain verify; an append's [`Durable`] ticket resolves only when the
//! log's [`Durability`] policy is met; after a failed write or sync the log refuses every
//! operation that could pretend durability, until reopened.
//!
//! This crate knows nothing about routing, queues or protocols.

pub mod batch;
mod config;
mod error;
pub mod fault;
mod file_log;
pub mod fs;
mod index;
mod mem_log;
mod segment;
mod sync;

pub use config::{Durability, LogConfig};
pub use error::LogError;
pub use file_log::{FileLog, OpenReport};
pub use mem_log::{MemLog, MemStore};
pub use postino_types::Offset;
pub use sync::{Durable, SYNC_LATENCY};

use batch::Batch;

/// Visits every batch of `log` from its earliest offset to its end, in order, reading 1 MiB at a
/// time; stops at the first error `visit` returns.
///
/// # Errors
/// The log's read errors, or `visit`'s.
pub fn scan<E: From<LogError>>(
    log: &(impl Log + ?Sized),
    mut visit: impl FnMut(&Batch) -> Result<(), E>,
) -> Result<(), E> {
    let next = log.next_offset().0;
    let mut at = log.earliest_offset().0;
    while at < next {
        let batches = log.read(Offset(at), 1 << 20)?;
        let Some(last) = batches.last() else { break };
        at = last.last_offset() + 1;
        for batch in &batches {
            visit(batch)?;
        }
    }
    Ok(())
}

/// Offsets an append was given, and its durability ticket.
#[derive(Debug, Clone)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Offset of the batch's last record.
    pub last_offset: Offset,
    /// Resolves when the append is durable under the log's policy.
    pub durable: Durable,
}

/// An append-only log of record batches. One owner appends; reads see every completed append.
///
/// Both stores behave the same, as one conformance suite checks (`tests/conformance.rs`).
pub trait Log: Send + std::fmt::Debug {
    /// Appends one whole RecordBatch v2 and returns the offsets it was given. The log stamps
    /// the batch's base offset field in place (the field is outside the CRC), so that the
    /// bytes go to disk with one write and no copy.
    ///
    /// # Errors
    /// [`LogError::InvalidBatch`] or [`LogError::BatchTooLarge`] for bad input (the log is
    /// unchanged); [`LogError::Io`] or [`LogError::Failed`] when storage failed (the log stops).
    fn append(&mut self, batch: &mut [u8]) -> Result<Appended, LogError>;

    /// The batches from the one holding `from` onwards, within one segment, stopping before a
    /// batch that would take the total past `max_bytes` (the first batch is always returned
    /// whole). Empty when `from` is the next offset.
    ///
    /// # Errors
    /// [`LogError::OffsetOutOfRange`] below the earliest or past the next offset;
    /// [`LogError::Corrupt`] when the first batch to return fails its checks.
    fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<Batch>, LogError>;

    /// The first offset whose record timestamp is at or after `timestamp_ms` (Kafka's
    /// ListOffsets), or `None` when every record is older.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] when a batch it must read fails its checks.
    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, LogError>;

    /// Removes every record at or after `to`; a batch holding `to` goes whole. Returns the new
    /// next offset. Truncating below the earliest offset empties the log and restarts it at `to`.
    ///
    /// # Errors
    /// Storage errors; the cut is durable when this returns `Ok`.
    fn truncate(&mut self, to: Offset) -> Result<Offset, LogError>;

    /// Offset of the first record still stored.
    fn earliest_offset(&self) -> Offset;

    /// Offset the next append will get (Kafka's log end offset, "latest").
    fn next_offset(&self) -> Offset;

    /// Every offset below this is durable under the log's policy.
    fn durable_offset(&self) -> Offset;

    /// Deletes every sealed segment whose records are all below `offset` (a queue's head passed
    /// them). The active segment is never deleted. Returns how many segments went.
    ///
    /// # Errors
    /// Storage errors.
    fn delete_up_to(&mut self, offset: Offset) -> Result<usize, LogError>;

    /// Applies the configured retention by time and by bytes to sealed segments, oldest first.
    /// Returns how many segments went.
    ///
    /// # Errors
    /// Storage errors.
    fn enforce_retention(&mut self) -> Result<usize, LogError>;

    /// Compaction by key: rewrites the sealed segments wholly below `below` without the records
    /// `keep` refuses. Offsets do not move (a batch keeps its span, possibly with fewer records
    /// or none); control and compressed batches stay whole; the active segment is never
    /// rewritten. Each rewritten segment replaces the old one atomically (a crash leaves one or
    /// the other). Returns how many records went.
    ///
    /// # Errors
    /// Storage errors; [`LogError::Corrupt`] when a batch to rewrite fails its checks.
    fn compact(
        &mut self,
        below: Offset,
        keep: &mut dyn FnMut(&batch::Record) -> bool,
    ) -> Result<u64, LogError>;

    /// Bytes of stored batches.
    fn size_bytes(&self) -> u64;

    /// Segments, the active one included.
    fn segment_count(&self) -> usize;

    /// Syncs everything and releases the log.
    ///
    /// # Errors
    /// Storage errors met while syncing.
    fn close(self) -> Result<(), LogError>
    where
        Self: Sized;
}
