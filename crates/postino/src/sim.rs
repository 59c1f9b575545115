//! `postino sim <scenario>`: the gossip protocols in the deterministic simulator, printed as a
//! table or, with `--json`, one JSON object per row. The same seed prints the same output.

use std::process::ExitCode;

use postino_gossip::ParamError;
use postino_gossip::aggregate::Function;
use postino_gossip::anti_entropy::Mode;
use postino_gossip::broadcast::Protocol;
use postino_gossip::rumor::Variant;

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
    /// One broadcast on a Barabási–Albert overlay: cost, reach and time, flooding beside blind
    /// counter rumor mongering.
    Broadcast {
        /// The overlay (only `barabasi-albert` so far).
        #[arg(long, default_value = "barabasi-albert")]
        graph: String,
        /// Mean node degree (even).
        #[arg(long, default_value_t = 6)]
        degree: usize,
        /// flooding, blind-counter, or both.
        #[arg(long, default_value = "both")]
        protocol: String,
        /// B: neighbours a node forwards to.
        #[arg(long, default_value_t = 2)]
        fanout: usize,
        /// F: receptions that still make a node forward.
        #[arg(long, default_value_t = 2)]
        max_forwards: u32,
        /// rounds (one hop each) or events (random latencies, in order of arrival).
        #[arg(long, default_value = "rounds")]
        delivery: String,
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
        /// ε: probability that any one message is lost.
        #[arg(long, default_value_t = 0.05)]
        loss: f64,
        /// τ: probability that a process (or the sender, mid-multicast) crashes.
        #[arg(long, default_value_t = 0.2)]
        crash: f64,
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

fn broadcast(
    args: &SimArgs,
    graph: &str,
    degree: usize,
    protocol: &str,
    fanout: usize,
    max_forwards: u32,
    delivery: postino_sim::Delivery,
) -> Result<Vec<postino_sim::Row>, ParamError> {
    if graph != "barabasi-albert" {
        return Err(ParamError {
            name: "graph",
            reason: format!("{graph:?} is not barabasi-albert"),
        });
    }
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
            protocol, args.nodes, degree, delivery, args.runs, args.seed,
        )?);
    }
    Ok(rows)
}

/// Runs the scenario and prints its rows; bad parameters exit with 2, naming the parameter.
pub fn run(args: &SimArgs, json: bool) -> ExitCode {
    let rows = match &args.scenario {
        Scenario::Rumor { variant, k } => variant.parse::<Variant>().and_then(|variant| {
            let ks = postino_sim::parse_range("k", k)?;
            postino_sim::rumor::table(variant, ks, args.nodes, args.runs, args.seed)
        }),
        Scenario::Broadcast {
            graph,
            degree,
            protocol,
            fanout,
            max_forwards,
            delivery,
        } => delivery.parse().and_then(|delivery| {
            broadcast(
                args,
                graph,
                *degree,
                protocol,
                *fanout,
                *max_forwards,
                delivery,
            )
        }),
        Scenario::Aggregate { function, epsilon } => {
            let functions = if function == "all" {
                Ok(Function::ALL.to_vec())
            } else {
                function.parse::<Function>().map(|function| vec![function])
            };
            functions.and_then(|functions| {
                postino_sim::aggregate::table(
                    &functions, args.nodes, *epsilon, args.runs, args.seed,
                )
            })
        }
        Scenario::DeathCertificates { ttl, down } => {
            postino_sim::death::table(args.nodes, *ttl, *down, args.runs, args.seed)
        }
        Scenario::Pbcast {
            fanout,
            loss,
            crash,
            rounds,
        } => {
            let params = postino_sim::pbcast::Params {
                nodes: args.nodes,
                fanout: *fanout,
                loss: *loss,
                crash: *crash,
                rounds: *rounds,
                repair: true,
            };
            postino_sim::pbcast::table(params, args.runs, args.seed)
        }
        Scenario::Sampling { view, rounds } => {
            postino_sim::sampling::table(args.nodes, *view, *rounds, args.runs, args.seed)
        }
        Scenario::AntiEntropy { mode } => {
            let modes = if mode == "all" {
                Ok(Mode::ALL.to_vec())
            } else {
                mode.parse::<Mode>().map(|mode| vec![mode])
            };
            modes.and_then(|modes| {
                postino_sim::anti_entropy::table(&modes, args.nodes, args.runs, args.seed)
            })
        }
    };
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
