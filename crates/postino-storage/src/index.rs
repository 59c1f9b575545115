//! The sparse indexes of a segment, kept in memory and written beside it when it is sealed.
//!
//! Offset index entry (8 bytes): relative offset `u32`, file position `u32`.
//! Time index entry (12 bytes): max timestamp so far `i64`, relative offset `u32`.
//! Both big-endian, sorted, as Kafka writes them. Indexes are never synced: recovery checks
//! them and rebuilds any that does not hold together.

/// Offset index: where to start scanning for an offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub(crate) fn push(&mut self, relative_offset: u32, position: u32) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|last| last.0 < relative_offset && last.1 < position)
        );
        self.entries.push((relative_offset, position));
    }

    /// The greatest entry at or below `relative_offset`, or the segment start.
    pub(crate) fn lookup(&self, relative_offset: u32) -> (u32, u32) {
        let after = self
            .entries
            .partition_point(|entry| entry.0 <= relative_offset);
        after
            .checked_sub(1)
            .map_or((0, 0), |index| self.entries[index])
    }

    pub(crate) fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8);
        for (relative_offset, position) in &self.entries {
            out.extend_from_slice(&relative_offset.to_be_bytes());
            out.extend_from_slice(&position.to_be_bytes());
        }
        out
    }

    /// Parses an index file of a segment of `segment_bytes`; `None` when it does not hold
    /// together (odd length, unsorted, or pointing past the segment).
    pub(crate) fn decode(bytes: &[u8], segment_bytes: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(8) {
            return None;
        }
        let mut index = Self::default();
        for chunk in bytes.chunks_exact(8) {
            let relative_offset = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let position = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            let sorted = index
                .entries
                .last()
                .is_none_or(|last| last.0 < relative_offset && last.1 < position);
            if !sorted || u64::from(position) >= segment_bytes {
                return None;
            }
            index.entries.push((relative_offset, position));
        }
        Some(index)
    }
}

/// Time index: which offset to start scanning from for a timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Records that every batch up to the one at `relative_offset` has timestamps at most
    /// `max_timestamp`; ignored unless both grow.
    pub(crate) fn push(&mut self, max_timestamp: i64, relative_offset: u32) {
        let grows = self
            .entries
            .last()
            .is_none_or(|last| last.0 < max_timestamp && last.1 < relative_offset);
        if grows {
            self.entries.push((max_timestamp, relative_offset));
        }
    }

    /// The relative offset of the last entry whose timestamp is below `timestamp`: no batch up
    /// to it holds a record at or after `timestamp`.
    pub(crate) fn start_for(&self, timestamp: i64) -> u32 {
        let after = self.entries.partition_point(|entry| entry.0 < timestamp);
        after
            .checked_sub(1)
            .map_or(0, |index| self.entries[index].1)
    }

    pub(crate) fn max_timestamp(&self) -> Option<i64> {
        self.entries.last().map(|entry| entry.0)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 12);
        for (timestamp, relative_offset) in &self.entries {
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&relative_offset.to_be_bytes());
        }
        out
    }

    /// Parses a time index of a segment spanning `offset_span` offsets; `None` when it does not
    /// hold together.
    pub(crate) fn decode(bytes: &[u8], offset_span: u64) -> Option<Self> {
        if !bytes.len().is_multiple_of(12) {
            return None;
        }
        let mut index = Self::default();
        for chunk in bytes.chunks_exact(12) {
            let mut timestamp = [0u8; 8];
            timestamp.copy_from_slice(&chunk[..8]);
            let timestamp = i64::from_be_bytes(timestamp);
            let relative_offset = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            let sorted = index
                .entries
                .last()
                .is_none_or(|last| last.0 < timestamp && last.1 < relative_offset);
            if !sorted || u64::from(relative_offset) >= offset_span {
                return None;
            }
            index.entries.push((timestamp, relative_offset));
        }
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_the_greatest_entry_below() {
        let mut index = OffsetIndex::default();
        index.push(10, 4096);
        index.push(20, 8192);
        assert_eq!(index.lookup(5), (0, 0));
        assert_eq!(index.lookup(10), (10, 4096));
        assert_eq!(index.lookup(19), (10, 4096));
        assert_eq!(index.lookup(500), (20, 8192));
        let decoded = OffsetIndex::decode(&index.encode(), 10_000).expect("valid");
        assert_eq!(decoded, index);
    }

    #[test]
    fn garbage_indexes_are_refused() {
        assert!(OffsetIndex::decode(&[1, 2, 3], 100).is_none());
        let mut index = OffsetIndex::default();
        index.push(1, 50);
        assert!(OffsetIndex::decode(&index.encode(), 40).is_none());
        let mut zeros = index.encode();
        zeros.extend_from_slice(&[0; 8]);
        assert!(OffsetIndex::decode(&zeros, 1_000).is_none());
        assert!(TimeIndex::decode(&[0; 11], 10).is_none());
    }

    #[test]
    fn time_lookup_starts_before_the_first_newer_batch() {
        let mut index = TimeIndex::default();
        index.push(100, 0);
        index.push(200, 5);
        index.push(150, 9);
        index.push(300, 12);
        assert_eq!(index.start_for(50), 0);
        assert_eq!(index.start_for(250), 5);
        assert_eq!(index.start_for(301), 12);
        assert_eq!(index.max_timestamp(), Some(300));
        assert_eq!(TimeIndex::decode(&index.encode(), 13), Some(index));
    }
}
