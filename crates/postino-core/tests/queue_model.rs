//! Random operation sequences (publish, consume, cancel, get, settle, lease expiry, time to
//! live, transactions committed, aborted or left in doubt across a restart, restart) against a
//! small reference model of a queue: the engine must agree with it on every delivery.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use postino_core::{
    ConsumerSpec, CoreError, GetOutcome, GetSpec, Outcome, Push, QueueEngine, QueueOptions,
    QueueStore,
};
use postino_storage::{FileLog, Log, LogConfig};
use postino_types::Message;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        persistent: bool,
    },
    Consume {
        consumer: u64,
        prefetch: u32,
        leased: bool,
    },
    Cancel {
        consumer: u64,
    },
    Get {
        auto_ack: bool,
    },
    Settle {
        pick: usize,
        outcome: u8,
    },
    SettleUnknown,
    Advance {
        ms: i64,
    },
    /// A transaction of `count` persistent publishes: committed, aborted, or prepared and left
    /// undecided across a restart (`decided` says whether the host had recorded commit).
    Transaction {
        count: usize,
        ending: u8,
        decided: bool,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => any::<bool>().prop_map(|persistent| Op::Publish { persistent }),
        2 => (0u64..3, 0u32..4, any::<bool>())
            .prop_map(|(consumer, prefetch, leased)| Op::Consume { consumer, prefetch, leased }),
        1 => (0u64..3).prop_map(|consumer| Op::Cancel { consumer }),
        2 => any::<bool>().prop_map(|auto_ack| Op::Get { auto_ack }),
        4 => (any::<usize>(), 0u8..3).prop_map(|(pick, outcome)| Op::Settle { pick, outcome }),
        1 => Just(Op::SettleUnknown),
        2 => (0i64..150).prop_map(|ms| Op::Advance { ms }),
        1 => (1usize..4, 0u8..3, any::<bool>())
            .prop_map(|(count, ending, decided)| Op::Transaction { count, ending, decided }),
        1 => Just(Op::Restart),
    ]
}

const LEASE_MS: u64 = 100;

#[derive(Debug, Default)]
struct Model {
    ttl_ms: Option<i64>,
    persistent: HashMap<u64, bool>,
    published: HashMap<u64, i64>,
    ready: BTreeSet<u64>,
    /// id -> (holding consumer, lease deadline)
    in_flight: BTreeMap<u64, (Option<u64>, Option<i64>)>,
    counts: HashMap<u64, u32>,
    /// consumer -> (prefetch, leased)
    consumers: BTreeMap<u64, (u32, bool)>,
}

impl Model {
    fn unsettled(&self, consumer: u64) -> u32 {
        self.in_flight
            .values()
            .filter(|(holder, _)| *holder == Some(consumer))
            .count() as u32
    }

    fn has_credit(&self, consumer: u64) -> bool {
        let (prefetch, _) = self.consumers[&consumer];
        prefetch == 0 || self.unsettled(consumer) < prefetch
    }

    fn release(&mut self, id: u64) {
        self.in_flight.remove(&id);
        *self.counts.entry(id).or_insert(0) += 1;
        self.ready.insert(id);
    }

    /// Drops head messages whose time to live ended, as the engine does before delivering.
    fn expire_heads(&mut self, now: i64) {
        let Some(ttl) = self.ttl_ms else { return };
        while let Some(&head) = self.ready.first() {
            if now < self.published[&head] + ttl {
                break;
            }
            self.ready.remove(&head);
            self.counts.remove(&head);
        }
    }

    /// Checks one push against the model and applies it.
    fn apply_push(&mut self, now: i64, push: &Push) -> Result<(), TestCaseError> {
        let Push::Consumer { consumer, delivery } = push else {
            return Err(TestCaseError::fail("no waiter was registered"));
        };
        self.expire_heads(now);
        prop_assert_eq!(
            Some(delivery.id),
            self.ready.first().copied(),
            "deliveries take the head"
        );
        prop_assert!(
            self.consumers.contains_key(consumer),
            "delivery to an unknown consumer"
        );
        prop_assert!(self.has_credit(*consumer), "delivery past the prefetch");
        let count = self.counts.get(&delivery.id).copied().unwrap_or(0);
        prop_assert_eq!(delivery.message.annotations.delivery_count, count);
        prop_assert_eq!(delivery.message.annotations.redelivered, count > 0);
        let expected_body = delivery.id.to_string().into_bytes();
        prop_assert_eq!(&delivery.message.body[..], &expected_body[..]);
        self.ready.remove(&delivery.id);
        let leased = self.consumers[consumer].1;
        let deadline = leased.then_some(now + LEASE_MS as i64);
        self.in_flight
            .insert(delivery.id, (Some(*consumer), deadline));
        Ok(())
    }

    fn stalled(&self) -> bool {
        !self.ready.is_empty()
            && self
                .consumers
                .keys()
                .any(|consumer| self.has_credit(*consumer))
    }

    fn restart(&mut self) {
        let unsettled: Vec<u64> = self.in_flight.keys().copied().collect();
        self.in_flight.clear();
        self.consumers.clear();
        self.counts.clear();
        self.ready.extend(unsettled);
        let persistent = &self.persistent;
        self.ready.retain(|id| persistent[id]);
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 2048,
        batch_bytes_max: 2048,
        ..LogConfig::default()
    }
}

fn apply_pushes(model: &mut Model, now: i64, pushes: &[Push]) -> Result<(), TestCaseError> {
    for push in pushes {
        model.apply_push(now, push)?;
    }
    model.expire_heads(now);
    prop_assert!(
        !model.stalled(),
        "a ready message waits while a consumer has credit"
    );
    Ok(())
}

/// A message whose body names the offset it will get.
fn numbered(offset: u64, persistent: bool) -> Message {
    let message = Message::new(offset.to_string().into_bytes());
    if persistent {
        message.persistent()
    } else {
        message
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_queue_engine_agrees_with_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        ttl_ms in proptest::option::of(50i64..400),
    ) {
        let dir = tempfile::tempdir().expect("dir");
        let options = QueueOptions {
            message_ttl_ms: ttl_ms.map(|ttl| ttl as u64),
            ..QueueOptions::default()
        };
        let open = |committed: HashSet<u64>| {
            let store = QueueStore { committed_transactions: committed, ..QueueStore::default() };
            QueueEngine::open("q", FileLog::open(dir.path(), config()).expect("log"), options.clone(), store)
                .expect("queue")
        };
        let mut queue = open(HashSet::new());
        let mut model = Model { ttl_ms, ..Model::default() };
        let mut now = 0i64;
        let mut next_transaction = 1u64;
        for op in ops {
            match op {
                Op::Publish { persistent } => {
                    let next = queue.log().next_offset().0;
                    let published = queue.publish(now, numbered(next, persistent)).expect("publish");
                    prop_assert_eq!(published.id, next);
                    model.persistent.insert(published.id, persistent);
                    model.published.insert(published.id, now);
                    model.ready.insert(published.id);
                    apply_pushes(&mut model, now, &published.pushes)?;
                }
                Op::Consume { consumer, prefetch, leased } => {
                    let spec = ConsumerSpec {
                        prefetch_count: prefetch,
                        lease_ms: leased.then_some(LEASE_MS),
                        ..ConsumerSpec::default()
                    };
                    match queue.consume(now, consumer, spec) {
                        Err(CoreError::PreconditionFailed { .. }) => {
                            prop_assert!(model.consumers.contains_key(&consumer));
                        }
                        Ok(pushes) => {
                            prop_assert!(!model.consumers.contains_key(&consumer));
                            model.consumers.insert(consumer, (prefetch, leased));
                            apply_pushes(&mut model, now, &pushes)?;
                        }
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
                Op::Cancel { consumer } => {
                    let pushes = queue.cancel(now, consumer).expect("cancel");
                    model.consumers.remove(&consumer);
                    let held: Vec<u64> = model
                        .in_flight
                        .iter()
                        .filter(|(_, (holder, _))| *holder == Some(consumer))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in held {
                        model.release(id);
                    }
                    apply_pushes(&mut model, now, &pushes)?;
                }
                Op::Get { auto_ack } => {
                    let spec = GetSpec { auto_ack, lease_ms: None };
                    let outcome = queue.get(now, spec, None).expect("get");
                    model.expire_heads(now);
                    match outcome {
                        GetOutcome::Empty => prop_assert!(model.ready.is_empty()),
                        GetOutcome::Delivered(delivery) => {
                            prop_assert_eq!(Some(delivery.id), model.ready.first().copied());
                            let count = model.counts.get(&delivery.id).copied().unwrap_or(0);
                            prop_assert_eq!(delivery.message.annotations.delivery_count, count);
                            model.ready.remove(&delivery.id);
                            if auto_ack {
                                model.counts.remove(&delivery.id);
                            } else {
                                model.in_flight.insert(delivery.id, (None, None));
                            }
                        }
                        GetOutcome::Waiting => prop_assert!(false, "no waiter was given"),
                    }
                }
                Op::Settle { pick, outcome } => {
                    if model.in_flight.is_empty() {
                        continue;
                    }
                    let id = *model.in_flight.keys().nth(pick % model.in_flight.len()).expect("in range");
                    let outcome = [Outcome::Accept, Outcome::Requeue, Outcome::Discard][outcome as usize];
                    let pushes = queue.settle(now, &[id], outcome).expect("settle");
                    if outcome == Outcome::Requeue {
                        model.release(id);
                    } else {
                        model.in_flight.remove(&id);
                        model.counts.remove(&id);
                    }
                    apply_pushes(&mut model, now, &pushes)?;
                }
                Op::SettleUnknown => {
                    let unknown = queue.log().next_offset().0 + 1_000;
                    let refused = matches!(
                        queue.settle(now, &[unknown], Outcome::Accept),
                        Err(CoreError::UnknownDelivery { .. })
                    );
                    prop_assert!(refused);
                }
                Op::Advance { ms } => {
                    now += ms;
                    let expired: Vec<u64> = model
                        .in_flight
                        .iter()
                        .filter(|(_, (_, deadline))| deadline.is_some_and(|deadline| deadline <= now))
                        .map(|(id, _)| *id)
                        .collect();
                    for id in expired {
                        model.release(id);
                    }
                    let pushes = queue.expire(now).expect("expire");
                    apply_pushes(&mut model, now, &pushes)?;
                }
                Op::Transaction { count, ending, decided } => {
                    let transaction = next_transaction;
                    next_transaction += 1;
                    // The transaction's batch starts at the next offset; its messages follow.
                    let first = queue.log().next_offset().0;
                    let messages: Vec<Message> =
                        (0..count as u64).map(|index| numbered(first + index, true)).collect();
                    queue.prepare(now, transaction, messages, Vec::new()).expect("prepare");
                    let visible = match ending {
                        0 => {
                            let (_, pushes) = queue.commit_transaction(now, transaction).expect("commit");
                            add_transaction(&mut model, first, count, now);
                            apply_pushes(&mut model, now, &pushes)?;
                            continue;
                        }
                        1 => {
                            queue.abort_transaction(now, transaction).expect("abort");
                            false
                        }
                        _ => {
                            queue.into_log().close().expect("close");
                            let committed = if decided { HashSet::from([transaction]) } else { HashSet::new() };
                            queue = open(committed);
                            model.restart();
                            decided
                        }
                    };
                    if visible {
                        add_transaction(&mut model, first, count, now);
                    }
                }
                Op::Restart => {
                    queue.into_log().close().expect("close");
                    queue = open(HashSet::new());
                    model.restart();
                }
            }
            let stats = queue.stats();
            prop_assert_eq!(stats.ready, model.ready.len() as u64);
            prop_assert_eq!(stats.unacked, model.in_flight.len() as u64);
            prop_assert_eq!(stats.consumers, model.consumers.len());
        }
    }
}

fn add_transaction(model: &mut Model, first: u64, count: usize, now: i64) {
    for id in first..first + count as u64 {
        model.persistent.insert(id, true);
        model.published.insert(id, now);
        model.ready.insert(id);
    }
}
