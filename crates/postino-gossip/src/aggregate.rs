//! Aggregation by gossip (the lecture notes' slide 85; Jelasity et al., push-pull averaging):
//! at each round a node exchanges its state with one random peer and both keep the combination:
//! the mean for `avg`, the smaller for `min`, the larger for `max`. For `sum` a node averages two
//! quantities, its value and a weight that is 1 at one node and 0 elsewhere; value ÷ weight
//! tends to the sum. An exchange conserves the total of what is averaged.

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

    /// An exchange with a peer that held `peer`: the node keeps the combination (the peer,
    /// handling this node's state the same way, keeps the same).
    pub fn on_exchange(&mut self, peer: State) {
        let own = self.state;
        self.state = match self.function {
            Function::Avg | Function::Sum => State {
                value: (own.value + peer.value) / 2.0,
                weight: (own.weight + peer.weight) / 2.0,
            },
            Function::Min => State {
                value: own.value.min(peer.value),
                weight: own.weight,
            },
            Function::Max => State {
                value: own.value.max(peer.value),
                weight: own.weight,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(a: &mut Aggregate, b: &mut Aggregate) {
        let (sa, sb) = (a.state(), b.state());
        a.on_exchange(sb);
        b.on_exchange(sa);
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
