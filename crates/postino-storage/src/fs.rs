//! The file-system calls the file store makes, behind a trait so that tests can inject faults
//! (see [`crate::fault`]) under the real store.
//!
//! Every call names its sync point: nothing here syncs unless asked.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// An open segment file: positioned reads and writes, data sync, length changes.
pub trait SegmentFile: Send + Sync + fmt::Debug {
    /// Writes all of `parts`, one after another, starting at `position`.
    ///
    /// # Errors
    /// The operating system's error; after one, the bytes at `position` are unspecified.
    fn write_all_at(&self, parts: &[&[u8]], position: u64) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `position`; fewer only at the end of the file.
    ///
    /// # Errors
    /// The operating system's error.
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize>;
    /// `fdatasync`: the written data (and the length, when it changed) reach stable storage.
    ///
    /// # Errors
    /// The operating system's error; the log that sees one stops (see `docs/storage-format.md`).
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts or extends the file to `length` bytes.
    ///
    /// # Errors
    /// The operating system's error.
    fn set_len(&self, length: u64) -> io::Result<()>;
    /// The file's current length.
    ///
    /// # Errors
    /// The operating system's error.
    fn byte_len(&self) -> io::Result<u64>;
    /// Reserves blocks up to `length` so later writes do not allocate; best effort.
    ///
    /// # Errors
    /// The operating system's error.
    fn preallocate(&self, length: u64) -> io::Result<()>;
    /// Gives back the blocks between `length` and `reserved` that [`SegmentFile::preallocate`]
    /// took; the length of the file does not change.
    ///
    /// # Errors
    /// The operating system's error.
    fn release_preallocation(&self, length: u64, reserved: u64) -> io::Result<()>;
    /// Asks the kernel to drop this file's cached pages (benchmarks of cold reads).
    ///
    /// # Errors
    /// The operating system's error.
    fn drop_cache(&self) -> io::Result<()>;
}

/// Directory-level calls of the file store.
pub trait Fs: Send + Sync + fmt::Debug {
    /// Creates (or opens, when it exists) a file for reading and writing.
    ///
    /// # Errors
    /// The operating system's error.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Reads a whole small file (an index).
    ///
    /// # Errors
    /// The operating system's error; `NotFound` when it does not exist.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replaces a small file's content (an index); not synced.
    ///
    /// # Errors
    /// The operating system's error.
    fn write(&self, path: &Path, content: &[u8]) -> io::Result<()>;
    /// Removes a file; a missing file is not an error.
    ///
    /// # Errors
    /// The operating system's error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The paths of the entries of `dir`.
    ///
    /// # Errors
    /// The operating system's error.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates `dir` and its parents.
    ///
    /// # Errors
    /// The operating system's error.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// `fsync` of a directory, so created and removed names are durable.
    ///
    /// # Errors
    /// The operating system's error.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically.
    ///
    /// # Errors
    /// The operating system's error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// The file system [`crate::FileLog::open`] uses, when one was set for the process.
static PROCESS_FS: OnceLock<Arc<dyn Fs>> = OnceLock::new();

/// Makes every later [`crate::FileLog::open`] in this process use `fs` instead of the real
/// file system: how a whole broker runs on a [`crate::fault::FaultyFs`]. It can be set once;
/// a second call gives `fs` back.
///
/// # Errors
/// `fs` itself when a file system was set already.
pub fn set_process_fs(fs: Arc<dyn Fs>) -> Result<(), Arc<dyn Fs>> {
    PROCESS_FS.set(fs)
}

/// The process's file system: the one [`set_process_fs`] set, else the real one.
pub(crate) fn process_fs() -> Arc<dyn Fs> {
    PROCESS_FS
        .get()
        .map_or_else(|| Arc::new(RealFs) as Arc<dyn Fs>, Arc::clone)
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile {
    file: File,
}

impl SegmentFile for RealFile {
    fn write_all_at(&self, parts: &[&[u8]], position: u64) -> io::Result<()> {
        match parts {
            [] => Ok(()),
            [only] => self.file.write_all_at(only, position),
            _ => write_vectored_at(&self.file, parts, position),
        }
    }

    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], position + filled as u64)
            {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.file.set_len(length)
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn preallocate(&self, length: u64) -> io::Result<()> {
        rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, length)
            .map_err(io::Error::from)
    }

    fn release_preallocation(&self, length: u64, reserved: u64) -> io::Result<()> {
        if reserved <= length {
            return Ok(());
        }
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.file, flags, length, reserved - length).map_err(io::Error::from)
    }

    fn drop_cache(&self) -> io::Result<()> {
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)
            .map_err(io::Error::from)
    }
}

/// `pwritev` until every part is written (a short write continues where it stopped).
fn write_vectored_at(file: &File, parts: &[&[u8]], mut position: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> =
        parts.iter().map(|part| io::IoSlice::new(part)).collect();
    let mut remaining: &mut [io::IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        match rustix::io::pwritev(file, remaining, position) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => {
                position += written as u64;
                io::IoSlice::advance_slices(&mut remaining, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

impl Fs for RealFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile { file }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write(&self, path: &Path, content: &[u8]) -> io::Result<()> {
        fs::write(path, content)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
}
