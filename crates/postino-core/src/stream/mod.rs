//! Streams: a named set of partitions, each a log with its own owner task, read by offset
//! (Kafka topics, RabbitMQ streams). Records are addressed by partition and offset, kept by
//! retention (time and bytes) and never removed by reading.
//!
//! A stream of a host with a directory keeps `<dir>/streams/<escaped name>/stream.json` (its
//! spec, rewritten atomically) and one log per partition in `<n>/`. Partitions can be added,
//! never removed (a key's partition would change under its readers).

mod arguments;
mod compaction;
mod host;
mod owner;
mod partition;
mod partitioner;
mod producer_ids;
mod producers;
mod share;
mod transaction_index;
pub(crate) mod transactions;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postino_storage::batch::{BatchBuilder, BatchError};
use postino_storage::{Durability, FileLog, LogConfig, MemLog, MemStore};
use postino_types::Clock;
use serde_json::{Value, json};

use crate::definitions::write_atomically;
use crate::error::CoreError;

pub use arguments::{is_stream_queue, parse_age, stream_queue_spec};
pub use owner::{MAILBOX_CAPACITY, PartitionHandle, StreamEnqueued};
pub use partition::{
    FetchSpec, Fetched, Isolation, OnOutOfRange, PartitionEngine, PartitionStats, Produced, StartAt,
};
pub use partitioner::{Partitioner, Spread, murmur2, partition_for_key};
pub use postino_storage::batch::Record;
pub(crate) use producer_ids::ProducerIds;
pub use producers::{Admit, BATCHES_KEPT, Producers};
pub use share::{Acquired, SHARE_DELIVERY_LIMIT, SHARE_WINDOW, ShareGroup};
pub use transaction_index::AbortedTransaction;
pub use transactions::TRANSACTION_TIMEOUT_MAX_MS;

/// Partitions a stream may have: each costs an owner task, a log and (under `fsync`) a sync
/// thread.
pub const PARTITIONS_MAX: u32 = 1024;

/// What a stream declaration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Partitions (at least 1, at most [`PARTITIONS_MAX`]).
    pub partitions: u32,
    /// Records older than this go with their segment (default: kept).
    pub retention: Option<Duration>,
    /// Oldest segments go while a partition stays at least this large (default: kept).
    pub retention_bytes: Option<u64>,
    /// Segment size; retention deletes whole segments (default: the host's).
    pub segment_bytes_max: Option<u64>,
    /// When a produce is acknowledged (default: the host's, `fsync`).
    pub durability: Option<Durability>,
    /// Compaction by key (Kafka's `cleanup.policy=compact`) with this tombstone retention
    /// (Kafka's `delete.retention.ms`); `None`: every record stays until retention.
    pub compaction: Option<Duration>,
}

impl StreamSpec {
    /// A stream of `partitions` partitions with the host's defaults.
    #[must_use]
    pub fn with_partitions(partitions: u32) -> Self {
        Self {
            partitions,
            retention: None,
            retention_bytes: None,
            segment_bytes_max: None,
            durability: None,
            compaction: None,
        }
    }

    /// Checks the partition count.
    ///
    /// # Errors
    /// `InvalidArgument` naming the bad setting.
    pub fn check(&self) -> Result<(), CoreError> {
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(CoreError::InvalidArgument {
                name: "partitions".to_owned(),
                reason: format!("{} is not in 1..={PARTITIONS_MAX}", self.partitions),
            });
        }
        Ok(())
    }

    /// The log settings of each partition: the host's, with this spec's overrides.
    fn log_config(&self, host: &LogConfig) -> Result<LogConfig, CoreError> {
        let segment_bytes_max = self.segment_bytes_max.unwrap_or(host.segment_bytes_max);
        let config = LogConfig {
            durability: self.durability.unwrap_or(host.durability),
            segment_bytes_max,
            // A batch never outgrows a segment.
            batch_bytes_max: host.batch_bytes_max.min(segment_bytes_max as usize),
            retention: self.retention.or(host.retention),
            retention_bytes: self.retention_bytes.or(host.retention_bytes),
            ..host.clone()
        };
        config.validate()?;
        Ok(config)
    }

    /// The spec as JSON: `partitions`, `retention_ms`, `retention_bytes`, `segment_bytes`,
    /// `durability`, `compaction_tombstone_ms` (absent settings are `null`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "partitions": self.partitions,
            "retention_ms": self.retention.map(|every| every.as_millis() as u64),
            "retention_bytes": self.retention_bytes,
            "segment_bytes": self.segment_bytes_max,
            "durability": self.durability.map(|durability| durability.to_string()),
            "compaction_tombstone_ms": self.compaction.map(|delay| delay.as_millis() as u64),
        })
    }

    /// The spec [`StreamSpec::to_json`] wrote; other keys are ignored.
    ///
    /// # Errors
    /// The reason, for a missing `partitions` or a bad `durability`.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let partitions = value["partitions"]
            .as_u64()
            .and_then(|count| u32::try_from(count).ok())
            .ok_or("partitions is missing")?;
        let durability = match value["durability"].as_str() {
            Some(text) => Some(
                text.parse()
                    .map_err(|error: postino_storage::LogError| error.to_string())?,
            ),
            None => None,
        };
        Ok(Self {
            partitions,
            retention: value["retention_ms"].as_u64().map(Duration::from_millis),
            retention_bytes: value["retention_bytes"].as_u64(),
            segment_bytes_max: value["segment_bytes"].as_u64(),
            durability,
            compaction: value["compaction_tombstone_ms"]
                .as_u64()
                .map(Duration::from_millis),
        })
    }
}

/// A record to produce through [`Stream::produce_records`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Chooses the partition (murmur2) unless one is named; `None` is Kafka's null key.
    pub key: Option<Bytes>,
    /// `None` is Kafka's null value (a tombstone for compaction).
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// The record's time; the broker's clock when `None`.
    pub timestamp_ms: Option<i64>,
    /// Produce to this partition rather than choosing one.
    pub partition: Option<u32>,
}

/// The records of fetched batches from `from` on (the first batch may start before it),
/// without transaction markers and, for a `ReadCommitted` fetch, without the records of
/// aborted transactions.
///
/// # Errors
/// `InvalidArgument` for a compressed batch (records of compressed batches are not decoded by
/// the broker) or a record that does not parse.
pub fn records_of(fetched: &Fetched) -> Result<Vec<Record>, CoreError> {
    let mut records = Vec::new();
    for batch in &fetched.batches {
        let header = batch.header();
        let aborted = header.is_transactional()
            && fetched.aborted.iter().any(|aborted| {
                aborted.producer_id == header.producer_id
                    && (aborted.first_offset..=aborted.last_offset).contains(&batch.base_offset())
            });
        if header.is_control() || aborted {
            continue;
        }
        let decoded = batch
            .records()
            .map_err(|error: BatchError| CoreError::InvalidArgument {
                name: "batch".to_owned(),
                reason: error.to_string(),
            })?;
        records.extend(
            decoded
                .into_iter()
                .filter(|record| record.offset >= fetched.from),
        );
    }
    Ok(records)
}

#[derive(Debug)]
enum Storage {
    Files(PathBuf),
    Memory,
}

/// A stream, shared as `Arc<Stream>`: its spec and its partitions' handles.
#[derive(Debug)]
pub struct Stream {
    name: String,
    storage: Storage,
    host_config: LogConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    spec: StreamSpec,
    partitions: Vec<PartitionHandle>,
}

/// Writes a stream's spec to `<dir>/stream.json` atomically.
fn save_spec(dir: &Path, spec: &StreamSpec) -> Result<(), CoreError> {
    let path = dir.join("stream.json");
    write_atomically(&path, spec.to_json().to_string().as_bytes()).map_err(|error| {
        CoreError::Definitions {
            path: path.display().to_string(),
            reason: error.to_string(),
        }
    })
}

fn partition_dir(dir: &Path, partition: u32) -> PathBuf {
    dir.join(partition.to_string())
}

impl Stream {
    /// Creates a stream (`dir` `None`: in memory) and starts its partitions' owners.
    pub(crate) fn create(
        name: &str,
        dir: Option<PathBuf>,
        spec: StreamSpec,
        host_config: &LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, CoreError> {
        spec.check()?;
        spec.log_config(host_config)?;
        if let Some(dir) = &dir {
            save_spec(dir, &spec)?;
        }
        Self::start(name, dir, spec, host_config, clock)
    }

    /// Opens a stream saved in `dir` and starts its partitions' owners.
    pub(crate) fn open(
        name: &str,
        dir: PathBuf,
        host_config: &LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, CoreError> {
        let path = dir.join("stream.json");
        let fail = |reason: String| CoreError::Definitions {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|error| fail(error.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
        let spec = StreamSpec::from_json(&value).map_err(fail)?;
        spec.check()?;
        Self::start(name, Some(dir), spec, host_config, clock)
    }

    fn start(
        name: &str,
        dir: Option<PathBuf>,
        spec: StreamSpec,
        host_config: &LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, CoreError> {
        let stream = Self {
            name: name.to_owned(),
            storage: dir.map_or(Storage::Memory, Storage::Files),
            host_config: host_config.clone(),
            clock,
            inner: Mutex::new(Inner {
                spec: spec.clone(),
                partitions: Vec::new(),
            }),
        };
        let partitions = (0..spec.partitions)
            .map(|partition| stream.start_partition(&spec, partition))
            .collect::<Result<Vec<_>, _>>()?;
        stream.lock().partitions = partitions;
        Ok(Arc::new(stream))
    }

    fn start_partition(
        &self,
        spec: &StreamSpec,
        partition: u32,
    ) -> Result<PartitionHandle, CoreError> {
        let config = spec.log_config(&self.host_config)?;
        let name: Arc<str> = self.name.as_str().into();
        let clock = Arc::clone(&self.clock);
        match &self.storage {
            Storage::Files(dir) => {
                let log = FileLog::open(partition_dir(dir, partition), config)?;
                let engine = PartitionEngine::open(name, partition, log)?;
                Ok(PartitionHandle::spawn(engine, clock, spec.compaction))
            }
            Storage::Memory => {
                let log = MemLog::open(&MemStore::new(), config, Arc::clone(&clock))?;
                let engine = PartitionEngine::open(name, partition, log)?;
                Ok(PartitionHandle::spawn(engine, clock, spec.compaction))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stream's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream's spec as it is now (partitions may have been added).
    #[must_use]
    pub fn spec(&self) -> StreamSpec {
        self.lock().spec.clone()
    }

    /// How many partitions the stream has.
    #[must_use]
    pub fn partition_count(&self) -> u32 {
        self.lock().spec.partitions
    }

    pub(crate) fn dir(&self) -> Option<&Path> {
        match &self.storage {
            Storage::Files(dir) => Some(dir),
            Storage::Memory => None,
        }
    }

    /// The handle of one partition.
    ///
    /// # Errors
    /// `UnknownPartition`.
    pub fn partition(&self, partition: u32) -> Result<PartitionHandle, CoreError> {
        let inner = self.lock();
        inner
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| CoreError::UnknownPartition {
                stream: self.name.clone(),
                partition,
                partitions: inner.spec.partitions,
            })
    }

    /// Grows the stream to `partitions` partitions (Kafka's CreatePartitions); the same count
    /// is a no-op.
    ///
    /// # Errors
    /// `InvalidArgument` for fewer partitions than now or more than [`PARTITIONS_MAX`];
    /// storage errors; `Definitions` when the spec cannot be saved.
    pub fn add_partitions(&self, partitions: u32) -> Result<(), CoreError> {
        let mut inner = self.lock();
        let current = inner.spec.partitions;
        if partitions < current {
            return Err(CoreError::InvalidArgument {
                name: "partitions".to_owned(),
                reason: format!(
                    "stream '{}' has {current} partitions; partitions can be added, never removed",
                    self.name
                ),
            });
        }
        let grown = StreamSpec {
            partitions,
            ..inner.spec.clone()
        };
        grown.check()?;
        if partitions == current {
            return Ok(());
        }
        // Saved first: a partition that took records is always in the saved spec.
        if let Storage::Files(dir) = &self.storage {
            save_spec(dir, &grown)?;
        }
        for partition in current..partitions {
            let handle = self.start_partition(&grown, partition)?;
            inner.partitions.push(handle);
        }
        inner.spec = grown;
        Ok(())
    }

    /// Produces records, each to its named partition or the one `partitioner` chooses: one
    /// batch per partition, in order. Returns each batch's partition and outcome; acknowledge
    /// once every `durable` ticket resolves.
    ///
    /// # Errors
    /// `UnknownPartition`; as [`PartitionHandle::produce`].
    pub async fn produce_records(
        &self,
        partitioner: &mut Partitioner,
        records: &[ProducerRecord],
    ) -> Result<Vec<(u32, Produced)>, CoreError> {
        let count = self.partition_count();
        let now_ms = self.clock.now_ms();
        let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
        for record in records {
            let partition = match record.partition {
                Some(partition) => partition,
                None => partitioner.choose(record.key.as_deref(), count),
            };
            let index = match builders.iter().position(|(at, _)| *at == partition) {
                Some(index) => index,
                None => {
                    builders.push((partition, BatchBuilder::new()));
                    builders.len() - 1
                }
            };
            let headers: Vec<(&[u8], Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), Some(value.as_ref())))
                .collect();
            builders[index].1.push(
                record.timestamp_ms.unwrap_or(now_ms),
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
        }
        let mut produced = Vec::with_capacity(builders.len());
        for (partition, builder) in builders {
            let handle = self.partition(partition)?;
            produced.push((partition, handle.produce(builder.build()).await?));
        }
        Ok(produced)
    }

    /// Hands a message an exchange routed here to the partition its routing key hashes to
    /// (murmur2, as a keyed Kafka record), the routing key as the record's key; returns once it
    /// is in the owner's mailbox.
    ///
    /// # Errors
    /// `PartitionStopped`.
    pub async fn enqueue_routed(
        &self,
        routing_key: &str,
        message: &postino_types::Message,
        now_ms: i64,
    ) -> Result<StreamEnqueued, CoreError> {
        let key = routing_key.as_bytes();
        let partition = partition_for_key(key, self.partition_count());
        let mut builder = BatchBuilder::new();
        crate::record::push_keyed(&mut builder, Some(key), message, now_ms);
        self.partition(partition)?.enqueue(builder.build()).await
    }

    /// Produces one RecordBatch v2 to `partition` (what a Kafka produce request carries).
    ///
    /// # Errors
    /// `UnknownPartition`; as [`PartitionHandle::produce`].
    pub async fn produce(&self, partition: u32, batch: BytesMut) -> Result<Produced, CoreError> {
        self.partition(partition)?.produce(batch).await
    }

    /// Reads `partition` as `spec` says.
    ///
    /// # Errors
    /// `UnknownPartition`; as [`PartitionHandle::fetch`].
    pub async fn fetch(&self, partition: u32, spec: FetchSpec) -> Result<Fetched, CoreError> {
        self.partition(partition)?.fetch(spec).await
    }

    /// Stops every partition's owner, syncing and closing its log.
    ///
    /// # Errors
    /// The first error met; every partition is asked to close regardless.
    pub async fn close(&self) -> Result<(), CoreError> {
        let handles = self.lock().partitions.clone();
        let mut outcome = Ok(());
        for handle in handles {
            if let Err(error) = handle.close().await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        outcome
    }
}
