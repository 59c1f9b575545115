//! `postino bench amqp`: postino and RabbitMQ over real sockets, driven by the same third-party
//! client (lapin) in the same run.
//!
//! - `confirms`: persistent messages to a durable queue, publisher confirms with up to `WINDOW`
//!   in flight, one consumer with manual acks and prefetch `PREFETCH`.
//! - `transient`: non-persistent messages to a non-durable queue, fire-and-forget (no
//!   confirms), one consumer with automatic acks.
//! - `fanout`: persistent messages with confirms to a fanout exchange bound to 10 durable
//!   queues, one consumer with manual acks each; the figure counts deliveries.
//! - `rpc`: one request at a time to a server that replies to `reply_to`; the figure counts
//!   round trips and the latency is the round trip.
//!
//! Throughput and broker CPU come from an open-loop run (publish as fast as the window
//! allows). Latency, publish → delivery, comes from a second run at a fixed rate both brokers
//! sustain (`Scenario::pace`): in an open-loop run it measures only the backlog the client's
//! publisher builds while its consumer, on the same two cores, falls behind. For `rpc` the
//! latency is the round trip of the one run. Broker CPU is read from
//! `/proc/<pid>/stat` of the broker process: postino is started by the benchmark (the same
//! binary, `server` on a scratch directory); RabbitMQ's is the local `beam.smp`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::storage::Size;
use crate::{Printer, Row, age_us, latency_histogram, stamped_body};

/// Publishes awaiting their confirm at once.
const WINDOW: usize = 256;
/// Each consumer's prefetch.
const PREFETCH: u16 = 256;
/// Queues a fanout exchange feeds.
const FANOUT_QUEUES: usize = 10;

/// Where the two brokers are.
#[derive(Debug, Clone)]
pub struct Targets {
    /// postino's AMQP URI; `None` starts `postino_binary server` on a scratch directory.
    pub uri: Option<String>,
    /// The postino binary to start when `uri` is `None`.
    pub postino_binary: PathBuf,
    /// RabbitMQ's AMQP URI.
    pub peer_uri: String,
}

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario",
        "broker",
        "msg_size",
        "msgs_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "latency_at_msgs_per_s",
        "broker_cpu_s_per_m",
        "ratio",
    ]
}

fn messages(size: Size) -> u64 {
    match size {
        Size::Quick => 2_000,
        Size::Full => 100_000,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Confirms,
    Transient,
    Fanout,
    Rpc,
}

impl Scenario {
    const ALL: [Self; 4] = [Self::Confirms, Self::Transient, Self::Fanout, Self::Rpc];

    fn name(self) -> &'static str {
        match self {
            Self::Confirms => "confirms",
            Self::Transient => "transient",
            Self::Fanout => "fanout",
            Self::Rpc => "rpc",
        }
    }

    /// Messages published: fan-out multiplies them by its queues, RPC is one at a time.
    fn published(self, size: Size) -> u64 {
        match self {
            Self::Confirms | Self::Transient => messages(size),
            Self::Fanout => messages(size) / FANOUT_QUEUES as u64,
            Self::Rpc => messages(size) / 10,
        }
    }

    /// The publishes per second of the latency run, and how many it publishes; `None` for
    /// `rpc`, whose one run is paced by its round trips.
    fn pace(self, size: Size) -> Option<(u64, u64)> {
        let rate = match self {
            Self::Confirms | Self::Transient => 5_000,
            Self::Fanout => 5_000 / FANOUT_QUEUES as u64,
            Self::Rpc => return None,
        };
        let seconds = match size {
            Size::Quick => 1,
            Size::Full => 5,
        };
        Some((rate, rate * seconds))
    }
}

/// One broker under test: its URI and the process whose CPU it spends.
struct Target {
    name: &'static str,
    uri: String,
    pid: Option<u32>,
}

/// What one scenario measured.
struct Measured {
    counted: u64,
    elapsed: Duration,
    latencies: Histogram<u64>,
    /// The deliveries per second of the fixed-rate run the latencies come from, if any.
    latency_rate: Option<f64>,
    broker_cpu: Option<Duration>,
}

/// Runs the AMQP scenarios whose label contains `filter`; postino's scratch data goes under
/// `parent`.
///
/// # Errors
/// A broker that cannot be started or reached, or a protocol error during a scenario.
pub fn run(
    parent: &Path,
    targets: &Targets,
    size: Size,
    filter: &str,
    printer: &mut Printer,
) -> Result<Vec<Row>> {
    let runtime = crate::runtime()?;
    let scratch = crate::scratch_dir(parent, "postino-bench-amqp-")?;
    let mut server = None;
    let postino = match &targets.uri {
        Some(uri) => Target {
            name: "postino",
            uri: uri.clone(),
            pid: None,
        },
        None => {
            let started =
                crate::server::start(&targets.postino_binary, scratch.path(), false, false)?;
            let target = Target {
                name: "postino",
                uri: format!("amqp://guest:guest@{}/%2f", started.amqp),
                pid: Some(started.child.id()),
            };
            server = Some(started);
            target
        }
    };
    let peer = Target {
        name: "rabbitmq",
        uri: targets.peer_uri.clone(),
        pid: find_process("beam.smp"),
    };
    let peer_up = runtime.block_on(connect(&peer.uri)).is_ok();
    if !peer_up {
        eprintln!(
            "RabbitMQ is not reachable at {}: its rows are left out (start it with \
             shared/tools/start-peers.sh)",
            peer.uri
        );
    }
    let mut rows = Vec::new();
    for scenario in Scenario::ALL {
        for msg_size in [16usize, 1024] {
            if !format!("{}/{msg_size}", scenario.name()).contains(filter) {
                continue;
            }
            let count = scenario.published(size);
            let pace = scenario.pace(size);
            let reference = if peer_up {
                let measured =
                    runtime.block_on(measure_both(&peer, scenario, msg_size, count, pace))?;
                let row = row(scenario, &peer, msg_size, &measured);
                printer.print(&row);
                rows.push(row);
                Some(measured.rate())
            } else {
                None
            };
            let measured =
                runtime.block_on(measure_both(&postino, scenario, msg_size, count, pace))?;
            let mut row = row(scenario, &postino, msg_size, &measured);
            if let Some(reference) = reference {
                row = row.with_rounded("ratio", measured.rate() / reference, 2);
            }
            printer.print(&row);
            rows.push(row);
        }
    }
    drop(server);
    Ok(rows)
}

impl Measured {
    fn rate(&self) -> f64 {
        self.counted as f64 / self.elapsed.as_secs_f64()
    }
}

/// The open-loop run, then (with `pace`) the fixed-rate run whose latencies replace its own.
async fn measure_both(
    target: &Target,
    scenario: Scenario,
    msg_size: usize,
    count: u64,
    pace: Option<(u64, u64)>,
) -> Result<Measured> {
    let mut measured = measure(target, scenario, msg_size, count, None).await?;
    if let Some((rate, paced_count)) = pace {
        let paced = measure(target, scenario, msg_size, paced_count, Some(rate)).await?;
        measured.latency_rate = Some(paced.rate());
        measured.latencies = paced.latencies;
    }
    Ok(measured)
}

fn row(scenario: Scenario, target: &Target, msg_size: usize, measured: &Measured) -> Row {
    let percentile = |quantile: f64| measured.latencies.value_at_quantile(quantile);
    let mut row = Row::new(scenario.name())
        .with("broker", target.name)
        .with("msg_size", msg_size)
        .with("messages", measured.counted)
        .with_rounded("msgs_per_s", measured.rate(), 0)
        .with("p50_us", percentile(0.5))
        .with("p99_us", percentile(0.99))
        .with("p999_us", percentile(0.999));
    if let Some(rate) = measured.latency_rate {
        row = row.with_rounded("latency_at_msgs_per_s", rate, 0);
    }
    if let Some(cpu) = measured.broker_cpu {
        let per_million = cpu.as_secs_f64() * 1e6 / measured.counted as f64;
        row = row.with_rounded("broker_cpu_s_per_m", per_million, 1);
    }
    row
}

/// The pid of the first process whose command name is `name`.
pub(crate) fn find_process(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

/// CPU time (user + system) process `pid` has used so far.
pub(crate) fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    Some(Duration::from_secs_f64(
        (user + system) as f64 / ticks as f64,
    ))
}

async fn connect(uri: &str) -> Result<Connection> {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to {uri}"))
}

/// Runs one scenario against `target`, each side on its own connection; with `pace`, the
/// publisher sends that many messages per second.
async fn measure(
    target: &Target,
    scenario: Scenario,
    msg_size: usize,
    count: u64,
    pace: Option<u64>,
) -> Result<Measured> {
    let publisher = connect(&target.uri).await?;
    let consumer = connect(&target.uri).await?;
    let setup = publisher.create_channel().await?;
    let queues = declare(&setup, scenario, msg_size).await?;
    let cpu_before = target.pid.and_then(cpu_of);
    let started = Instant::now();
    let (counted, latencies) = match scenario {
        Scenario::Rpc => rpc(&publisher, &consumer, &queues[0], msg_size, count).await?,
        _ => {
            let publishing = Publishing {
                scenario,
                msg_size,
                count,
                pace,
            };
            pipeline(&publisher, &consumer, &queues, &publishing).await?
        }
    };
    let elapsed = started.elapsed();
    let broker_cpu = target
        .pid
        .and_then(cpu_of)
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    for queue in &queues {
        setup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("delete {queue}"))?;
    }
    if scenario == Scenario::Fanout {
        setup
            .exchange_delete(fanout_exchange().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    close_channel(&setup).await?;
    consumer
        .close(200, "done".into())
        .await
        .context("close the consumers' connection")?;
    publisher
        .close(200, "done".into())
        .await
        .context("close the publisher's connection")?;
    Ok(Measured {
        counted,
        elapsed,
        latencies,
        latency_rate: None,
        broker_cpu,
    })
}

/// Closes a channel and waits for the broker's close-ok: lapin closes a dropped channel in the
/// background, which would race the connection's close.
async fn close_channel(channel: &Channel) -> Result<()> {
    channel
        .close(200, "done".into())
        .await
        .context("close a channel")
}

fn fanout_exchange() -> &'static str {
    "bench.fanout"
}

/// Declares the scenario's queues (empty: any left from an earlier run are deleted first).
async fn declare(channel: &Channel, scenario: Scenario, msg_size: usize) -> Result<Vec<String>> {
    let durable = !matches!(scenario, Scenario::Transient | Scenario::Rpc);
    let count = if scenario == Scenario::Fanout {
        FANOUT_QUEUES
    } else {
        1
    };
    if scenario == Scenario::Fanout {
        channel
            .exchange_declare(
                fanout_exchange().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut names = Vec::new();
    for index in 0..count {
        let name = format!("bench.{}.{msg_size}.{index}", scenario.name());
        channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await?;
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        if scenario == Scenario::Fanout {
            channel
                .queue_bind(
                    name.as_str().into(),
                    fanout_exchange().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        names.push(name);
    }
    Ok(names)
}

/// What a pipeline run publishes: `count` messages of `msg_size` bytes, as fast as the
/// confirm window allows or `pace` per second.
#[derive(Debug, Clone, Copy)]
struct Publishing {
    scenario: Scenario,
    msg_size: usize,
    count: u64,
    pace: Option<u64>,
}

/// Publishes while consumers on `queues` take the messages; returns the deliveries counted
/// and their latencies.
async fn pipeline(
    publisher: &Connection,
    consumer: &Connection,
    queues: &[String],
    publishing: &Publishing,
) -> Result<(u64, Histogram<u64>)> {
    let Publishing {
        scenario,
        msg_size,
        count,
        pace,
    } = *publishing;
    let epoch = Instant::now();
    let manual_ack = scenario != Scenario::Transient;
    let mut consumers = Vec::new();
    for queue in queues {
        let channel = consumer.create_channel().await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let stream = consume(&channel, queue, !manual_ack).await?;
        consumers.push((
            channel,
            tokio::spawn(drain(stream, count, manual_ack, epoch)),
        ));
    }
    let channel = publisher.create_channel().await?;
    let confirms = scenario != Scenario::Transient;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let (exchange, routing_key) = if scenario == Scenario::Fanout {
        (fanout_exchange(), "")
    } else {
        ("", queues[0].as_str())
    };
    let properties = BasicProperties::default().with_delivery_mode(if confirms { 2 } else { 1 });
    let mut pending = VecDeque::with_capacity(WINDOW);
    let started = tokio::time::Instant::now();
    for index in 0..count {
        if let Some(rate) = pace {
            let due = started + Duration::from_secs_f64(index as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &stamped_body(epoch, msg_size),
                properties.clone(),
            )
            .await?;
        if confirms {
            pending.push_back(confirm);
            if pending.len() == WINDOW
                && let Some(oldest) = pending.pop_front()
            {
                check_ack(oldest.await?)?;
            }
        }
    }
    for confirm in pending {
        check_ack(confirm.await?)?;
    }
    let mut total = 0;
    let mut latencies = latency_histogram()?;
    for (consumer_channel, consumer) in consumers {
        let (counted, local) = consumer.await.context("a consumer task")??;
        total += counted;
        latencies.add(&local).context("merge latencies")?;
        close_channel(&consumer_channel).await?;
    }
    close_channel(&channel).await?;
    Ok((total, latencies))
}

/// Starts a consumer with a server-generated tag on `queue`.
async fn consume(channel: &Channel, queue: &str, no_ack: bool) -> Result<lapin::Consumer> {
    let options = BasicConsumeOptions {
        no_ack,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .with_context(|| format!("consume from {queue}"))
}

fn check_ack(confirmation: lapin::Confirmation) -> Result<()> {
    if confirmation.is_nack() {
        bail!("the broker nacked a publish");
    }
    Ok(())
}

/// Takes `count` deliveries from `stream`, acking each when `manual_ack`.
async fn drain(
    mut stream: lapin::Consumer,
    count: u64,
    manual_ack: bool,
    epoch: Instant,
) -> Result<(u64, Histogram<u64>)> {
    let mut latencies = latency_histogram()?;
    let mut counted = 0;
    while counted < count {
        let delivery = stream
            .next()
            .await
            .context("the consumer was cancelled")??;
        latencies.saturating_record(age_us(&delivery.data, epoch.elapsed().as_nanos() as u64));
        if manual_ack {
            delivery.ack(BasicAckOptions::default()).await?;
        }
        counted += 1;
    }
    Ok((counted, latencies))
}

/// `count` round trips, one at a time: a request to `queue` answered by a server task on the
/// other connection through the client's exclusive reply queue.
async fn rpc(
    client: &Connection,
    server: &Connection,
    queue: &str,
    msg_size: usize,
    count: u64,
) -> Result<(u64, Histogram<u64>)> {
    let server_channel = server.create_channel().await?;
    let mut requests = consume(&server_channel, queue, true).await?;
    let responder = tokio::spawn(async move {
        for _ in 0..count {
            let request = requests
                .next()
                .await
                .context("the server's consumer was cancelled")??;
            let reply_to = request
                .properties
                .reply_to()
                .clone()
                .context("a request without reply_to")?;
            let mut properties = BasicProperties::default();
            if let Some(id) = request.properties.correlation_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            server_channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &request.data,
                    properties,
                )
                .await?;
        }
        close_channel(&server_channel).await
    });
    let channel = client.create_channel().await?;
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut replies = consume(&channel, reply_queue.name().as_str(), true).await?;
    let epoch = Instant::now();
    let mut latencies = latency_histogram()?;
    for index in 0..count {
        let properties = BasicProperties::default()
            .with_reply_to(reply_queue.name().clone())
            .with_correlation_id(index.to_string().into());
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &stamped_body(epoch, msg_size),
                properties,
            )
            .await?;
        let reply = replies
            .next()
            .await
            .context("the reply consumer was cancelled")??;
        let correlation = reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str());
        if correlation != Some(index.to_string().as_str()) {
            bail!("reply {correlation:?} to request {index}");
        }
        latencies.saturating_record(age_us(&reply.data, epoch.elapsed().as_nanos() as u64));
    }
    responder.await.context("the server task")??;
    close_channel(&channel).await?;
    Ok((count, latencies))
}
