//! Committed offsets of consumer groups, kept in a compacted internal log like Kafka's
//! `__consumer_offsets`: one record per commit of one partition, keyed by (group, stream,
//! partition); a tombstone deletes a group's offsets.
//!
//! Record layout (big-endian), version 0 — key: `u16 version, u16 length + group, u16 length +
//! stream, u32 partition`; value: `u16 version, i64 offset, i64 commit time (ms), u16 length +
//! metadata`.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes};
use postino_storage::{Durable, Log};

use crate::compacted::CompactedLog;
use crate::error::CoreError;

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

fn decode(key: &Bytes, value: &Bytes) -> Option<(Key, CommittedOffset)> {
    let mut key = key.clone();
    if key.remaining() < 2 || key.get_u16() != 0 {
        return None;
    }
    let group = text(&mut key)?;
    let stream = text(&mut key)?;
    if key.remaining() != 4 {
        return None;
    }
    let partition = key.get_u32();
    let mut value = value.clone();
    if value.remaining() < 18 || value.get_u16() != 0 {
        return None;
    }
    let offset = u64::try_from(value.get_i64()).ok()?;
    let commit_timestamp_ms = value.get_i64();
    let metadata = text(&mut value)?;
    Some((
        (group, stream, partition),
        CommittedOffset {
            offset,
            metadata,
            commit_timestamp_ms,
        },
    ))
}

/// The committed offsets of a host's groups, over their log. One owner (the host's group
/// coordinator) uses it.
#[derive(Debug)]
pub struct OffsetStore {
    log: CompactedLog,
    latest: HashMap<Key, CommittedOffset>,
}

/// A commit of one partition's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub stream: String,
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

impl OffsetStore {
    /// Opens the store over `log`, reading every record once.
    ///
    /// # Errors
    /// Storage errors; `CorruptMessage` for a record that does not decode.
    pub fn open(log: Box<dyn Log>) -> Result<Self, CoreError> {
        let log = CompactedLog::open(log)?;
        let latest = log
            .live()
            .map(|(key, value)| {
                decode(key, value).ok_or(CoreError::CorruptMessage {
                    reason: "an offset commit record does not decode",
                })
            })
            .collect::<Result<HashMap<Key, CommittedOffset>, CoreError>>()?;
        Ok(Self { log, latest })
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
        let mut records = Vec::with_capacity(offsets.len());
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
            records.push((
                Bytes::from(encode_key(&key)),
                Some(Bytes::from(encode_value(&value))),
            ));
            entries.push((key, value));
        }
        let durable = self.log.write(now_ms, records)?;
        self.latest.extend(entries);
        Ok(durable)
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
        let tombstones = keys
            .iter()
            .map(|key| (Bytes::from(encode_key(key)), None))
            .collect();
        let durable = self.log.write(now_ms, tombstones)?;
        for key in keys {
            self.latest.remove(&key);
        }
        Ok(durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::{LogConfig, MemLog, MemStore};
    use postino_types::ManualClock;
    use std::sync::Arc;

    fn open(store: &MemStore) -> OffsetStore {
        let config = LogConfig {
            segment_bytes_max: 4096,
            batch_bytes_max: 4096,
            ..LogConfig::default()
        };
        let log = MemLog::open(store, config, Arc::new(ManualClock::new(0))).expect("opens");
        OffsetStore::open(Box::new(log)).expect("store opens")
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
        drop(offsets);
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
        drop(offsets);
        let offsets = open(&store);
        assert!(offsets.committed("g", "s", 0).is_none());
        assert!(offsets.groups().is_empty());
    }

    #[test]
    fn a_garbled_record_is_an_error_not_an_empty_store() {
        let store = MemStore::new();
        let config = LogConfig::default();
        let mut log = MemLog::open(&store, config, Arc::new(ManualClock::new(0))).expect("opens");
        let mut builder = postino_storage::batch::BatchBuilder::new();
        builder.push(0, Some(b"\0\0garbage"), Some(b"x"), &[]);
        log.append(&mut builder.build()).expect("append");
        drop(log);
        let log = MemLog::open(&store, LogConfig::default(), Arc::new(ManualClock::new(0)))
            .expect("opens");
        assert!(matches!(
            OffsetStore::open(Box::new(log)),
            Err(CoreError::CorruptMessage { .. })
        ));
    }
}
