//! Committed offsets of consumer groups, kept in an internal log like Kafka's
//! `__consumer_offsets`: one record per commit of one partition, keyed by (group, stream,
//! partition); the latest record of a key wins and a record without a value (a tombstone)
//! deletes the key. The log is compacted by re-appending the live records and deleting the
//! segments below them once the dead records outnumber the live ones.
//!
//! Record layout (big-endian), version 0 — key: `u16 version, u16 length + group, u16 length +
//! stream, u32 partition`; value: `u16 version, i64 offset, i64 commit time (ms), u16 length +
//! metadata`.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes};
use postino_storage::batch::{BatchBuilder, Record};
use postino_storage::{Durable, Log, Offset};

use crate::error::CoreError;

/// Records in the log, beyond twice the live ones, before a compaction.
const COMPACT_SLACK: u64 = 1024;

/// A partition's committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group reads (Kafka's committed offset).
    pub offset: u64,
    /// The client's note with the commit.
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

type Key = (String, String, u32);

fn encode_key((group, stream, partition): &Key) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + group.len() + stream.len());
    key.put_u16(0);
    key.put_u16(group.len() as u16);
    key.put_slice(group.as_bytes());
    key.put_u16(stream.len() as u16);
    key.put_slice(stream.as_bytes());
    key.put_u32(*partition);
    key
}

fn encode_value(committed: &CommittedOffset) -> Vec<u8> {
    let mut value = Vec::with_capacity(20 + committed.metadata.len());
    value.put_u16(0);
    value.put_i64(committed.offset as i64);
    value.put_i64(committed.commit_timestamp_ms);
    value.put_u16(committed.metadata.len() as u16);
    value.put_slice(committed.metadata.as_bytes());
    value
}

fn text(buf: &mut Bytes) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let length = buf.get_u16() as usize;
    if buf.remaining() < length {
        return None;
    }
    String::from_utf8(buf.split_to(length).to_vec()).ok()
}

fn decode(record: &Record) -> Option<(Key, Option<CommittedOffset>)> {
    let mut key = record.key.clone()?;
    if key.remaining() < 2 || key.get_u16() != 0 {
        return None;
    }
    let group = text(&mut key)?;
    let stream = text(&mut key)?;
    if key.remaining() != 4 {
        return None;
    }
    let partition = key.get_u32();
    let Some(mut value) = record.value.clone() else {
        return Some(((group, stream, partition), None));
    };
    if value.remaining() < 18 || value.get_u16() != 0 {
        return None;
    }
    let offset = u64::try_from(value.get_i64()).ok()?;
    let commit_timestamp_ms = value.get_i64();
    let metadata = text(&mut value)?;
    Some((
        (group, stream, partition),
        Some(CommittedOffset {
            offset,
            metadata,
            commit_timestamp_ms,
        }),
    ))
}

/// The committed offsets of a host's groups, over their log. One owner (the host's group
/// coordinator) uses it.
#[derive(Debug)]
pub struct OffsetStore<L: Log> {
    log: L,
    latest: HashMap<Key, CommittedOffset>,
    /// Records in the log from its earliest offset.
    records: u64,
    /// Records appended since the last compaction (or the open): what decides the next one, so
    /// that dead records left in the active segment do not trigger one per commit.
    since_compaction: u64,
}

/// A commit of one partition's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

impl<L: Log> OffsetStore<L> {
    /// Opens the store over `log`, reading every record once.
    ///
    /// # Errors
    /// Storage errors; `CorruptMessage` for a record that does not decode.
    pub fn open(log: L) -> Result<Self, CoreError> {
        let mut store = Self {
            log,
            latest: HashMap::new(),
            records: 0,
            since_compaction: 0,
        };
        let next = store.log.next_offset().0;
        let mut at = store.log.earliest_offset().0;
        while at < next {
            let batches = store.log.read(Offset(at), 1 << 20)?;
            let Some(last) = batches.last() else { break };
            at = last.last_offset() + 1;
            for batch in &batches {
                let records = batch.records().map_err(|_| CoreError::CorruptMessage {
                    reason: "an offset commit batch does not decode",
                })?;
                for record in &records {
                    let (key, value) = decode(record).ok_or(CoreError::CorruptMessage {
                        reason: "an offset commit record does not decode",
                    })?;
                    store.records += 1;
                    match value {
                        Some(value) => store.latest.insert(key, value),
                        None => store.latest.remove(&key),
                    };
                }
            }
        }
        store.since_compaction = store.records;
        Ok(store)
    }

    /// Commits `offsets` of `group` in one batch (all or none); the ticket resolves when the
    /// commit is durable, and only then may it be acknowledged.
    ///
    /// # Errors
    /// `InvalidArgument` for a name or metadata over 65535 bytes; storage errors.
    pub fn commit(
        &mut self,
        now_ms: i64,
        group: &str,
        offsets: &[OffsetCommit],
    ) -> Result<Durable, CoreError> {
        let too_long = |name: &str, text: &str| {
            (text.len() > usize::from(u16::MAX)).then(|| CoreError::InvalidArgument {
                name: name.to_owned(),
                reason: format!("{} bytes, at most 65535", text.len()),
            })
        };
        let mut builder = BatchBuilder::new();
        let mut entries = Vec::with_capacity(offsets.len());
        for commit in offsets {
            if let Some(error) = too_long("group", group)
                .or_else(|| too_long("stream", &commit.stream))
                .or_else(|| too_long("metadata", &commit.metadata))
            {
                return Err(error);
            }
            let key = (group.to_owned(), commit.stream.clone(), commit.partition);
            let value = CommittedOffset {
                offset: commit.offset,
                metadata: commit.metadata.clone(),
                commit_timestamp_ms: now_ms,
            };
            builder.push(
                now_ms,
                Some(&encode_key(&key)),
                Some(&encode_value(&value)),
                &[],
            );
            entries.push((key, value));
        }
        if entries.is_empty() {
            return Ok(Durable::ready());
        }
        let appended = self.log.append(&mut builder.build())?;
        self.records += entries.len() as u64;
        self.since_compaction += entries.len() as u64;
        self.latest.extend(entries);
        self.compact_if_due(now_ms)?;
        Ok(appended.durable)
    }

    /// The committed offset of one partition for `group`.
    #[must_use]
    pub fn committed(&self, group: &str, stream: &str, partition: u32) -> Option<&CommittedOffset> {
        self.latest
            .get(&(group.to_owned(), stream.to_owned(), partition))
    }

    /// Every committed offset of `group`: (stream, partition) → offset, sorted.
    #[must_use]
    pub fn group_offsets(&self, group: &str) -> Vec<((String, u32), CommittedOffset)> {
        let mut offsets: Vec<((String, u32), CommittedOffset)> = self
            .latest
            .iter()
            .filter(|((owner, _, _), _)| owner == group)
            .map(|((_, stream, partition), value)| ((stream.clone(), *partition), value.clone()))
            .collect();
        offsets.sort_by(|a, b| a.0.cmp(&b.0));
        offsets
    }

    /// Groups with committed offsets, sorted.
    #[must_use]
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self
            .latest
            .keys()
            .map(|(group, _, _)| group.clone())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// Deletes every committed offset of `group` (tombstones).
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_group(&mut self, now_ms: i64, group: &str) -> Result<Durable, CoreError> {
        let keys: Vec<Key> = self
            .latest
            .keys()
            .filter(|(owner, _, _)| owner == group)
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(Durable::ready());
        }
        let mut builder = BatchBuilder::new();
        for key in &keys {
            builder.push(now_ms, Some(&encode_key(key)), None, &[]);
        }
        let appended = self.log.append(&mut builder.build())?;
        self.records += keys.len() as u64;
        self.since_compaction += keys.len() as u64;
        for key in keys {
            self.latest.remove(&key);
        }
        Ok(appended.durable)
    }

    /// Records in the log (live and dead).
    #[must_use]
    pub fn log_records(&self) -> u64 {
        self.records
    }

    /// Re-appends the live records and deletes the segments wholly below them (sealed ones:
    /// dead records of the active segment go at a later compaction), once the records
    /// appended since the last compaction outnumber twice the live ones by the slack.
    fn compact_if_due(&mut self, now_ms: i64) -> Result<(), CoreError> {
        let live = self.latest.len() as u64;
        if self.since_compaction <= 2 * live + COMPACT_SLACK {
            return Ok(());
        }
        let from = self.log.next_offset();
        let mut builder = BatchBuilder::new();
        for (key, value) in &self.latest {
            builder.push(
                now_ms,
                Some(&encode_key(key)),
                Some(&encode_value(value)),
                &[],
            );
        }
        if !builder.is_empty() {
            self.log.append(&mut builder.build())?;
        }
        self.log.delete_up_to(from)?;
        self.records = self.log.next_offset().0 - self.log.earliest_offset().0;
        self.since_compaction = 0;
        Ok(())
    }

    /// Syncs and closes the log.
    ///
    /// # Errors
    /// Storage errors.
    pub fn close(self) -> Result<(), CoreError> {
        Ok(self.log.close()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::{LogConfig, MemLog, MemStore};
    use postino_types::ManualClock;
    use std::sync::Arc;

    fn open(store: &MemStore) -> OffsetStore<MemLog> {
        let config = LogConfig {
            segment_bytes_max: 4096,
            batch_bytes_max: 4096,
            ..LogConfig::default()
        };
        let log = MemLog::open(store, config, Arc::new(ManualClock::new(0))).expect("opens");
        OffsetStore::open(log).expect("store opens")
    }

    fn commit(stream: &str, partition: u32, offset: u64) -> OffsetCommit {
        OffsetCommit {
            stream: stream.to_owned(),
            partition,
            offset,
            metadata: "m".to_owned(),
        }
    }

    #[test]
    fn the_latest_commit_wins_and_survives_reopening() {
        let store = MemStore::new();
        let mut offsets = open(&store);
        offsets
            .commit(1, "g", &[commit("s", 0, 5), commit("s", 1, 7)])
            .expect("commit");
        offsets
            .commit(2, "g", &[commit("s", 0, 9)])
            .expect("commit");
        offsets
            .commit(3, "h", &[commit("s", 0, 1)])
            .expect("commit");
        offsets.close().expect("close");
        let offsets = open(&store);
        assert_eq!(offsets.committed("g", "s", 0).map(|c| c.offset), Some(9));
        assert_eq!(offsets.committed("g", "s", 1).map(|c| c.offset), Some(7));
        assert_eq!(offsets.groups(), ["g", "h"]);
    }

    #[test]
    fn deleted_groups_stay_deleted_after_reopening() {
        let store = MemStore::new();
        let mut offsets = open(&store);
        offsets
            .commit(1, "g", &[commit("s", 0, 5)])
            .expect("commit");
        offsets.delete_group(2, "g").expect("delete");
        offsets.close().expect("close");
        let offsets = open(&store);
        assert!(offsets.committed("g", "s", 0).is_none());
        assert!(offsets.groups().is_empty());
    }

    #[test]
    fn compaction_bounds_the_log_and_keeps_every_live_offset() {
        let store = MemStore::new();
        let mut offsets = open(&store);
        for round in 0..3_000u64 {
            offsets
                .commit(round as i64, "g", &[commit("s", (round % 4) as u32, round)])
                .expect("commit");
        }
        // At most the records since the last compaction, plus one segment's worth not yet
        // sealed when it ran.
        assert!(
            offsets.log_records() < 2 * (2 * 4 + COMPACT_SLACK),
            "{}",
            offsets.log_records()
        );
        offsets.close().expect("close");
        let offsets = open(&store);
        for partition in 0..4u32 {
            let last = (0..3_000u64)
                .rev()
                .find(|round| round % 4 == u64::from(partition));
            assert_eq!(
                offsets.committed("g", "s", partition).map(|c| c.offset),
                last
            );
        }
    }
}
