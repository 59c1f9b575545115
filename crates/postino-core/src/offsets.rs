//! A set of offsets kept as disjoint ranges: a backlog of contiguous ready messages costs one
//! entry, not one per message.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent half-open ranges `start..end`, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetSet {
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl OffsetSet {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Offsets in the set.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ranges held (the memory the set costs).
    #[must_use]
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The smallest offset.
    #[must_use]
    pub fn first(&self) -> Option<u64> {
        self.ranges.first_key_value().map(|(start, _)| *start)
    }

    /// Whether `offset` is in the set.
    #[must_use]
    pub fn contains(&self, offset: u64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, end)| offset < *end)
    }

    /// Adds `offset`; returns whether it was absent.
    pub fn insert(&mut self, offset: u64) -> bool {
        if self.contains(offset) {
            return false;
        }
        let before = self
            .ranges
            .range(..offset)
            .next_back()
            .filter(|(_, end)| **end == offset)
            .map(|(start, _)| *start);
        let after = self.ranges.get(&(offset + 1)).copied();
        match (before, after) {
            (Some(start), Some(end)) => {
                self.ranges.remove(&(offset + 1));
                self.ranges.insert(start, end);
            }
            (Some(start), None) => {
                self.ranges.insert(start, offset + 1);
            }
            (None, Some(end)) => {
                self.ranges.remove(&(offset + 1));
                self.ranges.insert(offset, end);
            }
            (None, None) => {
                self.ranges.insert(offset, offset + 1);
            }
        }
        self.len += 1;
        true
    }

    /// Adds every offset of `start..end`.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        for offset in start..end {
            self.insert(offset);
        }
    }

    /// Removes `offset`; returns whether it was present.
    pub fn remove(&mut self, offset: u64) -> bool {
        let Some((&start, &end)) = self.ranges.range(..=offset).next_back() else {
            return false;
        };
        if offset >= end {
            return false;
        }
        self.ranges.remove(&start);
        if start < offset {
            self.ranges.insert(start, offset);
        }
        if offset + 1 < end {
            self.ranges.insert(offset + 1, end);
        }
        self.len -= 1;
        true
    }

    /// Offsets in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|(start, end)| *start..*end)
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(start, end)| (*start, *end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn contiguous_offsets_cost_one_range() {
        let mut set = OffsetSet::new();
        for offset in 0..1_000_000 {
            set.insert(offset);
        }
        assert_eq!(set.range_count(), 1);
        assert_eq!(set.len(), 1_000_000);
        assert!(set.remove(500));
        assert_eq!(set.range_count(), 2);
        assert!(!set.contains(500));
        assert!(set.insert(500));
        assert_eq!(set.range_count(), 1);
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((any::<bool>(), 0u64..64), 0..200)) {
            let mut set = OffsetSet::new();
            let mut model = BTreeSet::new();
            for (insert, offset) in ops {
                if insert {
                    prop_assert_eq!(set.insert(offset), model.insert(offset));
                } else {
                    prop_assert_eq!(set.remove(offset), model.remove(&offset));
                }
                prop_assert_eq!(set.len(), model.len() as u64);
                prop_assert_eq!(set.first(), model.first().copied());
            }
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            let ranges: Vec<(u64, u64)> = set.ranges().collect();
            for pair in ranges.windows(2) {
                prop_assert!(pair[0].1 < pair[1].0, "ranges are disjoint and not adjacent");
            }
        }
    }
}
