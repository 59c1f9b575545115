//! `postino sim death-certificates`: every replica holds an item; at round 0 replica 0 deletes
//! it; replica 1 is down (it keeps its copy and exchanges nothing) until round `--down`; the
//! replicas that are up reconcile by push-pull anti-entropy every round (by default on a
//! complete graph; replicas crashed by the model stay down and do not count), and keep doing so for
//! `SETTLE_ROUNDS` rounds after replica 1 returns. A run *resurrects* the item when some replica
//! holds it at the end. Three ways of deleting, one row each: `none` (drop the item), `ttl`
//! (a death certificate living `--ttl` rounds) and `dormant` (the same, with replica 0 and
//! `DORMANT_SITES - 1` others keeping a dormant copy after it expires).

use postino_gossip::ParamError;
use postino_gossip::death::{Item, Replica};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Exchanges, Network, Plan};
use crate::{Model, Row};

/// Rounds the replicas keep reconciling after the down replica returns.
pub const SETTLE_ROUNDS: u64 = 100;
/// Replicas keeping dormant certificates in the `dormant` row.
pub const DORMANT_SITES: usize = 3;

/// How a deletion is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The item is dropped.
    None,
    /// A certificate living the TTL.
    Ttl,
    /// A certificate, kept dormant at a few replicas after the TTL.
    Dormant,
}

impl Deletion {
    fn name(self) -> &'static str {
        match self {
            Deletion::None => "none",
            Deletion::Ttl => "ttl",
            Deletion::Dormant => "dormant",
        }
    }
}

/// One run on `network` (replica 1 down until round `down` is the run's to arrange); returns
/// how many replicas that are up at the end hold the item.
pub fn run_once(
    deletion: Deletion,
    network: &Network,
    ttl: u64,
    down: u64,
    rng: &mut impl Rng,
) -> usize {
    let nodes = network.nodes();
    let mut replicas: Vec<Replica> = (0..nodes)
        .map(|node| {
            let keeps = deletion == Deletion::Dormant
                && (node == 0 || node >= nodes - (DORMANT_SITES - 1).min(nodes - 2));
            Replica::holding(1, ttl, keeps)
        })
        .collect();
    replicas[0].delete(0, deletion != Deletion::None);
    let rounds = down + SETTLE_ROUNDS;
    network.run(
        &mut replicas,
        Plan {
            exchanges: Exchanges::Sequential,
            start: Vec::new(),
            rounds_max: rounds,
            counts: &|_| true,
            done: &mut |_, _, _| false,
        },
        rng,
    );
    replicas
        .iter()
        .zip(network.live_after(rounds))
        .filter(|(replica, live)| *live && matches!(replica.item(), Item::Held { .. }))
        .count()
}

/// The table: one row per way of deleting, `runs` runs each on `model`.
///
/// # Errors
/// [`ParamError`] for fewer than `DORMANT_SITES + 1` nodes, 0 runs, a TTL of 0, or a model out
/// of range.
pub fn table(
    nodes: usize,
    ttl: u64,
    down: u64,
    model: &Model,
    runs: u32,
    seed: u64,
) -> Result<Vec<Row>, ParamError> {
    if nodes <= DORMANT_SITES {
        return Err(ParamError {
            name: "nodes",
            reason: format!("{nodes} leaves no replica that keeps nothing dormant"),
        });
    }
    if ttl == 0 {
        return Err(ParamError {
            name: "ttl",
            reason: "a certificate living 0 rounds deletes nothing".to_owned(),
        });
    }
    crate::check_runs(runs)?;
    model.check()?;
    let spared: Vec<usize> = (0..2).chain(nodes - (DORMANT_SITES - 1)..nodes).collect();
    let mut rows = Vec::new();
    for (index, deletion) in [Deletion::None, Deletion::Ttl, Deletion::Dormant]
        .into_iter()
        .enumerate()
    {
        let mut resurrected = 0u32;
        let mut holders = 0usize;
        for run in 0..runs {
            let mut rng = ChaCha8Rng::seed_from_u64(crate::run_seed(seed, index as u64, run));
            let mut network = model.network(nodes, &spared, &mut rng)?;
            network.take_down(1, 0..down + 1);
            let held = run_once(deletion, &network, ttl, down, &mut rng);
            resurrected += u32::from(held > 0);
            holders += held;
        }
        rows.push(
            Row::default()
                .with("deletion", deletion.name())
                .with("nodes", nodes)
                .with("network", model.name())
                .with("ttl", ttl)
                .with("down", down)
                .with("resurrected", f64::from(resurrected) / f64::from(runs))
                .with("holders_mean", holders as f64 / f64::from(runs)),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn resurrected(rows: &[Row], index: usize) -> f64 {
        rows[index]
            .get("resurrected")
            .and_then(serde_json::Value::as_f64)
            .expect("resurrected")
    }

    #[test]
    fn only_dormant_certificates_survive_a_replica_down_longer_than_the_ttl() {
        let rows = table(500, 30, 60, &Model::COMPLETE, 5, 4).expect("table");
        assert_eq!(
            resurrected(&rows, 0),
            1.0,
            "a plain deletion always comes back"
        );
        assert_eq!(
            resurrected(&rows, 1),
            1.0,
            "the returning copy outlives the certificate"
        );
        assert_eq!(
            resurrected(&rows, 2),
            0.0,
            "a dormant certificate wakes up and wins"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// While a certificate lives, a replica returning with an old copy cannot resurrect
        /// the item: the down period ends well inside the TTL.
        #[test]
        fn a_living_certificate_prevents_resurrection(
            nodes in 5usize..200,
            down in 0u64..50,
            seed in any::<u64>(),
        ) {
            let mut network = Network::new(crate::Graph::complete(nodes)?, 0.0, crate::Delivery::Rounds)?;
            network.take_down(1, 0..down + 1);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            // Push-pull covers 200 replicas in about a dozen rounds: 100 rounds of margin.
            let held = run_once(Deletion::Ttl, &network, down + 100, down, &mut rng);
            prop_assert_eq!(held, 0);
        }
    }
}
