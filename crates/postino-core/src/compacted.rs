//! A compacted key-value log for the broker's own state (committed offsets, transactional
//! producers), like Kafka's `__consumer_offsets` and `__transaction_state`: each write is one
//! batch of records keyed by bytes; the latest record of a key wins and a record without a
//! value (a tombstone) deletes the key. Compaction re-appends the live records and deletes the
//! sealed segments below them, once the records written since the last compaction outnumber
//! twice the live keys by a slack; dead records still in the active segment go at a later one.

use std::collections::HashMap;

use bytes::Bytes;
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durable, Log};

use crate::error::CoreError;

/// Records written since the last compaction, beyond twice the live keys, before the next.
const COMPACT_SLACK: u64 = 1024;

/// The live keys of a compacted log and the log itself.
#[derive(Debug)]
pub(crate) struct CompactedLog {
    log: Box<dyn Log>,
    live: HashMap<Bytes, Bytes>,
    /// Records in the log from its earliest offset.
    records: u64,
    since_compaction: u64,
}

impl CompactedLog {
    /// Opens the log, reading every record once.
    ///
    /// # Errors
    /// Storage errors; `CorruptMessage` for a batch that does not decode or a record without a
    /// key.
    pub(crate) fn open(log: Box<dyn Log>) -> Result<Self, CoreError> {
        let mut compacted = Self {
            log,
            live: HashMap::new(),
            records: 0,
            since_compaction: 0,
        };
        let corrupt = CoreError::CorruptMessage {
            reason: "a record of an internal log does not decode",
        };
        let (live, records) = (&mut compacted.live, &mut compacted.records);
        postino_storage::scan(compacted.log.as_ref(), |batch| {
            for record in batch.records().map_err(|_| corrupt.clone())? {
                let key = record.key.ok_or_else(|| corrupt.clone())?;
                *records += 1;
                match record.value {
                    Some(value) => live.insert(key, value),
                    None => live.remove(&key),
                };
            }
            Ok::<(), CoreError>(())
        })?;
        compacted.since_compaction = compacted.records;
        Ok(compacted)
    }

    /// The live keys and their values.
    pub(crate) fn live(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.live.iter()
    }

    /// Writes `entries` (a `None` value deletes the key) as one batch, all or none; the ticket
    /// resolves when they are durable.
    ///
    /// # Errors
    /// Storage errors.
    pub(crate) fn write(
        &mut self,
        now_ms: i64,
        entries: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<Durable, CoreError> {
        if entries.is_empty() {
            return Ok(Durable::ready());
        }
        let mut builder = BatchBuilder::new();
        for (key, value) in &entries {
            builder.push(now_ms, Some(key), value.as_deref(), &[]);
        }
        let appended = self.log.append(&mut builder.build())?;
        self.records += entries.len() as u64;
        self.since_compaction += entries.len() as u64;
        for (key, value) in entries {
            match value {
                Some(value) => self.live.insert(key, value),
                None => self.live.remove(&key),
            };
        }
        self.compact_if_due(now_ms)?;
        Ok(appended.durable)
    }

    /// Records in the log, live and dead.
    #[cfg(test)]
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    fn compact_if_due(&mut self, now_ms: i64) -> Result<(), CoreError> {
        let live = self.live.len() as u64;
        if self.since_compaction <= 2 * live + COMPACT_SLACK {
            return Ok(());
        }
        let from = self.log.next_offset();
        let mut builder = BatchBuilder::new();
        for (key, value) in &self.live {
            builder.push(now_ms, Some(key), Some(value), &[]);
        }
        if !builder.is_empty() {
            self.log.append(&mut builder.build())?;
        }
        self.log.delete_up_to(from)?;
        self.records = self.log.next_offset().0 - self.log.earliest_offset().0;
        self.since_compaction = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::{LogConfig, MemLog, MemStore};
    use postino_types::ManualClock;
    use std::sync::Arc;

    fn open(store: &MemStore) -> CompactedLog {
        let config = LogConfig {
            segment_bytes_max: 4096,
            batch_bytes_max: 4096,
            ..LogConfig::default()
        };
        let log = MemLog::open(store, config, Arc::new(ManualClock::new(0))).expect("opens");
        CompactedLog::open(Box::new(log)).expect("compacted log opens")
    }

    fn entry(key: &str, value: Option<&str>) -> (Bytes, Option<Bytes>) {
        (
            Bytes::copy_from_slice(key.as_bytes()),
            value.map(|value| Bytes::copy_from_slice(value.as_bytes())),
        )
    }

    #[test]
    fn the_latest_value_wins_and_tombstones_delete_across_reopening() {
        let store = MemStore::new();
        let mut log = open(&store);
        log.write(1, vec![entry("a", Some("1")), entry("b", Some("2"))])
            .expect("write");
        log.write(2, vec![entry("a", Some("3")), entry("b", None)])
            .expect("write");
        drop(log);
        let log = open(&store);
        let live: Vec<(&Bytes, &Bytes)> = log.live().collect();
        assert_eq!(live, [(&Bytes::from("a"), &Bytes::from("3"))]);
    }

    #[test]
    fn compaction_bounds_the_log_and_keeps_every_live_value() {
        let store = MemStore::new();
        let mut log = open(&store);
        for round in 0..3_000u64 {
            let key = format!("k{}", round % 4);
            log.write(round as i64, vec![entry(&key, Some(&round.to_string()))])
                .expect("write");
        }
        // At most the records since the last compaction, plus one segment's worth not yet
        // sealed when it ran.
        assert!(
            log.records() < 2 * (2 * 4 + COMPACT_SLACK),
            "{}",
            log.records()
        );
        drop(log);
        let log = open(&store);
        let mut live: Vec<(String, String)> = log
            .live()
            .map(|(key, value)| {
                (
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect();
        live.sort();
        assert_eq!(
            live,
            [
                ("k0".to_owned(), "2996".to_owned()),
                ("k1".to_owned(), "2997".to_owned()),
                ("k2".to_owned(), "2998".to_owned()),
                ("k3".to_owned(), "2999".to_owned()),
            ]
        );
    }
}
