//! Broadcast on an overlay graph, where a node knows only its neighbours: **flooding** (a node
//! forwards a message the first time it gets it to every neighbour but the sender) and **blind
//! counter rumor mongering** (Portmann & Seneviratne 2002; the lecture notes' slide 87): the
//! originator sends to `B` random neighbours; a node that receives the message forwards it, as
//! long as it has received it no more than `F` times, to `B` random neighbours that it does not
//! know to have seen it — it knows that only of neighbours it sent it to or received it from.

use std::collections::HashSet;

use rand::Rng;
use rand::seq::SliceRandom;

use crate::ParamError;
use crate::framework::{Gossip, Output, To};

/// What a node asks its transport or application to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send the message to this neighbour.
    SendTo(usize),
    /// The message is new here: hand it to the application.
    Deliver,
}

/// How a node spreads a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Flooding,
    /// Fanout `b` and the most receptions `f` that still forward.
    BlindCounter {
        b: usize,
        f: u32,
    },
}

impl Protocol {
    /// Blind counter rumor mongering with fanout `b` and `f` forwarding receptions.
    ///
    /// # Errors
    /// [`ParamError`] naming `fanout` or `max-forwards` when below 1.
    pub fn blind_counter(b: usize, f: u32) -> Result<Self, ParamError> {
        if b < 1 {
            return Err(ParamError {
                name: "fanout",
                reason: format!("{b} is below 1"),
            });
        }
        if f < 1 {
            return Err(ParamError {
                name: "max-forwards",
                reason: format!("{f} is below 1"),
            });
        }
        Ok(Protocol::BlindCounter { b, f })
    }
}

/// One node's broadcast state for one message.
#[derive(Debug, Clone)]
pub struct Broadcast {
    protocol: Protocol,
    neighbours: Vec<usize>,
    received: u32,
    /// Neighbours this node knows have the message.
    seen_by: HashSet<usize>,
    delivered: bool,
}

impl Broadcast {
    /// A node with `neighbours` that has not seen the message.
    #[must_use]
    pub fn new(protocol: Protocol, neighbours: Vec<usize>) -> Self {
        Self {
            protocol,
            neighbours,
            received: 0,
            seen_by: HashSet::new(),
            delivered: false,
        }
    }

    /// Whether the message reached this node.
    #[must_use]
    pub fn delivered(&self) -> bool {
        self.delivered
    }

    /// The node originates the message: what it sends, through the framework.
    pub fn originate(&mut self, rng: &mut impl Rng) -> Vec<Output<()>> {
        if self.delivered {
            return Vec::new();
        }
        self.delivered = true;
        outputs(self.forward(None, rng))
    }

    /// The message arrived from neighbour `from`.
    pub fn on_receive(&mut self, from: usize, rng: &mut impl Rng) -> Vec<Effect> {
        self.received = self.received.saturating_add(1);
        self.seen_by.insert(from);
        let first = !self.delivered;
        self.delivered = true;
        let mut effects = Vec::new();
        if first {
            effects.push(Effect::Deliver);
        }
        let forwards = match self.protocol {
            Protocol::Flooding => first,
            Protocol::BlindCounter { f, .. } => self.received <= f,
        };
        if forwards {
            effects.extend(self.forward(Some(from), rng));
        }
        effects
    }

    fn forward(&mut self, from: Option<usize>, rng: &mut impl Rng) -> Vec<Effect> {
        let targets: Vec<usize> = match self.protocol {
            Protocol::Flooding => self
                .neighbours
                .iter()
                .copied()
                .filter(|peer| Some(*peer) != from)
                .collect(),
            Protocol::BlindCounter { b, .. } => {
                let mut unseen: Vec<usize> = self
                    .neighbours
                    .iter()
                    .copied()
                    .filter(|peer| !self.seen_by.contains(peer))
                    .collect();
                unseen.shuffle(rng);
                unseen.truncate(b);
                unseen
            }
        };
        self.seen_by.extend(targets.iter().copied());
        targets.into_iter().map(Effect::SendTo).collect()
    }
}

fn outputs(effects: Vec<Effect>) -> Vec<Output<()>> {
    effects
        .into_iter()
        .map(|effect| match effect {
            Effect::SendTo(peer) => Output::Send(To::Node(peer), ()),
            Effect::Deliver => Output::Deliver,
        })
        .collect()
}

/// The message carries nothing but itself; a node has no active thread, it forwards when it
/// receives.
impl Gossip for Broadcast {
    type Message = ();

    fn active(&mut self, _now: u64, _rng: &mut impl Rng) -> Vec<Output<()>> {
        Vec::new()
    }

    fn passive(
        &mut self,
        _now: u64,
        from: usize,
        _message: (),
        rng: &mut impl Rng,
    ) -> Vec<Output<()>> {
        outputs(self.on_receive(from, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn sends(effects: &[Effect]) -> Vec<usize> {
        let mut peers: Vec<usize> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::SendTo(peer) => Some(*peer),
                Effect::Deliver => None,
            })
            .collect();
        peers.sort_unstable();
        peers
    }

    #[test]
    fn flooding_forwards_once_to_every_neighbour_but_the_sender() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut node = Broadcast::new(Protocol::Flooding, vec![1, 2, 3]);
        let first = node.on_receive(2, &mut rng);
        assert!(first.contains(&Effect::Deliver));
        assert_eq!(sends(&first), [1, 3]);
        assert!(
            node.on_receive(3, &mut rng).is_empty(),
            "a duplicate is dropped"
        );
    }

    #[test]
    fn blind_counter_forwards_to_b_unseen_neighbours_while_receptions_stay_within_f() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let protocol = Protocol::blind_counter(2, 2).expect("valid");
        let mut node = Broadcast::new(protocol, vec![1, 2, 3, 4, 5]);
        let first = sends(&node.on_receive(1, &mut rng));
        assert_eq!(first.len(), 2);
        assert!(!first.contains(&1), "the sender has seen it");
        let second = sends(&node.on_receive(2, &mut rng));
        assert!(
            second
                .iter()
                .all(|peer| !first.contains(peer) && *peer != 1 && *peer != 2)
        );
        assert!(
            sends(&node.on_receive(3, &mut rng)).is_empty(),
            "past F it stops"
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            Protocol::blind_counter(0, 2).expect_err("b = 0").name,
            "fanout"
        );
        assert_eq!(
            Protocol::blind_counter(2, 0).expect_err("f = 0").name,
            "max-forwards"
        );
    }
}
