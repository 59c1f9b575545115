//! `postino sim <scenario>`: the gossip protocols in the deterministic simulator, printed as a
//! table or, with `--json`, one JSON object per row. The same seed prints the same output.

use std::process::ExitCode;

use postino_gossip::ParamError;
use postino_gossip::aggregate::Function;
use postino_gossip::anti_entropy::Mode;
use postino_gossip::broadcast::Protocol;
use postino_gossip::rumor::Variant;
use postino_sim::{Model, Overlay};

/// Arguments of `postino sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Simulated nodes.
    #[arg(long, global = true, default_value_t = 10_000)]
    nodes: usize,
    /// Runs averaged per row.
    #[arg(long, global = true, default_value_t = 10)]
    runs: u32,
    /// Seed of every random choice.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// The overlay: complete or barabasi-albert (default: barabasi-albert for broadcast,
    /// complete for the others).
    #[arg(long, global = true)]
    graph: Option<String>,
    /// Mean node degree of a barabasi-albert overlay (even).
    #[arg(long, global = true, default_value_t = 6)]
    degree: usize,
    /// Probability that any one message is lost (default: 0.05 for pbcast, 0 for the others).
    #[arg(long, global = true)]
    loss: Option<f64>,
    /// Probability that a node is down from the start, for good (default: 0.2 for pbcast,
    /// where the sender may also crash mid-multicast; for sampling the share that crashes
    /// halfway, 0.5; 0 for the others).
    #[arg(long, global = true)]
    crash: Option<f64>,
    /// rounds (synchronous) or events (random latencies, in order of arrival).
    #[arg(long, global = true, default_value = "rounds")]
    delivery: String,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// Rumor mongering on a complete graph: residue, traffic, t_ave, t_last per k.
    Rumor {
        /// feedback-counter, feedback-coin, blind-counter or blind-coin.
        #[arg(long, default_value = "feedback-coin")]
        variant: String,
        /// The values of k, as `A..B` or one number.
        #[arg(long, default_value = "1..7")]
        k: String,
    },
    /// One broadcast on an overlay: cost, reach and time, flooding beside blind counter rumor
    /// mongering.
    Broadcast {
        /// flooding, blind-counter, or both.
        #[arg(long, default_value = "both")]
        protocol: String,
        /// B: neighbours a node forwards to.
        #[arg(long, default_value_t = 2)]
        fanout: usize,
        /// F: receptions that still make a node forward.
        #[arg(long, default_value_t = 2)]
        max_forwards: u32,
    },
    /// Aggregation by push-pull gossip: rounds until every node is within epsilon of the true
    /// value.
    Aggregate {
        /// avg, sum, min, max, or all four.
        #[arg(long = "fn", default_value = "all")]
        function: String,
        /// Relative tolerance.
        #[arg(long, default_value_t = 1e-3)]
        epsilon: f64,
    },
    /// Deleting under anti-entropy: resurrections with no certificate, with certificates that
    /// expire, and with dormant certificates, while one replica is down.
    DeathCertificates {
        /// Rounds a certificate lives.
        #[arg(long, default_value_t = 30)]
        ttl: u64,
        /// Rounds replica 1 stays down holding its old copy.
        #[arg(long, default_value_t = 60)]
        down: u64,
    },
    /// Bimodal multicast: how many processes deliver, with and without gossip repair.
    Pbcast {
        /// β: processes a digest goes to each round.
        #[arg(long, default_value_t = 2)]
        fanout: usize,
        /// Rounds a process gossips about the message after getting it.
        #[arg(long, default_value_t = 8)]
        rounds: u32,
    },
    /// Peer sampling from a ring: connectivity, the most views a node is in, and how fast
    /// crashed nodes leave the views.
    Sampling {
        /// Peers in a view.
        #[arg(long, default_value_t = 20)]
        view: usize,
        /// Rounds before the crash of half the nodes, and after it.
        #[arg(long, default_value_t = 30)]
        rounds: u32,
    },
    /// Anti-entropy on a complete graph: rounds until every replica has an update, and the
    /// messages that carried it.
    AntiEntropy {
        /// push, pull, push-pull, or all three.
        #[arg(long, default_value = "all")]
        mode: String,
    },
}

/// The scenario's network from the global flags and the scenario's defaults.
fn model(args: &SimArgs) -> Result<Model, ParamError> {
    let (graph, loss, crash) = match args.scenario {
        Scenario::Broadcast { .. } => ("barabasi-albert", 0.0, 0.0),
        Scenario::Pbcast { .. } => ("complete", 0.05, 0.2),
        Scenario::Sampling { .. } => ("complete", 0.0, 0.5),
        _ => ("complete", 0.0, 0.0),
    };
    let overlay = match args.graph.as_deref().unwrap_or(graph) {
        "complete" => Overlay::Complete,
        "barabasi-albert" => Overlay::BarabasiAlbert {
            degree: args.degree,
        },
        other => {
            return Err(ParamError {
                name: "graph",
                reason: format!("{other:?} is not complete or barabasi-albert"),
            });
        }
    };
    let model = Model {
        overlay,
        loss: args.loss.unwrap_or(loss),
        crash: args.crash.unwrap_or(crash),
        delivery: args.delivery.parse()?,
    };
    model.check()?;
    Ok(model)
}

fn broadcast(
    args: &SimArgs,
    model: &Model,
    protocol: &str,
    fanout: usize,
    max_forwards: u32,
) -> Result<Vec<postino_sim::Row>, ParamError> {
    let gossip = Protocol::blind_counter(fanout, max_forwards)?;
    let protocols = match protocol {
        "flooding" => vec![Protocol::Flooding],
        "blind-counter" => vec![gossip],
        "both" => vec![Protocol::Flooding, gossip],
        other => {
            return Err(ParamError {
                name: "protocol",
                reason: format!("{other:?} is not flooding, blind-counter or both"),
            });
        }
    };
    let mut rows = Vec::new();
    for protocol in protocols {
        rows.extend(postino_sim::broadcast::table(
            protocol, args.nodes, model, args.runs, args.seed,
        )?);
    }
    Ok(rows)
}

fn table(args: &SimArgs, model: &Model) -> Result<Vec<postino_sim::Row>, ParamError> {
    match &args.scenario {
        Scenario::Rumor { variant, k } => {
            let variant = variant.parse::<Variant>()?;
            let ks = postino_sim::parse_range("k", k)?;
            postino_sim::rumor::table(variant, ks, args.nodes, model, args.runs, args.seed)
        }
        Scenario::Broadcast {
            protocol,
            fanout,
            max_forwards,
        } => broadcast(args, model, protocol, *fanout, *max_forwards),
        Scenario::Aggregate { function, epsilon } => {
            let functions = if function == "all" {
                Function::ALL.to_vec()
            } else {
                vec![function.parse::<Function>()?]
            };
            postino_sim::aggregate::table(
                &functions, args.nodes, *epsilon, model, args.runs, args.seed,
            )
        }
        Scenario::DeathCertificates { ttl, down } => {
            postino_sim::death::table(args.nodes, *ttl, *down, model, args.runs, args.seed)
        }
        Scenario::Pbcast { fanout, rounds } => {
            let params = postino_sim::pbcast::Params {
                nodes: args.nodes,
                fanout: *fanout,
                rounds: *rounds,
                repair: true,
            };
            postino_sim::pbcast::table(params, model, args.runs, args.seed)
        }
        Scenario::Sampling { view, rounds } => {
            postino_sim::sampling::table(args.nodes, *view, *rounds, model, args.runs, args.seed)
        }
        Scenario::AntiEntropy { mode } => {
            let modes = if mode == "all" {
                Mode::ALL.to_vec()
            } else {
                vec![mode.parse::<Mode>()?]
            };
            postino_sim::anti_entropy::table(&modes, args.nodes, model, args.runs, args.seed)
        }
    }
}

/// Runs the scenario and prints its rows; bad parameters exit with 2, naming the parameter.
pub fn run(args: &SimArgs, json: bool) -> ExitCode {
    let rows = model(args).and_then(|model| table(args, &model));
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => {
            eprintln!("postino sim: {error}");
            return ExitCode::from(2);
        }
    };
    if json {
        for row in &rows {
            println!("{}", row.to_json());
        }
        return ExitCode::SUCCESS;
    }
    if let Some(first) = rows.first() {
        let header: Vec<String> = first
            .names()
            .iter()
            .map(|name| format!("{name:>16}"))
            .collect();
        println!("{}", header.join(" "));
    }
    for row in &rows {
        let cells: Vec<String> = row
            .cells()
            .iter()
            .map(|cell| format!("{cell:>16}"))
            .collect();
        println!("{}", cells.join(" "));
    }
    ExitCode::SUCCESS
}
