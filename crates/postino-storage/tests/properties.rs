//! Property tests: random operation sequences against the memory store as the model, random
//! crash points (the last segment cut at any byte past what was confirmed durable), and random
//! corruption. The file log must always recover to a prefix of what was appended and never
//! return a batch that was not appended.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use common::{FileStore, MemoryStore, Store, read_all};
use postino_storage::batch::{Batch, BatchBuilder};
use postino_storage::{Log, LogConfig, LogError, Offset};
use postino_types::{Clock, ManualClock};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        value_bytes: usize,
        timestamp_step: i64,
    },
    Read {
        at: u8,
        max_bytes: usize,
    },
    FindTimestamp {
        at: i64,
    },
    Truncate {
        at: u8,
    },
    DeleteUpTo {
        at: u8,
    },
    Retention,
    AdvanceClock {
        ms: i64,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 0usize..300, 0i64..2_000).prop_map(|(records, value_bytes, timestamp_step)| Op::Append {
            records,
            value_bytes,
            timestamp_step
        }),
        2 => (any::<u8>(), 1usize..2_000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => (0i64..100_000).prop_map(|at| Op::FindTimestamp { at }),
        1 => any::<u8>().prop_map(|at| Op::Truncate { at }),
        1 => any::<u8>().prop_map(|at| Op::DeleteUpTo { at }),
        1 => Just(Op::Retention),
        1 => (0i64..20_000).prop_map(|ms| Op::AdvanceClock { ms }),
        1 => Just(Op::Reopen),
    ]
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 2048,
        batch_bytes_max: 2048,
        index_interval_bytes: 256,
        segment_age_max: Some(Duration::from_secs(30)),
        retention: Some(Duration::from_secs(60)),
        retention_bytes: Some(6_000),
        ..LogConfig::default()
    }
}

/// Batch number `tag`: its values name it, so a stray batch cannot pass for another.
fn make_batch(tag: u64, records: usize, value_bytes: usize, timestamp_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new();
    for index in 0..records {
        let mut value = format!("{tag}/{index}:").into_bytes();
        value.resize(value.len() + value_bytes, b'a' + (tag % 26) as u8);
        builder.push(timestamp_ms + index as i64, None, Some(&value), &[]);
    }
    builder.build()
}

/// An offset between the earliest and a little past the next, chosen by `at`.
fn pick(log: &impl Log, at: u8) -> Offset {
    let (earliest, next) = (log.earliest_offset().0, log.next_offset().0);
    Offset(earliest + u64::from(at) * (next - earliest + 2) / 256)
}

/// The outcome of an operation, comparable across stores.
fn outcome<T: PartialEq + std::fmt::Debug>(result: Result<T, LogError>) -> Result<T, String> {
    result.map_err(|error| match error {
        LogError::OffsetOutOfRange { .. } => "out of range".to_owned(),
        other => other.to_string(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// The file store and the memory store answer every operation identically.
    #[test]
    fn file_log_behaves_like_the_memory_model(ops in proptest::collection::vec(op(), 1..60)) {
        let clock = ManualClock::new(50_000);
        let (file_store, memory_store) = (FileStore::new(), MemoryStore::default());
        let (file, memory) = run_history(&ops, &clock, &file_store, &memory_store)?;
        prop_assert_eq!(read_all(&file), read_all(&memory));
    }

    /// A random history of appends, reads, truncations, retention and reopens, then a crash
    /// that cuts the last segment at any byte: the log recovers exactly the model's batches
    /// that lie wholly before the cut.
    #[test]
    fn random_histories_cut_at_any_byte_recover_a_prefix(
        ops in proptest::collection::vec(op(), 1..60),
        cut_share in 0.0f64..=1.0,
    ) {
        let clock = ManualClock::new(50_000);
        let (file_store, memory_store) = (FileStore::new(), MemoryStore::default());
        let (file, memory) = run_history(&ops, &clock, &file_store, &memory_store)?;
        drop(file);
        let active = last_segment(&file_store.path());
        let active_base = base_of(&active);
        let length = fs::metadata(&active).expect("stat").len();
        let cut = (length as f64 * cut_share) as u64;
        fs::OpenOptions::new().write(true).open(&active).expect("open").set_len(cut).expect("cut");
        let mut position = 0u64;
        let expected: Vec<Batch> = read_all(&memory)
            .into_iter()
            .filter(|batch| {
                if batch.base_offset() < active_base {
                    return true;
                }
                position += batch.bytes().len() as u64;
                position <= cut
            })
            .collect();
        let recovered = file_store.open(config_without_retention(), &clock);
        prop_assert_eq!(read_all(&recovered), expected);
    }
}

/// Applies `ops` to a file log and a memory log side by side, checking that they agree.
fn run_history(
    ops: &[Op],
    clock: &ManualClock,
    file_store: &FileStore,
    memory_store: &MemoryStore,
) -> Result<(postino_storage::FileLog, postino_storage::MemLog), TestCaseError> {
    let mut file = file_store.open(config(), clock);
    let mut memory = memory_store.open(config(), clock);
    let mut tag = 0u64;
    for op in ops.iter().cloned() {
        {
            match op {
                Op::Append {
                    records,
                    value_bytes,
                    timestamp_step,
                } => {
                    tag += 1;
                    let mut batch =
                        make_batch(tag, records, value_bytes, clock.now_ms() + timestamp_step);
                    let a = outcome(
                        file.append(&mut batch)
                            .map(|appended| (appended.base_offset, appended.last_offset)),
                    );
                    let b = outcome(
                        memory
                            .append(&mut batch)
                            .map(|appended| (appended.base_offset, appended.last_offset)),
                    );
                    prop_assert_eq!(a, b);
                }
                Op::Read { at, max_bytes } => {
                    let from = pick(&memory, at);
                    prop_assert_eq!(
                        outcome(file.read(from, max_bytes)),
                        outcome(memory.read(from, max_bytes))
                    );
                }
                Op::FindTimestamp { at } => {
                    prop_assert_eq!(
                        outcome(file.offset_for_timestamp(at)),
                        outcome(memory.offset_for_timestamp(at))
                    );
                }
                Op::Truncate { at } => {
                    let to = pick(&memory, at);
                    prop_assert_eq!(outcome(file.truncate(to)), outcome(memory.truncate(to)));
                }
                Op::DeleteUpTo { at } => {
                    let to = pick(&memory, at);
                    prop_assert_eq!(
                        outcome(file.delete_up_to(to)),
                        outcome(memory.delete_up_to(to))
                    );
                }
                Op::Retention => {
                    prop_assert_eq!(
                        outcome(file.enforce_retention()),
                        outcome(memory.enforce_retention())
                    );
                }
                Op::AdvanceClock { ms } => clock.advance_ms(ms),
                Op::Reopen => {
                    file.close().expect("close");
                    memory.close().expect("close");
                    file = file_store.open(config(), clock);
                    memory = memory_store.open(config(), clock);
                }
            }
            prop_assert_eq!(file.earliest_offset(), memory.earliest_offset());
            prop_assert_eq!(file.next_offset(), memory.next_offset());
            prop_assert_eq!(file.segment_count(), memory.segment_count());
            prop_assert_eq!(file.size_bytes(), memory.size_bytes());
        }
    }
    Ok((file, memory))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A crash that loses any part of the last segment past what was confirmed durable
    /// recovers to a prefix of the appends that holds every confirmed one.
    #[test]
    fn a_cut_anywhere_past_the_durable_point_recovers_a_prefix(
        batches in proptest::collection::vec((1usize..4, 0usize..400), 1..40),
        confirmed_share in 0.0f64..=1.0,
        cut_share in 0.0f64..=1.0,
    ) {
        let clock = ManualClock::new(1_000);
        let store = FileStore::new();
        let mut log = store.open(config_without_retention(), &clock);
        let mut appended = Vec::new();
        for (tag, (records, value_bytes)) in batches.iter().enumerate() {
            let mut batch = make_batch(tag as u64, *records, *value_bytes, 1_000);
            appended.push((log.append(&mut batch).expect("append"), batch));
        }
        let confirmed = ((appended.len() as f64) * confirmed_share) as usize;
        if let Some((last, _)) = appended[..confirmed].last() {
            last.durable.wait().expect("durable");
        }
        let confirmed_next = appended[..confirmed].last().map_or(0, |(a, _)| a.last_offset.0 + 1);
        let active = last_segment(&store.path());
        let active_base = base_of(&active);
        drop(log);
        // Position of the end of the confirmed appends inside the last segment.
        let durable_position: u64 = appended
            .iter()
            .filter(|(a, _)| a.base_offset.0 >= active_base && a.last_offset.0 < confirmed_next)
            .map(|(_, batch)| batch.len() as u64)
            .sum();
        let length = fs::metadata(&active).expect("stat").len();
        let cut = durable_position + ((length - durable_position) as f64 * cut_share) as u64;
        fs::OpenOptions::new().write(true).open(&active).expect("open").set_len(cut).expect("cut");

        let log = store.open(config_without_retention(), &clock);
        let recovered = read_all(&log);
        prop_assert!(log.next_offset().0 >= confirmed_next, "a confirmed append was lost");
        prop_assert!(recovered.len() <= appended.len());
        for (batch, (original, bytes)) in recovered.iter().zip(&appended) {
            prop_assert_eq!(batch.base_offset(), original.base_offset.0);
            prop_assert_eq!(&batch.bytes()[8..], &bytes[8..]);
        }
    }

    /// Any flipped byte in any file of a closed log: open succeeds, and whatever a read returns
    /// is exactly what was appended at that offset.
    #[test]
    fn corruption_is_reported_never_served(
        batches in proptest::collection::vec((1usize..4, 0usize..400), 1..40),
        victim in any::<prop::sample::Index>(),
        position_share in 0.0f64..1.0,
        flip in 1u8..=255,
    ) {
        let clock = ManualClock::new(1_000);
        let store = FileStore::new();
        let mut log = store.open(config_without_retention(), &clock);
        let mut appended = Vec::new();
        for (tag, (records, value_bytes)) in batches.iter().enumerate() {
            let mut batch = make_batch(tag as u64, *records, *value_bytes, 1_000);
            let offsets = log.append(&mut batch).expect("append");
            appended.push((offsets.base_offset.0, batch));
        }
        log.close().expect("close");
        let files: Vec<PathBuf> = sorted_files(&store.path());
        let victim = victim.get(&files);
        let mut content = fs::read(victim).expect("read");
        if !content.is_empty() {
            let at = ((content.len() as f64) * position_share) as usize;
            content[at] ^= flip;
            fs::write(victim, &content).expect("write");
        }

        let log = store.open(config_without_retention(), &clock);
        let mut from = log.earliest_offset().0;
        while from < log.next_offset().0 {
            match log.read(Offset(from), 4096) {
                Ok(batches) => {
                    prop_assert!(!batches.is_empty());
                    for batch in &batches {
                        let original = appended.iter().find(|(base, _)| *base == batch.base_offset());
                        let (_, bytes) = original.expect("a returned batch was appended at its offset");
                        // The partition leader epoch (bytes 12..16) is outside Kafka's CRC, so a
                        // flip there cannot be seen (docs/storage-format.md); all else is checked.
                        prop_assert_eq!(&batch.bytes()[8..12], &bytes[8..12]);
                        prop_assert_eq!(&batch.bytes()[16..], &bytes[16..]);
                    }
                    from = batches.last().expect("non-empty").last_offset() + 1;
                }
                Err(LogError::Corrupt { .. }) => {
                    from = appended.iter().map(|(base, _)| *base).find(|base| *base > from).unwrap_or(u64::MAX);
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}

fn config_without_retention() -> LogConfig {
    LogConfig {
        retention: None,
        retention_bytes: None,
        segment_age_max: None,
        ..config()
    }
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext != "lock"))
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    sorted_files(dir)
        .into_iter()
        .rfind(|path| path.extension().is_some_and(|ext| ext == "log"))
        .expect("a segment")
}

fn base_of(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .expect("segment name")
}

/// Whole index files replaced with garbage, or removed, lose nothing.
#[test]
fn garbage_or_missing_indexes_are_rebuilt_without_loss() {
    let clock = ManualClock::new(1_000);
    let store = FileStore::new();
    let mut log = store.open(config_without_retention(), &clock);
    for tag in 0..60 {
        log.append(&mut make_batch(tag, 2, 100, 1_000 + tag as i64))
            .expect("append");
    }
    let before = read_all(&log);
    log.close().expect("close");
    let indexes: Vec<PathBuf> = sorted_files(&store.path())
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext != "log"))
        .collect();
    assert!(indexes.len() >= 4);
    for (number, path) in indexes.iter().enumerate() {
        match number % 3 {
            0 => fs::remove_file(path).expect("remove"),
            1 => fs::write(path, b"garbage!garbage!garbage!").expect("write"),
            _ => fs::write(path, [0u8; 24]).expect("write"),
        }
    }
    let log = store.open(config_without_retention(), &clock);
    assert!(log.report().rebuilt_indexes > 0);
    assert!(log.report().corrupt_segments.is_empty());
    assert_eq!(read_all(&log), before);
    assert_eq!(
        log.offset_for_timestamp(1_030).expect("lookup"),
        Some(Offset(59)),
        "batch 29 holds 1029 and 1030"
    );
}

/// A flipped bit in the middle of a sealed segment is reported on open and on read of that
/// range; the batches before and after it stay readable.
#[test]
fn a_corrupt_batch_in_a_sealed_segment_fails_its_reads_only() {
    let clock = ManualClock::new(1_000);
    let store = FileStore::new();
    let mut log = store.open(config_without_retention(), &clock);
    let mut batches = Vec::new();
    for tag in 0..40 {
        batches.push(make_batch(tag, 1, 200, 1_000));
        log.append(batches.last_mut().expect("batch"))
            .expect("append");
    }
    log.close().expect("close");
    let first = sorted_files(&store.path())
        .into_iter()
        .find(|path| path.extension().is_some_and(|ext| ext == "log"))
        .expect("segment");
    let mut content = fs::read(&first).expect("read");
    let second_batch = batches[0].len();
    content[second_batch + 100] ^= 0x20;
    fs::write(&first, content).expect("write");

    let log = store.open(config_without_retention(), &clock);
    assert_eq!(
        log.next_offset(),
        Offset(40),
        "a sealed segment is never cut"
    );
    assert_eq!(
        log.read(Offset(0), 1).expect("before the damage")[0].base_offset(),
        0
    );
    assert!(matches!(
        log.read(Offset(1), 1),
        Err(LogError::Corrupt { .. })
    ));
    let later = log.read(Offset(39), 1).expect("after the damage");
    assert_eq!(
        Batch::from_bytes(later[0].bytes().clone())
            .expect("valid")
            .base_offset(),
        39
    );
}
