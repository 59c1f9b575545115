//! Fixtures shared by the storage tests: stores to open logs in, and batches with known content.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use postino_storage::batch::{Batch, BatchBuilder};
use postino_storage::{FileLog, Log, LogConfig, MemLog, MemStore};
use postino_types::{Clock, ManualClock};

/// Something that opens the same log again and again, as a restart would.
pub trait Store {
    type Log: Log;
    fn open(&self, config: LogConfig, clock: &ManualClock) -> Self::Log;
    fn name(&self) -> &'static str;
}

pub struct FileStore {
    pub dir: tempfile::TempDir,
}

impl FileStore {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("log")
    }
}

impl Store for FileStore {
    type Log = FileLog;

    fn open(&self, config: LogConfig, clock: &ManualClock) -> FileLog {
        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        FileLog::open_with(
            self.path(),
            config,
            Arc::new(postino_storage::fs::RealFs),
            clock,
        )
        .expect("open file log")
    }

    fn name(&self) -> &'static str {
        "file"
    }
}

#[derive(Default)]
pub struct MemoryStore {
    pub store: MemStore,
}

impl Store for MemoryStore {
    type Log = MemLog;

    fn open(&self, config: LogConfig, clock: &ManualClock) -> MemLog {
        MemLog::open(&self.store, config, Arc::new(clock.clone())).expect("open memory log")
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// A batch of `count` records whose values name the batch (`tag`) and the record index, all
/// stamped `timestamp_ms` plus the record index.
pub fn batch(tag: u64, count: usize, timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new();
    for index in 0..count {
        let value = format!("batch {tag} record {index}");
        let key = format!("k{index}");
        builder.push(
            timestamp_ms + index as i64,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[(b"tag", Some(tag.to_string().as_bytes()))],
        );
    }
    builder.build()
}

/// A batch whose single record has a value of exactly `value_bytes` bytes.
pub fn sized_batch(tag: u64, value_bytes: usize, timestamp_ms: i64) -> BytesMut {
    let mut value = format!("batch {tag} ").into_bytes();
    value.resize(value_bytes.max(value.len()), b'x');
    let mut builder = BatchBuilder::new();
    builder.push(timestamp_ms, None, Some(&value), &[]);
    builder.build()
}

/// The record values of batches, in order.
pub fn values(batches: &[Batch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|batch| batch.records().expect("uncompressed records"))
        .map(|record| String::from_utf8(record.value.expect("value").to_vec()).expect("utf-8"))
        .collect()
}

/// Everything in the log from its earliest offset, batch by batch.
pub fn read_all(log: &impl Log) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut from = log.earliest_offset();
    while from < log.next_offset() {
        let batches = log.read(from, 1 << 20).expect("read");
        assert!(
            !batches.is_empty(),
            "no batch at offset {from} below next {}",
            log.next_offset()
        );
        from = postino_types::Offset(batches.last().expect("non-empty").last_offset() + 1);
        out.extend(batches);
    }
    out
}

/// Small segments so that tests roll often.
pub fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1024,
        batch_bytes_max: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}
