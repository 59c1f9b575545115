//! kill -9 in the middle of appending, in a loop: every append whose durability was confirmed
//! to the writer is present, intact and in place after reopen.
//!
//! The writer is this test binary run again as a child process (the ignored test
//! `kill_child_writer`), so the kill hits a real process with real files.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use postino_storage::batch::BatchBuilder;
use postino_storage::{FileLog, Log, LogConfig, Offset};

const CHILD_DIR: &str = "POSTINO_KILL_TEST_DIR";

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        batch_bytes_max: 4 << 10,
        ..LogConfig::default()
    }
}

/// The body of offset `offset`: its own number, so a misplaced or stale record shows.
fn body(offset: u64) -> Vec<u8> {
    let mut body = format!("record {offset} ").into_bytes();
    body.resize(100 + (offset % 200) as usize, b'.');
    body
}

#[test]
#[ignore = "child process of kill_minus_nine_never_loses_a_confirmed_append"]
fn kill_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let mut log = FileLog::open(Path::new(&dir), config()).expect("open");
    let mut stdout = std::io::stdout().lock();
    let mut pending = std::collections::VecDeque::new();
    loop {
        let offset = log.next_offset().0;
        let mut builder = BatchBuilder::new();
        builder.push(1_000, None, Some(&body(offset)), &[]);
        let appended = log.append(&mut builder.build()).expect("append");
        assert_eq!(appended.base_offset, Offset(offset));
        pending.push_back(appended);
        // Keep a window of appends in flight so that syncs are group-committed.
        while pending.len() > 32
            || pending
                .front()
                .is_some_and(|a| a.durable.is_durable().unwrap_or(false))
        {
            let confirmed = pending.pop_front().expect("non-empty");
            confirmed.durable.wait().expect("durable");
            writeln!(stdout, "{}", confirmed.base_offset).expect("report");
            stdout.flush().expect("flush");
        }
    }
}

#[test]
fn kill_minus_nine_never_loses_a_confirmed_append() {
    let dir = tempfile::tempdir().expect("dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut total_confirmed = 0usize;
    for cycle in 0..8u64 {
        let mut child = Command::new(&exe)
            .args([
                "kill_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child writer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(offset) = line.trim().parse::<u64>()
                    && tx.send(offset).is_err()
                {
                    break;
                }
            }
        });
        // Let a varying number of appends be confirmed, then kill at once, mid-stream.
        let wanted = 200 + (cycle * 7919) % 1500;
        let mut confirmed = Vec::new();
        while (confirmed.len() as u64) < wanted {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(offset) => confirmed.push(offset),
                Err(error) => panic!("child writer stopped reporting: {error}"),
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        confirmed.extend(rx.try_iter());
        total_confirmed += confirmed.len();

        let log = FileLog::open(dir.path(), config()).expect("reopen after kill");
        let highest = *confirmed.iter().max().expect("some confirmed");
        assert!(
            log.next_offset().0 > highest,
            "cycle {cycle}: confirmed offset {highest} lost (next {})",
            log.next_offset()
        );
        let mut from = Offset(0);
        while from < log.next_offset() {
            let batches = log
                .read(from, 1 << 20)
                .expect("every stored batch reads back");
            for batch in &batches {
                let record = &batch.records().expect("records")[0];
                assert_eq!(record.value.as_deref(), Some(&body(record.offset)[..]));
            }
            from = Offset(batches.last().expect("non-empty").last_offset() + 1);
        }
        log.close().expect("close");
    }
    assert!(total_confirmed >= 8 * 200);
}
