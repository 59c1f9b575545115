//! The ready messages of a queue: one offset set per priority level, highest level first, and
//! their count and body bytes (what length limits count).

use crate::offsets::OffsetSet;

/// Ready offsets by priority level.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    levels: Vec<OffsetSet>,
    bytes: u64,
}

impl Ready {
    /// `levels` priority levels (1 for a queue without priorities).
    pub(crate) fn new(levels: usize) -> Self {
        Self {
            levels: vec![OffsetSet::new(); levels.max(1)],
            bytes: 0,
        }
    }

    /// The level a message of `priority` goes to (priorities above the top go to the top).
    pub(crate) fn level_of(&self, priority: Option<u8>) -> usize {
        usize::from(priority.unwrap_or(0)).min(self.levels.len() - 1)
    }

    pub(crate) fn insert(&mut self, level: usize, offset: u64, bytes: u64) {
        if self.levels[level].insert(offset) {
            self.bytes += bytes;
        }
    }

    pub(crate) fn remove(&mut self, level: usize, offset: u64, bytes: u64) {
        if self.levels[level].remove(offset) {
            self.bytes = self.bytes.saturating_sub(bytes);
        }
    }

    /// The next message to deliver: the oldest of the highest non-empty level.
    pub(crate) fn next(&self) -> Option<(usize, u64)> {
        self.levels
            .iter()
            .enumerate()
            .rev()
            .find_map(|(level, set)| set.first().map(|offset| (level, offset)))
    }

    /// The oldest ready message of any level (the one `drop-head` drops).
    pub(crate) fn oldest(&self) -> Option<(usize, u64)> {
        self.levels
            .iter()
            .enumerate()
            .filter_map(|(level, set)| set.first().map(|offset| (level, offset)))
            .min_by_key(|(_, offset)| *offset)
    }

    /// The head of each non-empty level.
    pub(crate) fn heads(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.levels
            .iter()
            .enumerate()
            .filter_map(|(level, set)| set.first().map(|offset| (level, offset)))
    }

    /// Up to `count` ready messages in delivery order (highest level first).
    pub(crate) fn in_order(&self, count: usize) -> Vec<(usize, u64)> {
        self.levels
            .iter()
            .enumerate()
            .rev()
            .flat_map(|(level, set)| set.iter().map(move |offset| (level, offset)))
            .take(count)
            .collect()
    }

    /// Whether `offset` is ready at any level.
    pub(crate) fn contains(&self, offset: u64) -> bool {
        self.levels.iter().any(|set| set.contains(offset))
    }

    pub(crate) fn len(&self) -> u64 {
        self.levels.iter().map(OffsetSet::len).sum()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The smallest ready offset of any level.
    pub(crate) fn first_offset(&self) -> Option<u64> {
        self.levels.iter().filter_map(OffsetSet::first).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_levels_go_first_and_drop_head_takes_the_oldest() {
        let mut ready = Ready::new(3);
        ready.insert(0, 1, 10);
        ready.insert(2, 5, 10);
        ready.insert(1, 3, 10);
        assert_eq!(ready.level_of(Some(9)), 2);
        assert_eq!(ready.next(), Some((2, 5)));
        assert_eq!(ready.oldest(), Some((0, 1)));
        assert_eq!(ready.in_order(3), vec![(2, 5), (1, 3), (0, 1)]);
        assert_eq!((ready.len(), ready.bytes()), (3, 30));
        ready.remove(2, 5, 10);
        assert_eq!(ready.next(), Some((1, 3)));
        assert_eq!(ready.first_offset(), Some(1));
    }
}
