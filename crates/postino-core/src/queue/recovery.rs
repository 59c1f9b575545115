//! What a queue keeps in its log besides messages — settlement records — and how a queue's
//! cursor is rebuilt from its log on open.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;
use postino_storage::batch::{BatchHeader, ControlKind, Record, control_kind, control_record};
use postino_storage::{Log, LogError};

use crate::error::CoreError;
use crate::offsets::OffsetSet;
use crate::queue::ready::Ready;

/// Control record kind of a settlement (Kafka's transaction markers are 0 and 1).
const SETTLE_CONTROL_KIND: i16 = 100;
/// The header that marks a record of a transaction's batch as the transaction's settlements
/// (its value lists ranges like a settlement control record's), not a message.
pub(crate) const SETTLE_HEADER: &[u8] = b"postino.settle";

/// `count: u32`, then `count` pairs `start: u64, end: u64`.
pub(crate) fn encode_ranges(settled: &OffsetSet) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + settled.range_count() * 16);
    value.extend_from_slice(&(settled.range_count() as u32).to_be_bytes());
    for (start, end) in settled.ranges() {
        value.extend_from_slice(&start.to_be_bytes());
        value.extend_from_slice(&end.to_be_bytes());
    }
    value
}

/// A settlement control batch naming `settled` (as ranges).
pub(crate) fn settlement_batch(settled: &OffsetSet, now_ms: i64) -> BytesMut {
    control_record(SETTLE_CONTROL_KIND, &encode_ranges(settled), now_ms)
}

/// The offset ranges a settlement control record names; other control records name none.
fn settle_ranges(record: &Record) -> Result<Vec<(u64, u64)>, CoreError> {
    let is_settlement = record.key.as_ref().is_some_and(|key| {
        key.len() == 4 && i16::from_be_bytes([key[2], key[3]]) == SETTLE_CONTROL_KIND
    });
    if !is_settlement || control_kind(record).is_some() {
        return Ok(Vec::new());
    }
    decode_ranges(record.value.as_deref().unwrap_or_default())
}

fn decode_ranges(value: &[u8]) -> Result<Vec<(u64, u64)>, CoreError> {
    let corrupt = || CoreError::CorruptMessage {
        reason: "settlement record does not parse",
    };
    let (count, mut rest) = value.split_at_checked(4).ok_or_else(corrupt)?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let mut ranges = Vec::with_capacity(count.min(rest.len() / 16));
    for _ in 0..count {
        let (range, after) = rest.split_at_checked(16).ok_or_else(corrupt)?;
        let mut start = [0u8; 8];
        let mut end = [0u8; 8];
        start.copy_from_slice(&range[..8]);
        end.copy_from_slice(&range[8..]);
        ranges.push((u64::from_be_bytes(start), u64::from_be_bytes(end)));
        rest = after;
    }
    Ok(ranges)
}

/// Calls `visit(batch header, record)` for every record of the log, oldest first.
fn for_each_record(
    log: &impl Log,
    mut visit: impl FnMut(&BatchHeader, &Record) -> Result<(), CoreError>,
) -> Result<(), CoreError> {
    postino_storage::scan(log, |batch| {
        for record in &batch.records().map_err(LogError::from)? {
            visit(batch.header(), record)?;
        }
        Ok(())
    })
}

/// The value of a record header, if present.
pub(crate) fn header_value<'a>(record: &'a Record, name: &[u8]) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(key, _)| key.as_ref() == name)
        .and_then(|(_, value)| value.as_deref())
}

/// A transaction's records seen by recovery before its marker.
#[derive(Debug, Default)]
struct OpenTransaction {
    messages: Vec<u64>,
    settled: Vec<(u64, u64)>,
}

/// What opening a queue's log found.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) ready: Ready,
    /// Transactions prepared but never marked, with the outcome chosen now (committed when
    /// the host's coordinator decided so): the queue must write their markers.
    pub(crate) resolved: Vec<(u64, bool)>,
}

/// The ready messages of a queue whose log is `log`: every persistent message record that no
/// settlement names and no aborted transaction holds, at the level of its priority. Transient
/// records are dropped. A transaction without a marker counts as committed when `committed`
/// holds its id, as aborted otherwise. `on_message(record, live)` sees every message record,
/// oldest first, `live` when it is still in the queue; it returns `true` to hold a live message
/// back from ready (a delayed one).
pub(crate) fn recover_ready(
    log: &impl Log,
    levels: usize,
    committed: &HashSet<u64>,
    mut on_message: impl FnMut(&Record, bool) -> Result<bool, CoreError>,
) -> Result<Recovered, CoreError> {
    let mut settled = OffsetSet::new();
    let mut open: HashMap<u64, OpenTransaction> = HashMap::new();
    let close = |settled: &mut OffsetSet, transaction: OpenTransaction, commit: bool| {
        if commit {
            for (start, end) in transaction.settled {
                settled.insert_range(start, end);
            }
        } else {
            for offset in transaction.messages {
                settled.insert(offset);
            }
        }
    };
    for_each_record(log, |header, record| {
        let transaction = header.producer_id as u64;
        if header.is_control() {
            match control_kind(record) {
                Some(kind) => {
                    if let Some(open) = open.remove(&transaction) {
                        close(&mut settled, open, kind == ControlKind::Commit);
                    }
                }
                None => {
                    for (start, end) in settle_ranges(record)? {
                        settled.insert_range(start, end);
                    }
                }
            }
        } else if header.is_transactional() {
            let entry = open.entry(transaction).or_default();
            match header_value(record, SETTLE_HEADER) {
                Some(_) => entry
                    .settled
                    .extend(decode_ranges(record.value.as_deref().unwrap_or_default())?),
                None => entry.messages.push(record.offset),
            }
        }
        Ok(())
    })?;
    let mut resolved = Vec::with_capacity(open.len());
    for (transaction, pending) in open {
        let commit = committed.contains(&transaction);
        close(&mut settled, pending, commit);
        resolved.push((transaction, commit));
    }
    let mut ready = Ready::new(levels);
    for_each_record(log, |header, record| {
        if header.is_control() || header_value(record, SETTLE_HEADER).is_some() {
            return Ok(());
        }
        let persistent = header_value(record, b"postino.delivery-mode").is_some();
        let live = persistent && !settled.contains(record.offset);
        let held = on_message(record, live)?;
        if !live || held {
            return Ok(());
        }
        let priority = header_value(record, b"postino.priority")
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.parse::<u8>().ok());
        let bytes = record.value.as_ref().map_or(0, |value| value.len() as u64);
        ready.insert(ready.level_of(priority), record.offset, bytes);
        Ok(())
    })?;
    resolved.sort_unstable();
    Ok(Recovered { ready, resolved })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::batch::Batch;

    #[test]
    fn settlement_records_round_trip_their_ranges() {
        let mut settled = OffsetSet::new();
        for offset in [1, 2, 3, 7, 9, 10] {
            settled.insert(offset);
        }
        let batch = Batch::from_bytes(settlement_batch(&settled, 5).freeze()).expect("valid");
        assert!(batch.header().is_control());
        let records = batch.records().expect("records");
        assert_eq!(
            settle_ranges(&records[0]).expect("parse"),
            vec![(1, 4), (7, 8), (9, 11)]
        );
    }
}
