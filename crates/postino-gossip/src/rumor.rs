//! Rumor mongering (Demers et al., "Epidemic algorithms for replicated database maintenance",
//! 1987; the lecture notes' "pure gossiping"). A node that learns the rumor becomes
//! *infective*: at each round of its active thread it pushes the rumor to one peer. It loses
//! interest and becomes *removed*:
//! - **feedback** variants: only after pushing to a peer that already knew it;
//!   **blind** variants: after any push, whatever the answer;
//! - **counter** variants: after `k` such pushes; **coin** variants: with probability `1/k` at
//!   each one.
//!
//! The notes' equation for feedback with coin, `s = e^{-(k+1)(1-s)}` for the fraction `s` of
//! nodes that never learn, is [`residue_analytic`].

use rand::Rng;

use crate::ParamError;
use crate::framework::{Gossip, Output, To};

/// Which rule makes an infective node lose interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    FeedbackCounter,
    FeedbackCoin,
    BlindCounter,
    BlindCoin,
}

named!(Variant, "variant", {
    FeedbackCounter => "feedback-counter",
    FeedbackCoin => "feedback-coin",
    BlindCounter => "blind-counter",
    BlindCoin => "blind-coin",
});

impl Variant {
    fn feedback(self) -> bool {
        matches!(self, Variant::FeedbackCounter | Variant::FeedbackCoin)
    }

    fn coin(self) -> bool {
        matches!(self, Variant::FeedbackCoin | Variant::BlindCoin)
    }
}

/// Where a node is in the epidemic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Has not heard the rumor.
    Susceptible,
    /// Knows it and spreads it.
    Infective,
    /// Knows it and no longer spreads it.
    Removed,
}

/// What happens to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A round of the node's active thread.
    Round,
    /// A peer pushed the rumor.
    Push,
    /// The peer this node pushed to answered whether it already knew the rumor.
    Answer { already_knew: bool },
}

/// What nodes send each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The rumor.
    Push,
    /// The answer to a push: whether the receiver already knew.
    Answer { already_knew: bool },
}

/// What a node asks its transport or application to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Push the rumor to a peer the transport selects.
    PushToPeer,
    /// Answer the peer that pushed: whether this node already knew.
    Answer { already_knew: bool },
    /// The rumor is new here: hand it to the application.
    Deliver,
    /// The node stops spreading the rumor.
    LostInterest,
}

/// One node's rumor mongering state.
#[derive(Debug, Clone)]
pub struct Rumor {
    variant: Variant,
    k: u32,
    phase: Phase,
    /// Pushes that counted towards losing interest so far (counter variants).
    count: u32,
}

impl Rumor {
    /// A susceptible node.
    ///
    /// # Errors
    /// [`ParamError`] for `k` below 1.
    pub fn new(variant: Variant, k: u32) -> Result<Self, ParamError> {
        if k < 1 {
            return Err(ParamError {
                name: "k",
                reason: format!("{k} is below 1"),
            });
        }
        Ok(Self {
            variant,
            k,
            phase: Phase::Susceptible,
            count: 0,
        })
    }

    /// The node's phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The node originates the rumor: it knows it and spreads it.
    pub fn originate(&mut self) {
        if self.phase == Phase::Susceptible {
            self.phase = Phase::Infective;
        }
    }

    /// Handles one event; `rng` decides the coin variants' tosses. A blind node decides when
    /// it pushes (it needs no answer, so a lost one changes nothing); a feedback node when the
    /// answer says the peer already knew.
    pub fn handle(&mut self, event: Event, rng: &mut impl Rng) -> Vec<Effect> {
        match event {
            Event::Round => match self.phase {
                Phase::Infective if self.variant.feedback() => vec![Effect::PushToPeer],
                Phase::Infective => {
                    let mut effects = vec![Effect::PushToPeer];
                    effects.extend(self.count_towards_losing_interest(rng));
                    effects
                }
                Phase::Susceptible | Phase::Removed => Vec::new(),
            },
            Event::Push => {
                if self.phase == Phase::Susceptible {
                    self.phase = Phase::Infective;
                    vec![
                        Effect::Answer {
                            already_knew: false,
                        },
                        Effect::Deliver,
                    ]
                } else {
                    vec![Effect::Answer { already_knew: true }]
                }
            }
            Event::Answer { already_knew } => {
                // A late answer after losing interest changes nothing.
                if self.phase != Phase::Infective || !self.variant.feedback() || !already_knew {
                    return Vec::new();
                }
                self.count_towards_losing_interest(rng)
                    .into_iter()
                    .collect()
            }
        }
    }

    fn count_towards_losing_interest(&mut self, rng: &mut impl Rng) -> Option<Effect> {
        let lose = if self.variant.coin() {
            rng.random_range(0..self.k) == 0
        } else {
            self.count += 1;
            self.count >= self.k
        };
        lose.then(|| {
            self.phase = Phase::Removed;
            Effect::LostInterest
        })
    }
}

impl Gossip for Rumor {
    type Message = Message;

    fn active(&mut self, _now: u64, rng: &mut impl Rng) -> Vec<Output<Message>> {
        self.handle(Event::Round, rng)
            .into_iter()
            .filter(|effect| *effect == Effect::PushToPeer)
            .map(|_| Output::Send(To::Peer, Message::Push))
            .collect()
    }

    fn passive(
        &mut self,
        _now: u64,
        _from: usize,
        message: Message,
        rng: &mut impl Rng,
    ) -> Vec<Output<Message>> {
        let event = match message {
            Message::Push => Event::Push,
            Message::Answer { already_knew } => Event::Answer { already_knew },
        };
        self.handle(event, rng)
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Answer { already_knew } => {
                    Some(Output::Send(To::Reply, Message::Answer { already_knew }))
                }
                Effect::Deliver => Some(Output::Deliver),
                Effect::PushToPeer | Effect::LostInterest => None,
            })
            .collect()
    }
}

/// The fraction of nodes that never learn, for feedback with coin in a large population: the
/// root below 1 of `s = e^{-(k+1)(1-s)}` (the notes' equation), by fixed-point iteration from 0.
///
/// ```
/// let s = postino_gossip::rumor::residue_analytic(1);
/// assert!((s - 0.203188).abs() < 1e-6);
/// ```
#[must_use]
pub fn residue_analytic(k: u32) -> f64 {
    let rate = f64::from(k) + 1.0;
    let mut s = 0.0_f64;
    for _ in 0..10_000 {
        let next = (-rate * (1.0 - s)).exp();
        if (next - s).abs() < 1e-15 {
            return next;
        }
        s = next;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn a_push_infects_a_susceptible_node_once() {
        let mut node = Rumor::new(Variant::FeedbackCounter, 2).expect("valid");
        let effects = node.handle(Event::Push, &mut rng());
        assert_eq!(
            effects,
            [
                Effect::Answer {
                    already_knew: false
                },
                Effect::Deliver
            ]
        );
        assert_eq!(node.phase(), Phase::Infective);
        assert_eq!(node.handle(Event::Round, &mut rng()), [Effect::PushToPeer]);
        let again = node.handle(Event::Push, &mut rng());
        assert_eq!(again, [Effect::Answer { already_knew: true }]);
    }

    #[test]
    fn feedback_counter_loses_interest_after_k_useless_pushes_only() {
        let mut node = Rumor::new(Variant::FeedbackCounter, 2).expect("valid");
        node.originate();
        let useful = Event::Answer {
            already_knew: false,
        };
        let useless = Event::Answer { already_knew: true };
        assert!(node.handle(useful, &mut rng()).is_empty());
        assert!(node.handle(useless, &mut rng()).is_empty());
        assert!(node.handle(useful, &mut rng()).is_empty());
        assert_eq!(node.handle(useless, &mut rng()), [Effect::LostInterest]);
        assert_eq!(node.phase(), Phase::Removed);
        assert!(node.handle(Event::Round, &mut rng()).is_empty());
        assert!(
            node.handle(useless, &mut rng()).is_empty(),
            "a late answer is ignored"
        );
    }

    #[test]
    fn blind_counter_loses_interest_after_k_pushes_whatever_the_answers() {
        let mut node = Rumor::new(Variant::BlindCounter, 3).expect("valid");
        node.originate();
        let useless = Event::Answer { already_knew: true };
        assert_eq!(node.handle(Event::Round, &mut rng()), [Effect::PushToPeer]);
        assert!(
            node.handle(useless, &mut rng()).is_empty(),
            "answers do not count"
        );
        assert_eq!(node.handle(Event::Round, &mut rng()), [Effect::PushToPeer]);
        assert_eq!(
            node.handle(Event::Round, &mut rng()),
            [Effect::PushToPeer, Effect::LostInterest],
            "the third push, answered or not"
        );
        assert!(node.handle(Event::Round, &mut rng()).is_empty());
    }

    #[test]
    fn coin_variants_lose_interest_about_once_in_k() {
        let mut rng = rng();
        let mut lost = 0;
        for _ in 0..10_000 {
            let mut node = Rumor::new(Variant::BlindCoin, 4).expect("valid");
            node.originate();
            if node.handle(Event::Round, &mut rng) == [Effect::PushToPeer, Effect::LostInterest] {
                lost += 1;
            }
        }
        assert!((2_200..2_800).contains(&lost), "{lost} of 10000 with k = 4");
        let mut node = Rumor::new(Variant::FeedbackCoin, 1).expect("valid");
        node.originate();
        assert!(
            node.handle(
                Event::Answer {
                    already_knew: false
                },
                &mut rng
            )
            .is_empty()
        );
        assert_eq!(
            node.handle(Event::Answer { already_knew: true }, &mut rng),
            [Effect::LostInterest],
            "k = 1 always loses interest on feedback"
        );
    }

    #[test]
    fn the_analytic_residue_matches_the_notes_table() {
        let table = [
            0.203188, 0.059520, 0.019827, 0.006977, 0.002516, 0.000918, 0.000336,
        ];
        for (index, expected) in table.into_iter().enumerate() {
            let k = index as u32 + 1;
            assert!((residue_analytic(k) - expected).abs() < 1e-6, "k = {k}");
        }
    }

    #[test]
    fn bad_parameters_name_themselves() {
        assert_eq!(
            Rumor::new(Variant::BlindCoin, 0).expect_err("k = 0").name,
            "k"
        );
        assert_eq!(
            "gossip".parse::<Variant>().expect_err("unknown").name,
            "variant"
        );
        assert_eq!("blind-coin".parse::<Variant>(), Ok(Variant::BlindCoin));
    }
}
