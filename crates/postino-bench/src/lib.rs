//! Benchmarks of postino, run by `postino bench <target>`: each prints a human table, or with
//! `--json` one JSON object per scenario, and always sets postino's figure beside a reference
//! measured in the same run (a raw-file ceiling, or the established broker of a protocol).
//!
//! Benchmarks report; they never assert on time.

pub mod amqp;
pub mod broker;
pub mod grpc;
mod grpc_embedded;
pub mod server;
pub mod sim;
pub mod storage;
pub mod stream;

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{Map, Value};

/// One row of a benchmark report: named figures in insertion order.
#[derive(Debug, Clone, Default)]
pub struct Row {
    fields: Map<String, Value>,
}

impl Row {
    /// A row for `scenario`.
    #[must_use]
    pub fn new(scenario: &str) -> Self {
        let mut row = Self::default();
        row.fields
            .insert("scenario".to_owned(), Value::from(scenario));
        row
    }

    /// Adds a figure.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    /// Adds a floating-point figure rounded to `decimals` places.
    #[must_use]
    pub fn with_rounded(self, name: &str, value: f64, decimals: i32) -> Self {
        let scale = 10f64.powi(decimals);
        self.with(name, (value * scale).round() / scale)
    }

    /// The row as one line of JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }

    /// The value of a field, as the table shows it.
    #[must_use]
    pub fn cell(&self, name: &str) -> String {
        match self.fields.get(name) {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => "-".to_owned(),
        }
    }
}

/// Prints rows as they are measured: JSON lines, or a table whose header is printed once.
#[derive(Debug)]
pub struct Printer {
    json: bool,
    columns: Vec<&'static str>,
    printed_header: bool,
}

impl Printer {
    /// A printer for tables with `columns` (ignored in JSON mode, which prints every field).
    #[must_use]
    pub fn new(json: bool, columns: Vec<&'static str>) -> Self {
        Self {
            json,
            columns,
            printed_header: false,
        }
    }

    /// Prints one row.
    pub fn print(&mut self, row: &Row) {
        if self.json {
            println!("{}", row.to_json());
            return;
        }
        if !self.printed_header {
            let header: Vec<String> = self
                .columns
                .iter()
                .map(|column| format!("{column:>16}"))
                .collect();
            println!("{}", header.join(" "));
            self.printed_header = true;
        }
        let cells: Vec<String> = self
            .columns
            .iter()
            .map(|column| format!("{:>16}", row.cell(column)))
            .collect();
        println!("{}", cells.join(" "));
    }
}

/// A scratch directory under `parent` (removed when dropped), named `prefix…`.
///
/// # Errors
/// When it cannot be created.
pub fn scratch_dir(parent: &std::path::Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .with_context(|| format!("create a scratch directory in {}", parent.display()))
}

/// The runtime benchmarks run on: two workers, as this machine has two cores.
///
/// # Errors
/// When it cannot start.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")
}

/// Runs `start` `count` times, each starting an append and returning its ticket, keeping at
/// most `window` tickets unresolved (waiting for the oldest first): how a pipelining producer
/// drives a bare log. Returns the elapsed time.
///
/// # Errors
/// The first error of `start` or of a ticket.
pub fn append_windowed(
    count: u64,
    window: usize,
    mut start: impl FnMut() -> anyhow::Result<postino_storage::Durable>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for _ in 0..count {
        pending.push_back(start()?);
        if pending.len() >= window {
            pending
                .pop_front()
                .expect("full window")
                .wait()
                .context("durable")?;
        }
    }
    for ticket in pending {
        ticket.wait().context("durable")?;
    }
    Ok(started.elapsed())
}

/// A latency histogram in microseconds, from 1 µs to 10 minutes, 3 significant digits.
///
/// # Errors
/// None in practice: the bounds are valid.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

/// A body of `msg_size` bytes (at least 8) whose first 8 are the nanoseconds since `epoch`.
#[must_use]
pub fn stamped_body(epoch: Instant, msg_size: usize) -> Vec<u8> {
    let mut body = vec![b'p'; msg_size.max(8)];
    let nanos = epoch.elapsed().as_nanos() as u64;
    body[..8].copy_from_slice(&nanos.to_be_bytes());
    body
}

/// Microseconds from the stamp at the start of `body` (see [`stamped_body`]) to `now_ns`
/// (nanoseconds since the same epoch).
#[must_use]
pub fn age_us(body: &[u8], now_ns: u64) -> u64 {
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&body[..8]);
    now_ns.saturating_sub(u64::from_be_bytes(sent)) / 1_000
}

/// CPU time this process has used so far.
#[must_use]
pub fn process_cpu() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(now.tv_sec.unsigned_abs(), now.tv_nsec as u32)
}

/// The 1-minute load average, to print beside figures from a shared machine.
#[must_use]
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_fields_in_order() {
        let row = Row::new("append")
            .with("msg_size", 100)
            .with_rounded("ratio", 0.98765, 2);
        assert_eq!(
            row.to_json(),
            r#"{"scenario":"append","msg_size":100,"ratio":0.99}"#
        );
        assert_eq!(row.cell("missing"), "-");
        assert_eq!(row.cell("scenario"), "append");
    }

    #[test]
    fn a_stamped_body_tells_its_age() {
        let epoch = Instant::now();
        let body = stamped_body(epoch, 16);
        assert_eq!(body.len(), 16);
        let sent = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
        assert_eq!(age_us(&body, sent + 2_500_000), 2_500);
        assert_eq!(age_us(&body, 0), 0, "a clock read before the stamp gives 0");
        assert_eq!(stamped_body(epoch, 3).len(), 8, "room for the stamp");
    }
}
