//! A fault-injecting [`Fs`] for tests: short writes, a full file system, failed syncs and bit
//! flips on read, switched on and off while a log runs on top of it, for every file or only
//! those whose path contains a given fragment (one queue's directory, say).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::fs::{Fs, SegmentFile};

/// The switches of a [`FaultyFs`]; shared by every file it opened.
#[derive(Debug, Default)]
pub struct Faults {
    fail_syncs: AtomicBool,
    short_writes: AtomicBool,
    full: AtomicBool,
    flip_reads: AtomicBool,
    /// Faults apply to paths containing this, or to every path when `None`.
    scope: Mutex<Option<String>>,
    held: Mutex<bool>,
    released: Condvar,
    syncs_started: AtomicU64,
    syncs: AtomicU64,
}

impl Faults {
    /// Every later `sync_data` and directory sync fails with `EIO` while on.
    pub fn fail_syncs(&self, on: bool) {
        self.fail_syncs.store(on, Ordering::SeqCst);
    }

    /// Every later segment write stores only its first half and then fails while on.
    pub fn short_writes(&self, on: bool) {
        self.short_writes.store(on, Ordering::SeqCst);
    }

    /// While on, the file system is full: every segment write stores its first half and then
    /// fails with `ENOSPC`, and preallocation fails the same way.
    pub fn full(&self, on: bool) {
        self.full.store(on, Ordering::SeqCst);
    }

    /// Every later segment read returns its bytes with one bit flipped while on.
    pub fn flip_reads(&self, on: bool) {
        self.flip_reads.store(on, Ordering::SeqCst);
    }

    /// Limits every fault to the files (and directories) whose path contains `fragment`;
    /// `None` applies them everywhere again.
    pub fn scope(&self, fragment: Option<&str>) {
        *self.scope.lock().unwrap_or_else(PoisonError::into_inner) = fragment.map(str::to_owned);
    }

    /// Whether `switch` is on for `path`.
    fn on(&self, switch: &AtomicBool, path: &Path) -> bool {
        switch.load(Ordering::SeqCst) && self.applies(path)
    }

    fn applies(&self, path: &Path) -> bool {
        self.scope
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            .is_none_or(|fragment| path.to_string_lossy().contains(fragment))
    }

    /// While on, every sync waits at its start until switched off again: a test can make
    /// appends arrive while a sync is running.
    pub fn hold_syncs(&self, on: bool) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = on;
        self.released.notify_all();
    }

    /// File and directory syncs begun so far (held ones included).
    #[must_use]
    pub fn syncs_started(&self) -> u64 {
        self.syncs_started.load(Ordering::SeqCst)
    }

    /// Successful file and directory syncs so far.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    fn sync(&self, path: &Path) -> io::Result<()> {
        self.syncs_started.fetch_add(1, Ordering::SeqCst);
        let applies = self.applies(path);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held && applies {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(held);
        if applies && self.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// An [`Fs`] that passes calls to another and injects the faults switched on in [`Faults`].
#[derive(Debug)]
pub struct FaultyFs<F> {
    inner: F,
    faults: Arc<Faults>,
}

impl<F: Fs> FaultyFs<F> {
    /// Wraps `inner` with every fault off.
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            faults: Arc::default(),
        }
    }

    /// The switches, to keep while the log owns the file system.
    #[must_use]
    pub fn faults(&self) -> Arc<Faults> {
        Arc::clone(&self.faults)
    }
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn SegmentFile>,
    path: PathBuf,
    faults: Arc<Faults>,
}

impl SegmentFile for FaultyFile {
    fn write_all_at(&self, parts: &[&[u8]], position: u64) -> io::Result<()> {
        let failure = if self.faults.on(&self.faults.full, &self.path) {
            io::Error::from(io::ErrorKind::StorageFull)
        } else if self.faults.on(&self.faults.short_writes, &self.path) {
            io::Error::other("injected short write")
        } else {
            return self.inner.write_all_at(parts, position);
        };
        let whole: Vec<u8> = parts.concat();
        self.inner
            .write_all_at(&[&whole[..whole.len() / 2]], position)?;
        Err(failure)
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let read = self.inner.read_at(buf, position)?;
        if read > 0 && self.faults.on(&self.faults.flip_reads, &self.path) {
            buf[read / 2] ^= 0x04;
        }
        Ok(read)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.faults.sync(&self.path)?;
        self.inner.sync_data()
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.inner.set_len(length)
    }

    fn byte_len(&self) -> io::Result<u64> {
        self.inner.byte_len()
    }

    fn preallocate(&self, length: u64) -> io::Result<()> {
        if self.faults.on(&self.faults.full, &self.path) {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.inner.preallocate(length)
    }

    fn release_preallocation(&self, length: u64, reserved: u64) -> io::Result<()> {
        self.inner.release_preallocation(length, reserved)
    }

    fn drop_cache(&self) -> io::Result<()> {
        self.inner.drop_cache()
    }
}

impl<F: Fs> Fs for FaultyFs<F> {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(Arc::new(FaultyFile {
            inner: self.inner.open(path)?,
            path: path.to_owned(),
            faults: Arc::clone(&self.faults),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(path)
    }

    fn write(&self, path: &Path, content: &[u8]) -> io::Result<()> {
        self.inner.write(path, content)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.faults.sync(dir)?;
        self.inner.sync_dir(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
}
