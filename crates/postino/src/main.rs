//! The `postino` binary: wiring only. `postino server` runs the broker; `postino bench` runs the
//! benchmarks; `postino sim` runs the gossip simulator; `postino publish|consume` are console
//! clients of the native API; `postino <noun> <verb>` administers a
//! running server through its management API. Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad usage or configuration.

mod admin;
mod clients;
mod config;
mod faults;
mod server;
mod sim;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "postino",
    version,
    about = "A message broker: queues, pub/sub and streams on one log"
)]
struct Cli {
    #[command(flatten)]
    target: admin::Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Server(server::ServerArgs),
    /// Run a benchmark and print its figures.
    Bench(BenchArgs),
    /// Run a gossip protocol in the deterministic simulator and print its table.
    Sim(sim::SimArgs),
    /// Publish messages through the native API: to a queue or an exchange, from arguments, a
    /// file or stdin lines.
    Publish(clients::PublishArgs),
    /// Consume through the native API: a queue (optionally filtered) or a subscription with a
    /// filter; text or JSON lines.
    Consume(clients::ConsumeArgs),
    #[command(flatten)]
    Admin(admin::Noun),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// What to measure.
    target: BenchTarget,
    /// A short run (seconds) instead of the full one (minutes).
    #[arg(long)]
    quick: bool,
    /// Where scratch data goes (a directory on the disk to measure).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Only the scenarios whose label contains this (e.g. `append/fsync`, `recover_cold`).
    #[arg(long, default_value = "")]
    filter: String,
    /// `amqp`: postino's AMQP URI; without it the benchmark starts this binary's server on a
    /// scratch directory under `--dir`.
    #[arg(long)]
    uri: Option<String>,
    /// `amqp`: the reference broker's (RabbitMQ's) AMQP URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    peer_uri: String,
    /// `server`: the reference broker's (RabbitMQ's) management API.
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    peer_http: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchTarget {
    /// The log: appends per durability policy, cold reads, recovery.
    Storage,
    /// The broker core in-process: publish, deliver, ack; fan-out; RAM per ready message.
    Core,
    /// Streams in-process: produce per durability policy and partition count, consume from
    /// the earliest offset, idempotent production.
    Stream,
    /// The gossip simulator: node-rounds per second and peak memory per node at 1,000 to
    /// 100,000 nodes.
    Sim,
    /// AMQP 0-9-1 over sockets with lapin, beside RabbitMQ: confirms, transient, fan-out, RPC.
    Amqp,
    /// The native API over sockets with tonic: put one at a time and pipelined, notify,
    /// publish/subscribe; a five-clause filter's cost in process.
    Grpc,
    /// The running server beside RabbitMQ: start time and idle memory, memory per idle AMQP
    /// connection and per queue, management API page latency over many queues.
    Server,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => server::run(args),
        Command::Bench(args) => bench(&args, cli.target.json()),
        Command::Sim(args) => sim::run(&args, cli.target.json()),
        Command::Publish(args) => clients::publish(&args, cli.target.user(), cli.target.password()),
        Command::Consume(args) => clients::consume(
            &args,
            cli.target.user(),
            cli.target.password(),
            cli.target.json(),
        ),
        Command::Admin(noun) => admin::run(&cli.target, noun),
    }
}

fn bench(args: &BenchArgs, json: bool) -> ExitCode {
    let size = if args.quick {
        postino_bench::storage::Size::Quick
    } else {
        postino_bench::storage::Size::Full
    };
    let (name, columns) = match args.target {
        BenchTarget::Storage => ("storage", postino_bench::storage::columns()),
        BenchTarget::Core => ("core", postino_bench::broker::columns()),
        BenchTarget::Stream => ("stream", postino_bench::stream::columns()),
        BenchTarget::Sim => ("sim", postino_bench::sim::columns()),
        BenchTarget::Amqp => ("amqp", postino_bench::amqp::columns()),
        BenchTarget::Grpc => ("grpc", postino_bench::grpc::columns()),
        BenchTarget::Server => ("server", postino_bench::server::columns()),
    };
    let mut printer = postino_bench::Printer::new(json, columns);
    let child = std::env::var_os(postino_bench::sim::CHILD_TABLE).is_some();
    if !json && !child {
        let load =
            postino_bench::load_average().map_or("unknown".to_owned(), |load| format!("{load:.2}"));
        println!(
            "{name} benchmark in {} (load average {load})",
            args.dir.display()
        );
    }
    let outcome = match args.target {
        BenchTarget::Storage => {
            postino_bench::storage::run(&args.dir, size, &args.filter, &mut printer)
        }
        BenchTarget::Core => {
            postino_bench::broker::run(&args.dir, size, &args.filter, &mut printer)
        }
        BenchTarget::Stream => {
            postino_bench::stream::run(&args.dir, size, &args.filter, &mut printer)
        }
        BenchTarget::Sim => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| postino_bench::sim::run(&exe, size, &args.filter, &mut printer)),
        BenchTarget::Amqp => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|postino_binary| {
                let targets = postino_bench::amqp::Targets {
                    uri: args.uri.clone(),
                    postino_binary,
                    peer_uri: args.peer_uri.clone(),
                };
                postino_bench::amqp::run(&args.dir, &targets, size, &args.filter, &mut printer)
            }),
        BenchTarget::Grpc => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|binary| {
                postino_bench::grpc::run(&args.dir, &binary, size, &args.filter, &mut printer)
            }),
        BenchTarget::Server => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|binary| {
                postino_bench::server::run(
                    &binary,
                    &args.dir,
                    &args.peer_uri,
                    &args.peer_http,
                    size,
                    &args.filter,
                    &mut printer,
                )
            }),
    };
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("postino bench {name}: {error:#}");
            ExitCode::from(1)
        }
    }
}
