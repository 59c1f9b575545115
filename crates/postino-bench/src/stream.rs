//! `postino bench stream`: streams in-process, no sockets.
//!
//! - `produce/<durability>/<size>/<partitions>`: records of 100 B and 1 KB in batches of about
//!   16 KiB (Kafka's default `batch.size`), one producer task per partition keeping
//!   `IN_FLIGHT` batches unacknowledged and pipelined to the partition's owner (each batch
//!   built as a client builds it) (Kafka's `max.in.flight.requests.per.connection`),
//!   a batch acknowledged once durable. Ceiling: the same batches appended to one bare log with
//!   the same policy and window, in the same run.
//! - `consume/<size>/<partitions>`: every record of the produced stream read from the
//!   earliest offset with 1 MiB fetches, records decoded. Ceiling: the bare log read back.
//! - `idempotent/<size>`: as `produce/fsync/<size>/1` with a producer id and sequences; the
//!   ratio is to plain production in the same run.
//!
//! Consumer groups and transactional production are not measured yet: they do not exist yet.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::BytesMut;
use postino_core::stream::{StreamEnqueued, records_of};
use postino_core::{FetchSpec, Stream, StreamSpec, VirtualHost};
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, FileLog, Log, LogConfig, Offset};
use postino_types::{Clock, SystemClock};

use crate::storage::Size;
use crate::{Printer, Row, append_windowed, latency_histogram, process_cpu};

/// Unacknowledged batches per producer.
const IN_FLIGHT: usize = 5;
/// Bytes of records per batch (Kafka's default `batch.size`).
const BATCH_BYTES: usize = 16 << 10;

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario",
        "msg_size",
        "partitions",
        "msgs_per_s",
        "mb_per_s",
        "p50_us",
        "p99_us",
        "cpu_us_per_msg",
        "ceiling_msgs_per_s",
        "ratio",
    ]
}

fn total_bytes(size: Size) -> usize {
    match size {
        Size::Quick => 2 << 20,
        Size::Full => 256 << 20,
    }
}

fn records_per_batch(msg_size: usize) -> usize {
    (BATCH_BYTES / msg_size).max(1)
}

/// One batch of `records` records of `msg_size` bytes, optionally from an idempotent producer.
fn batch(msg_size: usize, records: usize, producer: Option<(i64, i32)>) -> BytesMut {
    let mut builder = match producer {
        Some((id, sequence)) => BatchBuilder::new().producer(id, 0, sequence),
        None => BatchBuilder::new(),
    };
    let value = vec![b's'; msg_size];
    let now_ms = SystemClock.now_ms();
    for _ in 0..records {
        builder.push(now_ms, None, Some(&value), &[]);
    }
    builder.build()
}

/// Runs the stream scenarios whose label contains `filter` in a scratch directory under
/// `parent`.
///
/// # Errors
/// Any core or storage error.
pub fn run(parent: &Path, size: Size, filter: &str, printer: &mut Printer) -> Result<Vec<Row>> {
    let runtime = crate::runtime()?;
    // Opening a host starts its tasks on this runtime.
    let _entered = runtime.enter();
    let scratch = crate::scratch_dir(parent, "postino-bench-")?;
    let mut rows = Vec::new();
    let mut emit = |row: Row, rows: &mut Vec<Row>| {
        printer.print(&row);
        rows.push(row);
    };
    for durability in [Durability::Fsync, Durability::None] {
        for msg_size in [100usize, 1024] {
            let count = total_bytes(size) / msg_size;
            let ceiling =
                log_ceiling(&scratch.path().join("ceiling"), durability, msg_size, count)?;
            for partitions in [1u32, 8] {
                let label = format!("{durability}/{msg_size}/{partitions}");
                if !format!("produce/{label}").contains(filter)
                    && !format!("consume/{msg_size}/{partitions}").contains(filter)
                {
                    continue;
                }
                let dir = scratch.path().join(label.replace('/', "-"));
                let host = host(&dir, durability)?;
                let (stream, _) = host
                    .declare_stream("bench", StreamSpec::with_partitions(partitions))
                    .context("declare the stream")?;
                let produced = runtime.block_on(produce(&stream, msg_size, count, None))?;
                if format!("produce/{label}").contains(filter) {
                    let row = produced
                        .row(&format!("produce/{durability}"), msg_size, partitions)
                        .with_rounded("ceiling_msgs_per_s", ceiling.append_rate, 0)
                        .with_rounded("ratio", produced.rate() / ceiling.append_rate, 2);
                    emit(row, &mut rows);
                }
                if durability == Durability::Fsync
                    && format!("consume/{msg_size}/{partitions}").contains(filter)
                {
                    let consumed = runtime.block_on(consume(&stream))?;
                    let row = consumed
                        .row("consume", msg_size, partitions)
                        .with_rounded("ceiling_msgs_per_s", ceiling.read_rate, 0)
                        .with_rounded("ratio", consumed.rate() / ceiling.read_rate, 2);
                    emit(row, &mut rows);
                }
                runtime.block_on(host.close()).context("close")?;
                if durability == Durability::Fsync
                    && partitions == 1
                    && format!("idempotent/{msg_size}").contains(filter)
                {
                    let dir = scratch.path().join(format!("idempotent-{msg_size}"));
                    let host = self::host(&dir, durability)?;
                    let (stream, _) = host
                        .declare_stream("bench", StreamSpec::with_partitions(1))
                        .context("declare the stream")?;
                    let producer = host.init_producer_id().context("producer id")?;
                    let idempotent =
                        runtime.block_on(produce(&stream, msg_size, count, Some(producer)))?;
                    let row = idempotent
                        .row("idempotent", msg_size, 1)
                        .with_rounded("ceiling_msgs_per_s", produced.rate(), 0)
                        .with_rounded("ratio", idempotent.rate() / produced.rate(), 2);
                    emit(row, &mut rows);
                    runtime.block_on(host.close()).context("close")?;
                }
            }
        }
    }
    Ok(rows)
}

fn host(dir: &Path, durability: Durability) -> Result<Arc<VirtualHost>> {
    let config = LogConfig {
        durability,
        ..LogConfig::default()
    };
    VirtualHost::open("/", Some(dir.to_path_buf()), config, Arc::new(SystemClock))
        .context("open the virtual host")
}

/// What a run measured.
struct Measured {
    records: u64,
    bytes: u64,
    seconds: f64,
    cpu_seconds: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }

    fn row(&self, scenario: &str, msg_size: usize, partitions: u32) -> Row {
        Row::new(scenario)
            .with("msg_size", msg_size)
            .with("partitions", partitions)
            .with_rounded("msgs_per_s", self.rate(), 0)
            .with_rounded("mb_per_s", self.bytes as f64 / self.seconds / 1e6, 1)
            .with("p50_us", self.p50_us)
            .with("p99_us", self.p99_us)
            .with_rounded(
                "cpu_us_per_msg",
                self.cpu_seconds * 1e6 / self.records as f64,
                3,
            )
    }
}

/// Produces `count` records to every partition's share, one producer task per partition.
async fn produce(
    stream: &Arc<Stream>,
    msg_size: usize,
    count: usize,
    producer: Option<i64>,
) -> Result<Measured> {
    let partitions = stream.partition_count();
    let per_batch = records_per_batch(msg_size);
    let batches_per_partition = count.div_ceil(per_batch).div_ceil(partitions as usize);
    let cpu = process_cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for partition in 0..partitions {
        let stream = Arc::clone(stream);
        tasks.push(tokio::spawn(async move {
            let handle = stream.partition(partition)?;
            let mut latencies = latency_histogram()?;
            let mut window: VecDeque<(Instant, StreamEnqueued)> =
                VecDeque::with_capacity(IN_FLIGHT);
            for index in 0..batches_per_partition {
                // Each batch is built, as a client builds each one it sends.
                let sequence = producer.map(|id| (id, (index * per_batch) as i32));
                let bytes = batch(msg_size, per_batch, sequence);
                let sent = Instant::now();
                window.push_back((sent, handle.enqueue(bytes).await?));
                if window.len() >= IN_FLIGHT {
                    let (sent, enqueued) = window.pop_front().expect("full window");
                    enqueued.appended().await?.durable.await?;
                    latencies.record(sent.elapsed().as_micros() as u64)?;
                }
            }
            for (sent, enqueued) in window {
                enqueued.appended().await?.durable.await?;
                latencies.record(sent.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = latency_histogram()?;
    for task in tasks {
        latencies.add(task.await.context("producer task")??)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let records = (batches_per_partition * per_batch * partitions as usize) as u64;
    Ok(Measured {
        records,
        bytes: records * msg_size as u64,
        seconds,
        cpu_seconds: (process_cpu() - cpu).as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}

/// Reads every partition from the earliest offset, decoding records; fetch latencies.
async fn consume(stream: &Arc<Stream>) -> Result<Measured> {
    let cpu = process_cpu();
    let started = Instant::now();
    let mut latencies = latency_histogram()?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    for partition in 0..stream.partition_count() {
        let mut at = 0;
        loop {
            let asked = Instant::now();
            let fetched = stream.fetch(partition, FetchSpec::at(at)).await?;
            latencies.record(asked.elapsed().as_micros() as u64)?;
            let read = records_of(&fetched)?;
            let Some(last) = read.last() else { break };
            at = last.offset + 1;
            records += read.len() as u64;
            bytes += read
                .iter()
                .map(|record| record.value.as_ref().map_or(0, |value| value.len() as u64))
                .sum::<u64>();
        }
    }
    Ok(Measured {
        records,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: (process_cpu() - cpu).as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}

struct Ceiling {
    append_rate: f64,
    read_rate: f64,
}

/// The same batches, built the same way, appended to one bare log with the same policy and window, then read back
/// and decoded: records per second for each.
fn log_ceiling(
    dir: &Path,
    durability: Durability,
    msg_size: usize,
    count: usize,
) -> Result<Ceiling> {
    let _ = std::fs::remove_dir_all(dir);
    let config = LogConfig {
        durability,
        ..LogConfig::default()
    };
    let mut log = FileLog::open(dir, config).context("open the ceiling log")?;
    let per_batch = records_per_batch(msg_size);
    let batches = count.div_ceil(per_batch);
    let elapsed = append_windowed(batches as u64, IN_FLIGHT, || {
        let mut bytes = batch(msg_size, per_batch, None);
        Ok(log.append(&mut bytes).context("append")?.durable)
    })?;
    let records = (batches * per_batch) as f64;
    let append_rate = records / elapsed.as_secs_f64();
    let started = Instant::now();
    let mut at = 0;
    let mut read = 0usize;
    while at < log.next_offset().0 {
        let fetched = log.read(Offset(at), 1 << 20).context("read")?;
        for stored in &fetched {
            read += stored.records().context("decode")?.len();
            at = stored.last_offset() + 1;
        }
    }
    let read_rate = read as f64 / started.elapsed().as_secs_f64();
    log.close().context("close")?;
    Ok(Ceiling {
        append_rate,
        read_rate,
    })
}
