//! Compaction by key of a partition (Kafka's `cleanup.policy=compact`): of the records with a
//! key, only the latest of each key stays, and a tombstone (a record without a value) stays
//! until it is older than the stream's tombstone retention, so that readers catching up learn
//! of the deletion first. Records without a key stay. Only sealed segments below the last
//! stable offset are rewritten (the storage layer never rewrites the active segment), and
//! offsets never move: a reader at any offset reads on from the next record that stayed.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use postino_storage::{Log, Offset};

use crate::error::CoreError;

/// Compacts `log` below `below`; returns how many records went.
///
/// # Errors
/// Storage errors.
pub(crate) fn compact_log(
    log: &mut impl Log,
    below: u64,
    now_ms: i64,
    tombstone_retention: Duration,
) -> Result<u64, CoreError> {
    let mut latest: HashMap<Bytes, u64> = HashMap::new();
    postino_storage::scan(log, |batch| {
        // A compressed batch's records are not read here: its keys stay as they are.
        if let (false, Ok(records)) = (batch.header().is_control(), batch.records()) {
            for record in records {
                if let Some(key) = record.key {
                    latest.insert(key, record.offset);
                }
            }
        }
        Ok::<(), CoreError>(())
    })?;
    let expired_before = now_ms.saturating_sub(tombstone_retention.as_millis() as i64);
    let mut keep = |record: &postino_storage::batch::Record| match &record.key {
        None => true,
        Some(key) => {
            latest.get(key) == Some(&record.offset)
                && (record.value.is_some() || record.timestamp_ms >= expired_before)
        }
    };
    Ok(log.compact(Offset(below), &mut keep)?)
}
