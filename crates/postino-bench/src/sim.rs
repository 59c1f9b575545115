//! `postino bench sim`: the gossip simulator's own speed. For every scenario's table — rumor
//! mongering (k = 1..7, in synchronous rounds and with event-driven delivery), anti-entropy
//! (three modes), aggregation (four functions), broadcast (flooding and blind counter),
//! pbcast, death certificates and peer sampling — one run per row at 1,000, 10,000 and (full
//! run) 100,000 nodes: the wall time of the table, simulated node-rounds per second (nodes ×
//! the rounds each row reports or, where a row reports none, the rounds it runs at least), and
//! peak memory per simulated node. Each table
//! runs in a child process of its own (this binary, `POSTINO_BENCH_SIM_TABLE` naming the
//! table), so that the growth of its peak resident memory (`VmHWM`) is that table's alone.

use std::time::Instant;

use anyhow::{Context, Result};
use postino_gossip::aggregate::Function;
use postino_gossip::anti_entropy::Mode;
use postino_gossip::broadcast::Protocol;
use postino_gossip::rumor::Variant;
use postino_sim::{Delivery, Model, Overlay};

use crate::storage::Size;
use crate::{Printer, Row};

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario",
        "nodes",
        "seconds",
        "node_rounds_per_s",
        "peak_bytes_per_node",
    ]
}

/// The process's peak resident memory so far (`VmHWM`).
fn peak_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let kilobytes: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .context("parse VmHWM")?;
    Ok(kilobytes * 1024)
}

/// The rounds a row reports, summed over the rows.
fn rounds(rows: &[postino_sim::Row], field: &str) -> f64 {
    rows.iter()
        .filter_map(|row| row.get(field).and_then(serde_json::Value::as_f64))
        .sum()
}

/// The environment variable that makes this binary a child running one table.
pub const CHILD_TABLE: &str = "POSTINO_BENCH_SIM_TABLE";

/// Runs the simulator scenarios whose label contains `filter`, each in a child process of
/// `exe` (this binary); in such a child (`CHILD_TABLE` set), runs that one table in-process.
///
/// # Errors
/// A simulator parameter error, a child that fails, or `/proc` unreadable.
pub fn run(
    exe: &std::path::Path,
    size: Size,
    filter: &str,
    printer: &mut Printer,
) -> Result<Vec<Row>> {
    if let Ok(label) = std::env::var(CHILD_TABLE) {
        let row = measure(&label)?;
        println!("{}", row.to_json());
        return Ok(vec![row]);
    }
    let sizes: &[usize] = match size {
        Size::Quick => &[1_000, 10_000],
        Size::Full => &[1_000, 10_000, 100_000],
    };
    let mut rows = Vec::new();
    for name in [
        "rumor",
        "rumor-events",
        "anti-entropy",
        "aggregate",
        "broadcast",
        "pbcast",
        "death-certificates",
        "sampling",
    ] {
        for nodes in sizes {
            let label = format!("{name}/{nodes}");
            if !label.contains(filter) {
                continue;
            }
            let output = std::process::Command::new(exe)
                .args(["bench", "sim"])
                .env(CHILD_TABLE, &label)
                .output()
                .with_context(|| format!("run the {label} table"))?;
            anyhow::ensure!(
                output.status.success(),
                "the {label} table failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let text = String::from_utf8_lossy(&output.stdout);
            let line = text
                .lines()
                .find(|line| line.starts_with('{'))
                .with_context(|| format!("the {label} table printed no row"))?;
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).context("a row")?;
            let row = fields
                .into_iter()
                .fold(Row::default(), |row, (name, value)| row.with(&name, value));
            printer.print(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Runs the table `label` (`scenario/nodes`) and measures it.
fn measure(label: &str) -> Result<Row> {
    let (name, nodes) = label.split_once('/').context("a label scenario/nodes")?;
    let nodes: usize = nodes.parse().context("a number of nodes")?;
    let peak_before = peak_bytes()?;
    let started = Instant::now();
    // Each table and the rounds it simulated per node, summed over its rows.
    let rounds_per_node = match name {
        "rumor" => {
            let rows = postino_sim::rumor::table(
                Variant::FeedbackCoin,
                1..=7,
                nodes,
                &Model::COMPLETE,
                1,
                1,
            )?;
            rounds(&rows, "t_last")
        }
        "rumor-events" => {
            let events = Model {
                delivery: Delivery::Events,
                ..Model::COMPLETE
            };
            let rows =
                postino_sim::rumor::table(Variant::FeedbackCoin, 1..=7, nodes, &events, 1, 1)?;
            rounds(&rows, "t_last")
        }
        "anti-entropy" => {
            let rows = postino_sim::anti_entropy::table(&Mode::ALL, nodes, &Model::COMPLETE, 1, 1)?;
            rounds(&rows, "rounds_mean")
        }
        "aggregate" => {
            let rows =
                postino_sim::aggregate::table(&Function::ALL, nodes, 1e-3, &Model::COMPLETE, 1, 1)?;
            rounds(&rows, "rounds_mean")
        }
        "broadcast" => {
            let overlay = Model {
                overlay: Overlay::BarabasiAlbert { degree: 6 },
                ..Model::COMPLETE
            };
            let mut rows =
                postino_sim::broadcast::table(Protocol::Flooding, nodes, &overlay, 1, 1)?;
            rows.extend(postino_sim::broadcast::table(
                Protocol::blind_counter(2, 2)?,
                nodes,
                &overlay,
                1,
                1,
            )?);
            rounds(&rows, "time")
        }
        "pbcast" => {
            let params = postino_sim::pbcast::Params {
                nodes,
                fanout: 2,
                rounds: 8,
                repair: true,
            };
            let lossy = Model {
                loss: 0.05,
                crash: 0.2,
                ..Model::COMPLETE
            };
            postino_sim::pbcast::table(params, &lossy, 1, 1)?;
            // Two rows, each gossiping at least the 8 rounds after the first pass.
            2.0 * 8.0
        }
        "death-certificates" => {
            let rows = postino_sim::death::table(nodes, 30, 60, &Model::COMPLETE, 1, 1)?;
            (60 + postino_sim::death::SETTLE_ROUNDS) as f64 * rows.len() as f64
        }
        "sampling" => {
            let half = Model {
                crash: 0.5,
                ..Model::COMPLETE
            };
            postino_sim::sampling::table(nodes, 20, 30, &half, 1, 1)?;
            60.0
        }
        other => anyhow::bail!("no simulator table {other}"),
    };
    let seconds = started.elapsed().as_secs_f64();
    let node_rounds = rounds_per_node * nodes as f64;
    let grown = peak_bytes()?.saturating_sub(peak_before);
    Ok(Row::new(name)
        .with("nodes", nodes)
        .with_rounded("seconds", seconds, 4)
        .with_rounded("node_rounds_per_s", node_rounds / seconds, 0)
        .with_rounded("peak_bytes_per_node", grown as f64 / nodes as f64, 1))
}
