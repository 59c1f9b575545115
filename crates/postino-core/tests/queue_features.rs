//! Queue options, driven on the engine: time to live, length limits, dead-lettering, delivery
//! limit, priorities, single active consumer, consumer priority — and restarts in the middle.

mod support;

use std::path::Path;

use postino_core::{
    ConsumerSpec, CoreError, DeadLetter, GetOutcome, GetSpec, Outcome, Overflow, Push, QueueEngine,
    QueueOptions, QueueStore,
};
use postino_storage::{FileLog, Log, LogConfig, MemLog};
use postino_types::{DeathReason, Message};

fn memory(options: QueueOptions) -> QueueEngine<MemLog> {
    support::memory_queue(options)
}

fn file(dir: &Path, options: QueueOptions) -> QueueEngine<FileLog> {
    QueueEngine::open(
        "q",
        FileLog::open(dir, LogConfig::default()).expect("log"),
        options,
        QueueStore {
            delay_dir: Some(dir.join("delays")),
            ..QueueStore::default()
        },
    )
    .expect("queue")
}

fn text(body: &str) -> Message {
    Message::new(body.as_bytes().to_vec()).persistent()
}

fn body_of(push: &Push) -> String {
    let (Push::Consumer { delivery, .. } | Push::Waiter { delivery, .. }) = push;
    String::from_utf8(delivery.message.body.to_vec()).expect("utf-8")
}

fn get_body(queue: &mut QueueEngine<impl Log>, now: i64) -> Option<String> {
    match queue
        .get(
            now,
            GetSpec {
                auto_ack: true,
                lease_ms: None,
            },
            None,
        )
        .expect("get")
    {
        GetOutcome::Delivered(delivery) => {
            Some(String::from_utf8(delivery.message.body.to_vec()).expect("utf-8"))
        }
        GetOutcome::Empty => None,
        GetOutcome::Waiting => panic!("no waiter"),
    }
}

fn with_dlx(options: QueueOptions) -> QueueOptions {
    QueueOptions {
        dead_letter_exchange: Some("dlx".into()),
        ..options
    }
}

fn letter_bodies(letters: &[DeadLetter]) -> Vec<String> {
    letters
        .iter()
        .map(|letter| String::from_utf8(letter.message.body.to_vec()).expect("utf-8"))
        .collect()
}

#[test]
fn queue_ttl_expires_messages_into_the_dead_letter_exchange() {
    let mut queue = memory(with_dlx(QueueOptions {
        message_ttl_ms: Some(1_000),
        ..QueueOptions::default()
    }));
    let mut first = text("old");
    first.annotations.routing_key = "orders".into();
    queue.publish(0, first).expect("publish");
    queue.publish(500, text("new")).expect("publish");
    assert_eq!(queue.next_deadline().expect("deadline"), Some(1_000));
    assert!(queue.expire(999).expect("tick").is_empty());
    queue.expire(1_000).expect("tick");
    assert_eq!(queue.stats().ready, 1);
    let letters = queue.take_dead_letters();
    assert_eq!(letter_bodies(&letters), ["old"]);
    assert_eq!(letters[0].exchange, "dlx");
    assert_eq!(letters[0].routing_key, "orders");
    let death = &letters[0].message.annotations.deaths[0];
    assert_eq!(
        (death.reason, death.queue.as_str(), death.count),
        (DeathReason::Expired, "q", 1)
    );
    assert_eq!(get_body(&mut queue, 1_200), Some("new".into()));
}

#[test]
fn per_message_expiration_applies_at_the_head() {
    let mut queue = memory(QueueOptions::default());
    let mut short = text("short");
    short.properties.expiration_ms = Some(100);
    let mut long = text("long");
    long.properties.expiration_ms = Some(10_000);
    queue.publish(0, long).expect("publish");
    queue.publish(0, short).expect("publish");
    queue.expire(200).expect("tick");
    assert_eq!(
        queue.stats().ready,
        2,
        "the short one waits behind the long one, as in RabbitMQ"
    );
    assert_eq!(get_body(&mut queue, 200), Some("long".into()));
    assert_eq!(
        get_body(&mut queue, 200),
        None,
        "the short one expired when it reached the head"
    );
    assert!(
        queue.take_dead_letters().is_empty(),
        "no dead-letter exchange: dropped"
    );
}

#[test]
fn zero_ttl_reaches_a_waiting_consumer_only() {
    let mut queue = memory(QueueOptions {
        message_ttl_ms: Some(0),
        ..QueueOptions::default()
    });
    queue.publish(0, text("nobody")).expect("publish");
    assert_eq!(get_body(&mut queue, 1), None);
    queue
        .consume(1, 1, ConsumerSpec::default())
        .expect("consume");
    let pushes = queue.publish(1, text("someone")).expect("publish").pushes;
    assert_eq!(pushes.iter().map(body_of).collect::<Vec<_>>(), ["someone"]);
}

#[test]
fn max_length_drops_the_head_by_default() {
    let mut queue = memory(with_dlx(QueueOptions {
        max_length: Some(2),
        ..QueueOptions::default()
    }));
    for name in ["a", "b", "c", "d"] {
        queue.publish(0, text(name)).expect("publish");
    }
    assert_eq!(queue.stats().ready, 2);
    let letters = queue.take_dead_letters();
    assert_eq!(letter_bodies(&letters), ["a", "b"]);
    assert_eq!(
        letters[0].message.annotations.deaths[0].reason,
        DeathReason::MaxLength
    );
    assert_eq!(get_body(&mut queue, 0), Some("c".into()));
}

#[test]
fn max_length_bytes_counts_ready_bodies() {
    let mut queue = memory(QueueOptions {
        max_length_bytes: Some(10),
        ..QueueOptions::default()
    });
    queue.publish(0, text("12345")).expect("publish");
    queue.publish(0, text("67890")).expect("publish");
    assert_eq!(queue.stats().ready_bytes, 10);
    queue.publish(0, text("x")).expect("publish");
    assert_eq!(queue.stats().ready, 2);
    assert_eq!(get_body(&mut queue, 0), Some("67890".into()));
}

#[test]
fn reject_publish_refuses_and_reject_publish_dlx_also_dead_letters() {
    for overflow in [Overflow::RejectPublish, Overflow::RejectPublishDlx] {
        let mut queue = memory(with_dlx(QueueOptions {
            max_length: Some(1),
            overflow,
            ..QueueOptions::default()
        }));
        queue.publish(0, text("kept")).expect("publish");
        assert!(matches!(
            queue.publish(0, text("refused")),
            Err(CoreError::PublishRejected { .. })
        ));
        assert_eq!(queue.stats().ready, 1);
        let letters = queue.take_dead_letters();
        match overflow {
            Overflow::RejectPublishDlx => assert_eq!(letter_bodies(&letters), ["refused"]),
            _ => assert!(letters.is_empty()),
        }
    }
}

#[test]
fn rejected_messages_are_dead_lettered_and_requeues_stop_at_the_delivery_limit() {
    let mut queue = memory(with_dlx(QueueOptions {
        delivery_limit: Some(1),
        dead_letter_routing_key: Some("dead".into()),
        ..QueueOptions::default()
    }));
    queue.publish(0, text("bad")).expect("publish");
    queue.publish(0, text("flaky")).expect("publish");
    let pushes = queue
        .consume(0, 1, ConsumerSpec::default())
        .expect("consume");
    let ids: Vec<u64> = pushes
        .iter()
        .map(|push| match push {
            Push::Consumer { delivery, .. } => delivery.id,
            Push::Waiter { .. } => unreachable!(),
        })
        .collect();
    queue
        .settle(0, &ids[..1], Outcome::Discard)
        .expect("reject");
    let again = queue.settle(0, &ids[1..], Outcome::Requeue).expect("nack");
    assert_eq!(
        again.iter().map(body_of).collect::<Vec<_>>(),
        ["flaky"],
        "one return is within the limit"
    );
    queue
        .settle(0, &ids[1..], Outcome::Requeue)
        .expect("nack again");
    let letters = queue.take_dead_letters();
    assert_eq!(letter_bodies(&letters), ["bad", "flaky"]);
    assert_eq!(
        letters[0].message.annotations.deaths[0].reason,
        DeathReason::Rejected
    );
    assert_eq!(
        letters[1].message.annotations.deaths[0].reason,
        DeathReason::DeliveryLimit
    );
    assert!(letters.iter().all(|letter| letter.routing_key == "dead"));
    assert_eq!(queue.stats().ready + queue.stats().unacked, 0);
}

#[test]
fn higher_priorities_are_delivered_first_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let options = QueueOptions {
        max_priority: Some(5),
        ..QueueOptions::default()
    };
    let mut queue = file(dir.path(), options.clone());
    for (name, priority) in [
        ("low", 0),
        ("high", 5),
        ("mid", 3),
        ("over", 9),
        ("none", 0),
    ] {
        let mut message = text(name);
        message.properties.priority = (priority > 0).then_some(priority);
        queue.publish(0, message).expect("publish");
    }
    queue.into_log().close().expect("close");
    let mut queue = file(dir.path(), options);
    let order: Vec<String> = std::iter::from_fn(|| get_body(&mut queue, 0)).collect();
    assert_eq!(order, ["high", "over", "mid", "low", "none"]);
}

#[test]
fn a_single_active_consumer_takes_everything_until_it_leaves() {
    let mut queue = memory(QueueOptions {
        single_active_consumer: true,
        ..QueueOptions::default()
    });
    queue
        .consume(0, 1, ConsumerSpec::default())
        .expect("consume");
    queue
        .consume(0, 2, ConsumerSpec::default())
        .expect("consume");
    let mut to_first = 0;
    for index in 0..5 {
        let pushes = queue
            .publish(0, text(&format!("m{index}")))
            .expect("publish")
            .pushes;
        to_first += pushes
            .iter()
            .filter(|push| matches!(push, Push::Consumer { consumer: 1, .. }))
            .count();
    }
    assert_eq!(to_first, 5);
    let moved = queue.cancel(0, 1).expect("cancel");
    assert_eq!(
        moved.len(),
        5,
        "the unsettled messages go to the next consumer"
    );
    assert!(
        moved
            .iter()
            .all(|push| matches!(push, Push::Consumer { consumer: 2, .. }))
    );
}

#[test]
fn higher_priority_consumers_are_served_while_they_have_credit() {
    let mut queue = memory(QueueOptions::default());
    let low = ConsumerSpec {
        prefetch_count: 10,
        ..ConsumerSpec::default()
    };
    let high = ConsumerSpec {
        prefetch_count: 2,
        priority: 10,
        ..ConsumerSpec::default()
    };
    queue.consume(0, 1, low).expect("consume");
    queue.consume(0, 2, high).expect("consume");
    let mut receivers = Vec::new();
    for index in 0..5 {
        for push in queue
            .publish(0, text(&format!("m{index}")))
            .expect("publish")
            .pushes
        {
            if let Push::Consumer { consumer, .. } = push {
                receivers.push(consumer);
            }
        }
    }
    assert_eq!(receivers, [2, 2, 1, 1, 1]);
}

#[test]
fn expired_and_dropped_messages_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let options = QueueOptions {
        message_ttl_ms: Some(100),
        max_length: Some(3),
        ..QueueOptions::default()
    };
    let mut queue = file(dir.path(), options.clone());
    for index in 0..5 {
        queue
            .publish(0, text(&format!("m{index}")))
            .expect("publish");
    }
    assert_eq!(queue.stats().ready, 3, "m0 and m1 dropped for length");
    queue.publish(150, text("late")).expect("publish");
    assert_eq!(
        queue.stats().ready,
        1,
        "m2..m4 expired at 100 when the head was checked"
    );
    queue.into_log().close().expect("close");
    let mut queue = file(dir.path(), options);
    assert_eq!(get_body(&mut queue, 160), Some("late".into()));
    assert_eq!(get_body(&mut queue, 160), None);
}

fn with_id(body: &str, id: &str) -> Message {
    let mut message = text(body);
    message.properties.message_id = Some(id.to_owned());
    message
}

#[test]
fn duplicates_within_the_window_are_confirmed_without_being_stored_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let options = QueueOptions {
        deduplication: true,
        deduplication_ttl_ms: Some(1_000),
        ..QueueOptions::default()
    };
    let mut queue = file(dir.path(), options.clone());
    let first = queue.publish(0, with_id("a", "id-1")).expect("publish");
    let again = queue
        .publish(10, with_id("a again", "id-1"))
        .expect("publish");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(again.id, first.id);
    again
        .durable
        .wait()
        .expect("a duplicate's confirm resolves");
    let header = text("b").with_header(
        "x-deduplication-header",
        postino_types::HeaderValue::Text("k".into()),
    );
    assert!(
        !queue
            .publish(20, header.clone())
            .expect("publish")
            .duplicate
    );
    assert!(queue.publish(30, header).expect("publish").duplicate);
    assert_eq!(queue.stats().ready, 2);
    queue.into_log().close().expect("close");

    let mut queue = file(dir.path(), options);
    assert!(
        queue
            .publish(40, with_id("a", "id-1"))
            .expect("publish")
            .duplicate,
        "the window survives a restart"
    );
    assert!(
        !queue
            .publish(2_000, with_id("a", "id-1"))
            .expect("publish")
            .duplicate,
        "past the window's ttl"
    );
    assert_eq!(get_body(&mut queue, 2_000), Some("a".into()));
}

#[test]
fn message_groups_keep_one_message_per_group_in_flight() {
    let mut queue = memory(QueueOptions {
        message_groups: true,
        ..QueueOptions::default()
    });
    for (body, group) in [
        ("a1", Some("a")),
        ("a2", Some("a")),
        ("b1", Some("b")),
        ("free", None),
    ] {
        let mut message = text(body);
        if let Some(group) = group {
            message =
                message.with_header("x-group-id", postino_types::HeaderValue::Text(group.into()));
        }
        queue.publish(0, message).expect("publish");
    }
    let pushes = queue
        .consume(0, 1, ConsumerSpec::default())
        .expect("consume");
    assert_eq!(
        pushes.iter().map(body_of).collect::<Vec<_>>(),
        ["a1", "b1", "free"]
    );
    let first = match &pushes[0] {
        Push::Consumer { delivery, .. } => delivery.id,
        Push::Waiter { .. } => unreachable!(),
    };
    let next = queue.settle(0, &[first], Outcome::Accept).expect("ack a1");
    assert_eq!(
        next.iter().map(body_of).collect::<Vec<_>>(),
        ["a2"],
        "a2 follows once a1 is settled"
    );
}

fn delayed(body: &str, delay_ms: i64) -> Message {
    text(body).with_header("x-delay", postino_types::HeaderValue::Int(delay_ms))
}

#[test]
fn delayed_messages_wait_for_their_time_then_go_in_line() {
    let mut queue = memory(QueueOptions::default());
    queue.publish(0, delayed("later", 500)).expect("publish");
    queue.publish(10, text("now")).expect("publish");
    assert_eq!(queue.stats().delayed, 1);
    let pushes = queue
        .consume(20, 1, ConsumerSpec::default())
        .expect("consume");
    assert_eq!(pushes.iter().map(body_of).collect::<Vec<_>>(), ["now"]);
    assert_eq!(queue.next_deadline().expect("deadline"), Some(500));
    assert!(queue.expire(499).expect("tick").is_empty());
    let due = queue.expire(500).expect("tick");
    assert_eq!(due.iter().map(body_of).collect::<Vec<_>>(), ["later"]);
    assert_eq!(queue.stats().delayed, 0);
}

#[test]
fn delays_survive_a_restart_and_ttl_counts_from_the_due_time() {
    let dir = tempfile::tempdir().expect("dir");
    let options = QueueOptions {
        message_ttl_ms: Some(1_000),
        ..QueueOptions::default()
    };
    let mut queue = file(dir.path(), options.clone());
    queue.publish(0, delayed("soon", 2_000)).expect("publish");
    queue
        .publish(0, delayed("much later", 60_000))
        .expect("publish");
    queue.into_log().close().expect("close");

    let mut queue = file(dir.path(), options);
    assert_eq!(queue.stats().delayed, 2);
    assert_eq!(get_body(&mut queue, 1_999), None);
    assert_eq!(
        get_body(&mut queue, 2_500),
        Some("soon".into()),
        "due at 2000, it lives until 3000 though published at 0 with a ttl of 1000"
    );
    assert_eq!(queue.stats().delayed, 1);
    assert_eq!(get_body(&mut queue, 59_999), None);
    assert_eq!(get_body(&mut queue, 60_500), Some("much later".into()));
}

#[test]
fn segments_holding_delayed_messages_are_kept_while_everything_else_is_consumed() {
    let dir = tempfile::tempdir().expect("dir");
    let config = LogConfig {
        segment_bytes_max: 2048,
        batch_bytes_max: 2048,
        ..LogConfig::default()
    };
    let open = |dir: &Path| {
        QueueEngine::open(
            "q",
            FileLog::open(dir, config.clone()).expect("log"),
            QueueOptions::default(),
            QueueStore {
                delay_dir: Some(dir.join("delays")),
                ..QueueStore::default()
            },
        )
        .expect("queue")
    };
    let mut queue = open(dir.path());
    queue
        .publish(0, delayed("patient", 60_000))
        .expect("publish");
    for index in 0..100 {
        queue
            .publish(0, text(&format!("filler message {index} with padding")))
            .expect("publish");
    }
    while get_body(&mut queue, 1).is_some() {}
    queue.into_log().close().expect("close");
    let mut queue = open(dir.path());
    assert_eq!(
        queue.stats().delayed,
        1,
        "the delayed message's segment was kept"
    );
    assert_eq!(get_body(&mut queue, 60_000), Some("patient".into()));
}
