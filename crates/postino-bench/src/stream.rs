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
//! - `group/<size>`: a consumer group of 4 members reads the 8-partition stream: join, range
//!   assignment, fetch from the committed offsets to the end, commit. Ceiling: one reader of
//!   the same stream in the same run; latencies are join-to-assignment times.
//! - `idempotent/<size>`: as `produce/fsync/<size>/1` with a producer id and sequences;
//!   `transactional/<size>`: the same in transactions of 10 batches, each committed (latencies
//!   are whole transactions). Their ratios are to plain production in the same run.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::BytesMut;
use hdrhistogram::Histogram;
use postino_core::group::GroupState;
use postino_core::group::assign::{Strategy, encode_subscription};
use postino_core::stream::{StreamEnqueued, records_of};
use postino_core::{
    Committer, CoreError, FetchSpec, GroupLimits, Join, OffsetCommit, Stream, StreamSpec,
    VirtualHost,
};
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, FileLog, Log, LogConfig, Offset};
use postino_types::{Clock, SystemClock};

use crate::storage::Size;
use crate::{Printer, Row, append_windowed, latency_histogram, process_cpu};

/// Unacknowledged batches per producer.
const IN_FLIGHT: usize = 5;
/// Bytes of records per batch (Kafka's default `batch.size`).
const BATCH_BYTES: usize = 16 << 10;
/// Batches per transaction of the transactional producer.
const TRANSACTION_BATCHES: usize = 10;
/// Members of the consumer group.
const GROUP_MEMBERS: usize = 4;

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

/// One batch of `records` records of `msg_size` bytes, optionally from an idempotent producer
/// (id, epoch, sequence), optionally in its transaction.
fn batch(
    msg_size: usize,
    records: usize,
    producer: Option<(i64, i16, i32)>,
    transactional: bool,
) -> BytesMut {
    let mut builder = match producer {
        Some((id, epoch, sequence)) => BatchBuilder::new().producer(id, epoch, sequence),
        None => BatchBuilder::new(),
    };
    if transactional {
        builder = builder.transactional();
    }
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
                let wanted = [
                    format!("produce/{label}"),
                    format!("consume/{msg_size}/{partitions}"),
                    format!("group/{msg_size}"),
                    format!("idempotent/{msg_size}"),
                    format!("transactional/{msg_size}"),
                ];
                if !wanted.iter().any(|label| label.contains(filter)) {
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
                if durability == Durability::Fsync
                    && partitions == GROUP_MEMBERS as u32 * 2
                    && format!("group/{msg_size}").contains(filter)
                {
                    let consumed = runtime.block_on(consume(&stream))?;
                    let grouped = runtime.block_on(group_consume(&host, &stream))?;
                    let row = grouped
                        .row("group", msg_size, partitions)
                        .with_rounded("ceiling_msgs_per_s", consumed.rate(), 0)
                        .with_rounded("ratio", grouped.rate() / consumed.rate(), 2);
                    emit(row, &mut rows);
                }
                runtime.block_on(host.close()).context("close")?;
                if durability == Durability::Fsync && partitions == 1 {
                    for mode in ["idempotent", "transactional"] {
                        if !format!("{mode}/{msg_size}").contains(filter) {
                            continue;
                        }
                        let dir = scratch.path().join(format!("{mode}-{msg_size}"));
                        let host = self::host(&dir, durability)?;
                        let (stream, _) = host
                            .declare_stream("bench", StreamSpec::with_partitions(1))
                            .context("declare the stream")?;
                        let measured = if mode == "idempotent" {
                            let producer = host.init_producer_id().context("producer id")?;
                            runtime.block_on(produce(&stream, msg_size, count, Some(producer)))?
                        } else {
                            runtime
                                .block_on(produce_transactional(&host, &stream, msg_size, count))?
                        };
                        let row = measured
                            .row(mode, msg_size, 1)
                            .with_rounded("ceiling_msgs_per_s", produced.rate(), 0)
                            .with_rounded("ratio", measured.rate() / produced.rate(), 2);
                        emit(row, &mut rows);
                        runtime.block_on(host.close()).context("close")?;
                    }
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
                let sequence = producer.map(|id| (id, 0, (index * per_batch) as i32));
                let bytes = batch(msg_size, per_batch, sequence, false);
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

/// Produces `count` records to partition 0 as a transactional producer: transactions of
/// `TRANSACTION_BATCHES` batches, each committed once its batches are durable.
async fn produce_transactional(
    host: &Arc<VirtualHost>,
    stream: &Arc<Stream>,
    msg_size: usize,
    count: usize,
) -> Result<Measured> {
    let per_batch = records_per_batch(msg_size);
    let batches = count.div_ceil(per_batch);
    let (id, epoch) = host.init_transactions("bench", 60_000).await?;
    let handle = stream.partition(0)?;
    let partitions = [(stream.name().to_owned(), 0)];
    let mut latencies = latency_histogram()?;
    let cpu = process_cpu();
    let started = Instant::now();
    let mut window: VecDeque<StreamEnqueued> = VecDeque::with_capacity(IN_FLIGHT);
    for transaction in 0..batches.div_ceil(TRANSACTION_BATCHES) {
        let begun = Instant::now();
        host.add_partitions_to_transaction("bench", id, epoch, &partitions)
            .await?;
        let first = transaction * TRANSACTION_BATCHES;
        for index in first..(first + TRANSACTION_BATCHES).min(batches) {
            let sequence = (index * per_batch) as i32;
            let bytes = batch(msg_size, per_batch, Some((id, epoch, sequence)), true);
            window.push_back(handle.enqueue(bytes).await?);
            if window.len() >= IN_FLIGHT {
                window
                    .pop_front()
                    .expect("full window")
                    .appended()
                    .await?
                    .durable
                    .await?;
            }
        }
        for enqueued in window.drain(..) {
            enqueued.appended().await?.durable.await?;
        }
        host.end_transaction("bench", id, epoch, true).await?;
        latencies.record(begun.elapsed().as_micros() as u64)?;
    }
    let records = (batches * per_batch) as u64;
    Ok(Measured {
        records,
        bytes: records * msg_size as u64,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: (process_cpu() - cpu).as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}

/// `GROUP_MEMBERS` consumers join a group on `stream`, the leader assigns its partitions by
/// range, each reads its partitions from the group's committed offsets (none: the earliest)
/// to the end, commits and leaves. Latencies are the members' join-to-assignment times.
async fn group_consume(host: &Arc<VirtualHost>, stream: &Arc<Stream>) -> Result<Measured> {
    host.groups()
        .set_limits(GroupLimits {
            initial_rebalance_delay_ms: 0,
            ..GroupLimits::default()
        })
        .await?;
    let cpu = process_cpu();
    let started = Instant::now();
    let mut members = Vec::new();
    for _ in 0..GROUP_MEMBERS {
        let host = Arc::clone(host);
        let stream = Arc::clone(stream);
        members.push(tokio::spawn(async move {
            let (member, generation, partitions) = join_group(&host, &stream).await?;
            let assigned = started.elapsed();
            let mut records = 0u64;
            let mut bytes = 0u64;
            let mut commits = Vec::new();
            for partition in partitions {
                let (read, size, at) = read_partition(&stream, partition, None).await?;
                records += read;
                bytes += size;
                commits.push(OffsetCommit {
                    stream: stream.name().to_owned(),
                    partition,
                    offset: at,
                    metadata: String::new(),
                });
            }
            let committer = Committer::Member {
                member_id: member.clone(),
                generation,
            };
            host.groups().commit("bench", committer, commits).await?;
            anyhow::Ok((records, bytes, assigned, member))
        }));
    }
    let mut latencies = latency_histogram()?;
    let (mut records, mut bytes) = (0, 0);
    let mut gone = Vec::new();
    for member in members {
        let (read, size, assigned, id) = member.await.context("member task")??;
        records += read;
        bytes += size;
        latencies.record(assigned.as_micros() as u64)?;
        gone.push(id);
    }
    let seconds = started.elapsed().as_secs_f64();
    host.groups().leave("bench", gone).await?;
    Ok(Measured {
        records,
        bytes,
        seconds,
        cpu_seconds: (process_cpu() - cpu).as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
    })
}

/// Joins the `bench` group until it is stable with every member in one generation; returns
/// the member id, the generation and the partitions assigned.
async fn join_group(host: &VirtualHost, stream: &Stream) -> Result<(String, i32, Vec<u32>)> {
    let groups = host.groups();
    let streams = BTreeSet::from([stream.name().to_owned()]);
    let subscription = encode_subscription(&streams, &BTreeSet::new());
    let mut member_id = None;
    loop {
        let request = Join {
            member_id: member_id.clone(),
            instance_id: None,
            client_id: "bench".to_owned(),
            session_timeout_ms: 30_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".to_owned(),
            protocols: vec![("range".to_owned(), subscription.clone())],
        };
        let joined = groups.join("bench", request).await?;
        member_id = Some(joined.member_id.clone());
        let counts = |name: &str| (name == stream.name()).then(|| stream.partition_count());
        let assignment = match groups
            .sync_assigned("bench", &joined, Strategy::Range, counts)
            .await
        {
            Ok(assignment) => assignment,
            Err(CoreError::Group { .. }) => continue,
            Err(error) => return Err(error.into()),
        };
        // Read only once every member holds its share, so that no partition is read twice.
        while groups
            .heartbeat("bench", &joined.member_id, joined.generation)
            .await
            .is_ok()
        {
            let description = groups
                .describe("bench")
                .await?
                .context("the group exists")?;
            if description.members.len() == GROUP_MEMBERS
                && description.generation == joined.generation
                && description.state == GroupState::Stable
            {
                let partitions = assignment
                    .into_iter()
                    .map(|(_, partition)| partition)
                    .collect();
                return Ok((joined.member_id, joined.generation, partitions));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// Reads `partition` from the earliest offset to the end, decoding records, recording each
/// fetch's latency; returns the records, their value bytes and the offset after the last.
async fn read_partition(
    stream: &Stream,
    partition: u32,
    mut latencies: Option<&mut Histogram<u64>>,
) -> Result<(u64, u64, u64)> {
    let (mut records, mut bytes, mut at) = (0u64, 0u64, 0u64);
    loop {
        let asked = Instant::now();
        let fetched = stream.fetch(partition, FetchSpec::at(at)).await?;
        if let Some(latencies) = latencies.as_mut() {
            latencies.record(asked.elapsed().as_micros() as u64)?;
        }
        let read = records_of(&fetched)?;
        let Some(last) = read.last() else {
            return Ok((records, bytes, at));
        };
        at = last.offset + 1;
        records += read.len() as u64;
        bytes += read
            .iter()
            .map(|record| record.value.as_ref().map_or(0, |value| value.len() as u64))
            .sum::<u64>();
    }
}

/// Reads every partition from the earliest offset, decoding records; fetch latencies.
async fn consume(stream: &Arc<Stream>) -> Result<Measured> {
    let cpu = process_cpu();
    let started = Instant::now();
    let mut latencies = latency_histogram()?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    for partition in 0..stream.partition_count() {
        let (read, size, _) = read_partition(stream, partition, Some(&mut latencies)).await?;
        records += read;
        bytes += size;
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
        let mut bytes = batch(msg_size, per_batch, None, false);
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
