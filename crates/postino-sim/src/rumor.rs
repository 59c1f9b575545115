//! `postino sim rumor`: rumor mongering on a complete graph in synchronous rounds. One node
//! originates the rumor; in each round every node infective at the round's start pushes to one
//! peer chosen uniformly among the others (its `select_peer`), which answers whether it knew;
//! nodes infected in a round start pushing in the next. A run ends when no node is infective.
//!
//! Per `k` the table gives, averaged over the runs: `residue` (fraction of nodes never
//! informed), `residue_analytic` (the notes' equation, for feedback-coin only), `traffic`
//! (pushes per node), `t_ave` (mean round at which informed nodes learned) and `t_last` (the
//! round of the last one).

use postino_gossip::ParamError;
use postino_gossip::rumor::{Effect, Event, Phase, Rumor, Variant, residue_analytic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Graph, Row};

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub residue: f64,
    pub traffic: f64,
    pub t_ave: f64,
    pub t_last: u32,
}

/// One run over `nodes` nodes with generator `rng`.
///
/// # Errors
/// [`ParamError`] for fewer than 2 nodes or `k` below 1.
pub fn run_once(
    variant: Variant,
    k: u32,
    nodes: usize,
    rng: &mut impl Rng,
) -> Result<Outcome, ParamError> {
    let graph = Graph::complete(nodes)?;
    let mut states = vec![Rumor::new(variant, k)?; nodes];
    let mut learned_at: Vec<Option<u32>> = vec![None; nodes];
    states[0].originate();
    learned_at[0] = Some(0);
    let mut infective: Vec<usize> = vec![0];
    let mut pushes = 0u64;
    let mut round = 0u32;
    while !infective.is_empty() {
        round += 1;
        let mut newly = Vec::new();
        for &node in &infective {
            if states[node].handle(Event::Round, rng) != [Effect::PushToPeer] {
                continue;
            }
            let Some(peer) = graph.peer(node, rng) else {
                continue;
            };
            pushes += 1;
            let answer = states[peer].handle(Event::Push, rng);
            let already_knew = !answer.contains(&Effect::Deliver);
            if !already_knew {
                learned_at[peer] = Some(round);
                newly.push(peer);
            }
            states[node].handle(Event::Answer { already_knew }, rng);
        }
        infective.retain(|node| states[*node].phase() == Phase::Infective);
        infective.extend(newly);
    }
    let informed: Vec<u32> = learned_at.iter().flatten().copied().collect();
    let susceptible = nodes - informed.len();
    Ok(Outcome {
        residue: susceptible as f64 / nodes as f64,
        traffic: pushes as f64 / nodes as f64,
        t_ave: f64::from(informed.iter().sum::<u32>()) / informed.len() as f64,
        t_last: informed.iter().copied().max().unwrap_or(0),
    })
}

/// The table for `variant` and each `k`: `runs` runs of `nodes` nodes, seeded by `seed` (run
/// `r` of `k` uses its own generator derived from both, so a row does not depend on the
/// others).
///
/// # Errors
/// [`ParamError`] for bad parameters (`runs` of 0, fewer than 2 nodes, `k` below 1).
pub fn table(
    variant: Variant,
    ks: std::ops::RangeInclusive<u32>,
    nodes: usize,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    crate::check_runs(runs)?;
    let mut rows = Vec::new();
    for k in ks {
        let mut sums = (0.0, 0.0, 0.0, 0.0);
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, u64::from(k), run));
            let outcome = run_once(variant, k, nodes, &mut rng)?;
            sums.0 += outcome.residue;
            sums.1 += outcome.traffic;
            sums.2 += outcome.t_ave;
            sums.3 += f64::from(outcome.t_last);
        }
        let count = f64::from(runs);
        let analytic = (variant == Variant::FeedbackCoin).then(|| residue_analytic(k));
        rows.push(
            Row::default()
                .with("variant", variant.to_string())
                .with("k", k)
                .with("nodes", nodes)
                .with("residue", sums.0 / count)
                .with(
                    "residue_analytic",
                    analytic.map_or(serde_json::Value::Null, serde_json::Value::from),
                )
                .with("traffic", sums.1 / count)
                .with("t_ave", sums.2 / count)
                .with("t_last", sums.3 / count),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_table() {
        let first = table(Variant::BlindCoin, 1..=3, 500, 3, 42).expect("table");
        let second = table(Variant::BlindCoin, 1..=3, 500, 3, 42).expect("table");
        assert_eq!(first, second);
        let other = table(Variant::BlindCoin, 1..=3, 500, 3, 43).expect("table");
        assert_ne!(first, other, "another seed, another run");
    }

    #[test]
    fn feedback_coin_at_ten_thousand_nodes_follows_the_equation() {
        let rows = table(Variant::FeedbackCoin, 1..=3, 10_000, 5, 1).expect("table");
        for row in rows {
            let simulated = row
                .get("residue")
                .and_then(serde_json::Value::as_f64)
                .expect("residue");
            let analytic = row
                .get("residue_analytic")
                .and_then(serde_json::Value::as_f64)
                .expect("analytic");
            // Five runs of 10,000 nodes: the sampling error is well under 0.02.
            assert!(
                (simulated - analytic).abs() < 0.02,
                "k = {:?}: simulated {simulated}, analytic {analytic}",
                row.get("k")
            );
        }
    }

    #[test]
    fn every_node_learns_or_stays_ignorant_and_pushes_are_counted() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let outcome = run_once(Variant::FeedbackCounter, 4, 1_000, &mut rng).expect("run");
        assert!(
            outcome.residue < 0.05,
            "k = 4 informs nearly everyone: {outcome:?}"
        );
        assert!(
            outcome.traffic >= 1.0 - outcome.residue,
            "each informed node cost a push"
        );
        assert!(outcome.t_ave <= f64::from(outcome.t_last));
    }

    #[test]
    fn bad_parameters_are_named() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(
            run_once(Variant::BlindCoin, 1, 1, &mut rng)
                .expect_err("one node")
                .name,
            "nodes"
        );
        assert_eq!(
            table(Variant::BlindCoin, 1..=1, 10, 0, 0)
                .expect_err("no runs")
                .name,
            "runs"
        );
        assert_eq!(
            table(Variant::BlindCoin, 0..=1, 10, 1, 0)
                .expect_err("k = 0")
                .name,
            "k"
        );
    }
}
