//! `postino bench core`: the broker core in-process, no sockets.
//!
//! - `pipeline`: publish → deliver → ack of 16 B and 1 KB messages through the default exchange
//!   to one queue, durable (persistent messages, `fsync` policy, confirms awaited with up to
//!   `WINDOW` in flight) or transient, with 1 and 4 competing consumers (prefetch 256, acks
//!   coalesced). Ceiling: the same message bytes appended to a bare log of the same kind,
//!   single-threaded, in the same run.
//! - `fanout`: 1 KB persistent messages to a fanout exchange bound to 10 durable queues, one
//!   consumer each.
//! - `backlog`, `backlog_delayed`: RAM per message after publishing a backlog with no
//!   consumer (ready, or delayed by up to an hour: the delay index lives on disk).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use postino_core::{
    Binding, Confirm, ConsumerSpec, Destination, ExchangeKind, ExchangeSpec, Outcome, QueueHandle,
    QueueSpec, VirtualHost,
};
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, FileLog, Log, LogConfig, MemLog, MemStore};
use postino_types::{HeaderValue, Headers, Message, SystemClock};
use tokio::sync::Mutex;

use crate::storage::Size;
use crate::{Printer, Row, age_us, append_windowed, latency_histogram, process_cpu, stamped_body};

/// Publishes awaiting their confirm at once.
const WINDOW: usize = 256;
/// Each consumer's prefetch.
const PREFETCH: u32 = 256;

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario",
        "queue",
        "msg_size",
        "consumers",
        "msgs_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "cpu_us_per_msg",
        "ceiling_msgs_per_s",
        "ratio",
    ]
}

fn messages(size: Size) -> u64 {
    match size {
        Size::Quick => 2_000,
        Size::Full => 200_000,
    }
}

fn backlog(size: Size) -> u64 {
    match size {
        Size::Quick => 20_000,
        Size::Full => 10_000_000,
    }
}

/// Runs the core scenarios whose label contains `filter` in a scratch directory under `parent`.
///
/// # Errors
/// Any core or storage error.
pub fn run(parent: &Path, size: Size, filter: &str, printer: &mut Printer) -> Result<Vec<Row>> {
    let runtime = crate::runtime()?;
    let scratch = crate::scratch_dir(parent, "postino-bench-")?;
    let mut rows = Vec::new();
    for durable in [true, false] {
        for msg_size in [16usize, 1024] {
            for consumers in [1usize, 4] {
                let kind = if durable { "durable" } else { "transient" };
                if format!("pipeline/{kind}/{msg_size}/{consumers}").contains(filter) {
                    let dir = scratch
                        .path()
                        .join(format!("pipeline-{kind}-{msg_size}-{consumers}"));
                    let row = runtime.block_on(pipeline(
                        &dir,
                        durable,
                        msg_size,
                        consumers,
                        messages(size),
                    ))?;
                    printer.print(&row);
                    rows.push(row);
                }
            }
        }
    }
    if "fanout".contains(filter) {
        let row = runtime.block_on(fanout(&scratch.path().join("fanout"), messages(size) / 4))?;
        printer.print(&row);
        rows.push(row);
    }
    for delayed in [false, true] {
        let name = if delayed {
            "backlog_delayed"
        } else {
            "backlog"
        };
        if name.contains(filter) {
            let dir = scratch.path().join(name);
            let row = runtime.block_on(backlog_ram(&dir, backlog(size), delayed))?;
            printer.print(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

fn host(dir: &Path, durable: bool, durability: Durability) -> Result<Arc<VirtualHost>> {
    let config = LogConfig {
        durability,
        ..LogConfig::default()
    };
    let dir = durable.then(|| dir.to_path_buf());
    VirtualHost::open("/", dir, config, Arc::new(SystemClock)).context("open the virtual host")
}

/// A message whose first 8 bytes are the nanoseconds since `epoch` at publish.
fn stamped(epoch: Instant, msg_size: usize, persistent: bool) -> Message {
    let message = Message::new(stamped_body(epoch, msg_size));
    if persistent {
        message.persistent()
    } else {
        message
    }
}

/// Consumes until the queue's consumer is cancelled, acking in batches, recording latencies.
async fn consume(
    queue: QueueHandle,
    consumer: u64,
    epoch: Instant,
    acked: Arc<AtomicU64>,
    latencies: Arc<Mutex<Histogram<u64>>>,
) -> Result<()> {
    let spec = ConsumerSpec {
        prefetch_count: PREFETCH,
        ..ConsumerSpec::default()
    };
    let mut deliveries = queue.consume(consumer, spec).await.context("consume")?;
    let mut local = latency_histogram()?;
    while let Some(first) = deliveries.recv().await {
        let mut batch = vec![first];
        while batch.len() < PREFETCH as usize {
            match deliveries.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let now = epoch.elapsed().as_nanos() as u64;
        for delivery in &batch {
            local.saturating_record(age_us(&delivery.message.body, now));
        }
        let ids: Vec<u64> = batch.iter().map(|delivery| delivery.id).collect();
        let count = ids.len() as u64;
        queue.settle(ids, Outcome::Accept).await.context("ack")?;
        acked.fetch_add(count, Ordering::SeqCst);
    }
    latencies
        .lock()
        .await
        .add(&local)
        .context("merge latencies")?;
    Ok(())
}

/// What a flow publishes.
#[derive(Debug, Clone, Copy)]
struct Load {
    count: u64,
    msg_size: usize,
    persistent: bool,
}

struct Flow {
    elapsed: Duration,
    cpu: Duration,
    latencies: Histogram<u64>,
}

/// Publishes `count` messages to `exchange` while `queues` are consumed, until all are acked.
async fn flow(
    host: &VirtualHost,
    exchange: &str,
    routing_key: &str,
    queues: &[QueueHandle],
    consumers_per_queue: usize,
    load: Load,
) -> Result<Flow> {
    let Load {
        count,
        msg_size,
        persistent,
    } = load;
    let epoch = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(latency_histogram()?));
    let mut tasks = Vec::new();
    let mut next_consumer = 0;
    for queue in queues {
        for _ in 0..consumers_per_queue {
            next_consumer += 1;
            tasks.push(tokio::spawn(consume(
                queue.clone(),
                next_consumer,
                epoch,
                Arc::clone(&acked),
                Arc::clone(&latencies),
            )));
        }
    }
    let expected = count * queues.len() as u64;
    let cpu_before = process_cpu();
    let started = Instant::now();
    let mut pending: VecDeque<Confirm> = VecDeque::with_capacity(WINDOW);
    for _ in 0..count {
        let message = stamped(epoch, msg_size, persistent);
        let (_, confirm) = host
            .publish_pipelined(exchange, routing_key, message)
            .await
            .context("publish")?;
        pending.push_back(confirm);
        if pending.len() >= WINDOW {
            pending
                .pop_front()
                .expect("full window")
                .wait()
                .await
                .context("confirm")?;
        }
    }
    for confirm in pending {
        confirm.wait().await.context("confirm")?;
    }
    while acked.load(Ordering::SeqCst) < expected {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu() - cpu_before;
    let mut consumer = 0;
    for queue in queues {
        for _ in 0..consumers_per_queue {
            consumer += 1;
            queue.cancel(consumer).await.context("cancel")?;
        }
    }
    for task in tasks {
        task.await.context("consumer task")??;
    }
    let latencies = latencies.lock().await.clone();
    Ok(Flow {
        elapsed,
        cpu,
        latencies,
    })
}

async fn pipeline(
    dir: &Path,
    durable: bool,
    msg_size: usize,
    consumers: usize,
    count: u64,
) -> Result<Row> {
    let host = host(dir, durable, Durability::Fsync)?;
    let spec = if durable {
        QueueSpec::durable()
    } else {
        QueueSpec::transient()
    };
    let (queue, _) = host.declare_queue("bench", spec).context("declare")?;
    let load = Load {
        count,
        msg_size,
        persistent: durable,
    };
    let result = flow(&host, "", "bench", &[queue], consumers, load).await?;
    host.close().await.context("close")?;
    let ceiling = log_ceiling(dir, durable, msg_size, count)?;
    let rate = count as f64 / result.elapsed.as_secs_f64();
    Ok(Row::new("pipeline")
        .with("queue", if durable { "durable" } else { "transient" })
        .with("msg_size", msg_size)
        .with("consumers", consumers)
        .with_rounded("msgs_per_s", rate, 0)
        .with("p50_us", result.latencies.value_at_quantile(0.5))
        .with("p99_us", result.latencies.value_at_quantile(0.99))
        .with("p999_us", result.latencies.value_at_quantile(0.999))
        .with_rounded(
            "cpu_us_per_msg",
            result.cpu.as_secs_f64() * 1e6 / count as f64,
            3,
        )
        .with_rounded("ceiling_msgs_per_s", ceiling, 0)
        .with_rounded("ratio", rate / ceiling, 2))
}

/// Appends of one message per batch to a bare log (file with `fsync`, or memory), with the
/// same window of tickets: what storage alone allows.
fn log_ceiling(dir: &Path, durable: bool, msg_size: usize, count: u64) -> Result<f64> {
    let mut builder = BatchBuilder::new();
    builder.push(
        0,
        None,
        Some(&vec![b'p'; msg_size.max(8)]),
        &[(b"postino.delivery-mode", Some(b"2"))],
    );
    let mut batch = builder.build();
    if durable {
        let mut log = FileLog::open(dir.join("ceiling"), LogConfig::default()).context("open")?;
        append_window(&mut log, &mut batch, count)
    } else {
        let clock = Arc::new(SystemClock);
        let mut log =
            MemLog::open(&MemStore::new(), LogConfig::default(), clock).context("open")?;
        append_window(&mut log, &mut batch, count)
    }
}

/// Appends `batch` `count` times keeping `WINDOW` tickets in flight; appends per second.
fn append_window(log: &mut impl Log, batch: &mut [u8], count: u64) -> Result<f64> {
    let elapsed = append_windowed(count, WINDOW, || {
        Ok(log.append(batch).context("append")?.durable)
    })?;
    Ok(count as f64 / elapsed.as_secs_f64())
}

async fn fanout(dir: &Path, count: u64) -> Result<Row> {
    let host = host(dir, true, Durability::Fsync)?;
    host.declare_exchange("wide", ExchangeSpec::new(ExchangeKind::Fanout))
        .context("declare")?;
    let mut queues = Vec::new();
    for index in 0..10 {
        let name = format!("fan-{index}");
        let (queue, _) = host
            .declare_queue(&name, QueueSpec::durable())
            .context("declare")?;
        host.bind(Binding {
            source: "wide".to_owned(),
            destination: Destination::Queue(name),
            key: String::new(),
            arguments: Headers::new(),
        })
        .context("bind")?;
        queues.push(queue);
    }
    let load = Load {
        count,
        msg_size: 1024,
        persistent: true,
    };
    let result = flow(&host, "wide", "", &queues, 1, load).await?;
    host.close().await.context("close")?;
    let deliveries = count * 10;
    Ok(Row::new("fanout")
        .with("queue", "durable x10")
        .with("msg_size", 1024)
        .with("consumers", 10)
        .with_rounded("msgs_per_s", count as f64 / result.elapsed.as_secs_f64(), 0)
        .with_rounded(
            "deliveries_per_s",
            deliveries as f64 / result.elapsed.as_secs_f64(),
            0,
        )
        .with("p50_us", result.latencies.value_at_quantile(0.5))
        .with("p99_us", result.latencies.value_at_quantile(0.99))
        .with("p999_us", result.latencies.value_at_quantile(0.999))
        .with_rounded(
            "cpu_us_per_msg",
            result.cpu.as_secs_f64() * 1e6 / deliveries as f64,
            3,
        ))
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("read /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .context("parse /proc/self/statm")?;
    Ok(pages * 4096)
}

/// Publishes `count` messages nobody consumes (with `x-delay`s spread over an hour when
/// `delayed`) and measures the memory they cost.
async fn backlog_ram(dir: &Path, count: u64, delayed: bool) -> Result<Row> {
    let host = host(dir, true, Durability::None)?;
    let (queue, _) = host
        .declare_queue("backlog", QueueSpec::durable())
        .context("declare")?;
    let before = rss_bytes()?;
    let started = Instant::now();
    let epoch = Instant::now();
    let mut pending: VecDeque<Confirm> = VecDeque::with_capacity(WINDOW);
    for index in 0..count {
        let mut message = stamped(epoch, 16, true);
        if delayed {
            let delay = 60_000 + (index * 7_919) % 3_600_000;
            message = message.with_header("x-delay", HeaderValue::Int(delay as i64));
        }
        let (_, confirm) = host
            .publish_pipelined("", "backlog", message)
            .await
            .context("publish")?;
        pending.push_back(confirm);
        if pending.len() >= WINDOW {
            pending
                .pop_front()
                .expect("full window")
                .wait()
                .await
                .context("confirm")?;
        }
    }
    for confirm in pending {
        confirm.wait().await.context("confirm")?;
    }
    let stats = queue.stats().await.context("stats")?;
    let after = rss_bytes()?;
    let elapsed = started.elapsed();
    host.close().await.context("close")?;
    let held = stats.ready + stats.delayed;
    Ok(Row::new(if delayed {
        "backlog_delayed"
    } else {
        "backlog"
    })
    .with("queue", "durable")
    .with("msg_size", 16)
    .with("ready", stats.ready)
    .with("delayed", stats.delayed)
    .with_rounded("msgs_per_s", count as f64 / elapsed.as_secs_f64(), 0)
    .with_rounded(
        "ram_bytes_per_msg",
        after.saturating_sub(before) as f64 / held.max(1) as f64,
        2,
    ))
}
