//! A deterministic simulator for the epidemic protocols of `postino-gossip`: N nodes of any
//! protocol of the notes' framework over a [`network::Network`] (a complete graph or a
//! Barabási–Albert overlay, message loss, crashed nodes, synchronous rounds or event-driven
//! delivery), every random choice drawn from one seeded generator, so that the same seed gives
//! the same table.
//!
//! Scenarios: [`rumor`], [`anti_entropy`], [`broadcast`], [`pbcast`], [`death`],
//! [`aggregate`] and [`sampling`]. Each returns rows that print as a table or as JSON lines
//! ([`Row`]).
//!
//! This crate must not know sockets or the wall clock.

pub mod aggregate;
pub mod anti_entropy;
pub mod broadcast;
pub mod death;
pub mod network;
pub mod pbcast;
pub mod rumor;
pub mod sampling;

use postino_gossip::ParamError;
use rand::Rng;
use serde_json::{Map, Value};

/// How messages travel: in synchronous rounds (one hop per round), or as events with random
/// latencies handled in order of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Rounds,
    Events,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::Rounds => "rounds",
            Delivery::Events => "events",
        })
    }
}

impl std::str::FromStr for Delivery {
    type Err = ParamError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "rounds" => Ok(Delivery::Rounds),
            "events" => Ok(Delivery::Events),
            _ => Err(ParamError {
                name: "delivery",
                reason: format!("{text:?} is not rounds or events"),
            }),
        }
    }
}

/// Who can contact whom: every node every other (`Complete`), or lists of neighbours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Graph {
    Complete(usize),
    Adjacency(Vec<Vec<usize>>),
}

impl Graph {
    /// A complete graph.
    ///
    /// # Errors
    /// [`ParamError`] for fewer than 2 nodes.
    pub fn complete(nodes: usize) -> Result<Self, ParamError> {
        if nodes < 2 {
            return Err(ParamError {
                name: "nodes",
                reason: format!("{nodes} is below 2"),
            });
        }
        Ok(Graph::Complete(nodes))
    }

    /// A graph given by each node's neighbours.
    ///
    /// # Errors
    /// [`ParamError`] for fewer than 2 nodes, a neighbour out of range or a node its own
    /// neighbour.
    pub fn from_adjacency(adjacency: Vec<Vec<usize>>) -> Result<Self, ParamError> {
        let nodes = adjacency.len();
        Self::complete(nodes)?;
        for (node, neighbours) in adjacency.iter().enumerate() {
            if let Some(bad) = neighbours
                .iter()
                .find(|peer| **peer >= nodes || **peer == node)
            {
                return Err(ParamError {
                    name: "graph",
                    reason: format!("node {node} lists neighbour {bad}"),
                });
            }
        }
        Ok(Graph::Adjacency(adjacency))
    }

    /// A Barabási–Albert graph (preferential attachment) of `nodes` nodes and mean degree
    /// `degree`: a clique of `degree / 2 + 1` nodes, then each new node links to `degree / 2`
    /// distinct nodes chosen with probability proportional to their degree.
    ///
    /// # Errors
    /// [`ParamError`] naming `degree` unless it is even and at least 2, or `nodes` when there
    /// are not more nodes than the initial clique.
    pub fn barabasi_albert(
        nodes: usize,
        degree: usize,
        rng: &mut impl Rng,
    ) -> Result<Self, ParamError> {
        check_degree(degree)?;
        let links = degree / 2;
        if nodes <= links + 1 {
            return Err(ParamError {
                name: "nodes",
                reason: format!("{nodes} nodes cannot hold a graph of mean degree {degree}"),
            });
        }
        let mut adjacency = vec![Vec::new(); nodes];
        // Every edge end once: choosing uniformly from it is choosing by degree.
        let mut ends = Vec::with_capacity(nodes * degree);
        for a in 0..=links {
            for b in (a + 1)..=links {
                adjacency[a].push(b);
                adjacency[b].push(a);
                ends.extend([a, b]);
            }
        }
        for node in (links + 1)..nodes {
            let mut chosen = Vec::with_capacity(links);
            while chosen.len() < links {
                let target = ends[rng.random_range(0..ends.len())];
                if !chosen.contains(&target) {
                    chosen.push(target);
                }
            }
            for target in chosen {
                adjacency[node].push(target);
                adjacency[target].push(node);
                ends.extend([node, target]);
            }
        }
        Self::from_adjacency(adjacency)
    }

    /// The neighbours of `node` (every other node in a complete graph).
    #[must_use]
    pub fn neighbours(&self, node: usize) -> Vec<usize> {
        match self {
            Graph::Complete(nodes) => (0..*nodes).filter(|peer| *peer != node).collect(),
            Graph::Adjacency(adjacency) => adjacency[node].clone(),
        }
    }

    /// Nodes in the graph.
    #[must_use]
    pub fn nodes(&self) -> usize {
        match self {
            Graph::Complete(nodes) => *nodes,
            Graph::Adjacency(adjacency) => adjacency.len(),
        }
    }

    /// A neighbour of `node` chosen uniformly (the protocols' `select_peer`); `None` for a node
    /// without neighbours.
    pub fn peer(&self, node: usize, rng: &mut impl Rng) -> Option<usize> {
        match self {
            Graph::Complete(nodes) => {
                let peer = rng.random_range(0..nodes - 1);
                Some(if peer >= node { peer + 1 } else { peer })
            }
            Graph::Adjacency(adjacency) => {
                let neighbours = &adjacency[node];
                (!neighbours.is_empty()).then(|| neighbours[rng.random_range(0..neighbours.len())])
            }
        }
    }
}

/// The overlay nodes contact each other on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    Complete,
    /// A fresh Barabási–Albert graph each run, of this mean degree.
    BarabasiAlbert {
        degree: usize,
    },
}

/// The network every scenario takes: overlay, loss, crashes and delivery (the CLI's
/// `--graph`, `--degree`, `--loss`, `--crash`, `--delivery`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub overlay: Overlay,
    /// Probability that any one message is lost.
    pub loss: f64,
    /// Probability that a node (other than the one a scenario starts from) is down from the
    /// start, for good.
    pub crash: f64,
    pub delivery: Delivery,
}

impl Model {
    /// A complete graph, nothing lost, nothing crashed, in rounds: the notes' setting.
    pub const COMPLETE: Model = Model {
        overlay: Overlay::Complete,
        loss: 0.0,
        crash: 0.0,
        delivery: Delivery::Rounds,
    };

    /// Checks the parameters that do not depend on the node count.
    ///
    /// # Errors
    /// [`ParamError`] naming `loss` or `crash` outside [0, 1), or `degree`.
    pub fn check(&self) -> Result<(), ParamError> {
        network::check_loss(self.loss)?;
        network::check_crash(self.crash)?;
        if let Overlay::BarabasiAlbert { degree } = self.overlay {
            check_degree(degree)?;
        }
        Ok(())
    }

    /// The network of one run over `nodes` nodes; the nodes in `spared` do not crash.
    ///
    /// # Errors
    /// [`ParamError`] for a graph that cannot be built or a parameter out of range.
    pub fn network(
        &self,
        nodes: usize,
        spared: &[usize],
        rng: &mut impl Rng,
    ) -> Result<network::Network, ParamError> {
        let graph = match self.overlay {
            Overlay::Complete => Graph::complete(nodes)?,
            Overlay::BarabasiAlbert { degree } => Graph::barabasi_albert(nodes, degree, rng)?,
        };
        let mut network = network::Network::new(graph, self.loss, self.delivery)?;
        network.crash_share(self.crash, spared, rng)?;
        Ok(network)
    }

    /// How a table row names the model: `complete`, `barabasi-albert(6)`, then the loss, the
    /// crashes and event-driven delivery when there are any.
    #[must_use]
    pub fn name(&self) -> String {
        let mut name = match self.overlay {
            Overlay::Complete => "complete".to_owned(),
            Overlay::BarabasiAlbert { degree } => format!("barabasi-albert({degree})"),
        };
        if self.loss > 0.0 {
            name.push_str(&format!(" loss {}", self.loss));
        }
        if self.crash > 0.0 {
            name.push_str(&format!(" crash {}", self.crash));
        }
        if self.delivery == Delivery::Events {
            name.push_str(" events");
        }
        name
    }
}

fn check_degree(degree: usize) -> Result<(), ParamError> {
    if degree < 2 || !degree.is_multiple_of(2) {
        return Err(ParamError {
            name: "degree",
            reason: format!("{degree} is not an even number of at least 2"),
        });
    }
    Ok(())
}

/// Mean, minimum, maximum and standard deviation of `values`, as `name`, `name_min`,
/// `name_max`, `name_std` on `row`.
pub(crate) fn with_spread(row: Row, name: &str, values: &[f64]) -> Row {
    let count = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / count;
    let variance = values
        .iter()
        .map(|value| (value - mean).powi(2))
        .sum::<f64>()
        / count;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    row.with(name, mean)
        .with(&format!("{name}_min"), min)
        .with(&format!("{name}_max"), max)
        .with(&format!("{name}_std"), variance.sqrt())
}

/// Refuses a table of no runs.
pub(crate) fn check_runs(runs: u32) -> Result<(), ParamError> {
    if runs == 0 {
        return Err(ParamError {
            name: "runs",
            reason: "0 runs measure nothing".to_owned(),
        });
    }
    Ok(())
}

/// The seed of run `run` of table row `row`: each run has its own generator, so a row does
/// not depend on the others.
pub(crate) fn run_seed(seed: u64, row: u64, run: u32) -> u64 {
    seed ^ (row << 32) ^ u64::from(run).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One row of a scenario's table: named figures in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    fields: Map<String, Value>,
}

impl Row {
    /// Adds a figure.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    /// A figure, if present.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// The row as one line of JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }

    /// The row's values as table cells, in order.
    #[must_use]
    pub fn cells(&self) -> Vec<String> {
        self.fields
            .values()
            .map(|value| match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number
                    .as_f64()
                    .filter(|_| number.is_f64())
                    .map_or_else(|| number.to_string(), |float| format!("{float:.6}")),
                other => other.to_string(),
            })
            .collect()
    }

    /// The row's field names, in order.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.fields.keys().cloned().collect()
    }
}

/// Parses a range written `A..B` (inclusive, as the CLI's `--k 1..7`) or a single number.
///
/// # Errors
/// [`postino_gossip::ParamError`] naming `name` when the text is not a range of numbers with
/// `A <= B`.
pub fn parse_range(
    name: &'static str,
    text: &str,
) -> Result<std::ops::RangeInclusive<u32>, postino_gossip::ParamError> {
    let invalid = || postino_gossip::ParamError {
        name,
        reason: format!("{text:?} is not a number or a range A..B"),
    };
    let (low, high) = match text.split_once("..") {
        Some((low, high)) => (low, high),
        None => (text, text),
    };
    let low: u32 = low.trim().parse().map_err(|_| invalid())?;
    let high: u32 = high.trim().parse().map_err(|_| invalid())?;
    if low > high {
        return Err(invalid());
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_like_the_cli_writes_them() {
        assert_eq!(parse_range("k", "1..7").expect("range"), 1..=7);
        assert_eq!(parse_range("k", "3").expect("one"), 3..=3);
        assert_eq!(parse_range("k", "7..1").expect_err("reversed").name, "k");
        assert!(parse_range("k", "a..b").is_err());
    }

    #[test]
    fn barabasi_albert_graphs_have_the_mean_degree_asked_and_are_connected() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let graph = Graph::barabasi_albert(1_000, 6, &mut rng).expect("graph");
        let degrees: usize = (0..1_000).map(|node| graph.neighbours(node).len()).sum();
        let mean = degrees as f64 / 1_000.0;
        assert!((5.9..=6.0).contains(&mean), "mean degree {mean}");
        let mut seen = vec![false; 1_000];
        let mut frontier = vec![0];
        seen[0] = true;
        while let Some(node) = frontier.pop() {
            for peer in graph.neighbours(node) {
                if !seen[peer] {
                    seen[peer] = true;
                    frontier.push(peer);
                }
            }
        }
        assert!(seen.iter().all(|reached| *reached), "connected");
        assert_eq!(
            Graph::barabasi_albert(1_000, 5, &mut rng)
                .expect_err("odd")
                .name,
            "degree"
        );
        assert_eq!(
            Graph::barabasi_albert(3, 6, &mut rng)
                .expect_err("too few")
                .name,
            "nodes"
        );
    }

    #[test]
    fn spreads_give_mean_bounds_and_deviation() {
        let row = with_spread(Row::default(), "cost", &[1.0, 3.0]);
        assert_eq!(
            row.to_json(),
            r#"{"cost":2.0,"cost_min":1.0,"cost_max":3.0,"cost_std":1.0}"#
        );
    }

    #[test]
    fn rows_keep_their_order() {
        let row = Row::default().with("k", 1).with("residue", 0.25);
        assert_eq!(row.to_json(), r#"{"k":1,"residue":0.25}"#);
        assert_eq!(row.cells(), ["1", "0.250000"]);
        assert_eq!(row.names(), ["k", "residue"]);
    }
}
