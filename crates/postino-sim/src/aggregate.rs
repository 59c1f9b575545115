//! `postino sim aggregate`: every node starts with a value drawn uniformly from [0, 100); at
//! each round every node, in a random order, exchanges with one random peer (push-pull). A run
//! ends when every node's estimate is within `epsilon` (relative) of the true aggregate.
//! Columns, per function over the runs: `rounds_mean`, `rounds_max`.

use postino_gossip::ParamError;
use postino_gossip::aggregate::{Aggregate, Function};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Graph, Row};

/// Rounds after which a run that has not converged stops (it then reports this many).
const ROUNDS_MAX: u32 = 10_000;

/// One run: the rounds until every estimate is within `epsilon` of the truth, and the nodes.
pub fn run_once(
    function: Function,
    graph: &Graph,
    epsilon: f64,
    rng: &mut impl Rng,
) -> (u32, Vec<Aggregate>) {
    let nodes = graph.nodes();
    let values: Vec<f64> = (0..nodes).map(|_| rng.random_range(0.0..100.0)).collect();
    let truth = match function {
        Function::Avg => values.iter().sum::<f64>() / nodes as f64,
        Function::Sum => values.iter().sum(),
        Function::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        Function::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    };
    let mut states: Vec<Aggregate> = values
        .iter()
        .enumerate()
        .map(|(node, value)| Aggregate::new(function, *value, node == 0))
        .collect();
    let close = |states: &[Aggregate]| {
        states.iter().all(|state| {
            state
                .estimate()
                .is_some_and(|estimate| (estimate - truth).abs() <= epsilon * truth.abs().max(1.0))
        })
    };
    let mut order: Vec<usize> = (0..nodes).collect();
    let mut round = 0;
    while !close(&states) && round < ROUNDS_MAX {
        round += 1;
        order.shuffle(rng);
        for &node in &order {
            let Some(peer) = graph.peer(node, rng) else {
                continue;
            };
            let (own, other) = (states[node].state(), states[peer].state());
            states[node].on_exchange(other);
            states[peer].on_exchange(own);
        }
    }
    (round, states)
}

/// The table: one row per function, `runs` runs each on a complete graph of `nodes` nodes.
///
/// # Errors
/// [`ParamError`] for fewer than 2 nodes, 0 runs, or `epsilon` not in (0, 1).
pub fn table(
    functions: &[Function],
    nodes: usize,
    epsilon: f64,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    let graph = Graph::complete(nodes)?;
    crate::check_runs(runs)?;
    if !(epsilon > 0.0 && epsilon < 1.0) {
        return Err(ParamError {
            name: "epsilon",
            reason: format!("{epsilon} is not in (0, 1)"),
        });
    }
    let mut rows = Vec::new();
    for (index, function) in functions.iter().enumerate() {
        let mut rounds = Vec::new();
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, index as u64, run));
            rounds.push(run_once(*function, &graph, epsilon, &mut rng).0);
        }
        rows.push(
            Row::default()
                .with("fn", function.to_string())
                .with("nodes", nodes)
                .with("epsilon", epsilon)
                .with(
                    "rounds_mean",
                    rounds.iter().map(|value| f64::from(*value)).sum::<f64>() / f64::from(runs),
                )
                .with("rounds_max", rounds.iter().copied().max().unwrap_or(0)),
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
        let rows = table(&Function::ALL, 2_000, 1e-3, 3, 2).expect("table");
        for row in rows {
            let rounds = row
                .get("rounds_max")
                .and_then(serde_json::Value::as_u64)
                .expect("max");
            assert!(rounds < 100, "{row:?}");
        }
        assert_eq!(
            table(&Function::ALL, 10, 1.5, 1, 0)
                .expect_err("epsilon")
                .name,
            "epsilon"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Averaging exchanges conserve the sum of the values (up to rounding).
        #[test]
        fn averaging_conserves_the_sum(nodes in 2usize..200, seed in any::<u64>()) {
            let graph = Graph::complete(nodes)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut start = ChaCha8Rng::seed_from_u64(seed);
            let total: f64 = (0..nodes).map(|_| start.random_range(0.0..100.0)).sum();
            let (_, states) = run_once(Function::Avg, &graph, 1e-9, &mut rng);
            let after: f64 = states.iter().map(|state| state.state().value).sum();
            prop_assert!((after - total).abs() <= 1e-9 * total.max(1.0), "{} vs {}", after, total);
        }
    }
}
