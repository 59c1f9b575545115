//! `postino sim anti-entropy`: one update spreads by anti-entropy from one replica, in
//! synchronous rounds: every replica's active thread decides its contact (push the update, ask
//! for it, or both) from the state at the round's start, and every answer is what the contacted
//! replica had then. A run ends when every replica has the update, or after `max_rounds` (then
//! it did not converge).
//!
//! Columns, per mode over the runs: `rounds_mean`, `rounds_max` (rounds until every replica has
//! the update) and `transmissions_per_node` (messages carrying the update, per node).

use postino_gossip::ParamError;
use postino_gossip::anti_entropy::{Effect, Event, Mode, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Graph, Row};

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Rounds until every replica had the update (`max_rounds` when it never did).
    pub rounds: u32,
    pub transmissions: u64,
    pub converged: bool,
}

/// One run on `graph`, the update written at node 0.
pub fn run_once(mode: Mode, graph: &Graph, max_rounds: u32, rng: &mut impl Rng) -> Outcome {
    let nodes = graph.nodes();
    let mut replicas = vec![Replica::new(mode); nodes];
    replicas[0].write();
    let mut missing = nodes - 1;
    let mut transmissions = 0u64;
    let mut round = 0;
    while missing > 0 && round < max_rounds {
        round += 1;
        let mut contacts = Vec::new();
        for (node, replica) in replicas.iter_mut().enumerate() {
            for effect in replica.handle(Event::Round) {
                if let (Effect::Contact { update, asks }, Some(peer)) =
                    (effect, graph.peer(node, rng))
                {
                    contacts.push((node, peer, update, asks));
                }
            }
        }
        // Rounds are synchronous: answers come from what each replica had when the round
        // began, so the update moves at most one hop per message per round.
        let before = replicas.clone();
        for (node, peer, update, asks) in contacts {
            transmissions += u64::from(update);
            let pushed = replicas[peer].handle(Event::Contacted {
                update,
                asks: false,
            });
            missing -= pushed
                .iter()
                .filter(|effect| **effect == Effect::Deliver)
                .count();
            if !asks {
                continue;
            }
            let answered = before[peer].clone().handle(Event::Contacted {
                update: false,
                asks,
            });
            for effect in answered {
                if let Effect::Answer { update } = effect {
                    transmissions += u64::from(update);
                    missing -= replicas[node].handle(Event::Answered { update }).len();
                }
            }
        }
    }
    Outcome {
        rounds: round,
        transmissions,
        converged: missing == 0,
    }
}

/// The table: one row per mode, `runs` runs each on a complete graph of `nodes` nodes.
///
/// # Errors
/// [`ParamError`] for fewer than 2 nodes or 0 runs.
pub fn table(modes: &[Mode], nodes: usize, runs: u32, seed: u64) -> Result<Vec<Row>, ParamError> {
    let graph = Graph::complete(nodes)?;
    crate::check_runs(runs)?;
    let mut rows = Vec::new();
    for (index, mode) in modes.iter().enumerate() {
        let mut rounds = Vec::new();
        let mut transmissions = 0u64;
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, index as u64, run));
            let outcome = run_once(*mode, &graph, u32::MAX, &mut rng);
            rounds.push(outcome.rounds);
            transmissions += outcome.transmissions;
        }
        let count = f64::from(runs);
        rows.push(
            Row::default()
                .with("mode", mode.to_string())
                .with("nodes", nodes)
                .with(
                    "rounds_mean",
                    rounds.iter().map(|value| f64::from(*value)).sum::<f64>() / count,
                )
                .with("rounds_max", rounds.iter().copied().max().unwrap_or(0))
                .with(
                    "transmissions_per_node",
                    transmissions as f64 / count / nodes as f64,
                ),
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
        let rows = table(&Mode::ALL, 10_000, 5, 9).expect("table");
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
            let graph = Graph::from_adjacency(adjacency)?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Far above what a connected graph of 60 nodes needs, so only a failure to
            // converge reaches it.
            let outcome = run_once(Mode::PushPull, &graph, 100_000, &mut rng);
            prop_assert!(outcome.converged, "{:?}", outcome);
        }
    }
}
