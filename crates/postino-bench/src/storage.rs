//! `postino bench storage`: the log's append, read and recovery speed next to the raw ceiling
//! of the same disk, measured in the same run and the same directory.
//!
//! - `append`: records of 100 B, 1 KB and 16 KB in batches of 1, 16 and 256, under each
//!   durability policy, with up to `WINDOW` appends awaiting durability (a pipelining client).
//!   Ceiling: the same batch bytes written with plain `write(2)` to a file in the same directory,
//!   with one `fdatasync` every as many writes as the log needed per sync.
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
use bytes::Bytes;
use hdrhistogram::Histogram;
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, FileLog, Log, LogConfig, Offset};

use crate::{Printer, Row, process_cpu};

/// Appends awaiting durability at once.
const WINDOW: usize = 128;

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
            Size::Full => Duration::from_secs(3),
        }
    }

    fn read_bytes(self) -> u64 {
        match self {
            Size::Quick => 8 << 20,
            Size::Full => 256 << 20,
        }
    }

    fn recover_bytes(self) -> u64 {
        match self {
            Size::Quick => 8 << 20,
            Size::Full => 1 << 30,
        }
    }
}

/// Runs every storage scenario in a fresh directory under `parent`, printing rows as they come.
///
/// # Errors
/// Any storage or file-system error.
pub fn run(parent: &Path, size: Size, printer: &mut Printer) -> Result<Vec<Row>> {
    let scratch = tempfile::Builder::new()
        .prefix("postino-bench-")
        .tempdir_in(parent)
        .with_context(|| format!("create a scratch directory in {}", parent.display()))?;
    let mut rows = Vec::new();
    let policies = [
        Durability::None,
        Durability::Interval(Duration::from_millis(100)),
        Durability::Fsync,
    ];
    for durability in policies {
        for msg_size in [100usize, 1024, 16 * 1024] {
            for batch in [1usize, 16, 256] {
                let row = append(scratch.path(), durability, msg_size, batch, size)?;
                printer.print(&row);
                rows.push(row);
            }
        }
    }
    let row = read_cold(scratch.path(), size)?;
    printer.print(&row);
    rows.push(row);
    let row = recover_cold(scratch.path(), size)?;
    printer.print(&row);
    rows.push(row);
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

fn sample_batch(msg_size: usize, count: usize) -> Bytes {
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
    let bytes = sample_batch(msg_size, batch);
    let appends_max = (size.append_bytes() / bytes.len() as u64).max(1);
    let mut log = FileLog::open(&dir, config).context("open the log")?;
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram")?;
    let mut pending = VecDeque::with_capacity(WINDOW);
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut appends = 0u64;
    while appends < appends_max && started.elapsed() < size.append_time() {
        let at = Instant::now();
        let appended = log.append(&bytes).context("append")?;
        pending.push_back((at, appended.durable));
        appends += 1;
        while pending.len() >= WINDOW
            || pending
                .front()
                .is_some_and(|(_, durable)| durable.is_durable().unwrap_or(true))
        {
            let (at, durable) = pending.pop_front().expect("non-empty");
            durable.wait().context("durability")?;
            latencies.saturating_record(at.elapsed().as_micros() as u64);
        }
    }
    for (at, durable) in pending.drain(..) {
        durable.wait().context("durability")?;
        latencies.saturating_record(at.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu() - cpu_before;
    let syncs = log.syncs();
    log.close().context("close")?;
    fs::remove_dir_all(&dir).context("remove the log")?;

    let writes_per_sync = match durability {
        Durability::None => None,
        Durability::Interval(_) | Durability::Fsync => Some((appends / syncs.max(1)).max(1)),
    };
    let ceiling = raw_append(parent, &bytes, appends, writes_per_sync)?;
    let messages = appends * batch as u64;
    let seconds = elapsed.as_secs_f64();
    let mb_per_s = (appends * bytes.len() as u64) as f64 / seconds / 1e6;
    let ceiling_mb_per_s = (appends * bytes.len() as u64) as f64 / ceiling.as_secs_f64() / 1e6;
    Ok(Row::new("append")
        .with("durability", durability.to_string())
        .with("msg_size", msg_size)
        .with("batch", batch)
        .with_rounded("msgs_per_s", messages as f64 / seconds, 0)
        .with_rounded("mb_per_s", mb_per_s, 1)
        .with("p50_us", latencies.value_at_quantile(0.5))
        .with("p99_us", latencies.value_at_quantile(0.99))
        .with("p999_us", latencies.value_at_quantile(0.999))
        .with_rounded(
            "cpu_us_per_msg",
            cpu.as_secs_f64() * 1e6 / messages as f64,
            3,
        )
        .with("syncs", syncs)
        .with_rounded("ceiling_mb_per_s", ceiling_mb_per_s, 1)
        .with_rounded("ratio", mb_per_s / ceiling_mb_per_s, 2))
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
    let bytes = sample_batch(1024, 16);
    let config = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    let mut log = FileLog::open(dir, config).context("open the log")?;
    while log.size_bytes() < total {
        log.append(&bytes).context("append")?;
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
    let ceiling = raw_read(&files)?;
    let log = FileLog::open(&dir, LogConfig::default()).context("open the log")?;
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
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu_before;
    log.close().context("close")?;
    fs::remove_dir_all(&dir).context("remove the log")?;
    let mb_per_s = total as f64 / elapsed / 1e6;
    let ceiling_mb_per_s = total as f64 / ceiling.as_secs_f64() / 1e6;
    Ok(Row::new("read_cold")
        .with("msg_size", 1024)
        .with("batch", 16)
        .with("log_bytes", total)
        .with_rounded("msgs_per_s", messages as f64 / elapsed, 0)
        .with_rounded("mb_per_s", mb_per_s, 1)
        .with_rounded(
            "cpu_us_per_msg",
            cpu.as_secs_f64() * 1e6 / messages.max(1) as f64,
            3,
        )
        .with_rounded("ceiling_mb_per_s", ceiling_mb_per_s, 1)
        .with_rounded("ratio", mb_per_s / ceiling_mb_per_s, 2))
}

fn recover_cold(parent: &Path, size: Size) -> Result<Row> {
    let dir = fresh_dir(parent, "recover")?;
    let total = fill(&dir, size.recover_bytes())?;
    let files = segment_files(&dir)?;
    let scanned: u64 = files
        .last()
        .map(|path| fs::metadata(path).map(|meta| meta.len()))
        .transpose()
        .context("stat")?
        .unwrap_or(0);
    let ceiling = raw_read(&files[files.len().saturating_sub(1)..])?;
    drop_cache(&files)?;
    let started = Instant::now();
    let log = FileLog::open(&dir, LogConfig::default()).context("open the log")?;
    let elapsed = started.elapsed();
    let segments = log.segment_count();
    log.close().context("close")?;
    fs::remove_dir_all(&dir).context("remove the log")?;
    Ok(Row::new("recover_cold")
        .with("log_bytes", total)
        .with("segments", segments)
        .with("scanned_bytes", scanned)
        .with_rounded("seconds", elapsed.as_secs_f64(), 3)
        .with_rounded("mb_per_s", scanned as f64 / elapsed.as_secs_f64() / 1e6, 1)
        .with_rounded("ceiling_seconds", ceiling.as_secs_f64(), 3)
        .with_rounded("ratio", ceiling.as_secs_f64() / elapsed.as_secs_f64(), 2))
}
