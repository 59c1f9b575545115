//! Group commit: one background thread per log turns many appends into one `fdatasync`.
//!
//! The writer records, after each write, the offset it reached and the file it dirtied. The
//! sync thread takes everything dirty so far as one snapshot, syncs it, and publishes the
//! snapshot's offset as durable; appends that arrive while it syncs wait for the next snapshot.
//! Snapshots are taken and published under one lock (`sync_order`), so a later snapshot never
//! publishes before an earlier one has finished.
//!
//! A sync failure is final: the log is marked failed, every waiter gets the error, and nothing
//! is retried (a retried `fsync` can succeed without the lost pages having reached the disk).

use std::future::Future;
use std::mem;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postino_types::LatencyHistogram;
use tracing::error;

use crate::config::Durability;
use crate::error::LogError;
use crate::fs::{Fs, SegmentFile};

/// How long each group commit's syncs took (the data files' `fdatasync` and, after a file was
/// created or removed, the directory's `fsync`), for every log of the process.
pub static SYNC_LATENCY: LatencyHistogram = LatencyHistogram::new();

#[derive(Debug, Default)]
struct SyncState {
    /// Offset after the last write.
    written_next: u64,
    /// Every offset below this is on stable storage.
    durable_next: u64,
    /// Bumped by each truncation; tickets of older epochs check `resets`.
    epoch: u64,
    /// `(epoch it started, offset it cut to)` of every truncation.
    resets: Vec<(u64, u64)>,
    dirty: Vec<Arc<dyn SegmentFile>>,
    dir_dirty: bool,
    failure: Option<Arc<str>>,
    wakers: Vec<(u64, Waker)>,
    thread_waiting: bool,
    stop: bool,
    syncs: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<SyncState>,
    /// Mirrors `state.failure.is_some()`, so that appends check it without the lock.
    failed: AtomicBool,
    sync_order: Mutex<()>,
    work: Condvar,
    done: Condvar,
    fs: Arc<dyn Fs>,
    dir: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Syncs one snapshot of dirty files; returns false when nothing was dirty.
    fn sync_once(&self) -> bool {
        let _order = self
            .sync_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (target, files, dir_dirty, epoch) = {
            let mut state = self.lock();
            if state.failure.is_some() || (state.dirty.is_empty() && !state.dir_dirty) {
                return false;
            }
            let files = mem::take(&mut state.dirty);
            let dir_dirty = mem::replace(&mut state.dir_dirty, false);
            (state.written_next, files, dir_dirty, state.epoch)
        };
        let started = Instant::now();
        let mut result = files.iter().try_for_each(|file| file.sync_data());
        if result.is_ok() && dir_dirty {
            result = self.fs.sync_dir(&self.dir);
        }
        SYNC_LATENCY.record(started.elapsed());
        let mut state = self.lock();
        match result {
            Err(source) => {
                error!(dir = %self.dir.display(), %source, "fsync failed, log stops accepting writes");
                state.failure =
                    Some(format!("fsync of {} failed: {source}", self.dir.display()).into());
                self.failed.store(true, Ordering::Release);
                wake_all(&mut state);
            }
            Ok(()) => {
                state.syncs += 1;
                // A truncation since the snapshot limits what it can vouch for: bytes past the
                // cut were removed, and later bytes at those offsets were not in the snapshot.
                let limit = state
                    .resets
                    .iter()
                    .filter(|(reset_epoch, _)| *reset_epoch >= epoch)
                    .map(|(_, to)| *to)
                    .min()
                    .unwrap_or(u64::MAX);
                state.durable_next = state.durable_next.max(target.min(limit));
                let durable = state.durable_next;
                let mut index = 0;
                while index < state.wakers.len() {
                    if state.wakers[index].0 <= durable {
                        state.wakers.swap_remove(index).1.wake();
                    } else {
                        index += 1;
                    }
                }
            }
        }
        drop(state);
        self.done.notify_all();
        true
    }

    fn run(&self, every: Option<Duration>) {
        loop {
            let mut state = self.lock();
            match every {
                Some(every) if !state.stop => {
                    state.thread_waiting = true;
                    state = self
                        .work
                        .wait_timeout(state, every)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => {
                    while !state.stop && state.dirty.is_empty() && !state.dir_dirty {
                        state.thread_waiting = true;
                        state = self
                            .work
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
            }
            state.thread_waiting = false;
            let stop = state.stop;
            drop(state);
            self.sync_once();
            if stop {
                return;
            }
        }
    }

    fn check(&self, state: &SyncState, target: u64, epoch: u64) -> Option<Result<(), LogError>> {
        if let Some(reason) = &state.failure {
            return Some(Err(LogError::Failed {
                reason: Arc::clone(reason),
            }));
        }
        let cut = state
            .resets
            .iter()
            .any(|(reset_epoch, to)| *reset_epoch >= epoch && *to < target);
        if cut {
            return Some(Err(LogError::Truncated));
        }
        (state.durable_next >= target).then_some(Ok(()))
    }
}

fn wake_all(state: &mut SyncState) {
    for (_, waker) in state.wakers.drain(..) {
        waker.wake();
    }
}

/// The group-commit machinery of one log.
#[derive(Debug)]
pub(crate) struct Syncer {
    shared: Arc<Shared>,
    policy: Durability,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the sync thread the policy needs; `next` is already durable.
    pub(crate) fn start(
        policy: Durability,
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        next: u64,
    ) -> Result<Self, LogError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(SyncState {
                written_next: next,
                durable_next: next,
                ..SyncState::default()
            }),
            failed: AtomicBool::new(false),
            sync_order: Mutex::new(()),
            work: Condvar::new(),
            done: Condvar::new(),
            fs,
            dir,
        });
        let every = match policy {
            Durability::Fsync => Some(None),
            Durability::Interval(every) => Some(Some(every)),
            Durability::None => None,
        };
        let thread = match every {
            Some(every) => {
                let runner = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("postino-sync".to_owned())
                        .spawn(move || runner.run(every))
                        .map_err(|source| {
                            LogError::io("spawn sync thread for", shared.dir.clone(), source)
                        })?,
                )
            }
            None => None,
        };
        Ok(Self {
            shared,
            policy,
            thread,
        })
    }

    /// Records a write that reached `next` in `file`; returns the append's ticket. Under
    /// `none` nothing is tracked: the owner syncs its segments on close.
    pub(crate) fn wrote(&self, file: &Arc<dyn SegmentFile>, next: u64) -> Durable {
        if self.policy == Durability::None {
            return Durable::ready();
        }
        let mut state = self.shared.lock();
        state.written_next = next;
        let known = state
            .dirty
            .last()
            .is_some_and(|last| Arc::ptr_eq(last, file));
        if !known {
            state.dirty.push(Arc::clone(file));
        }
        let ticket = Durable {
            wait: (self.policy == Durability::Fsync)
                .then(|| (Arc::clone(&self.shared), next, state.epoch)),
        };
        self.nudge(state);
        ticket
    }

    /// Records that a file was created or removed, so the directory needs a sync too.
    pub(crate) fn dir_changed(&self) {
        let mut state = self.shared.lock();
        state.dir_dirty = true;
        self.nudge(state);
    }

    fn nudge(&self, mut state: MutexGuard<'_, SyncState>) {
        if self.policy == Durability::Fsync && state.thread_waiting {
            state.thread_waiting = false;
            drop(state);
            self.shared.work.notify_one();
        }
    }

    /// Fails if an earlier sync failed.
    pub(crate) fn check_failed(&self) -> Result<(), LogError> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.shared.lock().failure {
            Some(reason) => Err(LogError::Failed {
                reason: Arc::clone(reason),
            }),
            None => Ok(()),
        }
    }

    /// Marks the log failed after a write error, waking every waiter with the error.
    pub(crate) fn fail(&self, reason: &str) {
        let mut state = self.shared.lock();
        if state.failure.is_none() {
            state.failure = Some(reason.into());
            self.shared.failed.store(true, Ordering::Release);
        }
        wake_all(&mut state);
        drop(state);
        self.shared.done.notify_all();
    }

    /// Syncs everything dirty now, on the caller's thread.
    pub(crate) fn sync_now(&self) -> Result<(), LogError> {
        self.shared.sync_once();
        self.check_failed()
    }

    /// After a truncation to `next`: appends past it fail their tickets, and nothing past it
    /// counts as durable until synced again.
    pub(crate) fn reset(&self, next: u64) {
        let mut state = self.shared.lock();
        let epoch = state.epoch;
        state.resets.push((epoch, next));
        state.epoch += 1;
        state.written_next = next;
        state.durable_next = state.durable_next.min(next);
        wake_all(&mut state);
        drop(state);
        self.shared.done.notify_all();
    }

    /// Every offset below this is on stable storage.
    pub(crate) fn durable_next(&self) -> u64 {
        self.shared.lock().durable_next
    }

    /// Syncs completed so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.lock().syncs
    }

    /// Stops the sync thread after it has synced what was dirty.
    pub(crate) fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            self.fail("sync thread panicked");
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves when one append is durable under its log's policy.
///
/// Under `fsync` that is after the `fdatasync` covering it; under `interval` and `none` it is
/// at once (the append was written to the OS before the ticket was made).
#[derive(Debug, Clone)]
pub struct Durable {
    wait: Option<(Arc<Shared>, u64, u64)>,
}

impl Durable {
    /// A ticket that is already satisfied.
    #[must_use]
    pub fn ready() -> Self {
        Self { wait: None }
    }

    /// Whether the append is durable now (`Ok(false)` while waiting).
    ///
    /// # Errors
    /// [`LogError::Failed`] when a sync failed, [`LogError::Truncated`] when the append was cut.
    pub fn is_durable(&self) -> Result<bool, LogError> {
        let Some((shared, target, epoch)) = &self.wait else {
            return Ok(true);
        };
        let state = shared.lock();
        shared
            .check(&state, *target, *epoch)
            .transpose()
            .map(|done| done.is_some())
    }

    /// Blocks the calling thread until the append is durable.
    ///
    /// # Errors
    /// [`LogError::Failed`] when a sync failed, [`LogError::Truncated`] when the append was cut.
    pub fn wait(&self) -> Result<(), LogError> {
        let Some((shared, target, epoch)) = &self.wait else {
            return Ok(());
        };
        let mut state = shared.lock();
        loop {
            if let Some(outcome) = shared.check(&state, *target, *epoch) {
                return outcome;
            }
            state = shared
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((shared, target, epoch)) = &self.wait else {
            return Poll::Ready(Ok(()));
        };
        let mut state = shared.lock();
        if let Some(outcome) = shared.check(&state, *target, *epoch) {
            return Poll::Ready(outcome);
        }
        state.wakers.push((*target, cx.waker().clone()));
        Poll::Pending
    }
}
