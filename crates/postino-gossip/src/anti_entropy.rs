//! Anti-entropy (Demers et al. 1987; the lecture notes' slide 76): each round a node contacts a
//! random peer and they reconcile one update: with **push** the node sends the update if it
//! has it, with **pull** it asks for it if it lacks it, with **push-pull** both. Only messages
//! that carry the update count as transmissions; a request to pull carries none.

use rand::Rng;

use crate::framework::{Gossip, Output, To};

/// How two replicas reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Push,
    Pull,
    PushPull,
}

named!(Mode, "mode", {
    Push => "push",
    Pull => "pull",
    PushPull => "push-pull",
});

impl Mode {
    fn pushes(self) -> bool {
        matches!(self, Mode::Push | Mode::PushPull)
    }

    fn pulls(self) -> bool {
        matches!(self, Mode::Pull | Mode::PushPull)
    }
}

/// What happens to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A round of the replica's active thread.
    Round,
    /// A peer contacted this replica, carrying the update or not, asking for it or not.
    Contacted { update: bool, asks: bool },
    /// The contacted peer answered, carrying the update or not.
    Answered { update: bool },
}

/// What replicas send each other: a contact or its answer, with the update or without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Contact { update: bool, asks: bool },
    Answer { update: bool },
}

/// What a replica asks its transport or application to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Contact a peer the transport selects, with the update (push) and/or a request (pull).
    Contact { update: bool, asks: bool },
    /// Answer the peer that contacted this replica, with the update when it asked and this
    /// replica has it.
    Answer { update: bool },
    /// The update is new here: hand it to the application.
    Deliver,
}

/// One replica's view of one update.
#[derive(Debug, Clone)]
pub struct Replica {
    mode: Mode,
    has: bool,
    /// Whether it had the update when its active thread last ran: through the framework a
    /// replica answers from that snapshot, so in synchronous rounds an update moves one hop a
    /// round, as in Demers et al.'s analysis.
    had_at_cycle: bool,
}

impl Replica {
    /// A replica without the update.
    #[must_use]
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            has: false,
            had_at_cycle: false,
        }
    }

    /// Whether the replica has the update.
    #[must_use]
    pub fn has_update(&self) -> bool {
        self.has
    }

    /// The update is written here.
    pub fn write(&mut self) {
        self.has = true;
    }

    fn learn(&mut self, update: bool) -> Option<Effect> {
        (update && !self.has).then(|| {
            self.has = true;
            Effect::Deliver
        })
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) -> Vec<Effect> {
        match event {
            Event::Round => {
                let update = self.mode.pushes() && self.has;
                let asks = self.mode.pulls() && !self.has;
                if update || asks {
                    vec![Effect::Contact { update, asks }]
                } else {
                    Vec::new()
                }
            }
            Event::Contacted { update, asks } => {
                // Answer from the state before this contact: a pushed update does not bounce.
                let answer = Effect::Answer {
                    update: asks && self.has,
                };
                self.learn(update).into_iter().chain([answer]).collect()
            }
            Event::Answered { update } => self.learn(update).into_iter().collect(),
        }
    }
}

impl Gossip for Replica {
    type Message = Message;

    fn active(&mut self, _now: u64, _rng: &mut impl Rng) -> Vec<Output<Message>> {
        self.had_at_cycle = self.has;
        self.handle(Event::Round)
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Contact { update, asks } => {
                    Some(Output::Send(To::Peer, Message::Contact { update, asks }))
                }
                Effect::Answer { .. } | Effect::Deliver => None,
            })
            .collect()
    }

    fn passive(
        &mut self,
        _now: u64,
        _from: usize,
        message: Message,
        _rng: &mut impl Rng,
    ) -> Vec<Output<Message>> {
        let (event, asks) = match message {
            Message::Contact { update, asks } => (
                Event::Contacted {
                    update,
                    asks: false,
                },
                asks,
            ),
            Message::Answer { update } => (Event::Answered { update }, false),
        };
        let mut outputs: Vec<Output<Message>> = self
            .handle(event)
            .into_iter()
            .filter(|effect| *effect == Effect::Deliver)
            .map(|_| Output::Deliver)
            .collect();
        if asks {
            let update = self.had_at_cycle;
            outputs.push(Output::Send(To::Reply, Message::Answer { update }));
        }
        outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_sends_the_update_and_pull_asks_for_it() {
        let mut pusher = Replica::new(Mode::Push);
        assert!(
            pusher.handle(Event::Round).is_empty(),
            "nothing to push yet"
        );
        pusher.write();
        assert_eq!(
            pusher.handle(Event::Round),
            [Effect::Contact {
                update: true,
                asks: false
            }]
        );
        let mut puller = Replica::new(Mode::Pull);
        assert_eq!(
            puller.handle(Event::Round),
            [Effect::Contact {
                update: false,
                asks: true
            }]
        );
        assert_eq!(
            puller.handle(Event::Answered { update: true }),
            [Effect::Deliver]
        );
        assert!(
            puller.handle(Event::Round).is_empty(),
            "nothing left to pull"
        );
    }

    #[test]
    fn a_contacted_replica_learns_and_answers_from_what_it_had() {
        let mut replica = Replica::new(Mode::PushPull);
        let effects = replica.handle(Event::Contacted {
            update: true,
            asks: false,
        });
        assert_eq!(effects, [Effect::Deliver, Effect::Answer { update: false }]);
        let again = replica.handle(Event::Contacted {
            update: true,
            asks: true,
        });
        assert_eq!(
            again,
            [Effect::Answer { update: true }],
            "no second delivery"
        );
        assert!(replica.handle(Event::Answered { update: true }).is_empty());
    }

    #[test]
    fn modes_parse_and_bad_ones_are_named() {
        assert_eq!("push-pull".parse::<Mode>(), Ok(Mode::PushPull));
        assert_eq!("gossip".parse::<Mode>().expect_err("unknown").name, "mode");
    }
}
