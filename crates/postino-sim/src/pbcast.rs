//! `postino sim pbcast`: one message from process 0 to `nodes` processes by bimodal multicast.
//! Each other process is crashed from the start with probability `crash`; the sender crashes in
//! the middle of its first pass with probability `crash` too, having reached a uniformly random
//! number of processes; every message (first pass, digest, solicitation, retransmission) is
//! lost with probability `loss`. With repair, processes then gossip digests to `fanout` random
//! processes a round for `rounds` rounds after getting the message. Columns over the runs:
//! `reach_mean` (live processes that delivered), `reach_hist` (runs per tenth of the live
//! processes reached, the last bucket including all), `p_low` (under 10 % reached), `p_mid`,
//! `p_high` (at least 90 %).

use postino_gossip::ParamError;
use postino_gossip::pbcast::{Effect, Event, Pbcast};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Graph, Row};

/// The parameters of a pbcast run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub nodes: usize,
    pub fanout: usize,
    pub loss: f64,
    pub crash: f64,
    pub rounds: u32,
    pub repair: bool,
}

impl Params {
    fn check(&self) -> Result<(), ParamError> {
        let invalid = |name, reason: String| Err(ParamError { name, reason });
        if !(0.0..1.0).contains(&self.loss) {
            return invalid("loss", format!("{} is not in [0, 1)", self.loss));
        }
        if !(0.0..1.0).contains(&self.crash) {
            return invalid("crash", format!("{} is not in [0, 1)", self.crash));
        }
        if self.fanout == 0 || self.fanout >= self.nodes {
            return invalid(
                "fanout",
                format!("{} is not in 1..{}", self.fanout, self.nodes),
            );
        }
        Graph::complete(self.nodes).map(|_| ())
    }
}

/// One run; returns how many live processes delivered the message, and how many are live.
pub fn run_once(params: &Params, rng: &mut impl Rng) -> (usize, usize) {
    let nodes = params.nodes;
    let graph = Graph::Complete(nodes);
    let rounds = if params.repair { params.rounds } else { 0 };
    let mut processes = vec![Pbcast::new(params.fanout, rounds); nodes];
    let mut crashed: Vec<bool> = (0..nodes)
        .map(|node| node != 0 && rng.random_bool(params.crash))
        .collect();
    let lost = |rng: &mut dyn rand::RngCore| rng.random_bool(params.loss);
    processes[0].handle(Event::Multicast);
    let mut order: Vec<usize> = (1..nodes).collect();
    order.shuffle(rng);
    if rng.random_bool(params.crash) {
        order.truncate(rng.random_range(0..nodes));
        crashed[0] = true;
    }
    for target in order {
        if !crashed[target] && !lost(rng) {
            processes[target].handle(Event::Multicast);
        }
    }
    loop {
        let mut digests = Vec::new();
        for (node, process) in processes.iter_mut().enumerate() {
            if crashed[node] {
                continue;
            }
            for effect in process.handle(Event::Round) {
                if let Effect::GossipDigest { fanout } = effect {
                    digests.push((node, fanout));
                }
            }
        }
        if digests.is_empty() {
            break;
        }
        for (from, fanout) in digests {
            for _ in 0..fanout {
                let Some(to) = graph.peer(from, rng) else {
                    continue;
                };
                if crashed[to] || lost(rng) {
                    continue;
                }
                for effect in processes[to].handle(Event::Digest { from }) {
                    let Effect::Solicit { to: source } = effect else {
                        continue;
                    };
                    if lost(rng) {
                        continue;
                    }
                    let answer = processes[source].handle(Event::Solicit { from: to });
                    if answer
                        .iter()
                        .any(|effect| matches!(effect, Effect::Retransmit { .. }))
                        && !lost(rng)
                    {
                        processes[to].handle(Event::Retransmit);
                    }
                }
            }
        }
    }
    let live = crashed.iter().filter(|crashed| !**crashed).count();
    let delivered = processes
        .iter()
        .zip(&crashed)
        .filter(|(process, crashed)| process.delivered() && !**crashed)
        .count();
    (delivered, live)
}

/// The table: without and with gossip repair, `runs` runs each.
///
/// # Errors
/// [`ParamError`] naming `loss` or `crash` outside [0, 1), a `fanout` not below the nodes,
/// fewer than 2 nodes, or 0 runs.
pub fn table(params: Params, runs: u32, seed: u64) -> Result<Vec<Row>, ParamError> {
    params.check()?;
    crate::check_runs(runs)?;
    let mut rows = Vec::new();
    for repair in [false, true] {
        let params = Params { repair, ..params };
        let mut hist = [0u32; 10];
        let mut total = 0usize;
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, u64::from(repair), run));
            let (reached, live) = run_once(&params, &mut rng);
            total += reached;
            let tenth = (reached * 10 / live.max(1)).min(9);
            hist[tenth] += 1;
        }
        let share = |count: u32| f64::from(count) / f64::from(runs);
        rows.push(
            Row::default()
                .with("repair", repair)
                .with("nodes", params.nodes)
                .with("fanout", params.fanout)
                .with("loss", params.loss)
                .with("crash", params.crash)
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
            loss: 0.05,
            crash: 0.2,
            rounds: 8,
            repair: false,
        };
        let rows = table(params, 300, 6).expect("table");
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
    }

    #[test]
    fn bad_parameters_are_named() {
        let good = Params {
            nodes: 50,
            fanout: 2,
            loss: 0.1,
            crash: 0.1,
            rounds: 3,
            repair: true,
        };
        assert_eq!(
            table(Params { loss: 1.0, ..good }, 1, 0)
                .expect_err("loss")
                .name,
            "loss"
        );
        assert_eq!(
            table(
                Params {
                    crash: -0.1,
                    ..good
                },
                1,
                0
            )
            .expect_err("crash")
            .name,
            "crash"
        );
        assert_eq!(
            table(Params { fanout: 50, ..good }, 1, 0)
                .expect_err("fanout")
                .name,
            "fanout"
        );
        let same = |seed| table(good, 5, seed).expect("table");
        assert_eq!(same(3), same(3), "a seed repeats a run");
    }
}
