//! What the queue engine's integration tests share.

use std::sync::Arc;

use postino_core::{QueueEngine, QueueOptions, QueueStore};
use postino_storage::{LogConfig, MemLog, MemStore};
use postino_types::ManualClock;

/// A queue `q` with `options` on an in-memory log whose clock stands at 0.
pub fn memory_queue(options: QueueOptions) -> QueueEngine<MemLog> {
    let log = MemLog::open(
        &MemStore::new(),
        LogConfig::default(),
        Arc::new(ManualClock::new(0)),
    )
    .expect("open");
    QueueEngine::open("q", log, options, QueueStore::default()).expect("queue")
}
