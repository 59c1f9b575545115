//! One conformance suite, run over the file store and the memory store: both must behave the
//! same for every operation of the `Log` trait.

mod common;

use std::time::Duration;

use common::{FileStore, MemoryStore, Store, batch, read_all, sized_batch, small_segments, values};
use postino_storage::batch::{BatchBuilder, ControlKind, control_batch, control_kind};
use postino_storage::{Durability, Log, LogConfig, LogError, Offset};
use postino_types::ManualClock;

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod file {
            $(#[test] fn $scenario() { super::$scenario(&super::FileStore::new()); })*
        }
        mod memory {
            $(#[test] fn $scenario() { super::$scenario(&super::MemoryStore::default()); })*
        }
    };
}

conformance!(
    appends_get_dense_offsets_and_read_back,
    reads_stop_at_max_bytes_but_return_one_whole_batch,
    reads_outside_the_log_are_refused,
    append_after_reopen_continues_offsets,
    segments_roll_by_size_and_reads_cross_them,
    segments_roll_by_age,
    truncate_removes_the_batch_holding_the_offset_and_everything_after,
    truncate_below_the_earliest_offset_restarts_the_log,
    delete_up_to_removes_only_whole_sealed_segments,
    retention_by_bytes_keeps_the_newest_segments,
    retention_by_time_deletes_old_sealed_segments,
    offset_for_timestamp_finds_the_first_record_at_or_after,
    bad_batches_are_refused_and_leave_the_log_unchanged,
    control_batches_and_producer_fields_are_kept,
    durable_tickets_resolve_under_every_policy,
    batches_held_by_a_reader_survive_later_reads,
    compaction_removes_refused_records_of_sealed_segments_only,
);

fn clock() -> ManualClock {
    ManualClock::new(1_700_000_000_000)
}

fn appends_get_dense_offsets_and_read_back(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(LogConfig::default(), &clock);
    assert_eq!(log.next_offset(), Offset(0));
    let first = log.append(&mut batch(1, 3, 1_000)).expect("append");
    let second = log.append(&mut batch(2, 1, 2_000)).expect("append");
    let third = log.append(&mut batch(3, 5, 3_000)).expect("append");
    assert_eq!(
        (first.base_offset, first.last_offset),
        (Offset(0), Offset(2)),
        "{}",
        store.name()
    );
    assert_eq!(
        (second.base_offset, second.last_offset),
        (Offset(3), Offset(3))
    );
    assert_eq!(
        (third.base_offset, third.last_offset),
        (Offset(4), Offset(8))
    );
    assert_eq!(log.next_offset(), Offset(9));
    assert_eq!(log.earliest_offset(), Offset(0));
    let from_middle = log.read(Offset(5), 1 << 20).expect("read");
    assert_eq!(
        from_middle.len(),
        1,
        "the batch holding offset 5 is returned whole"
    );
    assert_eq!(from_middle[0].base_offset(), 4);
    let all = read_all(&log);
    assert_eq!(all.len(), 3);
    assert_eq!(values(&all)[3], "batch 2 record 0");
    let records = all[2].records().expect("records");
    assert_eq!(records[4].offset, 8);
    assert_eq!(records[4].timestamp_ms, 3_004);
    assert_eq!(log.read(Offset(9), 1 << 20).expect("read at end"), vec![]);
    log.close().expect("close");
}

fn reads_stop_at_max_bytes_but_return_one_whole_batch(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(LogConfig::default(), &clock);
    for tag in 0..10 {
        log.append(&mut sized_batch(tag, 200, 1)).expect("append");
    }
    let one = log.read(Offset(0), 1).expect("read");
    assert_eq!(
        one.len(),
        1,
        "a budget smaller than a batch still returns the first batch"
    );
    let size = one[0].bytes().len();
    let three = log.read(Offset(2), size * 3 + size / 2).expect("read");
    assert_eq!(three.len(), 3);
    assert_eq!(three[0].base_offset(), 2);
    let rest = log.read(Offset(0), usize::MAX).expect("read");
    assert_eq!(rest.len(), 10);
}

fn reads_outside_the_log_are_refused(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..20 {
        log.append(&mut sized_batch(tag, 300, 1)).expect("append");
    }
    assert!(matches!(
        log.read(Offset(21), 100),
        Err(LogError::OffsetOutOfRange {
            requested: 21,
            next: 20,
            ..
        })
    ));
    let removed = log.delete_up_to(Offset(10)).expect("delete");
    assert!(removed > 0);
    let earliest = log.earliest_offset();
    assert!(earliest > Offset(0) && earliest <= Offset(10));
    assert!(matches!(
        log.read(Offset(earliest.0 - 1), 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        log.read(earliest, 1).expect("read")[0].base_offset(),
        earliest.0
    );
}

fn append_after_reopen_continues_offsets(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..12 {
        log.append(&mut batch(tag, 2, 100)).expect("append");
    }
    let before = read_all(&log);
    let segments = log.segment_count();
    log.close().expect("close");
    let mut log = store.open(small_segments(), &clock);
    assert_eq!(log.next_offset(), Offset(24));
    assert_eq!(log.segment_count(), segments);
    assert_eq!(read_all(&log), before);
    let appended = log.append(&mut batch(99, 1, 100)).expect("append");
    assert_eq!(appended.base_offset, Offset(24));
    assert_eq!(
        values(&log.read(Offset(24), 100).expect("read")),
        ["batch 99 record 0"]
    );
}

fn segments_roll_by_size_and_reads_cross_them(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..30 {
        log.append(&mut sized_batch(tag, 150, 1)).expect("append");
    }
    assert!(log.segment_count() >= 5, "{} segments", log.segment_count());
    let all = read_all(&log);
    assert_eq!(all.len(), 30);
    for (index, batch) in all.iter().enumerate() {
        assert_eq!(batch.base_offset(), index as u64);
    }
    assert!(log.size_bytes() >= 30 * 150);
    let mut oversized = sized_batch(99, 2000, 1);
    assert!(matches!(
        log.append(&mut oversized),
        Err(LogError::BatchTooLarge { max: 1024, .. })
    ));
}

fn segments_roll_by_age(store: &impl Store) {
    let clock = clock();
    let config = LogConfig {
        segment_age_max: Some(Duration::from_secs(60)),
        ..LogConfig::default()
    };
    let now = 1_700_000_000_000;
    let mut log = store.open(config.clone(), &clock);
    log.append(&mut batch(1, 1, now)).expect("append");
    clock.advance_ms(30_000);
    log.append(&mut batch(2, 1, now + 30_000)).expect("append");
    assert_eq!(log.segment_count(), 1);
    clock.advance_ms(31_000);
    log.append(&mut batch(3, 1, now + 61_000)).expect("append");
    assert_eq!(
        log.segment_count(),
        2,
        "a segment older than the limit rolls"
    );
    log.close().expect("close");
    clock.advance_ms(60_000);
    let mut log = store.open(config, &clock);
    log.append(&mut batch(4, 1, now + 121_000)).expect("append");
    assert_eq!(log.segment_count(), 3, "age counts across a reopen");
}

fn truncate_removes_the_batch_holding_the_offset_and_everything_after(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..20 {
        log.append(&mut batch(tag, 3, 1)).expect("append");
    }
    let segments = log.segment_count();
    assert!(segments > 2);
    let next = log.truncate(Offset(31)).expect("truncate");
    assert_eq!(
        next,
        Offset(30),
        "the batch holding 31 (30..=32) goes whole"
    );
    assert_eq!(log.next_offset(), Offset(30));
    assert!(log.segment_count() < segments);
    assert_eq!(log.truncate(Offset(100)).expect("no-op"), Offset(30));
    let appended = log.append(&mut batch(77, 1, 1)).expect("append");
    assert_eq!(appended.base_offset, Offset(30));
    log.close().expect("close");
    let log = store.open(small_segments(), &clock);
    assert_eq!(log.next_offset(), Offset(31));
    let all = values(&read_all(&log));
    assert_eq!(all.len(), 31);
    assert_eq!(all[29], "batch 9 record 2");
    assert_eq!(all[30], "batch 77 record 0");
}

fn truncate_below_the_earliest_offset_restarts_the_log(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..20 {
        log.append(&mut sized_batch(tag, 200, 1)).expect("append");
    }
    log.delete_up_to(Offset(10)).expect("delete");
    let earliest = log.earliest_offset();
    assert!(earliest > Offset(2));
    assert_eq!(log.truncate(Offset(2)).expect("truncate"), Offset(2));
    assert_eq!(
        (log.earliest_offset(), log.next_offset()),
        (Offset(2), Offset(2))
    );
    assert_eq!(log.segment_count(), 1);
    assert_eq!(
        log.append(&mut batch(5, 1, 1)).expect("append").base_offset,
        Offset(2)
    );
    log.close().expect("close");
    let log = store.open(small_segments(), &clock);
    assert_eq!(
        (log.earliest_offset(), log.next_offset()),
        (Offset(2), Offset(3))
    );
}

fn delete_up_to_removes_only_whole_sealed_segments(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..20 {
        log.append(&mut sized_batch(tag, 300, 1)).expect("append");
    }
    let segments = log.segment_count();
    assert_eq!(log.delete_up_to(Offset(0)).expect("delete"), 0);
    let removed = log.delete_up_to(Offset(7)).expect("delete");
    assert!(removed >= 1);
    assert!(
        log.earliest_offset() <= Offset(7),
        "offset 7 is still readable"
    );
    assert!(!log.read(Offset(7), 1).expect("read").is_empty());
    let removed_all = log.delete_up_to(Offset(1_000)).expect("delete");
    assert_eq!(log.segment_count(), 1, "the active segment stays");
    assert_eq!(removed + removed_all, segments - 1);
    assert_eq!(log.next_offset(), Offset(20));
}

fn retention_by_bytes_keeps_the_newest_segments(store: &impl Store) {
    let clock = clock();
    let config = LogConfig {
        retention_bytes: Some(2048),
        ..small_segments()
    };
    let mut log = store.open(config, &clock);
    for tag in 0..40 {
        log.append(&mut sized_batch(tag, 200, 1)).expect("append");
    }
    let before = log.size_bytes();
    let removed = log.enforce_retention().expect("retention");
    assert!(removed > 0);
    assert!(
        log.size_bytes() >= 2048,
        "retention keeps at least the limit"
    );
    assert!(log.size_bytes() < before);
    assert_eq!(log.next_offset(), Offset(40));
    assert_eq!(log.enforce_retention().expect("retention again"), 0);
}

fn retention_by_time_deletes_old_sealed_segments(store: &impl Store) {
    let clock = clock();
    let now = 1_700_000_000_000;
    let config = LogConfig {
        retention: Some(Duration::from_secs(3600)),
        ..small_segments()
    };
    let mut log = store.open(config, &clock);
    for tag in 0..10 {
        log.append(&mut sized_batch(tag, 300, now - 7_200_000))
            .expect("append");
    }
    for tag in 10..20 {
        log.append(&mut sized_batch(tag, 300, now)).expect("append");
    }
    let removed = log.enforce_retention().expect("retention");
    assert!(removed >= 2);
    let all = read_all(&log);
    assert!(
        all.iter().all(|batch| batch.base_offset() >= 8),
        "old segments went"
    );
    assert!(all.iter().any(|batch| batch.base_offset() == 10));
    clock.advance_ms(7_200_000);
    log.enforce_retention().expect("retention");
    assert_eq!(
        log.segment_count(),
        1,
        "everything sealed expired; the active segment stays"
    );
}

fn offset_for_timestamp_finds_the_first_record_at_or_after(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for tag in 0..30 {
        log.append(&mut batch(tag, 3, 1_000 + tag as i64 * 10))
            .expect("append");
    }
    assert_eq!(
        log.offset_for_timestamp(0).expect("lookup"),
        Some(Offset(0))
    );
    assert_eq!(
        log.offset_for_timestamp(1_001).expect("lookup"),
        Some(Offset(1))
    );
    assert_eq!(
        log.offset_for_timestamp(1_003).expect("lookup"),
        Some(Offset(3))
    );
    assert_eq!(
        log.offset_for_timestamp(1_152).expect("lookup"),
        Some(Offset(47))
    );
    assert_eq!(
        log.offset_for_timestamp(1_290).expect("lookup"),
        Some(Offset(87))
    );
    assert_eq!(log.offset_for_timestamp(1_293).expect("lookup"), None);
    log.close().expect("close");
    let log = store.open(small_segments(), &clock);
    assert_eq!(
        log.offset_for_timestamp(1_152).expect("lookup"),
        Some(Offset(47))
    );
}

fn bad_batches_are_refused_and_leave_the_log_unchanged(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(LogConfig::default(), &clock);
    log.append(&mut batch(1, 2, 1)).expect("append");
    let mut good = batch(2, 2, 1).to_vec();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let mut trailing = good.clone();
    trailing.push(0);
    let short = good[..good.len() - 1].to_vec();
    for bad in [flipped, short, trailing, vec![], vec![0u8; 70]] {
        let mut bad = bad;
        assert!(
            matches!(log.append(&mut bad), Err(LogError::InvalidBatch(_))),
            "{}",
            store.name()
        );
    }
    assert_eq!(log.next_offset(), Offset(2));
    assert_eq!(
        log.append(&mut good).expect("append").base_offset,
        Offset(2)
    );
}

fn control_batches_and_producer_fields_are_kept(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(LogConfig::default(), &clock);
    let mut builder = BatchBuilder::new().producer(42, 3, 17).transactional();
    builder.push(5, Some(b"key"), Some(b"value"), &[]);
    log.append(&mut builder.build()).expect("append");
    log.append(&mut control_batch(ControlKind::Abort, 42, 3, 9, 6))
        .expect("append");
    let batches = log.read(Offset(0), 1 << 20).expect("read");
    assert_eq!(batches.len(), 2);
    let header = batches[0].header();
    assert_eq!(
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        ),
        (42, 3, 17)
    );
    assert!(header.is_transactional() && !header.is_control());
    assert!(batches[1].header().is_control());
    let marker = &batches[1].records().expect("records")[0];
    assert_eq!(control_kind(marker), Some(ControlKind::Abort));
    assert_eq!(marker.offset, 1);
}

fn durable_tickets_resolve_under_every_policy(store: &impl Store) {
    for durability in [
        Durability::Fsync,
        Durability::Interval(Duration::from_millis(5)),
        Durability::None,
    ] {
        let clock = clock();
        let config = LogConfig {
            durability,
            ..small_segments()
        };
        let mut log = store.open(config, &clock);
        let start = log.next_offset();
        let tickets: Vec<_> = (0..50)
            .map(|tag| log.append(&mut batch(tag, 2, 1)).expect("append"))
            .collect();
        for appended in &tickets {
            appended.durable.wait().expect("durable");
            assert!(appended.durable.is_durable().expect("state"));
        }
        assert_eq!(log.durable_offset(), start.plus(100), "{durability}");
        log.close().expect("close");
    }
}

fn batches_held_by_a_reader_survive_later_reads(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(LogConfig::default(), &clock);
    for tag in 0..64 {
        log.append(&mut sized_batch(tag, 4000, 1)).expect("append");
    }
    let held = log.read(Offset(0), 20_000).expect("read");
    let copies: Vec<Vec<u8>> = held.iter().map(|batch| batch.bytes().to_vec()).collect();
    for from in (0..64).step_by(3) {
        let later = log.read(Offset(from), 20_000).expect("read");
        assert_eq!(later[0].base_offset(), from);
        drop(later);
    }
    for (batch, copy) in held.iter().zip(&copies) {
        assert_eq!(
            batch.bytes().as_ref(),
            copy.as_slice(),
            "a held batch changed under its reader"
        );
    }
    drop(held);
    let again = log.read(Offset(5), 1).expect("read after release");
    assert_eq!(values(&again)[0].len(), 4000);
}

fn compaction_removes_refused_records_of_sealed_segments_only(store: &impl Store) {
    let clock = clock();
    let mut log = store.open(small_segments(), &clock);
    for round in 0..12u64 {
        let mut builder = BatchBuilder::new().producer(9, 0, (round * 2) as i32);
        for key in ["a", "b"] {
            let value = format!("{key}{round}{}", "x".repeat(100));
            builder.push(1_000, Some(key.as_bytes()), Some(value.as_bytes()), &[]);
        }
        log.append(&mut builder.build()).expect("append");
    }
    log.append(&mut control_batch(ControlKind::Commit, 9, 0, 0, 1_000))
        .expect("marker");
    let next = log.next_offset();
    let segments = log.segment_count();
    assert!(segments >= 3, "{} segments", segments);
    // Keep only the odd offsets: every batch loses its first record.
    let removed = log
        .compact(next, &mut |record| record.offset % 2 == 1)
        .expect("compact");
    let survivors = |log: &dyn Log| -> Vec<u64> {
        let mut offsets = Vec::new();
        let mut at = log.earliest_offset();
        while at < log.next_offset() {
            let batches = log.read(at, 1 << 20).expect("read");
            let Some(last) = batches.last() else { break };
            at = Offset(last.last_offset() + 1);
            for batch in &batches {
                if !batch.header().is_control() {
                    offsets.extend(
                        batch
                            .records()
                            .expect("records")
                            .iter()
                            .map(|record| record.offset),
                    );
                }
            }
        }
        offsets
    };
    let after = survivors(&log);
    assert!(removed > 0, "{}", store.name());
    assert_eq!(log.next_offset(), next, "compaction moves no offset");
    assert_eq!(log.segment_count(), segments);
    let odd: Vec<u64> = after
        .iter()
        .copied()
        .filter(|offset| offset % 2 == 1)
        .collect();
    assert_eq!(
        odd,
        (0..12).map(|index| index * 2 + 1).collect::<Vec<u64>>(),
        "kept records stay"
    );
    let even_left = after.len() as u64 - 12;
    assert_eq!(removed + even_left, 12, "{}", store.name());
    drop(log);
    let log = store.open(small_segments(), &clock);
    assert_eq!(
        survivors(&log),
        after,
        "compaction survives reopening ({})",
        store.name()
    );
    let batches = log.read(Offset(0), 1 << 20).expect("read");
    assert_eq!(
        batches[0].header().producer_id,
        9,
        "producer fields are kept"
    );
}
