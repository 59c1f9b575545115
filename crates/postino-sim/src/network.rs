//! The network model every scenario runs on: who can contact whom (a [`Graph`]), which
//! messages are lost, which nodes are down and when, and how messages travel ([`Delivery`]).
//! [`Network::run`] drives any protocol of the notes' framework ([`Gossip`]) over it.
//!
//! In **rounds** a round has two steps: the messages that were in transit arrive; then every
//! live node's active thread runs and its exchange completes — with [`Exchanges::Synchronous`]
//! every active thread first, then the exchanges, all first messages before all answers (and
//! answers to those after them); with [`Exchanges::Sequential`] node by node in a random
//! order. A message that is not an answer — a broadcast's forward — arrives in the next round,
//! so it moves one hop a round.
//!
//! With **events** every node's active thread wakes once a cycle at its own phase (drawn at
//! the start) and every message, answers included, arrives after a latency drawn uniformly
//! from half a cycle to one and a half, in order of arrival; ties go in sending order.
//!
//! A lost message costs what a delivered one does; a down node neither runs its active thread
//! nor receives.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use postino_gossip::ParamError;
use postino_gossip::framework::{Gossip, Output, To};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::{Delivery, Graph};

/// Time units per cycle with event-driven delivery.
const UNITS_PER_CYCLE: u64 = 1_000;

/// The network a scenario's nodes run on.
#[derive(Debug, Clone)]
pub struct Network {
    graph: Graph,
    loss: f64,
    delivery: Delivery,
    /// The rounds during which each node is down; empty while no node ever is (the common
    /// case, which so costs no memory reads).
    outages: Vec<Option<Range<u64>>>,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Rounds (cycles) until the run's condition held, the network went quiet, or the limit.
    pub rounds: u64,
    /// Whether the run's condition held.
    pub done: bool,
    /// Messages sent that the run's `counts` selected, lost ones included (a node without a
    /// neighbour to send to sends nothing).
    pub messages: u64,
    /// When each node delivered (rounds, or cycles with events), if it did.
    pub delivered_at: Vec<Option<f64>>,
}

impl Run {
    /// The nodes that delivered.
    #[must_use]
    pub fn reach(&self) -> usize {
        self.delivered_at.iter().flatten().count()
    }
}

/// How the exchanges of a round follow each other (with rounds; events interleave anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchanges {
    /// Every active thread decides first, then the exchanges complete (Demers et al.'s
    /// synchronous rounds).
    Synchronous,
    /// Node by node in a random order, each exchange completing before the next node's
    /// active thread runs (Jelasity et al.'s cycles of atomic exchanges).
    Sequential,
}

/// What a run starts with and when it ends.
pub struct Plan<'a, G: Gossip> {
    /// How a round's exchanges follow each other.
    pub exchanges: Exchanges,
    /// Outputs of nodes before the first round (an originator's first sends).
    pub start: Vec<(usize, Vec<Output<G::Message>>)>,
    /// The most rounds (cycles) to run.
    pub rounds_max: u64,
    /// Which messages the run's `messages` counts.
    pub counts: &'a dyn Fn(&G::Message) -> bool,
    /// Checked after every round (cycle): the run ends when it holds.
    pub done: &'a mut dyn FnMut(&[G], &Network, u64) -> bool,
}

impl<G: Gossip> std::fmt::Debug for Plan<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("start", &self.start.len())
            .field("rounds_max", &self.rounds_max)
            .finish_non_exhaustive()
    }
}

impl Network {
    /// A network over `graph` losing each message with probability `loss`.
    ///
    /// # Errors
    /// [`ParamError`] naming `loss` outside [0, 1).
    pub fn new(graph: Graph, loss: f64, delivery: Delivery) -> Result<Self, ParamError> {
        check_loss(loss)?;
        Ok(Self {
            graph,
            loss,
            delivery,
            outages: Vec::new(),
        })
    }

    /// Node `node` is down during `rounds` (from round `start` up to, not including, `end`).
    pub fn take_down(&mut self, node: usize, rounds: Range<u64>) {
        if self.outages.is_empty() {
            self.outages = vec![None; self.graph.nodes()];
        }
        self.outages[node] = Some(rounds);
    }

    /// Each node but those in `spared` crashes before the first round with probability
    /// `share`, for good.
    ///
    /// # Errors
    /// [`ParamError`] naming `crash` outside [0, 1).
    pub fn crash_share(
        &mut self,
        share: f64,
        spared: &[usize],
        rng: &mut impl Rng,
    ) -> Result<(), ParamError> {
        check_crash(share)?;
        for node in 0..self.graph.nodes() {
            if !spared.contains(&node) && share > 0.0 && rng.random_bool(share) {
                self.take_down(node, 0..u64::MAX);
            }
        }
        Ok(())
    }

    /// Whether `node` is up in round `round`.
    #[must_use]
    pub fn up(&self, node: usize, round: u64) -> bool {
        self.outages
            .get(node)
            .and_then(Option::as_ref)
            .is_none_or(|outage| !outage.contains(&round))
    }

    /// Nodes that are never down after round `round`.
    #[must_use]
    pub fn live_after(&self, round: u64) -> Vec<bool> {
        (0..self.graph.nodes())
            .map(|node| {
                self.outages
                    .get(node)
                    .and_then(Option::as_ref)
                    .is_none_or(|outage| outage.end <= round)
            })
            .collect()
    }

    /// The graph.
    #[must_use]
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Nodes in the network.
    #[must_use]
    pub fn nodes(&self) -> usize {
        self.graph.nodes()
    }

    /// Whether a message is lost.
    pub fn lost(&self, rng: &mut impl Rng) -> bool {
        self.loss > 0.0 && rng.random_bool(self.loss)
    }

    /// Runs `nodes` (one per node of the graph) as `plan` says.
    pub fn run<G: Gossip>(&self, nodes: &mut [G], plan: Plan<'_, G>, rng: &mut impl Rng) -> Run {
        assert_eq!(nodes.len(), self.nodes(), "one state per node");
        let mut driver = Driver {
            network: self,
            run: Run {
                rounds: 0,
                done: false,
                messages: 0,
                delivered_at: vec![None; nodes.len()],
            },
            plan,
            answers: Vec::new(),
        };
        match self.delivery {
            Delivery::Rounds => driver.rounds(nodes, rng),
            Delivery::Events => driver.events(nodes, rng),
        }
        driver.run
    }

    /// Where `to` leads from `from`, replying to `sender`.
    fn target(
        &self,
        from: usize,
        to: To,
        sender: Option<usize>,
        rng: &mut impl Rng,
    ) -> Option<usize> {
        match to {
            To::Peer => self.graph.peer(from, rng),
            To::Node(node) => (node < self.nodes()).then_some(node),
            To::Reply => sender,
        }
    }
}

/// Where outputs come from: the node, the sender of the message it handled, and when.
#[derive(Debug, Clone, Copy)]
struct Origin {
    node: usize,
    sender: Option<usize>,
    at: f64,
}

/// One run in progress.
struct Driver<'n, 'p, G: Gossip> {
    network: &'n Network,
    plan: Plan<'p, G>,
    run: Run,
    /// A buffer for the answers of an exchange step, kept between steps.
    answers: Vec<Sent<G::Message>>,
}

impl<G: Gossip> Driver<'_, '_, G> {
    /// A node's outputs: deliveries are recorded, messages counted and queued.
    /// With `later`, messages that are not answers go there instead of to `queue`.
    fn route(
        &mut self,
        origin: Origin,
        outputs: Vec<Output<G::Message>>,
        queue: &mut Vec<Sent<G::Message>>,
        mut later: Option<&mut Vec<Sent<G::Message>>>,
        rng: &mut impl Rng,
    ) {
        for output in outputs {
            match output {
                Output::Deliver => {
                    self.run.delivered_at[origin.node].get_or_insert(origin.at);
                }
                Output::Send(to, message) => {
                    if let Some(peer) = self.network.target(origin.node, to, origin.sender, rng) {
                        if (self.plan.counts)(&message) {
                            self.run.messages += 1;
                        }
                        let sent = Sent {
                            from: origin.node,
                            to: peer,
                            message,
                        };
                        match later.as_deref_mut() {
                            Some(later) if to != To::Reply => later.push(sent),
                            _ => queue.push(sent),
                        }
                    }
                }
            }
        }
    }

    fn start(&mut self, queue: &mut Vec<Sent<G::Message>>, rng: &mut impl Rng) {
        for (node, outputs) in std::mem::take(&mut self.plan.start) {
            let origin = Origin {
                node,
                sender: None,
                at: 0.0,
            };
            self.route(origin, outputs, queue, None, rng);
        }
    }

    fn rounds(&mut self, nodes: &mut [G], rng: &mut impl Rng) {
        let mut in_transit = Vec::new();
        self.start(&mut in_transit, rng);
        let mut later = Vec::new();
        let mut begun = Vec::new();
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        for round in 1..=self.plan.rounds_max {
            self.run.rounds = round;
            let mut busy = !in_transit.is_empty();
            self.exchange(nodes, round, &mut in_transit, &mut later, rng);
            if self.plan.exchanges == Exchanges::Sequential {
                order.shuffle(rng);
            }
            for &node in &order {
                if self.network.up(node, round) {
                    let outputs = nodes[node].active(round, rng);
                    let origin = Origin {
                        node,
                        sender: None,
                        at: round as f64,
                    };
                    self.route(origin, outputs, &mut begun, None, rng);
                    if self.plan.exchanges == Exchanges::Sequential {
                        busy |= !begun.is_empty();
                        self.exchange(nodes, round, &mut begun, &mut later, rng);
                    }
                }
            }
            busy |= !begun.is_empty();
            self.exchange(nodes, round, &mut begun, &mut later, rng);
            std::mem::swap(&mut in_transit, &mut later);
            if (self.plan.done)(nodes, self.network, round) {
                self.run.done = true;
                return;
            }
            if !busy && in_transit.is_empty() {
                return;
            }
        }
    }

    /// Delivers `step` (leaving it empty), then the answers it caused, until none are left;
    /// messages that are not answers go to `later`.
    fn exchange(
        &mut self,
        nodes: &mut [G],
        round: u64,
        step: &mut Vec<Sent<G::Message>>,
        later: &mut Vec<Sent<G::Message>>,
        rng: &mut impl Rng,
    ) {
        let mut answers = std::mem::take(&mut self.answers);
        while !step.is_empty() {
            for Sent { from, to, message } in step.drain(..) {
                if self.network.lost(rng) || !self.network.up(to, round) {
                    continue;
                }
                let outputs = nodes[to].passive(round, from, message, rng);
                let origin = Origin {
                    node: to,
                    sender: Some(from),
                    at: round as f64,
                };
                self.route(origin, outputs, &mut answers, Some(later), rng);
            }
            std::mem::swap(step, &mut answers);
        }
        self.answers = answers;
    }

    /// Event-driven delivery: messages wait in a heap; the active threads wake in the order
    /// of their phases, the same each cycle, so they need no heap entries of their own.
    fn events(&mut self, nodes: &mut [G], rng: &mut impl Rng) {
        let mut phases: Vec<(u64, usize)> = (0..nodes.len())
            .map(|node| (rng.random_range(0..UNITS_PER_CYCLE), node))
            .collect();
        phases.sort_unstable();
        let mut in_transit = Messages::default();
        let mut sends = Vec::new();
        self.start(&mut sends, rng);
        let (mut cycle, mut next) = (0u64, 0usize);
        let mut checked = 0u64;
        let mut last_send = 0;
        let mut now = 0;
        loop {
            for sent in sends.drain(..) {
                let latency = rng.random_range(UNITS_PER_CYCLE / 2..UNITS_PER_CYCLE * 3 / 2);
                in_transit.push(now + latency, sent);
                last_send = now;
            }
            let tick = (cycle < self.plan.rounds_max && !phases.is_empty())
                .then(|| cycle * UNITS_PER_CYCLE + phases[next].0);
            let arrival = in_transit.next_at();
            let Some(at) = [tick, arrival].into_iter().flatten().min() else {
                return;
            };
            while (checked + 1) * UNITS_PER_CYCLE <= at {
                checked += 1;
                self.run.rounds = checked;
                if (self.plan.done)(nodes, self.network, checked) {
                    self.run.done = true;
                    return;
                }
                let quiet_since = (checked * UNITS_PER_CYCLE).saturating_sub(UNITS_PER_CYCLE);
                if in_transit.is_empty() && last_send < quiet_since {
                    return;
                }
                if checked >= self.plan.rounds_max {
                    return;
                }
            }
            now = at;
            let cycle_now = now / UNITS_PER_CYCLE + 1;
            let time = now as f64 / UNITS_PER_CYCLE as f64;
            if arrival == Some(at) {
                let Some(Sent { from, to, message }) = in_transit.pop() else {
                    return;
                };
                if self.network.lost(rng) || !self.network.up(to, cycle_now) {
                    continue;
                }
                let outputs = nodes[to].passive(cycle_now, from, message, rng);
                let origin = Origin {
                    node: to,
                    sender: Some(from),
                    at: time,
                };
                self.route(origin, outputs, &mut sends, None, rng);
            } else {
                let node = phases[next].1;
                next += 1;
                if next == phases.len() {
                    next = 0;
                    cycle += 1;
                }
                if self.network.up(node, cycle_now) {
                    let outputs = nodes[node].active(cycle_now, rng);
                    let origin = Origin {
                        node,
                        sender: None,
                        at: time,
                    };
                    self.route(origin, outputs, &mut sends, None, rng);
                }
            }
        }
    }
}

/// A message on its way.
struct Sent<M> {
    from: usize,
    to: usize,
    message: M,
}

/// Refuses a loss probability outside [0, 1).
pub(crate) fn check_loss(loss: f64) -> Result<(), ParamError> {
    if !(0.0..1.0).contains(&loss) {
        return Err(ParamError {
            name: "loss",
            reason: format!("{loss} is not in [0, 1)"),
        });
    }
    Ok(())
}

/// Refuses a crash share outside [0, 1).
pub(crate) fn check_crash(share: f64) -> Result<(), ParamError> {
    if !(0.0..1.0).contains(&share) {
        return Err(ParamError {
            name: "crash",
            reason: format!("{share} is not in [0, 1)"),
        });
    }
    Ok(())
}

/// A message in transit, ordered by arrival, then by sending.
struct Scheduled<M> {
    at: u64,
    sequence: u64,
    sent: Sent<M>,
}

impl<M> PartialEq for Scheduled<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl<M> Eq for Scheduled<M> {}

impl<M> PartialOrd for Scheduled<M> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<M> Ord for Scheduled<M> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

/// Messages in transit, in order of arrival, then of sending.
struct Messages<M> {
    heap: BinaryHeap<Reverse<Scheduled<M>>>,
    sequence: u64,
}

impl<M> Default for Messages<M> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            sequence: 0,
        }
    }
}

impl<M> Messages<M> {
    fn push(&mut self, at: u64, sent: Sent<M>) {
        self.sequence += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            sequence: self.sequence,
            sent,
        }));
    }

    fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(scheduled)| scheduled.at)
    }

    fn pop(&mut self) -> Option<Sent<M>> {
        self.heap.pop().map(|Reverse(scheduled)| scheduled.sent)
    }

    fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A test protocol: the active thread pings a peer, which answers with a pong and, when
    /// `relay`, passes a token on to the next node.
    #[derive(Debug, Clone, Default)]
    struct Probe {
        relay: bool,
        actives: u32,
        pongs: u32,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Signal {
        Ping,
        Pong,
        Token,
    }

    impl Gossip for Probe {
        type Message = Signal;

        fn active(&mut self, _now: u64, _rng: &mut impl Rng) -> Vec<Output<Signal>> {
            self.actives += 1;
            if self.relay {
                Vec::new()
            } else {
                vec![Output::Send(To::Peer, Signal::Ping)]
            }
        }

        fn passive(
            &mut self,
            _now: u64,
            _from: usize,
            message: Signal,
            _rng: &mut impl Rng,
        ) -> Vec<Output<Signal>> {
            match message {
                Signal::Ping => vec![Output::Deliver, Output::Send(To::Reply, Signal::Pong)],
                Signal::Pong => {
                    self.pongs += 1;
                    Vec::new()
                }
                Signal::Token => vec![Output::Deliver, Output::Send(To::Peer, Signal::Token)],
            }
        }
    }

    fn line(nodes: usize) -> Graph {
        let adjacency = (0..nodes)
            .map(|node| {
                if node + 1 < nodes {
                    vec![node + 1]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Graph::Adjacency(adjacency)
    }

    fn plan<'a>(
        start: Vec<(usize, Vec<Output<Signal>>)>,
        rounds_max: u64,
        done: &'a mut dyn FnMut(&[Probe], &Network, u64) -> bool,
    ) -> Plan<'a, Probe> {
        Plan {
            exchanges: Exchanges::Synchronous,
            start,
            rounds_max,
            counts: &|_| true,
            done,
        }
    }

    #[test]
    fn in_rounds_an_exchange_completes_within_the_round_and_a_forward_takes_one() {
        let network = Network::new(line(5), 0.0, Delivery::Rounds).expect("network");
        let mut nodes = vec![
            Probe {
                relay: true,
                ..Probe::default()
            };
            5
        ];
        let token = vec![(0, vec![Output::Send(To::Peer, Signal::Token)])];
        let run = network.run(
            &mut nodes,
            plan(token, 100, &mut |_, _, _| false),
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        assert_eq!(
            run.delivered_at,
            [None, Some(1.0), Some(2.0), Some(3.0), Some(4.0)],
            "one hop a round"
        );
        assert_eq!(run.rounds, 5, "the round after the last hop is quiet");
        assert_eq!(run.messages, 4);

        let network = Network::new(Graph::Complete(10), 0.0, Delivery::Rounds).expect("network");
        let mut nodes = vec![Probe::default(); 10];
        let mut after_one = None;
        let run = network.run(
            &mut nodes,
            plan(Vec::new(), 3, &mut |nodes, _, round| {
                if round == 1 {
                    after_one = Some(nodes.iter().map(|node| node.pongs).sum::<u32>());
                }
                false
            }),
            &mut ChaCha8Rng::seed_from_u64(1),
        );
        assert_eq!(after_one, Some(10), "every ping answered in its round");
        assert_eq!(run.rounds, 3, "never quiet: the limit ends it");
        assert_eq!(run.messages, 60, "a ping and a pong per node and round");
    }

    #[test]
    fn lost_messages_and_down_nodes_drop_what_they_would_have_carried() {
        let mut network =
            Network::new(Graph::Complete(1_000), 0.5, Delivery::Rounds).expect("network");
        network.take_down(7, 0..u64::MAX);
        network.take_down(8, 2..3);
        let mut nodes = vec![Probe::default(); 1_000];
        let run = network.run(
            &mut nodes,
            plan(Vec::new(), 4, &mut |_, _, _| false),
            &mut ChaCha8Rng::seed_from_u64(2),
        );
        assert_eq!(nodes[7].actives, 0, "a crashed node does nothing");
        assert_eq!(nodes[8].actives, 3, "down for round 2 only");
        let pongs: u32 = nodes.iter().map(|node| node.pongs).sum();
        // 3,995 pings; a pong needs the ping and the pong through: about a quarter.
        assert!((850..1_150).contains(&pongs), "{pongs}");
        assert!(
            run.messages > 3_995,
            "pings and the pongs of the pings that arrived"
        );
        assert_eq!(network.live_after(10), {
            let mut live = vec![true; 1_000];
            live[7] = false;
            live
        });
        assert_eq!(
            Network::new(Graph::Complete(2), 1.0, Delivery::Rounds)
                .expect_err("loss")
                .name,
            "loss"
        );
    }

    #[test]
    fn events_spread_hops_over_random_latencies_and_a_seed_repeats_them() {
        let network = Network::new(line(50), 0.0, Delivery::Events).expect("network");
        let once = |seed| {
            let mut nodes = vec![
                Probe {
                    relay: true,
                    ..Probe::default()
                };
                50
            ];
            let token = vec![(0, vec![Output::Send(To::Peer, Signal::Token)])];
            network.run(
                &mut nodes,
                plan(token, 1_000, &mut |_, _, _| false),
                &mut ChaCha8Rng::seed_from_u64(seed),
            )
        };
        let run = once(3);
        assert_eq!(run, once(3));
        assert_ne!(run, once(4));
        let last = run.delivered_at[49].expect("the token reaches the end");
        // 49 hops of latency uniform in [0.5, 1.5): mean 49, spread about 2.
        assert!((40.0..58.0).contains(&last), "{last}");
        assert!(last.fract() != 0.0, "not whole rounds");
        assert!(run.rounds < 60, "quiet after the last hop: {}", run.rounds);
    }
}
