//! One partition of a stream as a plain struct over its log: produce (with idempotent-producer
//! checks), fetch up to the high watermark, offset lookup, retention. Its owner task
//! (`stream::owner`) is the only caller.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postino_storage::batch::{Batch, BatchHeader, ControlKind, control_batch, control_kind};
use postino_storage::{Durable, Log, LogError, Offset};

use crate::error::{CoreError, TransactionError};
use crate::stream::producers::{Admit, Producers};
use crate::stream::transaction_index::{AbortedTransaction, TransactionIndex};

/// The kind of a transaction marker batch.
fn marker_kind(batch: &Batch) -> Result<ControlKind, CoreError> {
    let corrupt = CoreError::CorruptMessage {
        reason: "a transaction marker does not decode",
    };
    let records = batch.records().map_err(|_| corrupt.clone())?;
    records.first().and_then(control_kind).ok_or(corrupt)
}

/// Where a reader starts (Kafka's ListOffsets and `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The first offset still stored.
    Earliest,
    /// The offset the next record will get: only new records.
    Latest,
    /// This offset.
    Offset(u64),
    /// The first record stamped at or after this time (ms since the epoch); latest when every
    /// record is older.
    Timestamp(i64),
}

/// What a read below the earliest or past the latest offset does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnOutOfRange {
    /// Fail with `OffsetOutOfRange` (Kafka `auto.offset.reset=none`).
    #[default]
    Fail,
    /// Read from the earliest offset instead.
    Earliest,
    /// Read from the latest offset instead.
    Latest,
}

/// Which records a reader sees (Kafka's `isolation.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Every durable record, those of open and aborted transactions included.
    #[default]
    ReadUncommitted,
    /// Records below the last stable offset, skipping aborted transactions.
    ReadCommitted,
}

/// A read of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSpec {
    /// The offset to read from.
    pub from: u64,
    /// Stop before a batch that would pass this many bytes (the first batch always comes).
    pub max_bytes: usize,
    /// Wait until at least this many bytes are readable (1: any record) ...
    pub min_bytes: usize,
    /// ... or this long, then answer with what there is (possibly nothing).
    pub max_wait: Duration,
    /// What a read outside the log does.
    pub on_out_of_range: OnOutOfRange,
    /// Whether records of open and aborted transactions are read.
    pub isolation: Isolation,
}

impl FetchSpec {
    /// Reads from `from` without waiting, up to 1 MiB.
    #[must_use]
    pub fn at(from: u64) -> Self {
        Self {
            from,
            max_bytes: 1 << 20,
            min_bytes: 1,
            max_wait: Duration::ZERO,
            on_out_of_range: OnOutOfRange::Fail,
            isolation: Isolation::ReadUncommitted,
        }
    }

    /// The same read, of committed records only.
    #[must_use]
    pub fn committed(mut self) -> Self {
        self.isolation = Isolation::ReadCommitted;
        self
    }

    /// The same read, waiting up to `max_wait` for data.
    #[must_use]
    pub fn waiting(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }
}

/// A produced batch's offsets.
#[derive(Debug, Clone)]
pub struct Produced {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Resolves when the batch is durable: the produce may be acknowledged then.
    pub durable: Durable,
    /// The batch was a retry of one already written (idempotent producer); nothing was
    /// written again.
    pub duplicate: bool,
}

/// What a fetch read.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The offset read from (the one asked for, or where the reset policy moved it).
    pub from: u64,
    /// Whole batches, the first one holding `from` (it may start before it), none at or past
    /// the high watermark.
    pub batches: Vec<Batch>,
    /// Offsets below this are durable and readable (Kafka's high watermark).
    pub high_watermark: u64,
    /// The earliest offset stored (Kafka's log start offset).
    pub log_start: u64,
    /// Offsets below this hold no open transaction (Kafka's last stable offset).
    pub last_stable_offset: u64,
    /// Under `ReadCommitted`, the aborted transactions with records among the batches.
    pub aborted: Vec<AbortedTransaction>,
}

impl Fetched {
    /// Where the next read goes on: after the last batch, or where this one started when it
    /// found nothing.
    #[must_use]
    pub fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.from, |batch| batch.last_offset() + 1)
    }

    /// Bytes of the batches.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(|batch| batch.bytes().len()).sum()
    }
}

/// A partition's offsets and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    pub earliest: u64,
    pub high_watermark: u64,
    pub last_stable_offset: u64,
    pub next: u64,
    pub size_bytes: u64,
    pub producers: usize,
}

/// One partition: its log and its producers.
#[derive(Debug)]
pub struct PartitionEngine<L: Log> {
    stream: Arc<str>,
    partition: u32,
    log: L,
    producers: Producers,
    transactions: TransactionIndex,
}

impl<L: Log> PartitionEngine<L> {
    /// Opens the partition over `log`, rebuilding the producer and transaction state from its
    /// batches.
    ///
    /// # Errors
    /// Storage errors reading the log; `CorruptMessage` for a marker that does not decode.
    pub fn open(stream: Arc<str>, partition: u32, log: L) -> Result<Self, CoreError> {
        let mut producers = Producers::default();
        let mut transactions = TransactionIndex::default();
        postino_storage::scan(&log, |batch| {
            let header = batch.header();
            if header.is_control() {
                let kind = marker_kind(batch)?;
                producers.fence(header.producer_id, header.producer_epoch);
                transactions.on_marker(header.producer_id, kind, batch.base_offset());
                return Ok(());
            }
            producers.record(header, batch.base_offset(), Durable::ready());
            if header.is_transactional() {
                transactions.on_batch(header.producer_id, batch.base_offset());
            }
            Ok::<(), CoreError>(())
        })?;
        Ok(Self {
            stream,
            partition,
            log,
            producers,
            transactions,
        })
    }

    /// The stream's name.
    #[must_use]
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The partition's number.
    #[must_use]
    pub fn partition(&self) -> u32 {
        self.partition
    }

    fn bad_batch(reason: impl Into<String>) -> CoreError {
        CoreError::InvalidArgument {
            name: "batch".to_owned(),
            reason: reason.into(),
        }
    }

    /// Appends one RecordBatch v2 as a producer sent it (compressed or not); a retry of a
    /// batch an idempotent producer already wrote returns the first offsets instead.
    ///
    /// # Errors
    /// `InvalidArgument` for bytes that are not one valid batch, a control batch, or a
    /// transactional batch; `ProducerFenced`, `OutOfOrderSequence`; storage errors
    /// (`Storage(BatchTooLarge)` for a batch over the log's limit).
    pub fn produce(&mut self, mut batch: BytesMut) -> Result<Produced, CoreError> {
        let header =
            BatchHeader::parse(&batch).map_err(|error| Self::bad_batch(error.to_string()))?;
        if header.is_control() {
            return Err(Self::bad_batch(
                "control batches are written by the broker only",
            ));
        }
        match self.producers.check(&header)? {
            Admit::Duplicate {
                base_offset,
                last_offset,
                durable,
            } => Ok(Produced {
                base_offset,
                last_offset,
                durable,
                duplicate: true,
            }),
            Admit::Append => {
                // Checked after the epoch, so that a fenced producer hears it is fenced.
                if header.is_transactional()
                    && !self
                        .transactions
                        .is_registered(header.producer_id, header.producer_epoch)
                {
                    return Err(CoreError::Transaction {
                        transactional_id: None,
                        error: TransactionError::NotInTransaction,
                    });
                }
                let segments = self.log.segment_count();
                let appended = self.log.append(&mut batch).map_err(|error| match error {
                    LogError::InvalidBatch(error) => Self::bad_batch(error.to_string()),
                    other => CoreError::Storage(other),
                })?;
                // A new segment is when retention may have something to delete: applied now
                // as well as on the owner's timer, the log passes its limits by one segment
                // at most. The batch is stored whatever retention does.
                if self.log.segment_count() > segments
                    && let Err(error) = self.enforce_retention()
                {
                    tracing::error!(stream = %self.stream, partition = self.partition, %error, "retention failed");
                }
                self.producers
                    .record(&header, appended.base_offset.0, appended.durable.clone());
                if header.is_transactional() {
                    self.transactions
                        .on_batch(header.producer_id, appended.base_offset.0);
                }
                Ok(Produced {
                    base_offset: appended.base_offset.0,
                    last_offset: appended.last_offset.0,
                    durable: appended.durable,
                    duplicate: false,
                })
            }
        }
    }

    /// Offsets below this are durable and may be read.
    #[must_use]
    pub fn high_watermark(&self) -> u64 {
        self.log.durable_offset().0
    }

    /// Offsets below this hold no open transaction and are durable.
    #[must_use]
    pub fn last_stable_offset(&self) -> u64 {
        let high_watermark = self.high_watermark();
        self.transactions
            .first_open_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Where reads under `isolation` stop.
    #[must_use]
    pub fn readable_end(&self, isolation: Isolation) -> u64 {
        match isolation {
            Isolation::ReadUncommitted => self.high_watermark(),
            Isolation::ReadCommitted => self.last_stable_offset(),
        }
    }

    /// The transaction coordinator added this partition to `producer_id`'s transaction at
    /// `epoch`: its transactional batches are accepted until a marker ends it.
    ///
    /// # Errors
    /// `ProducerFenced` for an epoch older than the producer's.
    pub fn register_transaction(&mut self, producer_id: i64, epoch: i16) -> Result<(), CoreError> {
        self.check_epoch(producer_id, epoch)?;
        self.transactions.register(producer_id, epoch);
        Ok(())
    }

    fn check_epoch(&self, producer_id: i64, epoch: i16) -> Result<(), CoreError> {
        match self.producers.epoch(producer_id) {
            Some(current) if current > epoch => Err(CoreError::ProducerFenced {
                producer_id,
                epoch,
                current_epoch: current,
            }),
            _ => Ok(()),
        }
    }

    /// Appends the marker that ends `producer_id`'s transaction here (commit or abort), fencing
    /// older epochs of the producer.
    ///
    /// # Errors
    /// `ProducerFenced`; storage errors.
    pub fn write_marker(
        &mut self,
        now_ms: i64,
        producer_id: i64,
        epoch: i16,
        kind: ControlKind,
    ) -> Result<Durable, CoreError> {
        self.check_epoch(producer_id, epoch)?;
        let mut marker = control_batch(kind, producer_id, epoch, 0, now_ms);
        let appended = self.log.append(&mut marker)?;
        self.producers.fence(producer_id, epoch);
        self.transactions
            .on_marker(producer_id, kind, appended.base_offset.0);
        Ok(appended.durable)
    }

    /// Producers with a transaction open here (the coordinator ends them after a restart).
    #[must_use]
    pub fn open_transactions(&self) -> Vec<i64> {
        self.transactions.open_producers()
    }

    /// Offsets and size.
    #[must_use]
    pub fn stats(&self) -> PartitionStats {
        PartitionStats {
            earliest: self.log.earliest_offset().0,
            high_watermark: self.high_watermark(),
            last_stable_offset: self.last_stable_offset(),
            next: self.log.next_offset().0,
            size_bytes: self.log.size_bytes(),
            producers: self.producers.len(),
        }
    }

    /// The offset a reader starting at `start` reads first.
    ///
    /// # Errors
    /// `OffsetOutOfRange` for an offset outside the log; storage errors of a timestamp lookup.
    pub fn resolve(&self, start: StartAt) -> Result<u64, CoreError> {
        match start {
            StartAt::Earliest => Ok(self.log.earliest_offset().0),
            StartAt::Latest => Ok(self.high_watermark()),
            StartAt::Offset(offset) => {
                self.check_range(offset)?;
                Ok(offset)
            }
            StartAt::Timestamp(timestamp_ms) => Ok(self
                .log
                .offset_for_timestamp(timestamp_ms)?
                .map_or_else(|| self.high_watermark(), |offset| offset.0)),
        }
    }

    fn check_range(&self, offset: u64) -> Result<(), CoreError> {
        let earliest = self.log.earliest_offset().0;
        let latest = self.log.next_offset().0;
        if offset < earliest || offset > latest {
            return Err(CoreError::OffsetOutOfRange {
                stream: self.stream.to_string(),
                partition: self.partition,
                requested: offset,
                earliest,
                latest,
            });
        }
        Ok(())
    }

    /// Reads whole batches from the one holding `spec.from`, up to `spec.max_bytes` (at least
    /// one batch), never at or past the high watermark, and under `ReadCommitted` never at or
    /// past the last stable offset, with the aborted transactions among them.
    ///
    /// # Errors
    /// `OffsetOutOfRange` under [`OnOutOfRange::Fail`]; storage errors (`Corrupt`).
    pub fn fetch(&self, spec: &FetchSpec) -> Result<Fetched, CoreError> {
        let from = match (self.check_range(spec.from), spec.on_out_of_range) {
            (Ok(()), _) => spec.from,
            (Err(error), OnOutOfRange::Fail) => return Err(error),
            (Err(_), OnOutOfRange::Earliest) => self.log.earliest_offset().0,
            (Err(_), OnOutOfRange::Latest) => self.readable_end(spec.isolation),
        };
        let end = self.readable_end(spec.isolation);
        let batches = if from < end {
            let mut batches = self.log.read(Offset(from), spec.max_bytes)?;
            batches.retain(|batch| batch.base_offset() < end);
            batches
        } else {
            Vec::new()
        };
        let aborted = match (spec.isolation, batches.last()) {
            (Isolation::ReadCommitted, Some(last)) => self
                .transactions
                .aborted_between(from, last.last_offset() + 1),
            _ => Vec::new(),
        };
        Ok(Fetched {
            from,
            batches,
            high_watermark: self.high_watermark(),
            log_start: self.log.earliest_offset().0,
            last_stable_offset: self.last_stable_offset(),
            aborted,
        })
    }

    /// Compacts the partition by key (see `stream::compaction`) below its last stable offset;
    /// returns how many records went.
    ///
    /// # Errors
    /// Storage errors.
    pub fn compact(
        &mut self,
        now_ms: i64,
        tombstone_retention: Duration,
    ) -> Result<u64, CoreError> {
        let below = self.last_stable_offset();
        crate::stream::compaction::compact_log(&mut self.log, below, now_ms, tombstone_retention)
    }

    /// Applies the stream's retention; returns how many segments went.
    ///
    /// # Errors
    /// Storage errors.
    pub fn enforce_retention(&mut self) -> Result<usize, CoreError> {
        let deleted = self.log.enforce_retention()?;
        self.transactions.forget_below(self.log.earliest_offset().0);
        Ok(deleted)
    }

    /// Syncs and closes the log.
    ///
    /// # Errors
    /// Storage errors while syncing.
    pub fn close(self) -> Result<(), CoreError>
    where
        L: Sized,
    {
        Ok(self.log.close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::batch::BatchBuilder;
    use postino_storage::{LogConfig, MemLog, MemStore};
    use postino_types::ManualClock;

    fn engine(store: &MemStore) -> PartitionEngine<MemLog> {
        let log = MemLog::open(store, LogConfig::default(), Arc::new(ManualClock::new(0)))
            .expect("memory log opens");
        PartitionEngine::open("s".into(), 0, log).expect("partition opens")
    }

    fn batch(producer: Option<(i64, i16, i32)>, values: &[&str]) -> BytesMut {
        let mut builder = match producer {
            Some((id, epoch, sequence)) => BatchBuilder::new().producer(id, epoch, sequence),
            None => BatchBuilder::new(),
        };
        for value in values {
            builder.push(1_000, None, Some(value.as_bytes()), &[]);
        }
        builder.build()
    }

    #[test]
    fn produced_batches_get_consecutive_offsets_and_read_back() {
        let mut partition = engine(&MemStore::new());
        let first = partition
            .produce(batch(None, &["a", "b"]))
            .expect("produced");
        let second = partition.produce(batch(None, &["c"])).expect("produced");
        assert_eq!((first.base_offset, first.last_offset), (0, 1));
        assert_eq!(second.base_offset, 2);
        let fetched = partition.fetch(&FetchSpec::at(1)).expect("fetched");
        assert_eq!(fetched.batches.len(), 2);
        assert_eq!(fetched.high_watermark, 3);
    }

    #[test]
    fn a_retried_batch_is_not_written_twice_even_after_reopening() {
        let store = MemStore::new();
        let mut partition = engine(&store);
        partition
            .produce(batch(Some((9, 0, 0)), &["a", "b"]))
            .expect("produced");
        partition.close().expect("closed");
        let mut partition = engine(&store);
        let retry = partition
            .produce(batch(Some((9, 0, 0)), &["a", "b"]))
            .expect("answered");
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, 0);
        assert_eq!(partition.stats().next, 2);
        let gap = partition.produce(batch(Some((9, 0, 5)), &["x"]));
        assert!(matches!(
            gap,
            Err(CoreError::OutOfOrderSequence { expected: 2, .. })
        ));
    }

    #[test]
    fn out_of_range_reads_fail_or_reset_as_asked() {
        let mut partition = engine(&MemStore::new());
        partition.produce(batch(None, &["a"])).expect("produced");
        assert!(matches!(
            partition.fetch(&FetchSpec::at(5)),
            Err(CoreError::OffsetOutOfRange {
                requested: 5,
                latest: 1,
                ..
            })
        ));
        let reset = partition
            .fetch(&FetchSpec {
                on_out_of_range: OnOutOfRange::Earliest,
                ..FetchSpec::at(5)
            })
            .expect("reset to earliest");
        assert_eq!((reset.from, reset.batches.len()), (0, 1));
        let latest = partition
            .fetch(&FetchSpec {
                on_out_of_range: OnOutOfRange::Latest,
                ..FetchSpec::at(5)
            })
            .expect("reset to latest");
        assert_eq!((latest.from, latest.batches.len()), (1, 0));
    }

    #[test]
    fn control_unregistered_transactional_and_malformed_batches_are_refused() {
        let mut partition = engine(&MemStore::new());
        let marker = postino_storage::batch::control_batch(
            postino_storage::batch::ControlKind::Commit,
            1,
            0,
            0,
            0,
        );
        assert!(matches!(
            partition.produce(marker),
            Err(CoreError::InvalidArgument { .. })
        ));
        let mut transactional = BatchBuilder::new().producer(1, 0, 0).transactional();
        transactional.push(0, None, Some(b"x"), &[]);
        assert!(
            matches!(
                partition.produce(transactional.build()),
                Err(CoreError::Transaction {
                    error: TransactionError::NotInTransaction,
                    ..
                })
            ),
            "a transaction the coordinator did not register here"
        );
        let mut corrupt = batch(None, &["a"]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(matches!(
            partition.produce(corrupt),
            Err(CoreError::InvalidArgument { .. })
        ));
        assert!(matches!(
            partition.produce(BytesMut::from(&b"short"[..])),
            Err(CoreError::InvalidArgument { .. })
        ));
        assert_eq!(partition.stats().next, 0);
    }

    #[test]
    fn a_timestamp_resolves_to_the_first_record_at_or_after_it() {
        let mut partition = engine(&MemStore::new());
        for (at, value) in [(100, "a"), (200, "b"), (300, "c")] {
            let mut builder = BatchBuilder::new();
            builder.push(at, None, Some(value.as_bytes()), &[]);
            partition.produce(builder.build()).expect("produced");
        }
        assert_eq!(
            partition.resolve(StartAt::Timestamp(150)).expect("found"),
            1
        );
        assert_eq!(
            partition.resolve(StartAt::Timestamp(999)).expect("found"),
            3
        );
        assert_eq!(partition.resolve(StartAt::Earliest).expect("found"), 0);
        assert_eq!(partition.resolve(StartAt::Latest).expect("found"), 3);
    }

    #[test]
    fn retention_applies_when_a_segment_rolls() {
        let config = LogConfig {
            segment_bytes_max: 1024,
            batch_bytes_max: 1024,
            retention_bytes: Some(2048),
            ..LogConfig::default()
        };
        let log = MemLog::open(&MemStore::new(), config, Arc::new(ManualClock::new(0)))
            .expect("memory log opens");
        let mut partition = PartitionEngine::open("s".into(), 0, log).expect("partition opens");
        let value = "v".repeat(200);
        for _ in 0..100 {
            partition
                .produce(batch(None, &[value.as_str()]))
                .expect("produce");
        }
        assert!(
            partition.log.size_bytes() <= 2048 + 1024,
            "the log passes its limit by one segment at most: {} bytes",
            partition.log.size_bytes()
        );
        assert!(partition.log.earliest_offset().0 > 0, "old segments went");
        assert_eq!(
            partition.log.next_offset().0,
            100,
            "every produce was stored"
        );
    }
}
