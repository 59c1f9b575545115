//! `postino sim rumor`: rumor mongering, by default on a complete graph in synchronous rounds
//! (the notes' setting; any [`Model`] works). Node 0 originates the rumor; in each round every
//! infective node pushes to one peer chosen uniformly among its neighbours (its
//! `select_peer`), which answers whether it knew; nodes infected in a round start pushing in
//! the next. A run ends when no node is infective.
//!
//! Per `k` the table gives, averaged over the runs: `residue` (fraction of the nodes that are
//! up never informed), `residue_analytic` (the notes' equation, for feedback-coin on the
//! default model only), `traffic` (pushes per node, lost ones included), `t_ave` (mean round
//! at which informed nodes learned) and `t_last` (the round of the last one).

use postino_gossip::ParamError;
use postino_gossip::rumor::{Message, Rumor, Variant, residue_analytic};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Exchanges, Network, Plan};
use crate::{Model, Row};

/// Rounds after which a run stops even if some node is still infective.
const ROUNDS_MAX: u64 = 100_000;

/// What one run measured, over the nodes that are up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub residue: f64,
    pub traffic: f64,
    pub t_ave: f64,
    pub t_last: f64,
}

/// One run on `network`, node 0 originating.
///
/// # Errors
/// [`ParamError`] for `k` below 1.
pub fn run_once(
    variant: Variant,
    k: u32,
    network: &Network,
    rng: &mut impl Rng,
) -> Result<Outcome, ParamError> {
    let nodes = network.nodes();
    let mut states = vec![Rumor::new(variant, k)?; nodes];
    states[0].originate();
    let run = network.run(
        &mut states,
        Plan {
            exchanges: Exchanges::Synchronous,
            start: Vec::new(),
            rounds_max: ROUNDS_MAX,
            counts: &|message| *message == Message::Push,
            done: &mut |_, _, _| false,
        },
        rng,
    );
    let live = network.live_after(0);
    let mut informed: Vec<f64> = run
        .delivered_at
        .iter()
        .zip(&live)
        .filter_map(|(at, live)| at.filter(|_| *live))
        .collect();
    informed.push(0.0);
    let up = live.iter().filter(|live| **live).count();
    Ok(Outcome {
        residue: (up - informed.len()) as f64 / up as f64,
        traffic: run.messages as f64 / nodes as f64,
        t_ave: informed.iter().sum::<f64>() / informed.len() as f64,
        t_last: informed.iter().copied().fold(0.0, f64::max),
    })
}

/// The table for `variant` and each `k`: `runs` runs of `nodes` nodes on `model`, seeded by
/// `seed` (run `r` of `k` uses its own generator derived from both, so a row does not depend
/// on the others).
///
/// # Errors
/// [`ParamError`] for bad parameters (`runs` of 0, fewer than 2 nodes, `k` below 1, a model
/// out of range).
pub fn table(
    variant: Variant,
    ks: std::ops::RangeInclusive<u32>,
    nodes: usize,
    model: &Model,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    crate::check_runs(runs)?;
    model.check()?;
    let mut rows = Vec::new();
    for k in ks {
        let mut sums = (0.0, 0.0, 0.0, 0.0);
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, u64::from(k), run));
            let network = model.network(nodes, &[0], &mut rng)?;
            let outcome = run_once(variant, k, &network, &mut rng)?;
            sums.0 += outcome.residue;
            sums.1 += outcome.traffic;
            sums.2 += outcome.t_ave;
            sums.3 += outcome.t_last;
        }
        let count = f64::from(runs);
        let analytic = (variant == Variant::FeedbackCoin && *model == Model::COMPLETE)
            .then(|| residue_analytic(k));
        rows.push(
            Row::default()
                .with("variant", variant.to_string())
                .with("k", k)
                .with("nodes", nodes)
                .with("network", model.name())
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
        let first = table(Variant::BlindCoin, 1..=3, 500, &Model::COMPLETE, 3, 42).expect("table");
        let second = table(Variant::BlindCoin, 1..=3, 500, &Model::COMPLETE, 3, 42).expect("table");
        assert_eq!(first, second);
        let other = table(Variant::BlindCoin, 1..=3, 500, &Model::COMPLETE, 3, 43).expect("table");
        assert_ne!(first, other, "another seed, another run");
    }

    #[test]
    fn feedback_coin_at_ten_thousand_nodes_follows_the_equation() {
        let rows =
            table(Variant::FeedbackCoin, 1..=3, 10_000, &Model::COMPLETE, 5, 1).expect("table");
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
        let network = Model::COMPLETE
            .network(1_000, &[0], &mut rng)
            .expect("network");
        let outcome = run_once(Variant::FeedbackCounter, 4, &network, &mut rng).expect("run");
        assert!(
            outcome.residue < 0.05,
            "k = 4 informs nearly everyone: {outcome:?}"
        );
        assert!(
            outcome.traffic >= 1.0 - outcome.residue,
            "each informed node cost a push"
        );
        assert!(outcome.t_ave <= outcome.t_last);
    }

    #[test]
    fn loss_crashes_and_events_slow_the_rumor_but_it_still_spreads() {
        let base =
            table(Variant::FeedbackCoin, 2..=2, 5_000, &Model::COMPLETE, 3, 5).expect("table");
        let lossy = Model {
            loss: 0.2,
            crash: 0.1,
            ..Model::COMPLETE
        };
        let hard = table(Variant::FeedbackCoin, 2..=2, 5_000, &lossy, 3, 5).expect("table");
        let events = Model {
            delivery: crate::Delivery::Events,
            ..Model::COMPLETE
        };
        let timed = table(Variant::FeedbackCoin, 2..=2, 5_000, &events, 3, 5).expect("table");
        let figure = |rows: &[Row], name: &str| {
            rows[0]
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .expect(name)
        };
        // A lost push is a push that neither informs nor brings feedback: it does not count
        // towards losing interest, so the residue stays near the lossless one.
        assert!(figure(&hard, "residue") < 0.2, "{hard:?}");
        assert!(
            figure(&hard, "t_last") > figure(&base, "t_last"),
            "{hard:?}"
        );
        assert!(figure(&timed, "residue") < 0.2, "{timed:?}");
        assert_ne!(figure(&timed, "t_ave"), figure(&base, "t_ave"));
        assert_eq!(
            hard[0].get("network").and_then(serde_json::Value::as_str),
            Some("complete loss 0.2 crash 0.1")
        );
        assert!(figure(&base, "residue_analytic") > 0.0);
        assert!(
            hard[0]
                .get("residue_analytic")
                .is_some_and(serde_json::Value::is_null)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            table(Variant::BlindCoin, 1..=1, 1, &Model::COMPLETE, 1, 0)
                .expect_err("one node")
                .name,
            "nodes"
        );
        assert_eq!(
            table(Variant::BlindCoin, 1..=1, 10, &Model::COMPLETE, 0, 0)
                .expect_err("no runs")
                .name,
            "runs"
        );
        assert_eq!(
            table(Variant::BlindCoin, 0..=1, 10, &Model::COMPLETE, 1, 0)
                .expect_err("k = 0")
                .name,
            "k"
        );
    }
}
