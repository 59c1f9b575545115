//! The queue engine, driven directly: deliveries, credit, settlement, leases, pull, restart.

mod support;

use postino_core::{
    ConsumerSpec, CoreError, GetOutcome, GetSpec, Outcome, Overflow, Push, QueueEngine,
    QueueOptions, QueueStore,
};
use postino_storage::{FileLog, Log, LogConfig, MemLog, Offset};
use postino_types::{HeaderValue, Message};

fn memory_queue() -> QueueEngine<MemLog> {
    support::memory_queue(QueueOptions::default())
}

fn message(text: &str) -> Message {
    Message::new(text.as_bytes().to_vec()).persistent()
}

fn body(push: &Push) -> String {
    let delivery = match push {
        Push::Consumer { delivery, .. } | Push::Waiter { delivery, .. } => delivery,
    };
    String::from_utf8(delivery.message.body.to_vec()).expect("utf-8")
}

fn consumer_of(push: &Push) -> u64 {
    match push {
        Push::Consumer { consumer, .. } => *consumer,
        Push::Waiter { .. } => panic!("expected a consumer delivery"),
    }
}

fn id_of(push: &Push) -> u64 {
    match push {
        Push::Consumer { delivery, .. } | Push::Waiter { delivery, .. } => delivery.id,
    }
}

fn prefetch(count: u32) -> ConsumerSpec {
    ConsumerSpec {
        prefetch_count: count,
        ..ConsumerSpec::default()
    }
}

/// Publishes `m0`, `m1`, … `m{count - 1}`.
fn publish_numbered(queue: &mut QueueEngine<MemLog>, count: usize) {
    for index in 0..count {
        queue
            .publish(0, message(&format!("m{index}")))
            .expect("publish");
    }
}

#[test]
fn competing_consumers_take_turns_within_their_prefetch() {
    let mut queue = memory_queue();
    publish_numbered(&mut queue, 6);
    let first = queue.consume(0, 1, prefetch(2)).expect("consume");
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["m0", "m1"]);
    let second = queue.consume(0, 2, prefetch(2)).expect("consume");
    assert_eq!(second.iter().map(body).collect::<Vec<_>>(), ["m2", "m3"]);
    assert_eq!(queue.stats().ready, 2);
    assert_eq!(queue.stats().unacked, 4);
    let after_ack = queue
        .settle(0, &[id_of(&first[0])], Outcome::Accept)
        .expect("ack");
    assert_eq!(after_ack.len(), 1);
    assert_eq!(
        (consumer_of(&after_ack[0]), body(&after_ack[0])),
        (1, "m4".to_owned())
    );
    let more = queue.publish(0, message("m6")).expect("publish").pushes;
    assert!(more.is_empty(), "nobody has credit");
    let after = queue
        .settle(0, &[id_of(&second[0])], Outcome::Accept)
        .expect("ack");
    assert_eq!(
        (consumer_of(&after[0]), body(&after[0])),
        (2, "m5".to_owned())
    );
}

#[test]
fn round_robin_spreads_deliveries_evenly() {
    let mut queue = memory_queue();
    for consumer in 1..=3 {
        queue.consume(0, consumer, prefetch(0)).expect("consume");
    }
    let mut counts = [0; 4];
    for index in 0..30 {
        let pushes = queue
            .publish(0, message(&format!("m{index}")))
            .expect("publish")
            .pushes;
        counts[consumer_of(&pushes[0]) as usize] += 1;
    }
    assert_eq!(&counts[1..], &[10, 10, 10]);
}

#[test]
fn requeued_and_abandoned_messages_come_back_marked_redelivered() {
    let mut queue = memory_queue();
    queue.publish(0, message("a")).expect("publish");
    queue.publish(0, message("b")).expect("publish");
    let pushes = queue.consume(0, 1, prefetch(1)).expect("consume");
    assert!(!pushes_message(&pushes[0]).annotations.redelivered);
    let again = queue
        .settle(0, &[id_of(&pushes[0])], Outcome::Requeue)
        .expect("nack");
    assert_eq!(
        body(&again[0]),
        "a",
        "a requeued message keeps its place at the head"
    );
    assert!(pushes_message(&again[0]).annotations.redelivered);
    assert_eq!(pushes_message(&again[0]).annotations.delivery_count, 1);
    queue.consume(0, 2, prefetch(1)).expect("consume");
    let moved = queue.cancel(0, 1).expect("cancel");
    assert!(moved.is_empty(), "consumer 2 is full");
    let freed = queue.settle(0, &[1], Outcome::Accept).expect("ack b");
    assert_eq!(body(&freed[0]), "a");
    assert_eq!(pushes_message(&freed[0]).annotations.delivery_count, 2);
}

fn pushes_message(push: &Push) -> &Message {
    match push {
        Push::Consumer { delivery, .. } | Push::Waiter { delivery, .. } => &delivery.message,
    }
}

#[test]
fn settling_an_unknown_delivery_is_refused_and_changes_nothing() {
    let mut queue = memory_queue();
    queue.publish(0, message("a")).expect("publish");
    let pushes = queue.consume(0, 1, prefetch(0)).expect("consume");
    let id = id_of(&pushes[0]);
    assert!(matches!(
        queue.settle(0, &[id, 99], Outcome::Accept),
        Err(CoreError::UnknownDelivery { delivery: 99 })
    ));
    assert_eq!(
        queue.stats().unacked,
        1,
        "the valid id was not settled either"
    );
    queue.settle(0, &[id], Outcome::Accept).expect("ack");
    assert!(matches!(
        queue.settle(0, &[id], Outcome::Accept),
        Err(CoreError::UnknownDelivery { .. })
    ));
}

#[test]
fn get_polls_or_waits_and_a_waiter_is_served_first() {
    let mut queue = memory_queue();
    assert_eq!(
        queue.get(0, GetSpec::default(), None).expect("poll"),
        GetOutcome::Empty
    );
    assert_eq!(
        queue.get(0, GetSpec::default(), Some(7)).expect("get"),
        GetOutcome::Waiting
    );
    queue.consume(0, 1, prefetch(0)).expect("consume");
    let pushes = queue.publish(0, message("x")).expect("publish").pushes;
    assert!(matches!(&pushes[0], Push::Waiter { waiter: 7, .. }));
    queue.publish(0, message("y")).expect("publish");
    queue.cancel(0, 1).expect("cancel");
    let GetOutcome::Delivered(delivery) = queue
        .get(
            0,
            GetSpec {
                auto_ack: true,
                lease_ms: None,
            },
            None,
        )
        .expect("get")
    else {
        panic!("a message is ready");
    };
    assert_eq!(&delivery.message.body[..], b"y");
    assert_eq!(
        queue.stats().unacked,
        1,
        "auto-ack settled y; x is still held by the waiter's get"
    );
    queue.get(0, GetSpec::default(), Some(8)).expect("wait");
    queue.cancel_get(8);
    assert!(
        queue
            .publish(0, message("z"))
            .expect("publish")
            .pushes
            .is_empty()
    );
}

#[test]
fn get_matching_takes_the_first_match_within_the_window() {
    let mut queue = memory_queue();
    for (index, colour) in ["red", "blue", "red", "green"].iter().enumerate() {
        let message = message(&format!("m{index}"))
            .with_header("colour", HeaderValue::Text((*colour).to_owned()));
        queue.publish(0, message).expect("publish");
    }
    let is = |colour: &'static str| {
        move |message: &Message| {
            message.properties.headers.get("colour") == Some(&HeaderValue::Text(colour.to_owned()))
        }
    };
    let found = queue
        .get_matching(0, GetSpec::default(), 10, is("blue"))
        .expect("scan")
        .expect("blue is there");
    assert_eq!(&found.message.body[..], b"m1");
    assert!(
        queue
            .get_matching(0, GetSpec::default(), 2, is("green"))
            .expect("scan")
            .is_none(),
        "green is past the window"
    );
    assert_eq!(queue.stats().ready, 3, "unmatched messages stay in place");
    let pushes = queue.consume(0, 1, prefetch(0)).expect("consume");
    assert_eq!(
        pushes.iter().map(body).collect::<Vec<_>>(),
        ["m0", "m2", "m3"]
    );
}

#[test]
fn an_expired_lease_returns_the_message_and_a_changed_lease_holds_it() {
    let mut queue = memory_queue();
    queue.publish(0, message("a")).expect("publish");
    queue.publish(0, message("b")).expect("publish");
    let spec = ConsumerSpec {
        lease_ms: Some(1_000),
        ..prefetch(1)
    };
    let pushes = queue.consume(0, 1, spec).expect("consume");
    let first = id_of(&pushes[0]);
    assert_eq!(queue.next_deadline().expect("deadline"), Some(1_000));
    assert!(queue.expire(999).expect("tick").is_empty());
    let again = queue.expire(1_000).expect("tick");
    assert_eq!(
        (
            id_of(&again[0]),
            pushes_message(&again[0]).annotations.delivery_count
        ),
        (first, 1)
    );
    queue.change_lease(1_500, first, 10_000).expect("extend");
    assert!(
        queue.expire(5_000).expect("tick").is_empty(),
        "the extended lease still holds"
    );
    let released = queue.change_lease(6_000, first, 0).expect("release now");
    assert_eq!(
        id_of(&released[0]),
        first,
        "a zero lease makes it visible at once"
    );
    assert!(matches!(
        queue.change_lease(0, 99, 1),
        Err(CoreError::UnknownDelivery { .. })
    ));
}

#[test]
fn prefetch_bytes_bound_what_a_consumer_holds() {
    let mut queue = memory_queue();
    for _ in 0..4 {
        queue
            .publish(0, Message::new(vec![0u8; 600]))
            .expect("publish");
    }
    let spec = ConsumerSpec {
        prefetch_bytes: 1_000,
        ..ConsumerSpec::default()
    };
    let pushes = queue.consume(0, 1, spec).expect("consume");
    assert_eq!(
        pushes.len(),
        1,
        "a second 600-byte message would pass 1000 bytes"
    );
    let next = queue
        .settle(0, &[id_of(&pushes[0])], Outcome::Accept)
        .expect("ack");
    assert_eq!(next.len(), 1);
}

fn file_queue(dir: &std::path::Path) -> QueueEngine<FileLog> {
    let config = LogConfig {
        segment_bytes_max: 4096,
        batch_bytes_max: 4096,
        ..LogConfig::default()
    };
    QueueEngine::open(
        "q",
        FileLog::open(dir, config).expect("log"),
        QueueOptions::default(),
        QueueStore::default(),
    )
    .expect("queue")
}

#[test]
fn a_restart_brings_back_unsettled_persistent_messages_only() {
    let dir = tempfile::tempdir().expect("dir");
    let mut queue = file_queue(dir.path());
    for index in 0..10 {
        queue
            .publish(0, message(&format!("p{index}")))
            .expect("publish");
    }
    queue
        .publish(0, Message::new(&b"transient"[..]))
        .expect("publish");
    let pushes = queue.consume(0, 1, prefetch(6)).expect("consume");
    let ids: Vec<u64> = pushes.iter().map(id_of).collect();
    queue.settle(0, &ids[..3], Outcome::Accept).expect("ack");
    queue
        .settle(0, &ids[3..4], Outcome::Discard)
        .expect("reject");
    let last = queue.publish(0, message("after")).expect("publish");
    last.durable.wait().expect("durable");
    queue.into_log().close().expect("close");

    let mut queue = file_queue(dir.path());
    assert_eq!(
        queue.stats().ready,
        7,
        "p4..p9 and 'after'; not the acked, rejected or transient"
    );
    let pushes = queue.consume(0, 1, prefetch(0)).expect("consume");
    assert_eq!(
        pushes.iter().map(body).collect::<Vec<_>>(),
        ["p4", "p5", "p6", "p7", "p8", "p9", "after"]
    );
}

#[test]
fn settled_segments_are_deleted_once_the_head_passes_them() {
    let dir = tempfile::tempdir().expect("dir");
    let mut queue = file_queue(dir.path());
    for index in 0..100 {
        queue
            .publish(
                0,
                message(&format!("message number {index} with some padding")),
            )
            .expect("publish");
    }
    let segments_before = queue.log().segment_count();
    assert!(segments_before > 3);
    let pushes = queue
        .consume(
            0,
            1,
            ConsumerSpec {
                auto_ack: true,
                ..ConsumerSpec::default()
            },
        )
        .expect("consume");
    assert_eq!(pushes.len(), 100);
    assert!(
        queue.log().segment_count() < segments_before,
        "settled segments were deleted"
    );
    assert_eq!(queue.stats().ready, 0);
    queue.into_log().close().expect("close");
    let queue = file_queue(dir.path());
    assert_eq!(
        queue.stats().ready,
        0,
        "auto-acked messages do not come back"
    );
}

#[test]
fn purge_removes_ready_messages_for_good_and_leaves_the_unacked() {
    let dir = tempfile::tempdir().expect("dir");
    let mut queue = file_queue(dir.path());
    for index in 0..5 {
        queue
            .publish(0, message(&format!("m{index}")))
            .expect("publish");
    }
    let held = queue.consume(0, 1, prefetch(1)).expect("consume");
    assert_eq!(held.len(), 1);
    assert_eq!(queue.purge(0).expect("purge"), 4);
    assert_eq!(queue.stats().ready, 0);
    assert_eq!(queue.stats().unacked, 1);
    queue.into_log().close().expect("close");
    let queue = file_queue(dir.path());
    assert_eq!(queue.stats().ready, 1, "only the unacked one comes back");
}

#[test]
fn a_full_file_system_refuses_publishes_keeps_acks_and_the_queue_resumes() {
    let dir = tempfile::tempdir().expect("dir");
    let fs = postino_storage::fault::FaultyFs::new(postino_storage::fs::RealFs);
    let faults = fs.faults();
    let config = LogConfig {
        segment_bytes_max: 4096,
        batch_bytes_max: 4096,
        ..LogConfig::default()
    };
    let log = FileLog::open_with(
        dir.path(),
        config,
        std::sync::Arc::new(fs),
        std::sync::Arc::new(postino_types::SystemClock),
    )
    .expect("log");
    let mut queue =
        QueueEngine::open("q", log, QueueOptions::default(), QueueStore::default()).expect("queue");
    for index in 0..4 {
        queue
            .publish(0, message(&format!("p{index}")))
            .expect("publish")
            .durable
            .wait()
            .expect("durable");
    }
    let pushes = queue.consume(0, 1, prefetch(2)).expect("consume");
    faults.full(true);
    let refused = queue.publish(0, message("refused")).expect_err("full");
    assert!(refused.is_no_space(), "{refused}");
    queue
        .settle(0, &[id_of(&pushes[0])], Outcome::Accept)
        .expect("an ack is taken while the file system is full");
    assert_eq!(
        queue.stats().ready,
        1,
        "p3 (p2 went to the consumer); the refused publish is not there"
    );
    faults.full(false);
    queue
        .settle(0, &[id_of(&pushes[1])], Outcome::Accept)
        .expect("ack");
    let last = queue.publish(0, message("after")).expect("space is back");
    last.durable.wait().expect("durable");
    queue.into_log().close().expect("close");
    let mut queue = file_queue(dir.path());
    let pushes = queue.consume(0, 1, prefetch(0)).expect("consume");
    assert_eq!(
        pushes.iter().map(body).collect::<Vec<_>>(),
        ["p2", "p3", "after"],
        "both acks were written once space was back (p2 was unacked); the refused publish never was"
    );
}

#[test]
fn a_read_error_keeps_what_was_delivered_before_it_and_fifo_order() {
    let dir = tempfile::tempdir().expect("dir");
    let open = || {
        let fs = postino_storage::fault::FaultyFs::new(postino_storage::fs::RealFs);
        let faults = fs.faults();
        let log = FileLog::open_with(
            dir.path(),
            LogConfig::default(),
            std::sync::Arc::new(fs),
            std::sync::Arc::new(postino_types::SystemClock),
        )
        .expect("log");
        let queue = QueueEngine::open("q", log, QueueOptions::default(), QueueStore::default())
            .expect("queue");
        (queue, faults)
    };
    let (mut queue, _) = open();
    for index in 0..200 {
        queue
            .publish(0, message(&format!("p{index:03}")))
            .expect("publish");
    }
    queue.into_log().close().expect("close");
    // Reopened, nothing is hot: deliveries read the log, and every read flips a bit in its
    // middle, so the batches before the flip decode and the one holding it does not.
    let (mut queue, faults) = open();
    faults.flip_reads(true);
    let first = queue
        .consume(0, 1, prefetch(0))
        .expect("what was read before the bad batch is delivered");
    assert!(!first.is_empty() && first.len() < 200, "{}", first.len());
    faults.flip_reads(false);
    let rest = queue
        .publish(0, message("p200"))
        .expect("the publish is stored")
        .pushes;
    let bodies: Vec<String> = first.iter().chain(&rest).map(body).collect();
    let expected: Vec<String> = (0..=200).map(|index| format!("p{index:03}")).collect();
    assert_eq!(bodies, expected, "every message once, in order");
}

#[test]
fn a_window_bounds_what_a_consumer_holds_unwritten_whatever_its_prefetch() {
    let mut queue = memory_queue();
    for index in 0..10 {
        queue
            .publish(0, message(&format!("m{index}")))
            .expect("publish");
    }
    let windowed = |auto_ack| ConsumerSpec {
        auto_ack,
        window: 3,
        ..ConsumerSpec::default()
    };
    let first = queue.consume(0, 1, windowed(true)).expect("consume");
    assert_eq!(
        first.iter().map(body).collect::<Vec<_>>(),
        ["m0", "m1", "m2"],
        "no-ack, no prefetch: the window alone stops it"
    );
    assert!(
        queue.written(0, 1, 0).expect("written").is_empty(),
        "nothing written, nothing more"
    );
    let more = queue.written(0, 1, 2).expect("written");
    assert_eq!(more.iter().map(body).collect::<Vec<_>>(), ["m3", "m4"]);
    let other = queue.consume(0, 2, windowed(false)).expect("consume");
    assert_eq!(other.len(), 3, "a second consumer has a window of its own");
    assert_eq!(queue.stats().ready, 2);
    assert!(
        queue
            .written(0, 99, 5)
            .expect("an unknown consumer")
            .is_empty(),
        "a report for an unknown consumer changes nothing"
    );
}

#[test]
fn a_run_of_publishes_is_one_append_with_an_outcome_for_each() {
    let mut queue = memory_queue();
    let consumed = queue.consume(0, 1, prefetch(10)).expect("consume");
    assert!(consumed.is_empty());
    let run = (0..5).map(|index| message(&format!("m{index}"))).collect();
    let outcomes = queue.publish_many(0, run);
    let ids: Vec<u64> = outcomes
        .iter()
        .map(|outcome| outcome.as_ref().expect("stored").id)
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    let batches = queue.log().read(Offset(0), usize::MAX).expect("read");
    assert_eq!(batches.len(), 1, "the run is one batch");
    assert_eq!(batches[0].records().expect("records").len(), 5);
    let pushes: Vec<&Push> = outcomes
        .iter()
        .flat_map(|outcome| &outcome.as_ref().expect("stored").pushes)
        .collect();
    assert_eq!(
        pushes.into_iter().map(body).collect::<Vec<_>>(),
        ["m0", "m1", "m2", "m3", "m4"],
        "the consumer got the run in order"
    );
    assert_eq!(queue.stats().published, 5);
}

#[test]
fn a_run_of_publishes_to_a_queue_with_limits_is_checked_message_by_message() {
    let mut queue = support::memory_queue(QueueOptions {
        max_length: Some(2),
        overflow: Overflow::RejectPublish,
        ..QueueOptions::default()
    });
    let run = ["a", "b", "c"].into_iter().map(message).collect();
    let outcomes = queue.publish_many(0, run);
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
    assert!(
        matches!(outcomes[2], Err(CoreError::PublishRejected { .. })),
        "the third is over x-max-length"
    );
    assert_eq!(queue.stats().ready, 2);
}

#[test]
fn held_settlements_are_written_as_one_record_when_released() {
    let mut queue = memory_queue();
    publish_numbered(&mut queue, 3);
    let pushes = queue.consume(0, 1, prefetch(10)).expect("consume");
    let before = queue.log().next_offset();
    queue.hold_settlements();
    for push in &pushes {
        queue
            .settle(0, &[id_of(push)], Outcome::Accept)
            .expect("ack");
    }
    assert_eq!(queue.log().next_offset(), before, "nothing written yet");
    queue.release_settlements(0).expect("release");
    assert_eq!(
        queue.log().next_offset().0,
        before.0 + 1,
        "one settlement record for the three acks"
    );
    assert_eq!(queue.stats().acknowledged, 3);
}
