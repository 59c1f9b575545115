//! Consumers with a filter (`ConsumerSpec::filter`, AMQP's `x-filter` consumer argument) on the
//! queue engine: a filtered consumer gets only what its filter accepts, past a head it does not
//! want; what no consumer accepts stays ready for a later consumer or a get; credit, priorities
//! and settlement work as for any consumer.

mod support;

use postino_core::{
    ConsumerSpec, Filter, GetOutcome, GetSpec, Outcome, Push, QueueEngine, QueueOptions,
};
use postino_storage::MemLog;
use postino_types::Message;

fn queue() -> QueueEngine<MemLog> {
    support::memory_queue(QueueOptions::default())
}

/// A message whose body is its name and whose priority is `priority`.
fn message(name: &str, priority: u8) -> Message {
    let mut message = Message::new(name.as_bytes().to_vec());
    message.properties.priority = Some(priority);
    message
}

fn urgent(prefetch_count: u32) -> ConsumerSpec {
    ConsumerSpec {
        prefetch_count,
        filter: Some(Filter::parse("properties.priority >= 5").expect("filter")),
        ..ConsumerSpec::default()
    }
}

/// (consumer, body) of each push.
fn got(pushes: &[Push]) -> Vec<(u64, String)> {
    pushes
        .iter()
        .map(|push| match push {
            Push::Consumer { consumer, delivery } => (
                *consumer,
                String::from_utf8(delivery.message.body.to_vec()).expect("utf-8"),
            ),
            Push::Waiter { .. } => panic!("no waiter here"),
        })
        .collect()
}

fn publish(queue: &mut QueueEngine<MemLog>, name: &str, priority: u8) -> Vec<(u64, String)> {
    got(&queue
        .publish(0, message(name, priority))
        .expect("publish")
        .pushes)
}

#[test]
fn a_filtered_consumer_gets_what_it_accepts_past_a_head_it_does_not_want() {
    let mut queue = queue();
    publish(&mut queue, "low-1", 1);
    publish(&mut queue, "low-2", 2);
    publish(&mut queue, "high-1", 9);
    let pushes = got(&queue.consume(0, 7, urgent(0)).expect("consume"));
    assert_eq!(
        pushes,
        [(7, "high-1".to_owned())],
        "only the urgent one, past two others"
    );
    assert_eq!(publish(&mut queue, "low-3", 0), [], "nobody takes it");
    assert_eq!(publish(&mut queue, "high-2", 5), [(7, "high-2".to_owned())]);
    // An unfiltered consumer takes what was left, in order.
    let rest = got(&queue
        .consume(0, 8, ConsumerSpec::default())
        .expect("consume"));
    let names: Vec<&str> = rest.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(names, ["low-1", "low-2", "low-3"]);
    assert!(rest.iter().all(|(consumer, _)| *consumer == 8));
}

#[test]
fn what_no_consumer_accepts_stays_ready_for_a_get() {
    let mut queue = queue();
    queue.consume(0, 7, urgent(0)).expect("consume");
    assert_eq!(publish(&mut queue, "low", 1), []);
    let spec = GetSpec {
        auto_ack: true,
        lease_ms: None,
    };
    match queue.get(0, spec, None).expect("get") {
        GetOutcome::Delivered(delivery) => assert_eq!(&delivery.message.body[..], b"low"),
        other => panic!("the message stayed ready: {other:?}"),
    }
}

#[test]
fn a_filtered_consumer_keeps_to_its_credit_and_settling_gives_it_more() {
    let mut queue = queue();
    for index in 0..4 {
        publish(&mut queue, &format!("low-{index}"), 0);
        publish(&mut queue, &format!("high-{index}"), 7);
    }
    let first = got(&queue.consume(0, 7, urgent(2)).expect("consume"));
    assert_eq!(
        first,
        [(7, "high-0".to_owned()), (7, "high-1".to_owned())],
        "two, its prefetch"
    );
    // Settling one delivery (the first delivery id the engine handed out) gives room for one
    // more, again past the lows.
    let held = queue
        .publish(0, message("high-4", 9))
        .expect("publish")
        .pushes;
    assert!(held.is_empty(), "no credit left");
    let high_0 = 1;
    let more = got(&queue.settle(0, &[high_0], Outcome::Accept).expect("ack"));
    assert_eq!(more, [(7, "high-2".to_owned())]);
}

#[test]
fn filtered_and_unfiltered_consumers_share_what_both_accept_and_priority_wins() {
    let mut queue = queue();
    queue.consume(0, 7, urgent(0)).expect("consume");
    queue
        .consume(0, 8, ConsumerSpec::default())
        .expect("consume");
    let mut by = std::collections::BTreeMap::<u64, Vec<String>>::new();
    for index in 0..6 {
        let priority = if index % 2 == 0 { 9 } else { 0 };
        for (consumer, name) in publish(&mut queue, &format!("m{index}"), priority) {
            by.entry(consumer).or_default().push(name);
        }
    }
    let urgent_got = by.get(&7).cloned().unwrap_or_default();
    assert!(
        !urgent_got.is_empty(),
        "round robin reaches the filtered one: {by:?}"
    );
    assert!(
        urgent_got
            .iter()
            .all(|name| ["m0", "m2", "m4"].contains(&name.as_str())),
        "only urgent messages: {by:?}"
    );
    assert_eq!(urgent_got.len() + by.get(&8).map_or(0, Vec::len), 6);

    // A filtered consumer of a higher priority takes every message it accepts.
    let mut queue = self::queue();
    let priority = ConsumerSpec {
        priority: 10,
        ..urgent(0)
    };
    queue.consume(0, 7, priority).expect("consume");
    queue
        .consume(0, 8, ConsumerSpec::default())
        .expect("consume");
    assert_eq!(publish(&mut queue, "a", 9), [(7, "a".to_owned())]);
    assert_eq!(publish(&mut queue, "b", 1), [(8, "b".to_owned())]);
    assert_eq!(publish(&mut queue, "c", 9), [(7, "c".to_owned())]);
}
