//! Aggregation by gossip (the lecture notes' slide 85; Jelasity et al., push-pull averaging):
//! at each round a node exchanges its state with one random peer and both keep the combination:
//! the mean for `avg`, the smaller for `min`, the larger for `max`. For `sum` a node averages two
//! quantities, its value and a weight that is 1 at one node and 0 elsewhere; value ÷ weight
//! tends to the sum.
//!
//! An exchange is two messages, so it need not be atomic: the initiator offers its state; the
//! peer keeps the combination and answers with what it took (for `avg` and `sum`, the change
//! of its state) or what it had (for `min` and `max`), and the initiator gives up what the peer
//! took. The total of what is averaged is so conserved even when the initiator's state changed
//! between offer and answer; only a lost message changes it.

use rand::Rng;

use crate::framework::{Gossip, Output, To};

/// The aggregate computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Avg,
    Sum,
    Min,
    Max,
}

named!(Function, "fn", {
    Avg => "avg",
    Sum => "sum",
    Min => "min",
    Max => "max",
});

/// What a node holds: its value and (for `sum`) its weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    pub value: f64,
    pub weight: f64,
}

/// One node's aggregation state.
#[derive(Debug, Clone)]
pub struct Aggregate {
    function: Function,
    state: State,
}

impl Aggregate {
    /// A node holding `value`; `leader` carries the weight 1 a `sum` needs (exactly one node
    /// should).
    #[must_use]
    pub fn new(function: Function, value: f64, leader: bool) -> Self {
        Self {
            function,
            state: State {
                value,
                weight: if leader { 1.0 } else { 0.0 },
            },
        }
    }

    /// What the node sends in an exchange.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The node's current estimate of the aggregate (`None` for a `sum` before any weight
    /// reached it).
    #[must_use]
    pub fn estimate(&self) -> Option<f64> {
        match self.function {
            Function::Sum => {
                (self.state.weight > 0.0).then(|| self.state.value / self.state.weight)
            }
            Function::Avg | Function::Min | Function::Max => Some(self.state.value),
        }
    }

    /// The passive side of an exchange: the initiator offered `offer`; the node keeps the
    /// combination and returns the answer.
    pub fn on_offer(&mut self, offer: State) -> State {
        let own = self.state;
        match self.function {
            Function::Avg | Function::Sum => {
                self.state = State {
                    value: (own.value + offer.value) / 2.0,
                    weight: (own.weight + offer.weight) / 2.0,
                };
                State {
                    value: self.state.value - own.value,
                    weight: self.state.weight - own.weight,
                }
            }
            Function::Min | Function::Max => {
                self.combine_extreme(offer);
                own
            }
        }
    }

    /// The initiator gets the answer to its offer.
    pub fn on_answer(&mut self, answer: State) {
        match self.function {
            Function::Avg | Function::Sum => {
                self.state.value -= answer.value;
                self.state.weight -= answer.weight;
            }
            Function::Min | Function::Max => self.combine_extreme(answer),
        }
    }

    fn combine_extreme(&mut self, peer: State) {
        self.state.value = match self.function {
            Function::Min => self.state.value.min(peer.value),
            Function::Max => self.state.value.max(peer.value),
            Function::Avg | Function::Sum => self.state.value,
        };
    }
}

/// What nodes send each other: the initiator's offer, and the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Message {
    Offer(State),
    Answer(State),
}

impl Gossip for Aggregate {
    type Message = Message;

    fn active(&mut self, _now: u64, _rng: &mut impl Rng) -> Vec<Output<Message>> {
        vec![Output::Send(To::Peer, Message::Offer(self.state))]
    }

    fn passive(
        &mut self,
        _now: u64,
        _from: usize,
        message: Message,
        _rng: &mut impl Rng,
    ) -> Vec<Output<Message>> {
        match message {
            Message::Offer(offer) => {
                vec![Output::Send(
                    To::Reply,
                    Message::Answer(self.on_offer(offer)),
                )]
            }
            Message::Answer(answer) => {
                self.on_answer(answer);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(a: &mut Aggregate, b: &mut Aggregate) {
        let answer = b.on_offer(a.state());
        a.on_answer(answer);
    }

    #[test]
    fn an_answer_after_the_initiator_changed_still_conserves_the_total() {
        let mut a = Aggregate::new(Function::Avg, 10.0, false);
        let mut b = Aggregate::new(Function::Avg, 2.0, false);
        let mut c = Aggregate::new(Function::Avg, 0.0, false);
        let answer = b.on_offer(a.state());
        exchange(&mut c, &mut a);
        a.on_answer(answer);
        let total = a.state().value + b.state().value + c.state().value;
        assert!((total - 12.0).abs() < 1e-12, "{total}");
    }

    #[test]
    fn an_exchange_averages_and_conserves_the_total() {
        let mut a = Aggregate::new(Function::Avg, 10.0, false);
        let mut b = Aggregate::new(Function::Avg, 2.0, false);
        exchange(&mut a, &mut b);
        assert_eq!((a.estimate(), b.estimate()), (Some(6.0), Some(6.0)));
    }

    #[test]
    fn sum_divides_by_the_weight_once_it_arrives() {
        let mut leader = Aggregate::new(Function::Sum, 4.0, true);
        let mut other = Aggregate::new(Function::Sum, 6.0, false);
        assert_eq!(other.estimate(), None);
        exchange(&mut leader, &mut other);
        assert_eq!(leader.estimate(), Some(10.0));
        assert_eq!(other.estimate(), Some(10.0));
    }

    #[test]
    fn min_and_max_keep_the_extreme() {
        let mut a = Aggregate::new(Function::Min, 3.0, false);
        let mut b = Aggregate::new(Function::Min, 1.0, false);
        exchange(&mut a, &mut b);
        assert_eq!(a.estimate(), Some(1.0));
        let mut c = Aggregate::new(Function::Max, 3.0, false);
        let mut d = Aggregate::new(Function::Max, 1.0, false);
        exchange(&mut c, &mut d);
        assert_eq!(d.estimate(), Some(3.0));
        assert_eq!(
            "median".parse::<Function>().expect_err("unknown").name,
            "fn"
        );
    }
}
