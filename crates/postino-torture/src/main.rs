//! `postino-torture`: proves that the broker keeps its promises across crashes. For each cycle
//! it starts the real `postino` binary on one data directory, runs publishers with confirms,
//! consumers with acks and a transactional consumer over AMQP and the native API on durable
//! queues and a stream, and kills the server with SIGKILL at a random moment (tiny segments
//! make rolls frequent, so kills land during appends, fsyncs and rolls). After the last cycle
//! it drains every queue and reads the stream, then checks, from its own record of what the
//! clients saw: every confirmed publish was delivered or is still there; nothing a committed
//! transaction settled came back; first deliveries keep per-publisher FIFO order; every
//! confirmed stream record is at its offset; no body is corrupt. A seed reproduces a run's
//! timing. Exit status 1 on any violation.

mod backlog;
mod body;
mod disk;
mod faults;
mod ledger;
mod raw;
mod server;
mod storm;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ledger::Ledger;
use crate::server::{Addresses, Server};

#[derive(Debug, Parser)]
#[command(
    name = "postino-torture",
    about = "Crash the broker and check nothing is lost"
)]
struct Args {
    /// The `postino` binary to torture.
    #[arg(long)]
    binary: PathBuf,
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 5)]
    cycles: u32,
    /// The seed of the kill times (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// The shortest and longest time clients run before the kill, in ms.
    #[arg(long, default_value_t = 200)]
    min_ms: u64,
    #[arg(long, default_value_t = 1500)]
    max_ms: u64,
    /// After the cycles, a connection storm of this many connections (0: none): greetings,
    /// garbage and half-open sockets against both ports; the broker must still serve and its
    /// memory come back near its baseline.
    #[arg(long, default_value_t = 0)]
    storm: usize,
    /// After the storm, this many connections held open at once (0: none): opened AMQP
    /// connections, silent sockets, HTTP/2 connections; the broker must serve meanwhile, drop
    /// the silent ones after its handshake timeout, and give the memory back.
    #[arg(long, default_value_t = 0)]
    storm_hold: usize,
    /// After the cycles, the disk-full test on a tmpfs of this many MiB (0: none; needs root
    /// to mount it): publishers blocked by the free-space alarm, then refused on a full file
    /// system, resuming each time space is freed, and nothing confirmed lost.
    #[arg(long, default_value_t = 0)]
    disk_full: u64,
    /// After the cycles, storage faults under the running broker (a failed fsync, short
    /// writes, bit flips on read) on one queue while the others run.
    #[arg(long)]
    faults: bool,
    /// After the cycles, a backlog of this many messages in one queue under consumers that
    /// never read (0: none); the broker's memory must stay bounded.
    #[arg(long, default_value_t = 0)]
    backlog: u64,
    /// Body size of every message.
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    /// Where the run's data directory, server log and report go (default: a temporary
    /// directory, kept when a violation is found).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("postino-torture: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Bytes in MiB, for the report.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Whether the server still served after a stage, for the report.
fn serving(alive: &Result<()>) -> String {
    match alive {
        Ok(()) => "still serving".to_owned(),
        Err(error) => format!("NOT SERVING: {error:#}"),
    }
}

/// Lets this process, and the server it starts, open as many files as the hard limit allows:
/// the held storm keeps thousands of sockets open on both sides.
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        eprintln!("postino-torture: could not raise the open-file limit: {error}");
    }
}

/// Runs the cycles and the checks; answers the number of violations.
fn run(args: &Args) -> Result<u64> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    raise_open_files();
    let scratch = tempfile::Builder::new()
        .prefix("postino-torture-")
        .tempdir()?;
    let run_dir = args
        .dir
        .clone()
        .unwrap_or_else(|| scratch.path().to_owned());
    std::fs::create_dir_all(&run_dir)?;
    eprintln!(
        "postino-torture: seed {seed}, {} cycles, run directory {}",
        args.cycles,
        run_dir.display()
    );
    // Segments of 64 KiB roll every few hundred messages: kills land in rolls too.
    let environment = vec![(
        "POSTINO_STORAGE_SEGMENT_BYTES_MAX".to_owned(),
        "65536".to_owned(),
    )];
    let mut server = Server::new(&args.binary, &run_dir, environment, Addresses::free()?);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    workload::lock(&ledger).retained(workload::RETAINED);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let began = Instant::now();
    for cycle in 0..args.cycles {
        server
            .start()
            .with_context(|| format!("start for cycle {cycle}"))?;
        let addresses = server.addresses.clone();
        runtime.block_on(workload::declare(&addresses))?;
        let tasks = runtime.block_on(async {
            workload::spawn(&addresses, &ledger, cycle * 16, args.message_bytes)
        });
        let run_ms = rng.random_range(args.min_ms..=args.max_ms.max(args.min_ms));
        std::thread::sleep(Duration::from_millis(run_ms));
        server.kill()?;
        runtime.block_on(async {
            for task in tasks {
                // A client blocked on a dead socket is abandoned after a while.
                if tokio::time::timeout(Duration::from_secs(10), task)
                    .await
                    .is_err()
                {
                    eprintln!("postino-torture: a client did not notice the kill in 10 s");
                }
            }
        });
        eprintln!("cycle {cycle}: killed after {run_ms} ms");
    }
    server.start().context("start for the final drain")?;
    let addresses = server.addresses.clone();
    runtime.block_on(workload::declare(&addresses))?;
    let read = runtime.block_on(workload::drain(&addresses, &ledger))?;
    let mut storm_violations = 0;
    if args.storm > 0 {
        let pid = server.pid().context("the server's pid")?;
        let storm = runtime.block_on(storm::run(&addresses, pid, args.storm))?;
        let alive = runtime.block_on(workload::round_trip(&addresses));
        println!(
            "postino-torture: storm of {} connections in {:.1} s: server RSS {:.1} MiB before, {:.1} MiB at the peak, {:.1} MiB after; {}",
            storm.connections,
            storm.seconds,
            mib(storm.baseline_rss),
            mib(storm.peak_rss),
            mib(storm.settled_rss),
            serving(&alive)
        );
        storm_violations = u64::from(!storm.settled()) + u64::from(alive.is_err());
    }
    if args.storm_hold > 0 {
        let pid = server.pid().context("the server's pid")?;
        let held = runtime.block_on(storm::hold(
            &addresses,
            pid,
            args.storm_hold,
            workload::round_trip(&addresses),
        ))?;
        let alive = runtime.block_on(workload::round_trip(&addresses));
        println!(
            "postino-torture: {} connections held at once: {} of {} AMQP connections opened, {} of {} silent sockets dropped by the server, {} while held; server RSS {:.1} MiB before, {:.1} MiB at the peak, {:.1} MiB after; {}",
            held.connections,
            held.amqp_opened,
            held.amqp_tried,
            held.silent_dropped,
            held.silent,
            if held.served_while_held {
                "served"
            } else {
                "NOT SERVED"
            },
            mib(held.baseline_rss),
            mib(held.peak_rss),
            mib(held.settled_rss),
            serving(&alive)
        );
        storm_violations += held.violations() + u64::from(alive.is_err());
    }
    server.stop().context("the final clean stop")?;
    let report = workload::lock(&ledger).report(&read);
    let mut violations = report.violations() + storm_violations;
    println!(
        "postino-torture: seed {seed}, {} cycles in {:.1} s: {report}",
        args.cycles,
        began.elapsed().as_secs_f64()
    );
    if args.backlog > 0 {
        let backlog = backlog::run(
            &args.binary,
            &run_dir,
            &runtime,
            args.backlog,
            args.message_bytes,
        )
        .context("the backlog test")?;
        println!(
            "postino-torture: backlog of {} messages (filled in {:.1} s) under three consumers that never read: server RSS {:.1} MiB empty, {:.1} MiB filled, {:.1} MiB at the peak, {:.1} MiB after; another queue's round trips {:.0}/s before, {:.0}/s during; {} messages back in the queue",
            backlog.messages,
            backlog.fill_seconds,
            mib(backlog.rss_empty),
            mib(backlog.rss_filled),
            mib(backlog.rss_peak),
            mib(backlog.rss_after),
            backlog.probe_before,
            backlog.probe_during,
            backlog.ready_after
        );
        violations += backlog.violations();
    }
    if args.disk_full > 0 {
        let disk = disk::run(
            &args.binary,
            &run_dir,
            &runtime,
            args.disk_full,
            args.message_bytes,
        )
        .context("the disk-full test")?;
        println!(
            "postino-torture: disk full on a {} MiB tmpfs: {} confirmations in the second after publishers were blocked, {} publishes refused while full; {}",
            disk.mib, disk.confirmed_while_blocked, disk.refused_while_full, disk.checks
        );
        violations += disk.checks.violations();
    }
    if args.faults {
        let faults = faults::run(&args.binary, &run_dir, &runtime, args.message_bytes)
            .context("the storage-fault test")?;
        for phase in &faults.writes {
            println!(
                "postino-torture: {} under one queue and one stream: {} publishes refused and {} produces failed, the other queues confirmed {} meanwhile, {}; recovered after a restart",
                phase.fault,
                phase.refused,
                phase.stream_failed,
                phase.others_confirmed,
                if phase.reported {
                    "reported in the server log"
                } else {
                    "NOT REPORTED in the server log"
                }
            );
            violations += u64::from(!phase.reported);
        }
        println!(
            "postino-torture: flip_reads under one queue: {} deliveries while its reads were corrupt, the witness queue delivered {} meanwhile, {} after the flips stopped; {}",
            faults.read.delivered_while_flipped,
            faults.read.others_delivered,
            faults.read.delivered_after,
            faults.checks
        );
        println!(
            "postino-torture: the faulty stream confirmed {} records, {} not at their offset at the end",
            faults.stream_confirmed, faults.stream_missing
        );
        violations += faults.checks.violations() + faults.stream_missing;
    }
    let verdict = if violations == 0 { "PASS" } else { "FAIL" };
    println!("postino-torture: {verdict} ({violations} violations)");
    if violations > 0 && args.dir.is_none() {
        eprintln!("postino-torture: run kept in {}", scratch.keep().display());
    }
    Ok(violations)
}
