//! One segment: a data file of consecutive batches, its offset index and its time index.
//!
//! Every batch read from a segment file is checked as it is read: shape, CRC32C, and that its
//! base offset continues the previous batch. A batch that fails any check is never returned.

use std::fmt::Write as _;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, warn};

use crate::batch::{self, Batch, BatchHeader, HEADER_BYTES};
use crate::config::SegmentShape;
use crate::error::LogError;
use crate::fs::{Fs, SegmentFile};
use crate::index::{OffsetIndex, TimeIndex};

/// Reads during recovery and index rebuilds are done this many bytes at a time.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Reads ask the kernel for at least this much: small enough that reading one message does not
/// cost much more than the message, large enough for a few small batches.
const READ_CHUNK_BYTES_MIN: usize = 16 << 10;
/// Reads never ask the kernel for more than this at once; larger answers take several reads.
const READ_CHUNK_BYTES_MAX: usize = 16 << 20;

/// The file name of the segment starting at `base`: 20 digits, like Kafka's.
pub(crate) fn log_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The base offset a segment file name encodes, if it is one.
pub(crate) fn parse_log_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// How a walk over batches ended.
#[derive(Debug, PartialEq, Eq)]
enum WalkEnd {
    /// Reached the end position exactly.
    End,
    /// The visitor asked to stop.
    Stopped,
    /// A batch failed a check at `position`.
    Invalid { reason: String },
}

#[derive(Debug)]
struct Walked {
    /// Where the walk stopped: the end, the first bad batch, or after the last visited batch.
    position: u64,
    end: WalkEnd,
}

/// Reads `length` bytes at `position` into a buffer taken back from `spare` when nobody holds
/// it any more (a fresh allocation of a large buffer costs a page fault per 4 KiB), and leaves a
/// handle to the new buffer in `spare` for the next read.
fn read_chunk(
    file: &dyn SegmentFile,
    position: u64,
    length: usize,
    spare: &mut Option<Bytes>,
) -> io::Result<Bytes> {
    let mut buf = spare
        .take()
        .and_then(|bytes| bytes.try_into_mut().ok())
        .unwrap_or_default();
    buf.clear();
    buf.resize(length, 0);
    let read = file.read_at(&mut buf, position)?;
    buf.truncate(read);
    let chunk = buf.freeze();
    *spare = Some(chunk.clone());
    Ok(chunk)
}

/// Visits every valid batch from `position` up to `end`, starting at offset `expected`.
fn walk(
    file: &dyn SegmentFile,
    mut position: u64,
    end: u64,
    mut expected: u64,
    chunk_bytes: usize,
    spare: &mut Option<Bytes>,
    mut visit: impl FnMut(u64, &BatchHeader, Bytes) -> ControlFlow<()>,
) -> io::Result<Walked> {
    let mut chunk = Bytes::new();
    let mut chunk_position = position;
    let invalid = |position, reason: String| Walked {
        position,
        end: WalkEnd::Invalid { reason },
    };
    loop {
        if position >= end {
            return Ok(Walked {
                position,
                end: WalkEnd::End,
            });
        }
        let remaining = end - position;
        let holds = |chunk: &Bytes, chunk_position: u64, length: u64| {
            position >= chunk_position && position + length <= chunk_position + chunk.len() as u64
        };
        if remaining < HEADER_BYTES as u64 {
            return Ok(invalid(
                position,
                format!("{remaining} bytes left, less than a batch header"),
            ));
        }
        if !holds(&chunk, chunk_position, HEADER_BYTES as u64) {
            let length = remaining.min(chunk_bytes.max(HEADER_BYTES) as u64) as usize;
            // Let go of the old chunk first, so that its buffer can be reused.
            drop(std::mem::take(&mut chunk));
            chunk = read_chunk(file, position, length, spare)?;
            chunk_position = position;
            if chunk.len() < HEADER_BYTES {
                return Ok(invalid(position, "file shorter than expected".to_owned()));
            }
        }
        let start = (position - chunk_position) as usize;
        let header = match BatchHeader::parse(&chunk[start..]) {
            Ok(header) => header,
            Err(error) => return Ok(invalid(position, error.to_string())),
        };
        let total = header.total_bytes() as u64;
        if total > remaining {
            return Ok(invalid(
                position,
                format!("batch of {total} bytes runs past the end"),
            ));
        }
        if header.base_offset != expected as i64 {
            let found = header.base_offset;
            return Ok(invalid(
                position,
                format!("batch at offset {found} where {expected} was expected"),
            ));
        }
        if !holds(&chunk, chunk_position, total) {
            let length = remaining.min(total.max(chunk_bytes as u64)) as usize;
            // Let go of the old chunk first, so that its buffer can be reused.
            drop(std::mem::take(&mut chunk));
            chunk = read_chunk(file, position, length, spare)?;
            chunk_position = position;
            if (chunk.len() as u64) < total {
                return Ok(invalid(position, "file shorter than expected".to_owned()));
            }
        }
        let start = (position - chunk_position) as usize;
        let bytes = chunk.slice(start..start + total as usize);
        if let Err(error) = batch::validate(&bytes) {
            return Ok(invalid(position, error.to_string()));
        }
        let flow = visit(position, &header, bytes);
        position += total;
        expected += header.offset_span();
        if flow.is_break() {
            return Ok(Walked {
                position,
                end: WalkEnd::Stopped,
            });
        }
    }
}

/// What is wrong with a sealed segment after a walk over it, if anything.
fn describe_problem(walked: &Walked, segment: &Segment, next_base: u64) -> Option<String> {
    let mut problem = String::new();
    if let WalkEnd::Invalid { reason } = &walked.end {
        let _ = write!(
            problem,
            "invalid batch at position {}: {reason}; ",
            walked.position
        );
    }
    if segment.next != next_base {
        let _ = write!(
            problem,
            "valid batches end at offset {} but the next segment starts at {next_base}",
            segment.next
        );
    }
    (!problem.is_empty()).then_some(problem)
}

/// One segment of a log, with its indexes in memory.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Offset of the first batch.
    pub(crate) base: u64,
    /// Offset after the last batch.
    pub(crate) next: u64,
    /// Bytes of valid batches; the file may hold more only while they are being cut.
    pub(crate) size: u64,
    /// Greatest batch timestamp, -1 when empty.
    pub(crate) max_timestamp: i64,
    /// Timestamp of the first batch, for rolling by age.
    pub(crate) first_timestamp: Option<i64>,
    pub(crate) file: Arc<dyn SegmentFile>,
    path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    last_batch_relative: u32,
    index_interval_bytes: u64,
    /// Blocks reserved with `fallocate` so far (the file length does not include them).
    reserved_bytes: u64,
    /// Reserve this many bytes ahead of the write position at a time (0: never).
    reserve_step_bytes: u64,
    /// Never reserve past this (the segment size limit).
    reserve_limit_bytes: u64,
}

impl Segment {
    fn new(file: Arc<dyn SegmentFile>, dir: &Path, base: u64, index_interval_bytes: u32) -> Self {
        let path = dir.join(log_name(base));
        Self {
            base,
            next: base,
            size: 0,
            max_timestamp: -1,
            first_timestamp: None,
            file,
            index_path: path.with_extension("index"),
            time_index_path: path.with_extension("timeindex"),
            path,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
            last_batch_relative: 0,
            index_interval_bytes: u64::from(index_interval_bytes),
            reserved_bytes: 0,
            reserve_step_bytes: 0,
            reserve_limit_bytes: 0,
        }
    }

    pub(crate) fn shape(&self) -> SegmentShape {
        SegmentShape {
            base: self.base,
            size: self.size,
            max_timestamp: self.max_timestamp,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str, source: io::Error) -> LogError {
        LogError::io(op, &self.path, source)
    }

    fn corrupt(&self, position: u64, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            position,
            reason,
        }
    }

    /// A new empty segment; an old file of the same name is emptied first.
    pub(crate) fn create(
        fs: &dyn Fs,
        dir: &Path,
        base: u64,
        index_interval_bytes: u32,
    ) -> Result<Self, LogError> {
        let path = dir.join(log_name(base));
        let file = fs
            .open(&path)
            .map_err(|source| LogError::io("create", &path, source))?;
        let segment = Self::new(file, dir, base, index_interval_bytes);
        segment
            .file
            .set_len(0)
            .map_err(|source| segment.io("empty", source))?;
        for stale in [&segment.index_path, &segment.time_index_path] {
            fs.remove(stale)
                .map_err(|source| LogError::io("remove", stale, source))?;
        }
        Ok(segment)
    }

    /// Makes appends reserve blocks `step_bytes` ahead of the write position, up to
    /// `limit_bytes`; 0 turns reservation off.
    pub(crate) fn reserve_ahead(&mut self, step_bytes: u64, limit_bytes: u64) {
        self.reserve_step_bytes = step_bytes;
        self.reserve_limit_bytes = limit_bytes;
    }

    /// Reserves blocks for an append that ends at `end`; a file system without `fallocate`
    /// just goes without (reservation is an optimisation, never needed for correctness).
    fn reserve_for(&mut self, end: u64) {
        if self.reserve_step_bytes == 0 || end <= self.reserved_bytes {
            return;
        }
        let target = (end + self.reserve_step_bytes).min(self.reserve_limit_bytes.max(end));
        match self.file.preallocate(target) {
            Ok(()) => self.reserved_bytes = target,
            // A full file system: the write itself will tell; reserve again when space is back.
            Err(error) if LogError::is_no_space(&error) => {
                debug!(path = %self.path.display(), %error, "no space to preallocate");
            }
            Err(error) => {
                debug!(path = %self.path.display(), %error, "preallocation not available");
                self.reserve_step_bytes = 0;
            }
        }
    }

    /// Cuts what a failed append left past the last whole batch, so that the file ends where
    /// the index says it does.
    pub(crate) fn cut_failed_append(&mut self) -> io::Result<()> {
        self.file.set_len(self.size)?;
        // Shortening a file frees the blocks past its end, reserved ones included.
        self.reserved_bytes = 0;
        Ok(())
    }

    /// Records a batch that sits at `position` in the file.
    fn index_batch(&mut self, position: u64, header: &BatchHeader) {
        let relative = (header.base_offset as u64 - self.base) as u32;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.first_timestamp.get_or_insert(header.max_timestamp);
        if position > 0 && self.bytes_since_index >= self.index_interval_bytes {
            self.offset_index.push(relative, position as u32);
            self.time_index.push(self.max_timestamp, relative);
            self.bytes_since_index = 0;
        }
        let total = header.total_bytes() as u64;
        self.bytes_since_index += total;
        self.last_batch_relative = relative;
        self.size = position + total;
        self.next = header.base_offset as u64 + header.offset_span();
    }

    /// Opens a segment file that exists, with empty indexes; returns it and the file length.
    fn open_existing(
        fs: &dyn Fs,
        dir: &Path,
        base: u64,
        index_interval_bytes: u32,
    ) -> Result<(Self, u64), LogError> {
        let path = dir.join(log_name(base));
        let file = fs
            .open(&path)
            .map_err(|source| LogError::io("open", &path, source))?;
        let segment = Self::new(file, dir, base, index_interval_bytes);
        let length = segment
            .file
            .byte_len()
            .map_err(|source| segment.io("stat", source))?;
        Ok((segment, length))
    }

    /// Opens the last segment of a log: scans it whole and cuts it after its last valid batch.
    /// Returns the segment and how many bytes were cut.
    pub(crate) fn recover(
        fs: &dyn Fs,
        dir: &Path,
        base: u64,
        index_interval_bytes: u32,
    ) -> Result<(Self, u64), LogError> {
        let (mut segment, length) = Self::open_existing(fs, dir, base, index_interval_bytes)?;
        let file = Arc::clone(&segment.file);
        let walked = walk(
            file.as_ref(),
            0,
            length,
            base,
            SCAN_CHUNK_BYTES,
            &mut None,
            |position, header, _| {
                segment.index_batch(position, header);
                ControlFlow::Continue(())
            },
        )
        .map_err(|source| segment.io("scan", source))?;
        let cut = length - walked.position;
        if let WalkEnd::Invalid { reason } = walked.end {
            warn!(
                path = %segment.path.display(),
                position = walked.position,
                cut_bytes = cut,
                next_offset = segment.next,
                %reason,
                "discarding the torn or corrupt tail of the last segment"
            );
            segment
                .file
                .set_len(walked.position)
                .map_err(|source| segment.io("truncate", source))?;
        }
        segment
            .file
            .sync_data()
            .map_err(|source| segment.io("sync", source))?;
        Ok((segment, cut))
    }

    /// Opens a sealed segment whose successor starts at `next_base`. Loads its indexes, checks
    /// them and the batches after the last index entry, and rebuilds the indexes by a full scan
    /// when they do not hold together. Returns the segment, whether the indexes were rebuilt,
    /// and a description of any corruption found (reads of that range will fail).
    pub(crate) fn open_sealed(
        fs: &dyn Fs,
        dir: &Path,
        base: u64,
        next_base: u64,
        index_interval_bytes: u32,
    ) -> Result<(Self, bool, Option<String>), LogError> {
        let (mut segment, length) = Self::open_existing(fs, dir, base, index_interval_bytes)?;
        let span = next_base.saturating_sub(base);
        let loaded = fs
            .read(&segment.index_path)
            .ok()
            .and_then(|bytes| OffsetIndex::decode(&bytes, length))
            .zip(
                fs.read(&segment.time_index_path)
                    .ok()
                    .and_then(|bytes| TimeIndex::decode(&bytes, span)),
            );
        let mut rebuilt = true;
        let mut start = (0, 0);
        if let Some((offset_index, time_index)) = loaded {
            start = offset_index.last().unwrap_or((0, 0));
            segment.offset_index = offset_index;
            segment.max_timestamp = time_index.max_timestamp().unwrap_or(-1);
            segment.time_index = time_index;
            rebuilt = false;
        }
        let file = Arc::clone(&segment.file);
        let (relative, position) = start;
        let mut visited = false;
        let walked = walk(
            file.as_ref(),
            u64::from(position),
            length,
            base + u64::from(relative),
            SCAN_CHUNK_BYTES,
            &mut None,
            |position, header, _| {
                if rebuilt {
                    segment.index_batch(position, header);
                } else {
                    segment.max_timestamp = segment.max_timestamp.max(header.max_timestamp);
                    segment.last_batch_relative = (header.base_offset as u64 - base) as u32;
                    segment.next = header.base_offset as u64 + header.offset_span();
                }
                visited = true;
                ControlFlow::Continue(())
            },
        )
        .map_err(|source| segment.io("scan", source))?;
        if !rebuilt && !visited && length > 0 {
            // The last index entry did not point at a batch: distrust the index entirely and
            // rebuild it from the whole segment.
            segment.offset_index = OffsetIndex::default();
            segment.time_index = TimeIndex::default();
            segment.max_timestamp = -1;
            return Self::open_sealed_by_scan(segment, fs, length, next_base);
        }
        segment.size = length;
        let problem = describe_problem(&walked, &segment, next_base);
        if rebuilt {
            segment.write_indexes(fs);
        }
        Ok((segment, rebuilt, problem))
    }

    fn open_sealed_by_scan(
        mut segment: Self,
        fs: &dyn Fs,
        length: u64,
        next_base: u64,
    ) -> Result<(Self, bool, Option<String>), LogError> {
        let file = Arc::clone(&segment.file);
        let walked = walk(
            file.as_ref(),
            0,
            length,
            segment.base,
            SCAN_CHUNK_BYTES,
            &mut None,
            |position, header, _| {
                segment.index_batch(position, header);
                ControlFlow::Continue(())
            },
        )
        .map_err(|source| segment.io("scan", source))?;
        segment.size = length;
        let problem = describe_problem(&walked, &segment, next_base);
        segment.write_indexes(fs);
        Ok((segment, true, problem))
    }

    /// Stamps `base_offset` into a batch whose header was checked and writes it at the end.
    pub(crate) fn append(
        &mut self,
        base_offset: u64,
        header: &BatchHeader,
        batch: &mut [u8],
    ) -> io::Result<()> {
        self.reserve_for(self.size + batch.len() as u64);
        batch::stamp_base_offset(batch, base_offset);
        self.file.write_all_at(&[batch], self.size)?;
        let header = BatchHeader {
            base_offset: base_offset as i64,
            ..*header
        };
        self.index_batch(self.size, &header);
        Ok(())
    }

    /// Batches from the one holding `from`, up to `max_bytes` (always at least one batch).
    /// `spare` is a read buffer to reuse, kept by the caller between reads.
    pub(crate) fn read(
        &self,
        from: u64,
        max_bytes: usize,
        spare: &mut Option<Bytes>,
    ) -> Result<Vec<Batch>, LogError> {
        if from >= self.next {
            return Ok(Vec::new());
        }
        let relative = from.saturating_sub(self.base).min(u64::from(u32::MAX)) as u32;
        let (entry, position) = self.offset_index.lookup(relative);
        // The batch wanted starts within one index interval of the entry; a batch longer than
        // the chunk is read again whole by the walk.
        let chunk = max_bytes
            .saturating_add(self.index_interval_bytes as usize)
            .clamp(READ_CHUNK_BYTES_MIN, READ_CHUNK_BYTES_MAX);
        let mut batches = Vec::new();
        let mut taken = 0usize;
        let walked = walk(
            self.file.as_ref(),
            u64::from(position),
            self.size,
            self.base + u64::from(entry),
            chunk,
            spare,
            |_, header, bytes| {
                let last = header.base_offset as u64 + header.offset_span() - 1;
                if last < from {
                    return ControlFlow::Continue(());
                }
                if !batches.is_empty() && taken + bytes.len() > max_bytes {
                    return ControlFlow::Break(());
                }
                taken += bytes.len();
                batches.push(Batch::checked(*header, bytes));
                if taken >= max_bytes {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .map_err(|source| self.io("read", source))?;
        match walked.end {
            WalkEnd::Invalid { reason } if batches.is_empty() => {
                Err(self.corrupt(walked.position, reason))
            }
            _ => Ok(batches),
        }
    }

    /// The first offset whose record timestamp is at or after `timestamp`, if this segment has
    /// one. Records of a compressed batch are not decoded: its base offset stands for them.
    pub(crate) fn find_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        if self.max_timestamp < timestamp {
            return Ok(None);
        }
        let (entry, position) = self
            .offset_index
            .lookup(self.time_index.start_for(timestamp));
        let mut found = None;
        let mut failure = None;
        let walked = walk(
            self.file.as_ref(),
            u64::from(position),
            self.size,
            self.base + u64::from(entry),
            SCAN_CHUNK_BYTES,
            &mut None,
            |_, header, bytes| {
                if header.max_timestamp < timestamp {
                    return ControlFlow::Continue(());
                }
                let batch = Batch::checked(*header, bytes);
                found = match batch.records() {
                    Ok(records) => records
                        .iter()
                        .find(|record| record.timestamp_ms >= timestamp)
                        .map(|record| record.offset)
                        .or(Some(batch.base_offset())),
                    Err(batch::BatchError::Compressed { .. }) => Some(batch.base_offset()),
                    Err(error) => {
                        failure = Some(error.to_string());
                        None
                    }
                };
                ControlFlow::Break(())
            },
        )
        .map_err(|source| self.io("read", source))?;
        if let Some(reason) = failure {
            return Err(self.corrupt(walked.position, reason));
        }
        match walked.end {
            WalkEnd::Invalid { reason } if found.is_none() => {
                Err(self.corrupt(walked.position, reason))
            }
            _ => Ok(found),
        }
    }

    /// Removes the batch holding `offset` and everything after it; the cut is synced.
    pub(crate) fn truncate_to(&mut self, offset: u64) -> Result<(), LogError> {
        let file = Arc::clone(&self.file);
        let old_size = self.size;
        self.offset_index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.max_timestamp = -1;
        self.first_timestamp = None;
        self.bytes_since_index = 0;
        self.size = 0;
        self.next = self.base;
        let walked = walk(
            file.as_ref(),
            0,
            old_size,
            self.base,
            SCAN_CHUNK_BYTES,
            &mut None,
            |position, header, _| {
                if header.base_offset as u64 + header.offset_span() > offset {
                    return ControlFlow::Break(());
                }
                self.index_batch(position, header);
                ControlFlow::Continue(())
            },
        )
        .map_err(|source| self.io("scan", source))?;
        if let WalkEnd::Invalid { reason } = walked.end {
            return Err(self.corrupt(walked.position, reason));
        }
        self.file
            .set_len(self.size)
            .map_err(|source| self.io("truncate", source))?;
        // Truncation frees every block past the new length, reserved ones included.
        self.reserved_bytes = 0;
        self.file
            .sync_data()
            .map_err(|source| self.io("sync", source))
    }

    /// Writes the index files (not synced: recovery checks them).
    pub(crate) fn write_indexes(&self, fs: &dyn Fs) {
        let written = fs
            .write(&self.index_path, &self.offset_index.encode())
            .and_then(|()| fs.write(&self.time_index_path, &self.time_index.encode()));
        if let Err(error) = written {
            warn!(path = %self.path.display(), %error, "could not write segment indexes; they will be rebuilt on open");
        }
    }

    /// Finishes the segment before a new one starts after it.
    pub(crate) fn seal(&mut self, fs: &dyn Fs) {
        self.time_index
            .push(self.max_timestamp, self.last_batch_relative);
        self.write_indexes(fs);
        self.release_reserved();
    }

    /// Gives back the blocks reserved past the data (a sealed or closed segment).
    pub(crate) fn release_reserved(&mut self) {
        if let Err(error) = self
            .file
            .release_preallocation(self.size, self.reserved_bytes)
        {
            debug!(path = %self.path.display(), %error, "could not release preallocated blocks");
        }
        self.reserved_bytes = 0;
    }

    /// Deletes the segment's files.
    pub(crate) fn remove(&self, fs: &dyn Fs) -> Result<(), LogError> {
        for path in [&self.path, &self.index_path, &self.time_index_path] {
            fs.remove(path)
                .map_err(|source| LogError::io("remove", path, source))?;
        }
        Ok(())
    }
}
