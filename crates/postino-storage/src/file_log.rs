//! The durable log: a directory of segments, group-committed syncs, recovery on open.
//!
//! Write path (sync points in capitals): validate the batch → roll if the active segment is
//! full or old (seal: index files written, preallocation released; new file created, the
//! directory marked dirty) → `pwritev` the stamped base offset and the rest of the batch at the
//! end of the active segment → index in memory → hand the file to the sync thread → the sync
//! thread's FDATASYNC of every dirty file (and FSYNC of the directory when a file was created)
//! → the append's ticket resolves.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use postino_types::{Clock, Offset, SystemClock};
use tracing::{error, info};

use crate::batch::Batch;
use crate::config::{Durability, LogConfig, SegmentShape};
use crate::error::LogError;
use crate::fs::{Fs, process_fs};
use crate::segment::{Segment, parse_log_name};
use crate::sync::Syncer;
use crate::{Appended, Log};

/// What opening a log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments found (or 1 for a new log).
    pub segments: usize,
    /// Bytes cut from the tail of the last segment (a torn or corrupt write).
    pub truncated_bytes: u64,
    /// Sealed segments whose index files were missing or inconsistent and were rebuilt.
    pub rebuilt_indexes: usize,
    /// Sealed segments holding corrupt data, with what is wrong; reads of it fail.
    pub corrupt_segments: Vec<(PathBuf, String)>,
    /// The next offset after recovery.
    pub next_offset: u64,
}

/// A log stored in a directory of segment files.
#[derive(Debug)]
pub struct FileLog {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    /// Sorted by base offset; never empty; the last one takes appends.
    segments: Vec<Segment>,
    syncer: Syncer,
    active_since_ms: i64,
    report: OpenReport,
    /// The buffer of the last read, reused by the next once its batches are dropped.
    read_spare: Mutex<Option<Bytes>>,
    _lock: File,
}

impl FileLog {
    /// Opens (or creates) the log in `dir` on the real clock and the real file system (or the
    /// one [`crate::fs::set_process_fs`] set).
    ///
    /// # Errors
    /// [`LogError::Config`] for unusable settings, [`LogError::Locked`] when another process has
    /// the directory open, storage errors.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Self, LogError> {
        Self::open_with(dir, config, process_fs(), Arc::new(SystemClock))
    }

    /// Opens (or creates) the log in `dir` with the given file system and clock.
    ///
    /// # Errors
    /// As [`FileLog::open`].
    pub fn open_with(
        dir: impl AsRef<Path>,
        config: LogConfig,
        fs: Arc<dyn Fs>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LogError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs.create_dir_all(&dir)
            .map_err(|source| LogError::io("create directory", &dir, source))?;
        let lock = lock_dir(&dir)?;
        let listed = fs
            .list(&dir)
            .map_err(|source| LogError::io("list", &dir, source))?;
        // A compaction cut short leaves its new segment under a temporary name: the old
        // segment is still whole, so the temporary file goes.
        for stale in listed.iter().filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == CLEANED_EXTENSION)
        }) {
            fs.remove(stale)
                .map_err(|source| LogError::io("remove", stale, source))?;
        }
        let mut bases: Vec<u64> = listed
            .iter()
            .filter_map(|path| parse_log_name(path))
            .collect();
        bases.sort_unstable();
        let interval = config.index_interval_bytes;
        let mut report = OpenReport::default();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for pair in bases.windows(2) {
            let (segment, rebuilt, problem) =
                Segment::open_sealed(fs.as_ref(), &dir, pair[0], pair[1], interval)?;
            report.rebuilt_indexes += usize::from(rebuilt);
            if let Some(problem) = problem {
                error!(path = %segment.path().display(), %problem, "sealed segment is corrupt; reads of the bad range will fail");
                report
                    .corrupt_segments
                    .push((segment.path().to_path_buf(), problem));
            }
            segments.push(segment);
        }
        match bases.last() {
            Some(&base) => {
                let (active, cut) = Segment::recover(fs.as_ref(), &dir, base, interval)?;
                report.truncated_bytes = cut;
                segments.push(active);
            }
            None => {
                segments.push(Segment::create(fs.as_ref(), &dir, 0, interval)?);
                fs.sync_dir(&dir)
                    .map_err(|source| LogError::io("sync directory", &dir, source))?;
            }
        }
        if let Some(active) = segments.last_mut() {
            active.reserve_ahead(config.preallocate_bytes, config.segment_bytes_max);
        }
        let next = segments.last().map_or(0, |segment| segment.next);
        report.segments = segments.len();
        report.next_offset = next;
        let syncer = Syncer::start(config.durability, Arc::clone(&fs), dir.clone(), next)?;
        let now = clock.now_ms();
        let active_since_ms = segments
            .last()
            .and_then(|segment| segment.first_timestamp)
            .map_or(now, |first| first.min(now));
        info!(
            dir = %dir.display(),
            segments = report.segments,
            next_offset = next,
            truncated_bytes = report.truncated_bytes,
            rebuilt_indexes = report.rebuilt_indexes,
            durability = %config.durability,
            "log opened"
        );
        Ok(Self {
            dir,
            fs,
            config,
            clock,
            segments,
            syncer,
            active_since_ms,
            report,
            read_spare: Mutex::new(None),
            _lock: lock,
        })
    }

    /// What opening found and repaired.
    #[must_use]
    pub fn report(&self) -> &OpenReport {
        &self.report
    }

    /// The directory holding the segments.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File and directory syncs the group commit has completed since open.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncer.syncs()
    }

    /// Drops the segments' pages from the kernel's cache (to measure cold reads).
    ///
    /// # Errors
    /// Storage errors.
    pub fn drop_cache(&self) -> Result<(), LogError> {
        self.segments.iter().try_for_each(|segment| {
            segment
                .file
                .drop_cache()
                .map_err(|source| LogError::io("drop cache of", segment.path(), source))
        })
    }

    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    /// Marks the log failed with `error` and returns it.
    fn fail(&self, error: LogError) -> LogError {
        error!(dir = %self.dir.display(), %error, "log write failed, log stops accepting writes");
        self.syncer.fail(&error.to_string());
        error
    }

    fn roll(&mut self, now_ms: i64) -> Result<(), LogError> {
        let fs = Arc::clone(&self.fs);
        let active = self.active();
        // Under `fsync` and `interval`, a segment is on disk whole before the next one exists,
        // so that recovery never finds a torn sealed segment (see storage-format.md).
        let synced = match self.config.durability {
            Durability::None => Ok(()),
            Durability::Fsync | Durability::Interval(_) => active
                .file
                .sync_data()
                .map_err(|source| LogError::io("sync", active.path(), source)),
        };
        let next = active.next;
        synced.map_err(|error| self.fail(error))?;
        // The new segment is made before the old one is sealed: when the file system is full,
        // the old one stays active and the log as it was.
        let mut segment = match Segment::create(
            fs.as_ref(),
            &self.dir,
            next,
            self.config.index_interval_bytes,
        ) {
            Ok(segment) => segment,
            Err(LogError::Io { path, source, .. }) if LogError::is_no_space(&source) => {
                return Err(LogError::NoSpace { path });
            }
            Err(error) => return Err(self.fail(error)),
        };
        segment.reserve_ahead(self.config.preallocate_bytes, self.config.segment_bytes_max);
        self.segments
            .last_mut()
            .expect("a log always has an active segment")
            .seal(fs.as_ref());
        self.segments.push(segment);
        self.syncer.dir_changed();
        self.active_since_ms = now_ms;
        Ok(())
    }

    fn remove_front(&mut self) -> Result<(), LogError> {
        let segment = self.segments.remove(0);
        segment
            .remove(self.fs.as_ref())
            .map_err(|error| self.fail(error))?;
        self.syncer.dir_changed();
        Ok(())
    }
}

/// Takes an exclusive lock on `dir/.lock` for as long as the returned file lives.
/// The extension of a segment being rewritten by compaction.
const CLEANED_EXTENSION: &str = "cleaned";

fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LogError::io("open", &path, source))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(LogError::io("lock", &path, source)),
    }
}

impl Log for FileLog {
    fn append(&mut self, batch: &mut [u8]) -> Result<Appended, LogError> {
        self.syncer.check_failed()?;
        let header = self.config.check_batch(batch)?;
        let base = self.next_offset().0;
        let next = base + header.offset_span();
        // The clock matters only for rolling by age.
        let now = match self.config.segment_age_max {
            Some(_) => self.clock.now_ms(),
            None => self.active_since_ms,
        };
        if self.config.must_roll(
            self.active().shape(),
            batch.len(),
            next,
            now,
            self.active_since_ms,
        ) {
            self.roll(now)?;
        }
        let active = self
            .segments
            .last_mut()
            .expect("a log always has an active segment");
        if let Err(source) = active.append(base, &header, batch) {
            // A full file system refused the write: once its partial bytes are cut, the log
            // is as it was and stays open for when space is freed.
            if LogError::is_no_space(&source) && active.cut_failed_append().is_ok() {
                return Err(LogError::NoSpace {
                    path: active.path().to_path_buf(),
                });
            }
            let error = LogError::io("append to", active.path(), source);
            return Err(self.fail(error));
        }
        let durable = self.syncer.wrote(&active.file, next);
        Ok(Appended {
            base_offset: Offset(base),
            last_offset: Offset(next - 1),
            durable,
        })
    }

    fn read(&self, from: Offset, max_bytes: usize) -> Result<Vec<Batch>, LogError> {
        LogError::check_range(from.0, self.earliest_offset().0, self.next_offset().0)?;
        let start = self
            .segments
            .partition_point(|segment| segment.base <= from.0)
            .saturating_sub(1);
        let mut spare = self
            .read_spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for segment in &self.segments[start..] {
            let batches = segment.read(from.0, max_bytes, &mut spare)?;
            if !batches.is_empty() {
                return Ok(batches);
            }
        }
        Ok(Vec::new())
    }

    fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<Offset>, LogError> {
        for segment in &self.segments {
            if let Some(offset) = segment.find_timestamp(timestamp_ms)? {
                return Ok(Some(Offset(offset)));
            }
        }
        Ok(None)
    }

    fn truncate(&mut self, to: Offset) -> Result<Offset, LogError> {
        self.syncer.check_failed()?;
        let to = to.0;
        if to >= self.next_offset().0 {
            return Ok(self.next_offset());
        }
        let fs = Arc::clone(&self.fs);
        let interval = self.config.index_interval_bytes;
        let outcome = (|| {
            while self.segments.len() > 1 && self.active().base >= to {
                let segment = self.segments.pop().expect("more than one segment");
                segment.remove(fs.as_ref())?;
            }
            if self.active().base >= to {
                let segment = self.segments.pop().expect("one segment");
                segment.remove(fs.as_ref())?;
                self.segments
                    .push(Segment::create(fs.as_ref(), &self.dir, to, interval)?);
            } else {
                self.segments
                    .last_mut()
                    .expect("one segment")
                    .truncate_to(to)?;
            }
            let (step, limit) = (self.config.preallocate_bytes, self.config.segment_bytes_max);
            self.segments
                .last_mut()
                .expect("one segment")
                .reserve_ahead(step, limit);
            fs.sync_dir(&self.dir)
                .map_err(|source| LogError::io("sync directory", &self.dir, source))
        })();
        if let Err(error) = outcome {
            return Err(self.fail(error));
        }
        let next = self.active().next;
        self.syncer.reset(next);
        let now = self.clock.now_ms();
        self.active_since_ms = self
            .active()
            .first_timestamp
            .map_or(now, |first| first.min(now));
        Ok(Offset(next))
    }

    fn earliest_offset(&self) -> Offset {
        Offset(self.segments.first().map_or(0, |segment| segment.base))
    }

    fn next_offset(&self) -> Offset {
        Offset(self.active().next)
    }

    fn durable_offset(&self) -> Offset {
        match self.config.durability {
            Durability::Fsync => Offset(self.syncer.durable_next().min(self.active().next)),
            Durability::Interval(_) | Durability::None => self.next_offset(),
        }
    }

    fn delete_up_to(&mut self, offset: Offset) -> Result<usize, LogError> {
        self.syncer.check_failed()?;
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].base <= offset.0 {
            self.remove_front()?;
            removed += 1;
        }
        Ok(removed)
    }

    fn compact(
        &mut self,
        below: Offset,
        keep: &mut dyn FnMut(&crate::batch::Record) -> bool,
    ) -> Result<u64, LogError> {
        self.syncer.check_failed()?;
        let fs = Arc::clone(&self.fs);
        let interval = self.config.index_interval_bytes;
        let mut removed = 0;
        for index in 0..self.segments.len() - 1 {
            let (base, next) = (self.segments[index].base, self.segments[index].next);
            if next > below.0 {
                break;
            }
            let mut batches = Vec::new();
            let mut at = base;
            while at < next {
                let read = self.segments[index].read(at, 1 << 20, &mut None)?;
                let Some(last) = read.last() else { break };
                at = last.last_offset() + 1;
                batches.extend(read);
            }
            let (rewritten, gone, changed) = crate::batch::compact_batches(&batches, keep)?;
            if !changed {
                continue;
            }
            let path = self.segments[index].path().to_path_buf();
            let cleaned = path.with_extension(CLEANED_EXTENSION);
            let cleaned_ref = &cleaned;
            let io = |op: &'static str| move |source| LogError::io(op, cleaned_ref, source);
            let file = fs.open(&cleaned).map_err(io("create"))?;
            file.set_len(0).map_err(io("empty"))?;
            let parts: Vec<&[u8]> = rewritten.iter().map(|bytes| bytes.as_ref()).collect();
            file.write_all_at(&parts, 0).map_err(io("write"))?;
            file.sync_data().map_err(io("fdatasync"))?;
            drop(file);
            // Stale indexes would point into the old file: the reopen below rebuilds them.
            for stale in [
                path.with_extension("index"),
                path.with_extension("timeindex"),
            ] {
                fs.remove(&stale)
                    .map_err(|source| LogError::io("remove", &stale, source))?;
            }
            fs.rename(&cleaned, &path)
                .map_err(|source| LogError::io("rename", &cleaned, source))?;
            fs.sync_dir(&self.dir)
                .map_err(|source| LogError::io("fsync directory", &self.dir, source))?;
            let next_base = self.segments[index + 1].base;
            let (segment, _, problem) =
                Segment::open_sealed(fs.as_ref(), &self.dir, base, next_base, interval)?;
            if let Some(reason) = problem {
                return Err(self.fail(LogError::Corrupt {
                    path: segment.path().to_path_buf(),
                    position: 0,
                    reason,
                }));
            }
            self.segments[index] = segment;
            removed += gone;
        }
        Ok(removed)
    }

    fn enforce_retention(&mut self) -> Result<usize, LogError> {
        self.syncer.check_failed()?;
        let shapes: Vec<SegmentShape> = self.segments.iter().map(Segment::shape).collect();
        let expired = self.config.expired_segments(&shapes, self.clock.now_ms());
        for _ in 0..expired {
            self.remove_front()?;
        }
        Ok(expired)
    }

    fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.size).sum()
    }

    fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn close(mut self) -> Result<(), LogError> {
        self.syncer.stop();
        if let Some(active) = self.segments.last_mut() {
            active.release_reserved();
        }
        if self.config.durability == Durability::None {
            // Nothing was tracked while open: a clean close syncs every segment.
            for segment in &self.segments {
                segment
                    .file
                    .sync_data()
                    .map_err(|source| LogError::io("sync", segment.path(), source))?;
            }
        }
        self.syncer.dir_changed();
        self.syncer.sync_now()?;
        info!(dir = %self.dir.display(), next_offset = self.active().next, "log closed");
        Ok(())
    }
}
