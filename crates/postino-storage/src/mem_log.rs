//! The in-memory log: the same behaviour as [`crate::FileLog`] (segments, rolls, retention,
//! truncation, reads) with nothing on disk, for tests and transient data.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use postino_types::{Clock, Offset};

use crate::batch::{self, Batch, BatchError};
use crate::config::{LogConfig, SegmentShape};
use crate::error::LogError;
use crate::{Appended, Durable, Log};

#[derive(Debug, Clone)]
struct MemSegment {
    base: u64,
    next: u64,
    size: u64,
    max_timestamp: i64,
    first_timestamp: Option<i64>,
    batches: Vec<Batch>,
}

impl MemSegment {
    fn new(base: u64) -> Self {
        Self {
            base,
            next: base,
            size: 0,
            max_timestamp: -1,
            first_timestamp: None,
            batches: Vec::new(),
        }
    }

    fn shape(&self) -> SegmentShape {
        SegmentShape {
            base: self.base,
            size: self.size,
            max_timestamp: self.max_timestamp,
        }
    }

    fn push(&mut self, batch: Batch) {
        self.size += batch.bytes().len() as u64;
        self.next = batch.last_offset() + 1;
        self.max_timestamp = self.max_timestamp.max(batch.header().max_timestamp);
        self.first_timestamp
            .get_or_insert(batch.header().max_timestamp);
        self.batches.push(batch);
    }
}

/// Where a [`MemLog`] keeps its batches; outlives the log so that a test can "reopen" it.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    segments: Arc<Mutex<Vec<MemSegment>>>,
}

impl MemStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<MemSegment>> {
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A log held in memory; every append is durable at once.
#[derive(Debug)]
pub struct MemLog {
    store: MemStore,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    active_since_ms: i64,
}

impl MemLog {
    /// Opens the log kept in `store` (empty for a new store).
    ///
    /// # Errors
    /// [`LogError::Config`] for unusable settings.
    pub fn open(
        store: &MemStore,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LogError> {
        config.validate()?;
        let now = clock.now_ms();
        let mut segments = store.lock();
        if segments.is_empty() {
            segments.push(MemSegment::new(0));
        }
        let active_since_ms = segments
            .last()
            .and_then(|segment| segment.first_timestamp)
            .map_or(now, |first| first.min(now));
        drop(segments);
        Ok(Self {
            store: store.clone(),
            config,
            clock,
            active_since_ms,
        })
    }

    fn segments(&self) -> MutexGuard<'_, Vec<MemSegment>> {
        self.store.lock()
    }
}

impl Log for MemLog {
    fn append(&mut self, batch: &mut [u8]) -> Result<Appended, LogError> {
        let header = self.config.check_batch(batch)?;
        let now = self.clock.now_ms();
        let config = &self.config;
        let mut segments = self.store.lock();
        let active = segments.last().expect("a log always has an active segment");
        let base = active.next;
        let next = base + header.offset_span();
        if config.must_roll(active.shape(), batch.len(), next, now, self.active_since_ms) {
            segments.push(MemSegment::new(base));
            self.active_since_ms = now;
        }
        batch::stamp_base_offset(batch, base);
        let stored = Batch::from_bytes(Bytes::copy_from_slice(batch))?;
        segments.last_mut().expect("active segment").push(stored);
        Ok(Appended {
            base_offset: Offset(base),
            last_offset: Offset(next - 1),
            durable: Durable::ready(),
        })
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<Batch>, LogError> {
        LogError::check_range(from.0, self.earliest_offset().0, self.next_offset().0)?;
        let segments = self.segments();
        let start = segments
            .partition_point(|segment| segment.base <= from.0)
            .saturating_sub(1);
        for segment in &segments[start..] {
            let mut taken = 0usize;
            let mut out = Vec::new();
            let first = segment
                .batches
                .partition_point(|batch| batch.last_offset() < from.0);
            for batch in &segment.batches[first..] {
                let length = batch.bytes().len();
                if !out.is_empty() && taken + length > max_bytes {
                    break;
                }
                taken += length;
                out.push(batch.clone());
                if taken >= max_bytes {
                    break;
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        Ok(Vec::new())
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, LogError> {
        let segments = self.segments();
        let Some(segment) = segments
            .iter()
            .find(|segment| segment.max_timestamp >= timestamp_ms)
        else {
            return Ok(None);
        };
        let Some(batch) = segment
            .batches
            .iter()
            .find(|batch| batch.header().max_timestamp >= timestamp_ms)
        else {
            return Ok(None);
        };
        let offset = match batch.records() {
            Ok(records) => records
                .iter()
                .find(|record| record.timestamp_ms >= timestamp_ms)
                .map_or(batch.base_offset(), |record| record.offset),
            Err(BatchError::Compressed { .. }) => batch.base_offset(),
            Err(error) => return Err(error.into()),
        };
        Ok(Some(Offset(offset)))
    }

    fn truncate(&mut self, to: Offset) -> Result<Offset, LogError> {
        let now = self.clock.now_ms();
        let mut segments = self.store.lock();
        let next = segments.last().map_or(0, |segment| segment.next);
        if to.0 >= next {
            return Ok(Offset(next));
        }
        while segments.len() > 1 && segments.last().is_some_and(|segment| segment.base >= to.0) {
            segments.pop();
        }
        let active = segments.last_mut().expect("one segment");
        if active.base >= to.0 {
            *active = MemSegment::new(to.0);
        } else {
            let kept: Vec<Batch> = active
                .batches
                .iter()
                .take_while(|batch| batch.last_offset() < to.0)
                .cloned()
                .collect();
            *active = MemSegment::new(active.base);
            for batch in kept {
                active.push(batch);
            }
        }
        self.active_since_ms = active.first_timestamp.map_or(now, |first| first.min(now));
        Ok(Offset(active.next))
    }

    fn earliest_offset(&self) -> Offset {
        Offset(self.segments().first().map_or(0, |segment| segment.base))
    }

    fn next_offset(&self) -> Offset {
        Offset(self.segments().last().map_or(0, |segment| segment.next))
    }

    fn durable_offset(&self) -> Offset {
        self.next_offset()
    }

    fn delete_up_to(&mut self, offset: Offset) -> Result<usize, LogError> {
        let mut segments = self.segments();
        let mut removed = 0;
        while segments.len() > 1 && segments[1].base <= offset.0 {
            segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    fn enforce_retention(&mut self) -> Result<usize, LogError> {
        let mut segments = self.segments();
        let shapes: Vec<SegmentShape> = segments.iter().map(MemSegment::shape).collect();
        let expired = self.config.expired_segments(&shapes, self.clock.now_ms());
        segments.drain(..expired);
        Ok(expired)
    }

    fn compact(
        &mut self,
        below: Offset,
        keep: &mut dyn FnMut(&batch::Record) -> bool,
    ) -> Result<u64, LogError> {
        let mut segments = self.segments();
        let sealed = segments.len() - 1;
        let mut removed = 0;
        for segment in segments.iter_mut().take(sealed) {
            if segment.next > below.0 {
                break;
            }
            let (rewritten, gone, changed) = batch::compact_batches(&segment.batches, keep)?;
            if !changed {
                continue;
            }
            removed += gone;
            let mut fresh = MemSegment::new(segment.base);
            for bytes in rewritten {
                fresh.push(Batch::from_bytes(bytes)?);
            }
            fresh.first_timestamp = segment.first_timestamp;
            *segment = fresh;
        }
        Ok(removed)
    }

    fn size_bytes(&self) -> u64 {
        self.segments().iter().map(|segment| segment.size).sum()
    }

    fn segment_count(&self) -> usize {
        self.segments().len()
    }

    fn close(self) -> Result<(), LogError> {
        Ok(())
    }
}
