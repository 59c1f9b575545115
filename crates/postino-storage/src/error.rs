//! The operational errors of the storage layer.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;

/// Why a log operation did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// A file-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The bytes given to `append` are not one valid RecordBatch v2.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch is larger than the configured `batch_bytes_max`.
    #[error("batch of {size} bytes exceeds batch_bytes_max {max}")]
    BatchTooLarge { size: usize, max: usize },
    /// Stored bytes fail their CRC or do not chain; they are never served.
    #[error("corrupt data in {path} at position {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    /// The file system has no room for the write (`ENOSPC`, `EDQUOT`). Nothing of it was kept
    /// and the log still accepts writes: the same append succeeds once space is freed.
    #[error("no space left for {path}: nothing was written")]
    NoSpace { path: PathBuf },
    /// An earlier write or sync failed; the log refuses everything until it is reopened, so that
    /// no append can look durable when it is not.
    #[error("log failed and accepts no more writes until reopened: {reason}")]
    Failed { reason: Arc<str> },
    /// A read or truncation named an offset outside the log.
    #[error("offset {requested} is out of range [{earliest}, {next}]")]
    OffsetOutOfRange {
        requested: u64,
        earliest: u64,
        next: u64,
    },
    /// A configuration value is unusable.
    #[error("invalid configuration {key}: {reason}")]
    Config { key: &'static str, reason: String },
    /// Another process holds the directory's lock.
    #[error("log directory {path} is locked by another process")]
    Locked { path: PathBuf },
    /// The append was removed by a truncation before it became durable.
    #[error("append was truncated away before it became durable")]
    Truncated,
}

impl LogError {
    /// `OffsetOutOfRange` unless `earliest <= requested <= next`.
    pub(crate) fn check_range(requested: u64, earliest: u64, next: u64) -> Result<(), Self> {
        if requested < earliest || requested > next {
            return Err(LogError::OffsetOutOfRange {
                requested,
                earliest,
                next,
            });
        }
        Ok(())
    }

    /// Whether `error` says the file system (or the user's quota) is full.
    pub(crate) fn is_no_space(error: &io::Error) -> bool {
        matches!(
            error.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }
}
