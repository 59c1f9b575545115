//! `postino sim anti-entropy`: one update spreads by anti-entropy from replica 0, by default on
//! a complete graph in synchronous rounds: every replica's active thread decides its contact
//! (push the update, ask for it, or both) from its state at the round's start; a contacted
//! replica answers from its state before that contact. A run ends when every replica that is
//! up has the update, or after `rounds_max` (then it did not converge).
//!
//! Columns, per mode over the runs: `rounds_mean`, `rounds_max` (rounds until every replica has
//! the update), `transmissions_per_node` (messages carrying the update, per node, lost ones
//! included) and `converged` (the share of runs that did).

use postino_gossip::ParamError;
use postino_gossip::anti_entropy::{Message, Mode, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Exchanges, Network, Plan};
use crate::{Model, Row};

/// Rounds after which a table's run that has not converged stops.
const ROUNDS_MAX: u64 = 1_000;

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Rounds until every replica had the update (`rounds_max` when it never did).
    pub rounds: u64,
    pub transmissions: u64,
    pub converged: bool,
}

/// One run on `network`, the update written at replica 0.
pub fn run_once(mode: Mode, network: &Network, rounds_max: u64, rng: &mut impl Rng) -> Outcome {
    let mut replicas = vec![Replica::new(mode); network.nodes()];
    replicas[0].write();
    let live = network.live_after(0);
    let run = network.run(
        &mut replicas,
        Plan {
            exchanges: Exchanges::Synchronous,
            start: Vec::new(),
            rounds_max,
            counts: &|message| {
                matches!(
                    message,
                    Message::Contact { update: true, .. } | Message::Answer { update: true }
                )
            },
            done: &mut |replicas, _, _| {
                replicas
                    .iter()
                    .zip(&live)
                    .all(|(replica, live)| replica.has_update() || !live)
            },
        },
        rng,
    );
    Outcome {
        rounds: run.rounds,
        transmissions: run.messages,
        converged: run.done,
    }
}

/// The table: one row per mode, `runs` runs each of `nodes` nodes on `model`.
///
/// # Errors
/// [`ParamError`] for fewer than 2 nodes, 0 runs, or a model out of range.
pub fn table(
    modes: &[Mode],
    nodes: usize,
    model: &Model,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    crate::check_runs(runs)?;
    model.check()?;
    let mut rows = Vec::new();
    for (index, mode) in modes.iter().enumerate() {
        let mut rounds = Vec::new();
        let mut transmissions = 0u64;
        let mut converged = 0u32;
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, index as u64, run));
            let network = model.network(nodes, &[0], &mut rng)?;
            let outcome = run_once(*mode, &network, ROUNDS_MAX, &mut rng);
            rounds.push(outcome.rounds);
            transmissions += outcome.transmissions;
            converged += u32::from(outcome.converged);
        }
        let count = f64::from(runs);
        rows.push(
            Row::default()
                .with("mode", mode.to_string())
                .with("nodes", nodes)
                .with("network", model.name())
                .with(
                    "rounds_mean",
                    rounds.iter().map(|value| *value as f64).sum::<f64>() / count,
                )
                .with("rounds_max", rounds.iter().copied().max().unwrap_or(0))
                .with(
                    "transmissions_per_node",
                    transmissions as f64 / count / nodes as f64,
                )
                .with("converged", f64::from(converged) / count),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn push_pull_is_fastest_and_every_mode_converges() {
        let rows = table(&Mode::ALL, 10_000, &Model::COMPLETE, 5, 9).expect("table");
        let mean = |index: usize| {
            rows[index]
                .get("rounds_mean")
                .and_then(serde_json::Value::as_f64)
                .expect("mean")
        };
        let (push, pull, push_pull) = (mean(0), mean(1), mean(2));
        assert!(
            push_pull < push && push_pull < pull,
            "{push} {pull} {push_pull}"
        );
        // While few replicas have it, a synchronous round about triples them under push-pull
        // (a push out, pulls in) and doubles them under push or pull alone: about log3(10,000)
        // ≈ 8.4 and log2(10,000) ≈ 13.3 rounds before the end game, on average.
        assert!(push_pull >= 8.3, "{push_pull}");
        assert!(push >= 13.2 && pull >= 13.2, "{push} {pull}");
    }

    #[test]
    fn push_pull_converges_under_loss_crashes_and_events_on_an_overlay() {
        let overlay = Model {
            overlay: crate::Overlay::BarabasiAlbert { degree: 6 },
            loss: 0.1,
            delivery: crate::Delivery::Events,
            ..Model::COMPLETE
        };
        let rows = table(&[Mode::PushPull], 2_000, &overlay, 3, 2).expect("table");
        let figure = |name: &str| {
            rows[0]
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .expect(name)
        };
        assert_eq!(figure("converged"), 1.0, "{rows:?}");
        let crashes = Model {
            loss: 0.1,
            crash: 0.2,
            ..Model::COMPLETE
        };
        let crashed = table(&[Mode::PushPull], 2_000, &crashes, 3, 2).expect("table");
        assert_eq!(
            crashed[0]
                .get("converged")
                .and_then(serde_json::Value::as_f64),
            Some(1.0),
            "the replicas that are up converge: {crashed:?}"
        );
        let lossless = table(&[Mode::PushPull], 2_000, &Model::COMPLETE, 3, 2).expect("table");
        assert!(
            figure("transmissions_per_node")
                > lossless[0]
                    .get("transmissions_per_node")
                    .and_then(serde_json::Value::as_f64)
                    .expect("transmissions"),
            "lost copies are sent again"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Push-pull converges on every connected graph: a ring (so it is connected) plus
        /// random chords.
        #[test]
        fn push_pull_converges_on_any_connected_graph(
            nodes in 2usize..60,
            chords in proptest::collection::vec((0usize..60, 0usize..60), 0..80),
            seed in any::<u64>(),
        ) {
            let mut adjacency = vec![Vec::new(); nodes];
            for node in 0..nodes {
                let next = (node + 1) % nodes;
                if next != node {
                    adjacency[node].push(next);
                    adjacency[next].push(node);
                }
            }
            for (a, b) in chords {
                let (a, b) = (a % nodes, b % nodes);
                if a != b {
                    adjacency[a].push(b);
                    adjacency[b].push(a);
                }
            }
            let graph = crate::Graph::from_adjacency(adjacency)?;
            let network = Network::new(graph, 0.0, crate::Delivery::Rounds)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Far above what a connected graph of 60 nodes needs, so only a failure to
            // converge reaches it.
            let outcome = run_once(Mode::PushPull, &network, 100_000, &mut rng);
            prop_assert!(outcome.converged, "{:?}", outcome);
        }
    }
}
