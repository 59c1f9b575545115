//! The log on top of the fault-injecting file system: failed syncs, short writes and bit flips
//! fail loudly and safely, and a reopen recovers.

mod common;

use std::sync::Arc;

use common::{batch, read_all, small_segments};
use postino_storage::fault::FaultyFs;
use postino_storage::fs::RealFs;
use postino_storage::{FileLog, Log, LogConfig, LogError, Offset};
use postino_types::SystemClock;

fn open(
    dir: &std::path::Path,
    config: LogConfig,
) -> (FileLog, Arc<postino_storage::fault::Faults>) {
    let fs = FaultyFs::new(RealFs);
    let faults = fs.faults();
    let log = FileLog::open_with(dir, config, Arc::new(fs), Arc::new(SystemClock)).expect("open");
    (log, faults)
}

#[test]
fn a_failed_fsync_reaches_the_appender_and_stops_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut log, faults) = open(dir.path(), LogConfig::default());
    let first = log.append(&mut batch(1, 1, 1)).expect("append");
    first.durable.wait().expect("durable before the fault");
    faults.fail_syncs(true);
    let second = log
        .append(&mut batch(2, 1, 1))
        .expect("the write itself succeeds");
    assert!(matches!(
        second.durable.wait(),
        Err(LogError::Failed { .. })
    ));
    assert!(
        matches!(
            log.append(&mut batch(3, 1, 1)),
            Err(LogError::Failed { .. })
        ),
        "no append is accepted after a failed sync"
    );
    assert!(matches!(
        log.truncate(Offset(0)),
        Err(LogError::Failed { .. })
    ));
    faults.fail_syncs(false);
    assert!(
        matches!(
            log.append(&mut batch(4, 1, 1)),
            Err(LogError::Failed { .. })
        ),
        "a later successful sync does not revive the log"
    );
    drop(log);
    let (log, _) = open(dir.path(), LogConfig::default());
    assert!(
        log.next_offset() >= Offset(1),
        "the confirmed append survives"
    );
    assert_eq!(read_all(&log)[0].base_offset(), 0);
}

#[test]
fn an_async_waiter_sees_the_fsync_failure() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut log, faults) = open(dir.path(), LogConfig::default());
    faults.fail_syncs(true);
    let appended = log.append(&mut batch(1, 1, 1)).expect("append");
    let outcome = block_on(appended.durable.clone());
    assert!(matches!(outcome, Err(LogError::Failed { .. })));
}

#[test]
fn a_short_write_fails_the_append_and_reopen_cuts_the_torn_batch() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut log, faults) = open(dir.path(), small_segments());
    for tag in 0..5 {
        log.append(&mut batch(tag, 2, 1))
            .expect("append")
            .durable
            .wait()
            .expect("durable");
    }
    faults.short_writes(true);
    assert!(matches!(
        log.append(&mut batch(9, 2, 1)),
        Err(LogError::Io { .. })
    ));
    faults.short_writes(false);
    assert!(matches!(
        log.append(&mut batch(10, 2, 1)),
        Err(LogError::Failed { .. })
    ));
    drop(log);
    let (mut log, _) = open(dir.path(), small_segments());
    assert!(
        log.report().truncated_bytes > 0,
        "the half-written batch is cut"
    );
    assert_eq!(log.next_offset(), Offset(10));
    assert_eq!(
        log.append(&mut batch(11, 1, 1))
            .expect("append")
            .base_offset,
        Offset(10)
    );
}

#[test]
fn a_full_file_system_refuses_appends_without_failing_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut log, faults) = open(dir.path(), small_segments());
    let append = |log: &mut FileLog, tag: u64| {
        log.append(&mut batch(tag, 2, 1))
            .expect("append")
            .durable
            .wait()
            .expect("durable");
    };
    // Fill the second segment exactly as full as the first, so that the next append rolls.
    let mut tags = 0;
    while log.segment_count() < 2 {
        append(&mut log, tags);
        tags += 1;
    }
    for _ in 1..tags - 1 {
        append(&mut log, tags);
        tags += 1;
    }
    let next = log.next_offset();
    faults.full(true);
    for tag in 100..120 {
        assert!(
            matches!(
                log.append(&mut batch(tag, 2, 1)),
                Err(LogError::NoSpace { .. })
            ),
            "a full file system refuses every append, the one that rolls included"
        );
    }
    assert_eq!(log.segment_count(), 3, "the append rolled");
    assert_eq!(log.next_offset(), next, "nothing was taken");
    faults.full(false);
    let resumed = log.append(&mut batch(tags, 2, 1)).expect("space is back");
    assert_eq!(resumed.base_offset, next);
    resumed.durable.wait().expect("durable");
    tags += 1;
    drop(log);
    let (log, _) = open(dir.path(), small_segments());
    assert_eq!(log.report().truncated_bytes, 0, "no partial batch was left");
    assert_eq!(log.next_offset(), Offset(tags * 2));
    let values: Vec<String> = read_all(&log)
        .iter()
        .flat_map(|batch| batch.records().expect("records"))
        .map(|record| {
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
        })
        .collect();
    let expected: Vec<String> = (0..tags)
        .flat_map(|tag| (0..2).map(move |index| format!("batch {tag} record {index}")))
        .collect();
    assert_eq!(values, expected);
}

#[test]
fn bit_flips_on_read_are_errors_never_data() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut log, faults) = open(dir.path(), LogConfig::default());
    for tag in 0..10 {
        log.append(&mut batch(tag, 3, 1)).expect("append");
    }
    let originals = read_all(&log);
    faults.flip_reads(true);
    let mut errors = 0;
    for from in 0..30 {
        match log.read(Offset(from), 1 << 16) {
            Err(LogError::Corrupt { .. }) => errors += 1,
            Ok(batches) => {
                for batch in batches {
                    assert!(originals.contains(&batch), "only intact batches are served");
                }
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(errors > 0, "the flipped batch is reported");
    faults.flip_reads(false);
    assert_eq!(read_all(&log), originals);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let log = FileLog::open(dir.path(), LogConfig::default()).expect("open");
    assert!(matches!(
        FileLog::open(dir.path(), LogConfig::default()),
        Err(LogError::Locked { .. })
    ));
    log.close().expect("close");
    FileLog::open(dir.path(), LogConfig::default()).expect("open after close");
}

/// Polls a future to completion on this thread, parking between wake-ups.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn appends_that_arrive_during_a_sync_share_the_next_one() {
    let dir = tempfile::tempdir().expect("dir");
    let (mut log, faults) = open(dir.path(), LogConfig::default());
    faults.hold_syncs(true);
    let started = faults.syncs_started();
    let first = log.append(&mut batch(0, 1, 1)).expect("append");
    // The sync thread picks the first append up and blocks inside its sync.
    while faults.syncs_started() == started {
        std::thread::yield_now();
    }
    let before = faults.syncs();
    let later: Vec<_> = (1..=100)
        .map(|tag| log.append(&mut batch(tag, 1, 1)).expect("append"))
        .collect();
    assert!(!first.durable.is_durable().expect("pending"));
    assert!(!later[99].durable.is_durable().expect("pending"));
    faults.hold_syncs(false);
    for appended in &later {
        appended.durable.wait().expect("durable");
    }
    first.durable.wait().expect("durable");
    assert_eq!(
        faults.syncs() - before,
        2,
        "one sync for the first append, one for the hundred that arrived during it"
    );
    assert_eq!(log.durable_offset(), Offset(101));
}

#[test]
fn scoped_faults_hit_only_the_logs_under_their_fragment() {
    let dir = tempfile::tempdir().expect("dir");
    let fs = Arc::new(FaultyFs::new(RealFs));
    let faults = fs.faults();
    let open = |name: &str| {
        FileLog::open_with(
            dir.path().join(name),
            LogConfig::default(),
            Arc::clone(&fs) as Arc<dyn postino_storage::fs::Fs>,
            Arc::new(SystemClock),
        )
        .expect("open")
    };
    let (mut hit, mut spared) = (open("queues/hit"), open("queues/spared"));
    faults.scope(Some("queues/hit"));
    faults.fail_syncs(true);
    let failed = hit.append(&mut batch(1, 1, 1)).expect("the write succeeds");
    assert!(matches!(
        failed.durable.wait(),
        Err(LogError::Failed { .. })
    ));
    for tag in 0..3 {
        spared
            .append(&mut batch(tag, 1, 1))
            .expect("append")
            .durable
            .wait()
            .expect("a log outside the scope keeps syncing");
    }
    faults.scope(None);
    assert!(
        matches!(
            spared
                .append(&mut batch(9, 1, 1))
                .expect("append")
                .durable
                .wait(),
            Err(LogError::Failed { .. })
        ),
        "without a scope the fault applies everywhere"
    );
}
