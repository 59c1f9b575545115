//! Idempotent producers, per partition (Kafka's producer state): for each producer id, its
//! epoch and the sequence ranges of its last batches. A retried batch that matches one of them
//! is answered with the offsets it was first given and not written again; a batch that does not
//! continue the sequence is refused, so that a lost batch can never be papered over; an older
//! epoch is fenced. The state is rebuilt from the batch headers of the log on open.

use std::collections::{HashMap, VecDeque};

use postino_storage::Durable;
use postino_storage::batch::BatchHeader;

use crate::error::CoreError;

/// Batches remembered per producer: Kafka's producer keeps at most five in flight per
/// partition (`max.in.flight.requests.per.connection` ≤ 5 with idempotence), so any retry it
/// can send is one of the last five.
pub const BATCHES_KEPT: usize = 5;

/// A producer's batch already in the log.
#[derive(Debug, Clone)]
struct Written {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    last_offset: u64,
    /// The original append's ticket: a duplicate is confirmed when the original is durable.
    durable: Durable,
}

#[derive(Debug)]
struct Entry {
    epoch: i16,
    batches: VecDeque<Written>,
}

/// What to do with a produced batch.
#[derive(Debug)]
pub enum Admit {
    /// Write it.
    Append,
    /// It was written before: answer with its first offsets, once `durable` resolves.
    Duplicate {
        base_offset: u64,
        last_offset: u64,
        durable: Durable,
    },
}

/// The sequence after `sequence` plus `delta` (sequences wrap from `i32::MAX` to 0).
fn advance(sequence: i32, delta: i32) -> i32 {
    ((i64::from(sequence) + i64::from(delta)) % (i64::from(i32::MAX) + 1)) as i32
}

/// The producer state of one partition.
#[derive(Debug, Default)]
pub struct Producers {
    entries: HashMap<i64, Entry>,
}

impl Producers {
    /// Producers known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no producer is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `header`'s batch must be written, is a duplicate, or is refused.
    ///
    /// # Errors
    /// `ProducerFenced` for an epoch older than the producer's; `OutOfOrderSequence` for a new
    /// epoch not starting at 0 or a sequence that does not follow the last batch.
    pub fn check(&self, header: &BatchHeader) -> Result<Admit, CoreError> {
        if header.producer_id < 0 {
            return Ok(Admit::Append);
        }
        let producer_id = header.producer_id;
        let first = header.base_sequence;
        // A producer the partition has not seen (new, or its batches went with retention)
        // may start anywhere, as in Kafka.
        let Some(entry) = self.entries.get(&producer_id) else {
            return Ok(Admit::Append);
        };
        if header.producer_epoch < entry.epoch {
            return Err(CoreError::ProducerFenced {
                producer_id,
                epoch: header.producer_epoch,
                current_epoch: entry.epoch,
            });
        }
        if header.producer_epoch > entry.epoch {
            return if first == 0 {
                Ok(Admit::Append)
            } else {
                Err(CoreError::OutOfOrderSequence {
                    producer_id,
                    expected: 0,
                    received: first,
                })
            };
        }
        let last = advance(first, header.last_offset_delta);
        if let Some(written) = entry
            .batches
            .iter()
            .find(|written| written.first_sequence == first && written.last_sequence == last)
        {
            return Ok(Admit::Duplicate {
                base_offset: written.base_offset,
                last_offset: written.last_offset,
                durable: written.durable.clone(),
            });
        }
        let expected = entry
            .batches
            .back()
            .map_or(first, |written| advance(written.last_sequence, 1));
        if first == expected {
            Ok(Admit::Append)
        } else {
            Err(CoreError::OutOfOrderSequence {
                producer_id,
                expected,
                received: first,
            })
        }
    }

    /// Remembers a batch that was written at `base_offset`.
    pub fn record(&mut self, header: &BatchHeader, base_offset: u64, durable: Durable) {
        if header.producer_id < 0 || header.base_sequence < 0 {
            return;
        }
        let entry = self
            .entries
            .entry(header.producer_id)
            .or_insert_with(|| Entry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_KEPT),
            });
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.batches.push_back(Written {
            first_sequence: header.base_sequence,
            last_sequence: advance(header.base_sequence, header.last_offset_delta),
            base_offset,
            last_offset: base_offset + u64::try_from(header.last_offset_delta).unwrap_or(0),
            durable,
        });
    }

    /// A transaction marker of `producer_id` at `epoch` was written: older epochs are fenced
    /// from now on (a coordinator that aborts a timed-out transaction bumps the epoch).
    pub fn fence(&mut self, producer_id: i64, epoch: i16) {
        let entry = self.entries.entry(producer_id).or_insert_with(|| Entry {
            epoch,
            batches: VecDeque::with_capacity(BATCHES_KEPT),
        });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
    }

    /// The epoch a producer writes with, if known.
    #[must_use]
    pub fn epoch(&self, producer_id: i64) -> Option<i16> {
        self.entries.get(&producer_id).map(|entry| entry.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::batch::BatchBuilder;

    fn header(producer_id: i64, epoch: i16, first: i32, records: usize) -> BatchHeader {
        let mut builder = BatchBuilder::new().producer(producer_id, epoch, first);
        for _ in 0..records {
            builder.push(0, None, Some(b"x"), &[]);
        }
        BatchHeader::parse(&builder.build()).expect("a built batch parses")
    }

    fn write(producers: &mut Producers, header: &BatchHeader, base_offset: u64) {
        assert!(matches!(producers.check(header), Ok(Admit::Append)));
        producers.record(header, base_offset, Durable::ready());
    }

    #[test]
    fn a_retried_batch_gets_its_first_offsets() {
        let mut producers = Producers::default();
        write(&mut producers, &header(7, 0, 0, 3), 10);
        write(&mut producers, &header(7, 0, 3, 2), 13);
        match producers.check(&header(7, 0, 0, 3)) {
            Ok(Admit::Duplicate {
                base_offset,
                last_offset,
                ..
            }) => assert_eq!((base_offset, last_offset), (10, 12)),
            other => panic!("expected a duplicate, got {other:?}"),
        }
    }

    #[test]
    fn a_gap_in_sequences_is_refused() {
        let mut producers = Producers::default();
        write(&mut producers, &header(7, 0, 0, 3), 0);
        let refused = producers.check(&header(7, 0, 5, 1));
        assert!(matches!(
            refused,
            Err(CoreError::OutOfOrderSequence {
                expected: 3,
                received: 5,
                ..
            })
        ));
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_starts_at_zero() {
        let mut producers = Producers::default();
        write(&mut producers, &header(7, 2, 0, 1), 0);
        assert!(matches!(
            producers.check(&header(7, 1, 1, 1)),
            Err(CoreError::ProducerFenced {
                current_epoch: 2,
                ..
            })
        ));
        assert!(matches!(
            producers.check(&header(7, 3, 4, 1)),
            Err(CoreError::OutOfOrderSequence { expected: 0, .. })
        ));
        write(&mut producers, &header(7, 3, 0, 1), 1);
        assert_eq!(producers.epoch(7), Some(3));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut producers = Producers::default();
        for batch in 0..6 {
            write(&mut producers, &header(7, 0, batch, 1), batch as u64);
        }
        assert!(matches!(
            producers.check(&header(7, 0, 1, 1)),
            Ok(Admit::Duplicate { base_offset: 1, .. })
        ));
        assert!(matches!(
            producers.check(&header(7, 0, 0, 1)),
            Err(CoreError::OutOfOrderSequence { .. })
        ));
    }

    #[test]
    fn sequences_wrap_after_the_largest() {
        let mut producers = Producers::default();
        write(&mut producers, &header(7, 0, i32::MAX - 1, 2), 0);
        write(&mut producers, &header(7, 0, 0, 1), 2);
    }

    #[test]
    fn batches_without_a_producer_are_always_written() {
        let producers = Producers::default();
        assert!(matches!(
            producers.check(&header(-1, -1, -1, 1)),
            Ok(Admit::Append)
        ));
    }
}
