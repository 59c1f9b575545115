//! Random operation sequences (publish, consume, cancel, get, settle, lease expiry, restart)
//! against a small reference model of a queue: the engine must agree with it on every delivery.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
        1 => (0i64..300).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
    ]
}

const LEASE_MS: u64 = 100;

#[derive(Debug, Default)]
struct Model {
    persistent: HashMap<u64, bool>,
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

    /// Checks one push against the model and applies it.
    fn apply_push(&mut self, now: i64, push: &Push) -> Result<(), TestCaseError> {
        let Push::Consumer { consumer, delivery } = push else {
            return Err(TestCaseError::fail("no waiter was registered"));
        };
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
    prop_assert!(
        !model.stalled(),
        "a ready message waits while a consumer has credit"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_queue_engine_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("dir");
        let open = || QueueEngine::open("q", FileLog::open(dir.path(), config()).expect("log"), QueueOptions::default(), QueueStore::default()).expect("queue");
        let mut queue = open();
        let mut model = Model::default();
        let mut now = 0i64;
        // Publishes get ids from the log; the body names the id so deliveries can be checked.
        for op in ops {
            match op {
                Op::Publish { persistent } => {
                    let next = queue.log().next_offset().0;
                    let mut message = Message::new(next.to_string().into_bytes());
                    if persistent {
                        message = message.persistent();
                    }
                    let published = queue.publish(now, message).expect("publish");
                    prop_assert_eq!(published.id, next);
                    model.persistent.insert(published.id, persistent);
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
                    match queue.get(now, spec, None).expect("get") {
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
                Op::Restart => {
                    queue.into_log().close().expect("close");
                    queue = open();
                    let unsettled: Vec<u64> = model.in_flight.keys().copied().collect();
                    model.in_flight.clear();
                    model.consumers.clear();
                    model.counts.clear();
                    model.ready.extend(unsettled);
                    let persistent = model.persistent.clone();
                    model.ready.retain(|id| persistent[id]);
                }
            }
            let stats = queue.stats();
            prop_assert_eq!(stats.ready, model.ready.len() as u64);
            prop_assert_eq!(stats.unacked, model.in_flight.len() as u64);
            prop_assert_eq!(stats.consumers, model.consumers.len());
        }
    }
}
