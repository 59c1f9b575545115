//! `postino sim sampling`: peer sampling from a ring. Every node starts knowing the next two
//! nodes; each round every live node exchanges views with its oldest peer. After `rounds`
//! rounds half the nodes crash, and the survivors go on for as many rounds again. Columns:
//! `connected` (the view graph before the crash links every node), `in_degree_max` (the most
//! views a node is in, against `view`, the average), `dead_in_views` (the share of entries in
//! live views naming a crashed node, at the end).

use postino_gossip::ParamError;
use postino_gossip::sampling::Sampling;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Row;

/// What a run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub connected: bool,
    pub in_degree_max: usize,
    pub dead_in_views: f64,
}

fn round(nodes: &mut [Sampling], live: &[bool], rng: &mut impl Rng) {
    for node in 0..nodes.len() {
        if !live[node] {
            continue;
        }
        let Some((peer, sent)) = nodes[node].start_exchange(rng) else {
            continue;
        };
        // A crashed peer answers nothing; the entry ages out of the view.
        if live[peer] {
            let answer = nodes[peer].on_exchange(node, sent, rng);
            nodes[node].on_answer(answer, rng);
        }
    }
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

/// One run of `count` nodes with views of `view` peers.
///
/// # Errors
/// [`ParamError`] naming `view` below 2 or `nodes` not above `view`.
pub fn run_once(
    count: usize,
    view: usize,
    rounds: u32,
    rng: &mut impl Rng,
) -> Result<Report, ParamError> {
    if count <= view {
        return Err(ParamError {
            name: "nodes",
            reason: format!("{count} nodes cannot fill views of {view}"),
        });
    }
    let mut nodes = (0..count)
        .map(|node| Sampling::new(node, view, &[(node + 1) % count, (node + 2) % count]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut live = vec![true; count];
    for _ in 0..rounds {
        round(&mut nodes, &live, rng);
    }
    let connected = connected(&nodes);
    let mut in_degree = vec![0usize; count];
    for sampling in &nodes {
        for descriptor in sampling.view() {
            in_degree[descriptor.node] += 1;
        }
    }
    for (node, alive) in live.iter_mut().enumerate() {
        *alive = node % 2 == 0;
    }
    for _ in 0..rounds {
        round(&mut nodes, &live, rng);
    }
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
    Ok(Report {
        connected,
        in_degree_max: in_degree.into_iter().max().unwrap_or(0),
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
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    crate::check_runs(runs)?;
    let mut connected = 0u32;
    let mut in_degree_max = 0usize;
    let mut dead = 0.0;
    for run in 0..runs {
        let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, 0, run));
        let report = run_once(count, view, rounds, &mut rng)?;
        connected += u32::from(report.connected);
        in_degree_max = in_degree_max.max(report.in_degree_max);
        dead += report.dead_in_views;
    }
    Ok(vec![
        Row::default()
            .with("nodes", count)
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
        let report = run_once(2_000, 20, 30, &mut rng).expect("run");
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
        assert_eq!(
            run_once(10, 20, 1, &mut rng).expect_err("too few").name,
            "nodes"
        );
    }
}
