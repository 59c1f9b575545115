//! `postino bench storage`: the log's append, read and recovery speed next to the raw ceiling
//! of the same disk, measured in the same run and the same directory.
//!
//! - `append`: records of 100 B, 1 KB and 16 KB in batches of 1, 16 and 256, under each
//!   durability policy, with up to `WINDOW` appends awaiting durability (a pipelining client).
//!   Ceiling: the same batch bytes written with plain `write(2)` to a file in the same directory,
//!   with one `fdatasync` every as many writes as the log needed per sync.
//! - Each scenario runs `repeats` times alternating with its ceiling (A B A B …), with a
//!   `sync(2)` before each run; the medians are reported.
//! - `read_cold`: the whole log read from offset 0 after dropping it from the page cache.
//!   Ceiling: the segment files read sequentially with `read(2)` after dropping the cache.
//! - `recover_cold`: opening a log (the last segment is scanned and CRC-checked) after dropping
//!   it from the cache. Ceiling: reading the files scanned.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, FileLog, Log, LogConfig, Offset};

use crate::{Printer, Row, latency_histogram, process_cpu};

/// Appends awaiting durability at once.
const WINDOW: usize = 128;
/// One append in this many has its latency measured, so that reading the clock does not weigh
/// on the figures of small appends.
const LATENCY_SAMPLE: u64 = 8;
/// The run's time limit is checked every this many appends.
const CLOCK_EVERY: u64 = 64;

/// How much work each scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Seconds in all: a smoke run for CI and for checking the benchmark itself.
    Quick,
    /// Minutes in all: the figures to report.
    Full,
}

impl Size {
    fn append_bytes(self) -> u64 {
        match self {
            Size::Quick => 2 << 20,
            Size::Full => 256 << 20,
        }
    }

    fn append_time(self) -> Duration {
        match self {
            Size::Quick => Duration::from_millis(200),
            Size::Full => Duration::from_secs(2),
        }
    }

    fn read_bytes(self) -> u64 {
        match self {
            Size::Quick => 8 << 20,
            Size::Full => 256 << 20,
        }
    }

    /// Runs of each scenario, alternating with its ceiling; medians are reported.
    fn repeats(self) -> usize {
        match self {
            Size::Quick => 1,
            Size::Full => 3,
        }
    }

    fn recover_bytes(self) -> u64 {
        match self {
            Size::Quick => 8 << 20,
            Size::Full => 1 << 30,
        }
    }
}

/// Runs the storage scenarios whose label contains `filter` (all when empty) in a fresh
/// directory under `parent`, printing rows as they come. Labels: `append/POLICY/SIZE/BATCH`
/// (e.g. `append/fsync/1024/16`), `read_cold`, `recover_cold`.
///
/// # Errors
/// Any storage or file-system error.
pub fn run(parent: &Path, size: Size, filter: &str, printer: &mut Printer) -> Result<Vec<Row>> {
    let scratch = crate::scratch_dir(parent, "postino-bench-")?;
    let mut rows = Vec::new();
    let mut emit = |row: Row| {
        printer.print(&row);
        rows.push(row);
    };
    let policies = [
        Durability::None,
        Durability::Interval(Duration::from_millis(100)),
        Durability::Fsync,
    ];
    for durability in policies {
        for msg_size in [100usize, 1024, 16 * 1024] {
            for batch in [1usize, 16, 256] {
                if format!("append/{durability}/{msg_size}/{batch}").contains(filter) {
                    emit(append(scratch.path(), durability, msg_size, batch, size)?);
                }
            }
        }
    }
    if "read_cold".contains(filter) {
        emit(read_cold(scratch.path(), size)?);
    }
    if "recover_cold".contains(filter) {
        emit(recover_cold(scratch.path(), size)?);
    }
    Ok(rows)
}

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario",
        "durability",
        "msg_size",
        "batch",
        "msgs_per_s",
        "mb_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "cpu_us_per_msg",
        "ceiling_mb_per_s",
        "ratio",
    ]
}

fn sample_batch(msg_size: usize, count: usize) -> BytesMut {
    let value = vec![b'p'; msg_size];
    let mut builder = BatchBuilder::new();
    for _ in 0..count {
        builder.push(1_700_000_000_000, None, Some(&value), &[]);
    }
    builder.build()
}

fn fresh_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(dir)
}

/// One timed run of appends to a fresh log.
struct AppendRun {
    appends: u64,
    elapsed: Duration,
    cpu: Duration,
    syncs: u64,
}

fn append_once(
    dir: &Path,
    config: &LogConfig,
    bytes: &mut [u8],
    size: Size,
    latencies: &mut Histogram<u64>,
) -> Result<AppendRun> {
    let appends_max = (size.append_bytes() / bytes.len() as u64).max(1);
    let mut log = FileLog::open(dir, config.clone()).context("open the log")?;
    let mut pending = VecDeque::with_capacity(WINDOW);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut appends = 0u64;
    let record = |latencies: &mut Histogram<u64>, at: Option<Instant>| {
        if let Some(at) = at {
            latencies.saturating_record(at.elapsed().as_micros() as u64);
        }
    };
    while appends < appends_max
        && (!appends.is_multiple_of(CLOCK_EVERY) || started.elapsed() < size.append_time())
    {
        let at = appends.is_multiple_of(LATENCY_SAMPLE).then(Instant::now);
        let appended = log.append(bytes).context("append")?;
        pending.push_back((at, appended.durable));
        appends += 1;
        while pending.len() >= WINDOW
            || pending
                .front()
                .is_some_and(|(_, durable)| durable.is_durable().unwrap_or(true))
        {
            let (at, durable) = pending.pop_front().expect("non-empty");
            durable.wait().context("durability")?;
            record(latencies, at);
        }
    }
    for (at, durable) in pending.drain(..) {
        durable.wait().context("durability")?;
        record(latencies, at);
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu() - cpu_before;
    let syncs = log.syncs();
    log.close().context("close")?;
    fs::remove_dir_all(dir).context("remove the log")?;
    Ok(AppendRun {
        appends,
        elapsed,
        cpu,
        syncs,
    })
}

/// The middle value (the upper middle for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn append(
    parent: &Path,
    durability: Durability,
    msg_size: usize,
    batch: usize,
    size: Size,
) -> Result<Row> {
    let dir = fresh_dir(parent, "append")?;
    let config = LogConfig {
        durability,
        ..LogConfig::default()
    };
    let mut bytes = sample_batch(msg_size, batch);
    let mut latencies = latency_histogram()?;
    let (mut log_rates, mut ceiling_rates, mut cpu_per_msg, mut syncs) =
        (vec![], vec![], vec![], 0);
    // Log and ceiling alternate (A B A B …) with dirty pages flushed before each run, so that
    // neither inherits the other's writeback.
    for _ in 0..size.repeats() {
        rustix::fs::sync();
        let run = append_once(&dir, &config, &mut bytes, size, &mut latencies)?;
        let written = (run.appends * bytes.len() as u64) as f64;
        log_rates.push(written / run.elapsed.as_secs_f64());
        cpu_per_msg.push(run.cpu.as_secs_f64() * 1e6 / (run.appends * batch as u64) as f64);
        syncs = run.syncs;
        let writes_per_sync = match durability {
            Durability::None => None,
            Durability::Interval(_) | Durability::Fsync => {
                Some((run.appends / run.syncs.max(1)).max(1))
            }
        };
        rustix::fs::sync();
        let ceiling = raw_append(parent, &bytes, run.appends, writes_per_sync)?;
        ceiling_rates.push(written / ceiling.as_secs_f64());
    }
    let bytes_per_s = median(log_rates);
    let ceiling_bytes_per_s = median(ceiling_rates);
    let messages_per_s = bytes_per_s / bytes.len() as f64 * batch as f64;
    Ok(Row::new("append")
        .with("durability", durability.to_string())
        .with("msg_size", msg_size)
        .with("batch", batch)
        .with_rounded("msgs_per_s", messages_per_s, 0)
        .with_rounded("mb_per_s", bytes_per_s / 1e6, 1)
        .with("p50_us", latencies.value_at_quantile(0.5))
        .with("p99_us", latencies.value_at_quantile(0.99))
        .with("p999_us", latencies.value_at_quantile(0.999))
        .with_rounded("cpu_us_per_msg", median(cpu_per_msg), 3)
        .with("syncs_last_run", syncs)
        .with_rounded("ceiling_mb_per_s", ceiling_bytes_per_s / 1e6, 1)
        .with_rounded("ratio", bytes_per_s / ceiling_bytes_per_s, 2))
}

/// Writes `bytes` `count` times with `write(2)`, syncing every `writes_per_sync` writes.
fn raw_append(
    parent: &Path,
    bytes: &[u8],
    count: u64,
    writes_per_sync: Option<u64>,
) -> Result<Duration> {
    let path = parent.join("raw-ceiling");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .context("open the ceiling file")?;
    let started = Instant::now();
    for written in 1..=count {
        file.write_all(bytes).context("write")?;
        if writes_per_sync.is_some_and(|every| written % every == 0 || written == count) {
            file.sync_data().context("sync")?;
        }
    }
    let elapsed = started.elapsed();
    drop(file);
    fs::remove_file(&path).context("remove the ceiling file")?;
    Ok(elapsed)
}

/// Writes a log of about `total` bytes of 1 KB records, 16 to a batch, and closes it.
fn fill(dir: &Path, total: u64) -> Result<u64> {
    let mut bytes = sample_batch(1024, 16);
    let config = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    let mut log = FileLog::open(dir, config).context("open the log")?;
    while log.size_bytes() < total {
        log.append(&mut bytes).context("append")?;
    }
    let size = log.size_bytes();
    log.close().context("close")?;
    Ok(size)
}

fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .context("list")?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .context("list")?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "log"));
    files.sort();
    Ok(files)
}

fn drop_cache(files: &[PathBuf]) -> Result<()> {
    for path in files {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        file.sync_all().context("sync")?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).context("fadvise")?;
    }
    Ok(())
}

fn raw_read(files: &[PathBuf]) -> Result<Duration> {
    drop_cache(files)?;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    for path in files {
        let mut file = File::open(path).context("open")?;
        while file.read(&mut buf).context("read")? > 0 {}
    }
    Ok(started.elapsed())
}

fn read_cold(parent: &Path, size: Size) -> Result<Row> {
    let dir = fresh_dir(parent, "read")?;
    let total = fill(&dir, size.read_bytes())?;
    let files = segment_files(&dir)?;
    let log = FileLog::open(&dir, LogConfig::default()).context("open the log")?;
    let (mut rates, mut ceiling_rates, mut cpu_per_msg) = (vec![], vec![], vec![]);
    for _ in 0..size.repeats() {
        ceiling_rates.push(total as f64 / raw_read(&files)?.as_secs_f64());
        drop_cache(&files)?;
        let cpu_before = process_cpu();
        let started = Instant::now();
        let mut from = Offset(0);
        let mut messages = 0u64;
        while from < log.next_offset() {
            let batches = log.read(from, 1 << 20).context("read")?;
            for batch in &batches {
                messages += batch.header().record_count as u64;
            }
            from = Offset(
                batches
                    .last()
                    .map_or(from.0, |batch| batch.last_offset() + 1),
            );
        }
        rates.push(total as f64 / started.elapsed().as_secs_f64());
        cpu_per_msg.push((process_cpu() - cpu_before).as_secs_f64() * 1e6 / messages.max(1) as f64);
    }
    log.close().context("close")?;
    fs::remove_dir_all(&dir).context("remove the log")?;
    let (rate, ceiling_rate) = (median(rates), median(ceiling_rates));
    Ok(Row::new("read_cold")
        .with("msg_size", 1024)
        .with("batch", 16)
        .with("log_bytes", total)
        .with_rounded("msgs_per_s", rate / (1024.0 + 20.0), 0)
        .with_rounded("mb_per_s", rate / 1e6, 1)
        .with_rounded("cpu_us_per_msg", median(cpu_per_msg), 3)
        .with_rounded("ceiling_mb_per_s", ceiling_rate / 1e6, 1)
        .with_rounded("ratio", rate / ceiling_rate, 2))
}

fn recover_cold(parent: &Path, size: Size) -> Result<Row> {
    let dir = fresh_dir(parent, "recover")?;
    // Just short of a whole number of segments: the last segment, which recovery scans whole,
    // is nearly full — the worst case.
    let total = fill(&dir, size.recover_bytes() - (1 << 20))?;
    let files = segment_files(&dir)?;
    let scanned = fs::metadata(files.last().context("a segment")?)
        .context("stat")?
        .len();
    let (mut seconds, mut ceiling_seconds, mut segments) = (vec![], vec![], 0);
    for _ in 0..size.repeats() {
        // The ceiling reads what recovery must read: the last segment whole.
        ceiling_seconds.push(raw_read(&files[files.len() - 1..])?.as_secs_f64());
        drop_cache(&files)?;
        let started = Instant::now();
        let log = FileLog::open(&dir, LogConfig::default()).context("open the log")?;
        seconds.push(started.elapsed().as_secs_f64());
        segments = log.segment_count();
        log.close().context("close")?;
    }
    fs::remove_dir_all(&dir).context("remove the log")?;
    let (seconds, ceiling_seconds) = (median(seconds), median(ceiling_seconds));
    Ok(Row::new("recover_cold")
        .with("log_bytes", total)
        .with("segments", segments)
        .with("scanned_bytes", scanned)
        .with_rounded("seconds", seconds, 3)
        .with_rounded("mb_per_s", scanned as f64 / seconds / 1e6, 1)
        .with_rounded("ceiling_seconds", ceiling_seconds, 3)
        .with_rounded(
            "ceiling_mb_per_s",
            scanned as f64 / ceiling_seconds / 1e6,
            1,
        )
        .with_rounded("ratio", ceiling_seconds / seconds, 2))
}
