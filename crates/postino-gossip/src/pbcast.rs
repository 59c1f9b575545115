//! Bimodal multicast, pbcast (Birman et al., "Bimodal multicast", ACM TOCS 1999; the lecture
//! notes' slides 89–92): an unreliable first pass (the sender multicasts without guarantees),
//! then gossip repair: for a bounded number of rounds after a process gets the message it
//! sends a digest of what it has to `fanout` random processes; a process that lacks the message
//! solicits it from the digest's sender, which retransmits it while it is still in its buffer.

use rand::Rng;

use crate::framework::{Gossip, Output, To};

/// What happens to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first pass delivered the message.
    Multicast,
    /// A round of the process's gossip thread.
    Round,
    /// A digest listing the message arrived from `from`.
    Digest { from: usize },
    /// `from` asks for the message.
    Solicit { from: usize },
    /// The message, retransmitted.
    Retransmit,
}

/// What a process asks its transport or application to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send a digest to `fanout` processes the transport selects.
    GossipDigest { fanout: usize },
    /// Ask `to` for the message.
    Solicit { to: usize },
    /// Send the message to `to`.
    Retransmit { to: usize },
    /// The message is new here: hand it to the application.
    Deliver,
}

/// One process's state for one message.
#[derive(Debug, Clone)]
pub struct Pbcast {
    fanout: usize,
    rounds: u32,
    has: bool,
    /// Gossip rounds left before the message leaves the buffer.
    rounds_left: u32,
}

impl Pbcast {
    /// A process that gossips about a message to `fanout` processes a round for `rounds` rounds
    /// after getting it, keeping it buffered as long.
    #[must_use]
    pub fn new(fanout: usize, rounds: u32) -> Self {
        Self {
            fanout,
            rounds,
            has: false,
            rounds_left: 0,
        }
    }

    /// Whether the process delivered the message.
    #[must_use]
    pub fn delivered(&self) -> bool {
        self.has
    }

    fn receive(&mut self) -> Vec<Effect> {
        if self.has {
            return Vec::new();
        }
        self.has = true;
        self.rounds_left = self.rounds;
        vec![Effect::Deliver]
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        match event {
            Event::Multicast | Event::Retransmit => self.receive(),
            Event::Round => {
                if self.has && self.rounds_left > 0 && self.fanout > 0 {
                    self.rounds_left -= 1;
                    vec![Effect::GossipDigest {
                        fanout: self.fanout,
                    }]
                } else {
                    Vec::new()
                }
            }
            Event::Digest { from } => {
                if self.has {
                    Vec::new()
                } else {
                    vec![Effect::Solicit { to: from }]
                }
            }
            // Garbage-collected messages can no longer be retransmitted.
            Event::Solicit { from } => {
                if self.has && self.rounds_left > 0 {
                    vec![Effect::Retransmit { to: from }]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// What processes send each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The message itself: the first pass or a retransmission.
    Data,
    /// A digest listing the message.
    Digest,
    /// A request for the message the digest listed.
    Solicit,
}

impl Gossip for Pbcast {
    type Message = Message;

    fn active(&mut self, _now: u64, _rng: &mut impl Rng) -> Vec<Output<Message>> {
        let mut outputs = Vec::new();
        for effect in self.handle(Event::Round) {
            if let Effect::GossipDigest { fanout } = effect {
                outputs.extend((0..fanout).map(|_| Output::Send(To::Peer, Message::Digest)));
            }
        }
        outputs
    }

    fn passive(
        &mut self,
        _now: u64,
        from: usize,
        message: Message,
        _rng: &mut impl Rng,
    ) -> Vec<Output<Message>> {
        let event = match message {
            Message::Data => Event::Retransmit,
            Message::Digest => Event::Digest { from },
            Message::Solicit => Event::Solicit { from },
        };
        self.handle(event)
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Solicit { .. } => Some(Output::Send(To::Reply, Message::Solicit)),
                Effect::Retransmit { .. } => Some(Output::Send(To::Reply, Message::Data)),
                Effect::Deliver => Some(Output::Deliver),
                Effect::GossipDigest { .. } => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gossips_for_its_rounds_and_then_forgets() {
        let mut process = Pbcast::new(3, 2);
        assert!(
            process.handle(Event::Round).is_empty(),
            "nothing to gossip yet"
        );
        assert_eq!(process.handle(Event::Multicast), [Effect::Deliver]);
        assert_eq!(
            process.handle(Event::Round),
            [Effect::GossipDigest { fanout: 3 }]
        );
        assert_eq!(
            process.handle(Event::Solicit { from: 9 }),
            [Effect::Retransmit { to: 9 }]
        );
        assert_eq!(
            process.handle(Event::Round),
            [Effect::GossipDigest { fanout: 3 }]
        );
        assert!(
            process.handle(Event::Round).is_empty(),
            "the buffer is done with it"
        );
        assert!(process.handle(Event::Solicit { from: 9 }).is_empty());
    }

    #[test]
    fn a_digest_for_a_missing_message_solicits_it_once_delivered_it_stops() {
        let mut process = Pbcast::new(1, 5);
        assert_eq!(
            process.handle(Event::Digest { from: 4 }),
            [Effect::Solicit { to: 4 }]
        );
        assert_eq!(process.handle(Event::Retransmit), [Effect::Deliver]);
        assert!(
            process.handle(Event::Retransmit).is_empty(),
            "no second delivery"
        );
        assert!(process.handle(Event::Digest { from: 4 }).is_empty());
    }
}
