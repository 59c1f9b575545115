//! `postino sim pbcast`: one message from process 0 to `nodes` processes by bimodal multicast,
//! by default on a complete graph in rounds. Each other process is crashed from the start with
//! probability `crash`; the sender crashes in
//! the middle of its first pass with probability `crash` too, having reached a uniformly random
//! number of processes; every message (first pass, digest, solicitation, retransmission) is
//! lost with probability `loss`. With repair, processes then gossip digests to `fanout` random
//! processes a round for `rounds` rounds after getting the message. Columns over the runs:
//! `reach_mean` (live processes that delivered), `reach_hist` (runs per tenth of the live
//! processes reached, the last bucket including all), `p_low` (under 10 % reached), `p_mid`,
//! `p_high` (at least 90 %).

use postino_gossip::ParamError;
use postino_gossip::framework::{Output, To};
use postino_gossip::pbcast::{Event, Message, Pbcast};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Exchanges, Network, Plan};
use crate::{Model, Row};

/// Rounds after which a run stops (gossip ends long before: each process gossips for `rounds`
/// rounds after getting the message).
const ROUNDS_MAX: u64 = 100_000;

/// The parameters of a pbcast run besides its network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub nodes: usize,
    pub fanout: usize,
    pub rounds: u32,
    pub repair: bool,
}

impl Params {
    fn check(&self) -> Result<(), ParamError> {
        if self.fanout == 0 || self.fanout >= self.nodes {
            return Err(ParamError {
                name: "fanout",
                reason: format!("{} is not in 1..{}", self.fanout, self.nodes),
            });
        }
        Ok(())
    }
}

/// One run on `network`, the sender (process 0) crashing in its first pass with probability
/// `crash`; returns how many live processes delivered the message, and how many are live.
pub fn run_once(
    params: &Params,
    mut network: Network,
    crash: f64,
    rng: &mut impl Rng,
) -> (usize, usize) {
    let nodes = network.nodes();
    let rounds = if params.repair { params.rounds } else { 0 };
    let mut processes = vec![Pbcast::new(params.fanout, rounds); nodes];
    processes[0].handle(Event::Multicast);
    let mut order: Vec<usize> = (1..nodes).collect();
    order.shuffle(rng);
    if crash > 0.0 && rng.random_bool(crash) {
        order.truncate(rng.random_range(0..nodes));
        network.take_down(0, 1..u64::MAX);
    }
    let first = order
        .into_iter()
        .map(|to| Output::Send(To::Node(to), Message::Data))
        .collect();
    network.run(
        &mut processes,
        Plan {
            exchanges: Exchanges::Synchronous,
            start: vec![(0, first)],
            rounds_max: ROUNDS_MAX,
            counts: &|_| true,
            done: &mut |_, _, _| false,
        },
        rng,
    );
    let live = network.live_after(0);
    let delivered = processes
        .iter()
        .zip(&live)
        .filter(|(process, live)| process.delivered() && **live)
        .count();
    (delivered, live.iter().filter(|live| **live).count())
}

/// The table: without and with gossip repair, `runs` runs each on `model`, whose crash
/// probability is also the sender's.
///
/// # Errors
/// [`ParamError`] naming `loss` or `crash` outside [0, 1), a `fanout` not below the nodes,
/// fewer than 2 nodes, or 0 runs.
pub fn table(params: Params, model: &Model, runs: u32, seed: u64) -> Result<Vec<Row>, ParamError> {
    params.check()?;
    model.check()?;
    crate::check_runs(runs)?;
    let mut rows = Vec::new();
    for repair in [false, true] {
        let params = Params { repair, ..params };
        let mut hist = [0u32; 10];
        let mut total = 0usize;
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, u64::from(repair), run));
            let network = model.network(params.nodes, &[0], &mut rng)?;
            let (reached, live) = run_once(&params, network, model.crash, &mut rng);
            total += reached;
            let tenth = (reached * 10 / live.max(1)).min(9);
            hist[tenth] += 1;
        }
        let share = |count: u32| f64::from(count) / f64::from(runs);
        rows.push(
            Row::default()
                .with("repair", repair)
                .with("nodes", params.nodes)
                .with("network", model.name())
                .with("fanout", params.fanout)
                .with("rounds", params.rounds)
                .with("reach_mean", total as f64 / f64::from(runs))
                .with("p_low", share(hist[0]))
                .with("p_mid", share(hist[1..9].iter().sum()))
                .with("p_high", share(hist[9]))
                .with("reach_hist", hist.to_vec()),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: Model = Model {
        loss: 0.05,
        crash: 0.2,
        ..Model::COMPLETE
    };

    fn figure(row: &Row, name: &str) -> f64 {
        row.get(name)
            .and_then(serde_json::Value::as_f64)
            .expect(name)
    }

    #[test]
    fn repair_turns_a_spread_of_outcomes_into_almost_none_or_almost_all() {
        let params = Params {
            nodes: 500,
            fanout: 2,
            rounds: 8,
            repair: false,
        };
        let rows = table(params, &MODEL, 300, 6).expect("table");
        let (without, with) = (&rows[0], &rows[1]);
        assert!(figure(without, "p_mid") > 0.05, "{without:?}");
        assert!(
            figure(with, "p_mid") < figure(without, "p_mid") / 2.0,
            "{with:?}"
        );
        assert!(
            figure(with, "p_high") > figure(without, "p_high"),
            "{with:?}"
        );
        let bimodal = figure(with, "p_low") + figure(with, "p_high");
        assert!(
            bimodal > 0.9,
            "with repair, almost every run reaches almost none or almost all"
        );
        let events = Model {
            delivery: crate::Delivery::Events,
            ..MODEL
        };
        let timed = table(
            Params {
                repair: true,
                ..params
            },
            &events,
            100,
            6,
        )
        .expect("table");
        assert!(
            figure(&timed[1], "p_low") + figure(&timed[1], "p_high") > 0.9,
            "bimodal with events too: {timed:?}"
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let good = Params {
            nodes: 50,
            fanout: 2,
            rounds: 3,
            repair: true,
        };
        let lossy = Model { loss: 1.0, ..MODEL };
        assert_eq!(table(good, &lossy, 1, 0).expect_err("loss").name, "loss");
        let crashing = Model {
            crash: -0.1,
            ..MODEL
        };
        assert_eq!(
            table(good, &crashing, 1, 0).expect_err("crash").name,
            "crash"
        );
        assert_eq!(
            table(Params { fanout: 50, ..good }, &MODEL, 1, 0)
                .expect_err("fanout")
                .name,
            "fanout"
        );
        let same = |seed| table(good, &MODEL, 5, seed).expect("table");
        assert_eq!(same(3), same(3), "a seed repeats a run");
    }
}
