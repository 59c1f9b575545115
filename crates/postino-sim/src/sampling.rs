//! `postino sim sampling`: peer sampling. On the default complete graph every node starts
//! knowing the next two nodes of a ring; on a Barabási–Albert overlay, its neighbours there.
//! Each round every live node exchanges views with its oldest peer. After `rounds` rounds a
//! share `crash` of the nodes crash (the model's crash share, 0.5 by default here, counts
//! from that moment, not from the start), and the survivors go on for as many rounds again.
//! Columns: `connected` (the view graph before the crash links every node), `in_degree_max`
//! (the most views a node is in, against `view`, the average), `dead_in_views` (the share of
//! entries in live views naming a crashed node, at the end).

use postino_gossip::ParamError;
use postino_gossip::sampling::Sampling;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Exchanges, Plan};
use crate::{Model, Overlay, Row};

/// What a run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub connected: bool,
    pub in_degree_max: usize,
    pub dead_in_views: f64,
}

fn connected(nodes: &[Sampling]) -> bool {
    let mut links = vec![Vec::new(); nodes.len()];
    for (node, sampling) in nodes.iter().enumerate() {
        for descriptor in sampling.view() {
            links[node].push(descriptor.node);
            links[descriptor.node].push(node);
        }
    }
    let mut seen = vec![false; nodes.len()];
    let mut frontier = vec![0];
    seen[0] = true;
    while let Some(node) = frontier.pop() {
        for peer in &links[node] {
            if !seen[*peer] {
                seen[*peer] = true;
                frontier.push(*peer);
            }
        }
    }
    seen.iter().all(|reached| *reached)
}

fn in_degree_max(nodes: &[Sampling]) -> usize {
    let mut in_degree = vec![0usize; nodes.len()];
    for sampling in nodes {
        for descriptor in sampling.view() {
            in_degree[descriptor.node] += 1;
        }
    }
    in_degree.into_iter().max().unwrap_or(0)
}

/// One run of `count` nodes with views of `view` peers on `model`.
///
/// # Errors
/// [`ParamError`] naming `view` below 2, `nodes` not above `view`, or a model out of range.
pub fn run_once(
    count: usize,
    view: usize,
    rounds: u32,
    model: &Model,
    rng: &mut impl Rng,
) -> Result<Report, ParamError> {
    if count <= view {
        return Err(ParamError {
            name: "nodes",
            reason: format!("{count} nodes cannot fill views of {view}"),
        });
    }
    let crash = model.crash;
    let mut network = Model {
        crash: 0.0,
        ..*model
    }
    .network(count, &[], rng)?;
    let mut nodes = (0..count)
        .map(|node| {
            let seeds = match model.overlay {
                Overlay::Complete => vec![(node + 1) % count, (node + 2) % count],
                Overlay::BarabasiAlbert { .. } => network.graph().neighbours(node),
            };
            Sampling::new(node, view, &seeds)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rounds = u64::from(rounds);
    for node in 0..count {
        if crash > 0.0 && rng.random_bool(crash) {
            network.take_down(node, rounds + 1..u64::MAX);
        }
    }
    let mut before_crash = None;
    network.run(
        &mut nodes,
        Plan {
            exchanges: Exchanges::Sequential,
            start: Vec::new(),
            rounds_max: 2 * rounds,
            counts: &|_| true,
            done: &mut |nodes, _, round| {
                if round == rounds {
                    before_crash = Some((connected(nodes), in_degree_max(nodes)));
                }
                false
            },
        },
        rng,
    );
    let live = network.live_after(2 * rounds);
    let (mut dead, mut total) = (0usize, 0usize);
    for (node, sampling) in nodes.iter().enumerate() {
        if live[node] {
            total += sampling.view().len();
            dead += sampling
                .view()
                .iter()
                .filter(|descriptor| !live[descriptor.node])
                .count();
        }
    }
    let (connected, in_degree_max) = before_crash.unwrap_or((false, 0));
    Ok(Report {
        connected,
        in_degree_max,
        dead_in_views: dead as f64 / total.max(1) as f64,
    })
}

/// The table: one row for `runs` runs.
///
/// # Errors
/// As [`run_once`]; 0 runs.
pub fn table(
    count: usize,
    view: usize,
    rounds: u32,
    model: &Model,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    crate::check_runs(runs)?;
    model.check()?;
    let mut connected = 0u32;
    let mut in_degree_max = 0usize;
    let mut dead = 0.0;
    for run in 0..runs {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, 0, run));
        let report = run_once(count, view, rounds, model, &mut rng)?;
        connected += u32::from(report.connected);
        in_degree_max = in_degree_max.max(report.in_degree_max);
        dead += report.dead_in_views;
    }
    Ok(vec![
        Row::default()
            .with("nodes", count)
            .with("network", model.name())
            .with("view", view)
            .with("rounds", rounds)
            .with("connected", f64::from(connected) / f64::from(runs))
            .with("in_degree_max", in_degree_max)
            .with("dead_in_views", dead / f64::from(runs)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_from_a_ring_become_random_connected_and_forget_the_dead() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let half = Model {
            crash: 0.5,
            ..Model::COMPLETE
        };
        let report = run_once(2_000, 20, 30, &half, &mut rng).expect("run");
        assert!(report.connected);
        assert!(
            // Keeping the youngest entries (Jelasity et al.'s "healer") spreads in-degrees more
            // than swapping would, but no node comes near being in most views.
            report.in_degree_max < 20 * 8,
            "no node in most views: {report:?}"
        );
        assert!(
            report.dead_in_views < 0.05,
            "crashed nodes age out: {report:?}"
        );
        let rough = Model {
            overlay: Overlay::BarabasiAlbert { degree: 6 },
            loss: 0.1,
            delivery: crate::Delivery::Events,
            ..half
        };
        let report = run_once(500, 20, 30, &rough, &mut rng).expect("run");
        assert!(report.connected, "{report:?}");
        assert!(
            report.dead_in_views < 0.1,
            "lost answers slow the healing, not stop it: {report:?}"
        );
        assert_eq!(
            run_once(10, 20, 1, &half, &mut rng)
                .expect_err("too few")
                .name,
            "nodes"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_views() {
        let model = Model {
            crash: 0.5,
            delivery: crate::Delivery::Events,
            ..Model::COMPLETE
        };
        let run = |seed| table(300, 10, 10, &model, 2, seed).expect("table");
        assert_eq!(run(9), run(9));
    }
}
