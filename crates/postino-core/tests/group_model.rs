//! Random joins, leaves and crashes of simulated consumers that follow Kafka's classic group
//! protocol against the membership state machine, the leader assigning with each strategy.
//! After each change the group is driven until it settles; then every partition of a
//! subscribed stream is owned by exactly one member subscribed to it, and no partition is ever
//! owned by two members, even mid-rebalance (eager strategies release everything before
//! rejoining, `cooperative-sticky` withholds what moves for a round).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use postino_core::group::assign::{Strategy as Assignor, StreamPartition, Subscription};
use postino_core::group::{Answer, Membership};
use postino_core::{CoreError, GroupError, GroupLimits, Join};
use proptest::prelude::*;

const STREAMS: [(&str, u32); 3] = [("a", 3), ("b", 5), ("c", 2)];
const SESSION_MS: u64 = 1_000;

#[derive(Debug, Clone)]
enum Event {
    Add { streams: BTreeSet<String> },
    Leave { client: usize },
    Crash { client: usize },
}

fn event() -> impl Strategy<Value = Event> {
    let streams = proptest::sample::subsequence(vec!["a", "b", "c"], 1..=3).prop_map(|chosen| {
        chosen
            .into_iter()
            .map(str::to_owned)
            .collect::<BTreeSet<_>>()
    });
    prop_oneof![
        3 => streams.prop_map(|streams| Event::Add { streams }),
        1 => (0usize..8).prop_map(|client| Event::Leave { client }),
        1 => (0usize..8).prop_map(|client| Event::Crash { client }),
    ]
}

#[derive(Debug, Clone)]
struct Client {
    member_id: Option<String>,
    generation: i32,
    streams: BTreeSet<String>,
    owned: BTreeSet<StreamPartition>,
    /// Must (re)join: new, or (cooperative) released partitions.
    must_join: bool,
    /// Joined and waiting for the round to end.
    waiting: bool,
}

fn metadata(client: &Client) -> Bytes {
    let streams: Vec<&str> = client.streams.iter().map(String::as_str).collect();
    let owned: Vec<String> = client
        .owned
        .iter()
        .map(|(stream, partition)| format!("{stream}:{partition}"))
        .collect();
    Bytes::from(format!("{}|{}", streams.join(","), owned.join(",")))
}

fn subscription(member: &str, metadata: &[u8]) -> Subscription {
    let text = String::from_utf8_lossy(metadata);
    let (streams, owned) = text.split_once('|').expect("streams|owned");
    Subscription {
        member: member.to_owned(),
        streams: streams.split(',').map(str::to_owned).collect(),
        owned: owned
            .split(',')
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (stream, partition) = item.split_once(':').expect("stream:partition");
                (stream.to_owned(), partition.parse().expect("a partition"))
            })
            .collect(),
    }
}

fn encode(partitions: &BTreeSet<StreamPartition>) -> Bytes {
    let items: Vec<String> = partitions
        .iter()
        .map(|(stream, partition)| format!("{stream}:{partition}"))
        .collect();
    Bytes::from(items.join(","))
}

fn decode(bytes: &[u8]) -> BTreeSet<StreamPartition> {
    subscription(
        "",
        format!("x|{}", String::from_utf8_lossy(bytes)).as_bytes(),
    )
    .owned
}

struct Sim {
    group: Membership,
    clients: Vec<Option<Client>>,
    strategy: Assignor,
    now: i64,
    waiter: u64,
    /// Joins not answered yet: waiter → client.
    pending: BTreeMap<u64, usize>,
}

impl Sim {
    fn protocol(&self) -> &'static str {
        match self.strategy {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::Sticky => "sticky",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    fn join_request(&self, client: &Client) -> Join {
        Join {
            member_id: client.member_id.clone(),
            instance_id: None,
            client_id: "sim".to_owned(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: 500,
            protocol_type: "consumer".to_owned(),
            protocols: vec![(self.protocol().to_owned(), metadata(client))],
        }
    }

    fn no_double_ownership(&self) -> Result<(), TestCaseError> {
        let mut seen = BTreeSet::new();
        for client in self.clients.iter().flatten() {
            for partition in &client.owned {
                prop_assert!(
                    seen.insert(partition.clone()),
                    "{:?} owned twice",
                    partition
                );
            }
        }
        Ok(())
    }

    /// Drives joins and syncs until nobody needs to rejoin.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..12 {
            for index in 0..self.clients.len() {
                let Some(client) = &self.clients[index] else {
                    continue;
                };
                if client.must_join || client.waiting {
                    continue;
                }
                let member = client.member_id.clone().expect("a joined client has an id");
                if let Err(error) = self.group.heartbeat(self.now, &member, client.generation) {
                    let unknown = matches!(
                        error,
                        CoreError::Group {
                            error: GroupError::UnknownMember,
                            ..
                        }
                    );
                    prop_assert!(matches!(error, CoreError::Group { .. }), "{}", error);
                    let client = self.clients[index].as_mut().expect("present");
                    client.must_join = true;
                    if unknown {
                        // Kafka clients forget an id the group no longer knows.
                        client.member_id = None;
                    }
                    if self.strategy != Assignor::CooperativeSticky {
                        // Eager protocols give everything up before rejoining.
                        client.owned.clear();
                    }
                }
            }
            let joining: Vec<usize> = (0..self.clients.len())
                .filter(|index| {
                    self.clients[*index]
                        .as_ref()
                        .is_some_and(|client| client.must_join && !client.waiting)
                })
                .collect();
            if joining.is_empty() && self.pending.is_empty() {
                return Ok(());
            }
            let mut answers = Vec::new();
            for index in joining {
                let client = self.clients[index].clone().expect("present");
                self.waiter += 1;
                let (member, completed) = self
                    .group
                    .join(self.now, self.join_request(&client), self.waiter)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                self.pending.insert(self.waiter, index);
                let client = self.clients[index].as_mut().expect("present");
                client.member_id = Some(member);
                client.waiting = true;
                answers.extend(completed);
            }
            let mut joined: Vec<(usize, postino_core::Joined)> = Vec::new();
            for answer in answers {
                if let Answer::Join {
                    waiter,
                    outcome: Ok(answer),
                } = answer
                    && let Some(index) = self.pending.remove(&waiter)
                {
                    joined.push((index, answer));
                }
            }
            if joined.is_empty() {
                // The round waits for members that have not noticed it yet.
                continue;
            }
            let Some((_, leader)) = joined
                .iter()
                .find(|(_, answer)| answer.leader == answer.member_id)
            else {
                return Err(TestCaseError::fail("no leader in the round"));
            };
            let subscriptions: Vec<Subscription> = leader
                .members
                .iter()
                .map(|member| subscription(&member.member_id, &member.metadata))
                .collect();
            let partitions: BTreeMap<String, u32> = STREAMS
                .iter()
                .map(|(stream, count)| ((*stream).to_owned(), *count))
                .collect();
            let assignment = self.strategy.assign(&subscriptions, &partitions);
            let assignments: Vec<(String, Bytes)> = assignment
                .iter()
                .map(|(member, given)| (member.clone(), encode(given)))
                .collect();
            let leader_id = leader.member_id.clone();
            let generation = leader.generation;
            self.waiter += 1;
            self.group
                .sync(self.now, &leader_id, generation, assignments, self.waiter)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            for (index, answer) in &joined {
                self.waiter += 1;
                let synced = self
                    .group
                    .sync(
                        self.now,
                        &answer.member_id,
                        answer.generation,
                        Vec::new(),
                        self.waiter,
                    )
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                let Some(Answer::Sync {
                    outcome: Ok(given), ..
                }) = synced.first()
                else {
                    return Err(TestCaseError::fail("a stable group answers a sync at once"));
                };
                let given = decode(given);
                let client = self.clients[*index].as_mut().expect("present");
                let released = !client.owned.is_subset(&given);
                client.generation = answer.generation;
                client.waiting = false;
                client.must_join = self.strategy == Assignor::CooperativeSticky && released;
                client.owned = given;
                // Members take up their assignments one at a time; at no point may two hold
                // the same partition.
                self.no_double_ownership()?;
            }
            self.now += 1;
        }
        Err(TestCaseError::fail("the group did not settle in 12 rounds"))
    }

    fn check_settled(&self) -> Result<(), TestCaseError> {
        let mut owner: BTreeMap<StreamPartition, usize> = BTreeMap::new();
        for (index, client) in self.clients.iter().enumerate() {
            let Some(client) = client else { continue };
            for partition in &client.owned {
                prop_assert!(
                    client.streams.contains(&partition.0),
                    "{:?} given to a non-subscriber",
                    partition
                );
                prop_assert!(
                    owner.insert(partition.clone(), index).is_none(),
                    "{:?} owned twice",
                    partition
                );
            }
        }
        for (stream, count) in STREAMS {
            let subscribed = self
                .clients
                .iter()
                .flatten()
                .any(|client| client.streams.contains(stream));
            for partition in 0..count {
                let owned = owner.contains_key(&(stream.to_owned(), partition));
                prop_assert_eq!(owned, subscribed, "{}:{} ownership", stream, partition);
            }
        }
        let live: Vec<&Client> = self.clients.iter().flatten().collect();
        let homogeneous = live
            .windows(2)
            .all(|pair| pair[0].streams == pair[1].streams);
        if homogeneous
            && matches!(
                self.strategy,
                Assignor::Sticky | Assignor::CooperativeSticky
            )
        {
            let counts: Vec<usize> = live.iter().map(|client| client.owned.len()).collect();
            let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
            prop_assert!(spread <= 1, "unbalanced: {:?}", counts);
        }
        Ok(())
    }
}

fn strategy() -> impl Strategy<Value = Assignor> {
    prop_oneof![
        Just(Assignor::Range),
        Just(Assignor::RoundRobin),
        Just(Assignor::Sticky),
        Just(Assignor::CooperativeSticky),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn every_partition_has_exactly_one_owner_once_the_group_settles(
        strategy in strategy(),
        events in proptest::collection::vec(event(), 1..16),
    ) {
        let limits = GroupLimits {
            session_timeout_min_ms: 100,
            initial_rebalance_delay_ms: 0,
            ..GroupLimits::default()
        };
        let mut sim = Sim {
            group: Membership::new("g", limits),
            clients: Vec::new(),
            strategy,
            now: 0,
            waiter: 0,
            pending: BTreeMap::new(),
        };
        for event in events {
            match event {
                Event::Add { streams } => sim.clients.push(Some(Client {
                    member_id: None,
                    generation: -1,
                    streams,
                    owned: BTreeSet::new(),
                    must_join: true,
                    waiting: false,
                })),
                Event::Leave { client } => {
                    let live: Vec<usize> = (0..sim.clients.len()).filter(|index| sim.clients[*index].is_some()).collect();
                    if live.is_empty() {
                        continue;
                    }
                    let index = live[client % live.len()];
                    let gone = sim.clients[index].take().expect("live");
                    let member = gone.member_id.expect("settled clients have ids");
                    sim.group.leave(sim.now, &[member]).map_err(|error| TestCaseError::fail(error.to_string()))?;
                }
                Event::Crash { client } => {
                    let live: Vec<usize> = (0..sim.clients.len()).filter(|index| sim.clients[*index].is_some()).collect();
                    if live.is_empty() {
                        continue;
                    }
                    let index = live[client % live.len()];
                    let crashed = sim.clients[index].take().and_then(|gone| gone.member_id);
                    // The others heartbeat just before the crashed one's session runs out.
                    sim.now += SESSION_MS as i64 + 1;
                    for other in sim.clients.iter().flatten() {
                        let member = other.member_id.as_deref().expect("settled");
                        sim.group
                            .heartbeat(sim.now, member, other.generation)
                            .map_err(|error| TestCaseError::fail(error.to_string()))?;
                    }
                    let answers = sim.group.tick(sim.now);
                    prop_assert!(answers.is_empty(), "nobody waits in a settled group");
                    prop_assert!(
                        !sim.group.member_ids().iter().any(|id| Some(id) == crashed.as_ref()),
                        "the crashed member's session ended"
                    );
                }
            }
            sim.settle()?;
            sim.check_settled()?;
        }
    }
}
