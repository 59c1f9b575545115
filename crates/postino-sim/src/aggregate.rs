//! `postino sim aggregate`: every node starts with a value drawn uniformly from [0, 100); at
//! each round every node offers its state to one random peer, which keeps the combination and
//! answers (push-pull). A run ends when every node that is up has an estimate within `epsilon`
//! (relative) of the true aggregate of those nodes' values. Columns, per function over the
//! runs: `rounds_mean`, `rounds_max`, `converged` (the share of runs that did within
//! `ROUNDS_MAX` rounds: a lost message loses what it carried, so under loss `avg` and `sum`
//! drift away from the truth).

use postino_gossip::ParamError;
use postino_gossip::aggregate::{Aggregate, Function};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Exchanges, Network, Plan};
use crate::{Model, Row};

/// Rounds after which a run that has not converged stops (it then reports this many).
pub const ROUNDS_MAX: u64 = 1_000;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub rounds: u64,
    pub converged: bool,
    pub states: Vec<Aggregate>,
}

/// One run on `network`, node 0 carrying the weight of a `sum`.
pub fn run_once(
    function: Function,
    network: &Network,
    epsilon: f64,
    rng: &mut impl Rng,
) -> Outcome {
    let nodes = network.nodes();
    let values: Vec<f64> = (0..nodes).map(|_| rng.random_range(0.0..100.0)).collect();
    let live = network.live_after(0);
    let counted = values.iter().zip(&live).filter(|(_, live)| **live);
    let truth = match function {
        Function::Avg => {
            let (sum, count) = counted.fold((0.0, 0.0), |(sum, count), (value, _)| {
                (sum + value, count + 1.0)
            });
            sum / count
        }
        Function::Sum => counted.map(|(value, _)| value).sum(),
        Function::Min => counted.fold(f64::INFINITY, |min, (value, _)| min.min(*value)),
        Function::Max => counted.fold(f64::NEG_INFINITY, |max, (value, _)| max.max(*value)),
    };
    let mut states: Vec<Aggregate> = values
        .iter()
        .enumerate()
        .map(|(node, value)| Aggregate::new(function, *value, node == 0))
        .collect();
    let run = network.run(
        &mut states,
        Plan {
            exchanges: Exchanges::Sequential,
            start: Vec::new(),
            rounds_max: ROUNDS_MAX,
            counts: &|_| true,
            done: &mut |states, _, _| {
                states.iter().zip(&live).all(|(state, live)| {
                    !live
                        || state.estimate().is_some_and(|estimate| {
                            (estimate - truth).abs() <= epsilon * truth.abs().max(1.0)
                        })
                })
            },
        },
        rng,
    );
    Outcome {
        rounds: run.rounds,
        converged: run.done,
        states,
    }
}

/// The table: one row per function, `runs` runs each of `nodes` nodes on `model`.
///
/// # Errors
/// [`ParamError`] for fewer than 2 nodes, 0 runs, `epsilon` not in (0, 1), or a model out of
/// range.
pub fn table(
    functions: &[Function],
    nodes: usize,
    epsilon: f64,
    model: &Model,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    crate::check_runs(runs)?;
    model.check()?;
    if !(epsilon > 0.0 && epsilon < 1.0) {
        return Err(ParamError {
            name: "epsilon",
            reason: format!("{epsilon} is not in (0, 1)"),
        });
    }
    let mut rows = Vec::new();
    for (index, function) in functions.iter().enumerate() {
        let mut rounds = Vec::new();
        let mut converged = 0u32;
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, index as u64, run));
            let network = model.network(nodes, &[0], &mut rng)?;
            let outcome = run_once(*function, &network, epsilon, &mut rng);
            rounds.push(outcome.rounds);
            converged += u32::from(outcome.converged);
        }
        rows.push(
            Row::default()
                .with("fn", function.to_string())
                .with("nodes", nodes)
                .with("network", model.name())
                .with("epsilon", epsilon)
                .with(
                    "rounds_mean",
                    rounds.iter().map(|value| *value as f64).sum::<f64>() / f64::from(runs),
                )
                .with("rounds_max", rounds.iter().copied().max().unwrap_or(0))
                .with("converged", f64::from(converged) / f64::from(runs)),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_function_converges_in_a_few_dozen_rounds() {
        let rows = table(&Function::ALL, 2_000, 1e-3, &Model::COMPLETE, 3, 2).expect("table");
        for row in rows {
            let rounds = row
                .get("rounds_max")
                .and_then(serde_json::Value::as_u64)
                .expect("max");
            assert!(rounds < 100, "{row:?}");
            assert_eq!(
                row.get("converged").and_then(serde_json::Value::as_f64),
                Some(1.0)
            );
        }
        assert_eq!(
            table(&Function::ALL, 10, 1.5, &Model::COMPLETE, 1, 0)
                .expect_err("epsilon")
                .name,
            "epsilon"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Averaging exchanges conserve the sum of the values (up to rounding), in rounds and
        /// with events, where an exchange's two messages interleave with others'.
        #[test]
        fn averaging_conserves_the_sum(nodes in 2usize..200, events in any::<bool>(), seed in any::<u64>()) {
            let delivery = if events { crate::Delivery::Events } else { crate::Delivery::Rounds };
            let network = Network::new(crate::Graph::complete(nodes)?, 0.0, delivery)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut start = ChaCha8Rng::seed_from_u64(seed);
            let total: f64 = (0..nodes).map(|_| start.random_range(0.0..100.0)).sum();
            let states = run_once(Function::Avg, &network, 1e-9, &mut rng).states;
            let after: f64 = states.iter().map(|state| state.state().value).sum();
            prop_assert!((after - total).abs() <= 1e-9 * total.max(1.0), "{} vs {}", after, total);
        }
    }
}
