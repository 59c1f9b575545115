//! A partition's view of transactions (Kafka's transactional state of a log): which producers
//! may write transactional batches now (the coordinator registered the partition in their
//! transaction), where each open transaction starts (the lowest such offset is the last stable
//! offset, which `read_committed` readers do not pass), and which offset ranges belong to
//! aborted transactions (readers skip them). Rebuilt from the log on open.

use std::collections::{BTreeMap, HashMap};

use postino_storage::batch::ControlKind;

/// The records of an aborted transaction in one partition: a reader in `read_committed` mode
/// skips this producer's transactional batches from `first_offset` to `last_offset` (the
/// abort marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

/// Open and aborted transactions of one partition.
#[derive(Debug, Default)]
pub struct TransactionIndex {
    /// Producer id → offset of its open transaction's first batch here.
    open: BTreeMap<i64, u64>,
    /// Producer id → the epoch its coordinator registered this partition for.
    registered: HashMap<i64, i16>,
    aborted: Vec<AbortedTransaction>,
}

impl TransactionIndex {
    /// The coordinator added this partition to a transaction of `producer_id` at `epoch`.
    pub fn register(&mut self, producer_id: i64, epoch: i16) {
        self.registered.insert(producer_id, epoch);
    }

    /// Whether `producer_id` at `epoch` may write transactional batches here now.
    #[must_use]
    pub fn is_registered(&self, producer_id: i64, epoch: i16) -> bool {
        self.registered.get(&producer_id) == Some(&epoch)
    }

    /// A transactional batch of `producer_id` was appended at `base_offset`.
    pub fn on_batch(&mut self, producer_id: i64, base_offset: u64) {
        self.open.entry(producer_id).or_insert(base_offset);
    }

    /// A marker ending `producer_id`'s transaction was appended at `offset`.
    pub fn on_marker(&mut self, producer_id: i64, kind: ControlKind, offset: u64) {
        self.registered.remove(&producer_id);
        let first = self.open.remove(&producer_id);
        if let (ControlKind::Abort, Some(first_offset)) = (kind, first) {
            self.aborted.push(AbortedTransaction {
                producer_id,
                first_offset,
                last_offset: offset,
            });
        }
    }

    /// The first offset of the oldest open transaction.
    #[must_use]
    pub fn first_open_offset(&self) -> Option<u64> {
        self.open.values().min().copied()
    }

    /// Producers with an open transaction here.
    #[must_use]
    pub fn open_producers(&self) -> Vec<i64> {
        self.open.keys().copied().collect()
    }

    /// Aborted transactions with records in `[from, to)`.
    #[must_use]
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTransaction> {
        self.aborted
            .iter()
            .filter(|aborted| aborted.last_offset >= from && aborted.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below `earliest` (retention removed them).
    pub fn forget_below(&mut self, earliest: u64) {
        self.aborted
            .retain(|aborted| aborted.last_offset >= earliest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_open_transaction_bounds_stable_reads() {
        let mut index = TransactionIndex::default();
        index.on_batch(1, 10);
        index.on_batch(2, 12);
        index.on_batch(1, 14);
        assert_eq!(index.first_open_offset(), Some(10));
        index.on_marker(1, ControlKind::Commit, 15);
        assert_eq!(index.first_open_offset(), Some(12));
        index.on_marker(2, ControlKind::Abort, 16);
        assert_eq!(index.first_open_offset(), None);
        assert_eq!(
            index.aborted_between(0, 20),
            [AbortedTransaction {
                producer_id: 2,
                first_offset: 12,
                last_offset: 16
            }]
        );
        assert!(index.aborted_between(17, 20).is_empty());
        index.forget_below(17);
        assert!(index.aborted_between(0, 20).is_empty());
    }

    #[test]
    fn only_the_registered_epoch_may_write_and_a_marker_ends_it() {
        let mut index = TransactionIndex::default();
        assert!(!index.is_registered(1, 0));
        index.register(1, 3);
        assert!(index.is_registered(1, 3));
        assert!(!index.is_registered(1, 2));
        index.on_marker(1, ControlKind::Commit, 5);
        assert!(!index.is_registered(1, 3));
    }
}
