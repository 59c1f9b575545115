//! `postino bench grpc`: the native API over real sockets, with tonic clients, against a
//! `postino server` the benchmark starts on a scratch directory; and the cost of the filter
//! language in process.
//!
//! - `put`: persistent messages to a durable queue, `SYNC_STORED` (each call returns once its
//!   message is durable), one call at a time: the latency is the call's.
//! - `put-pipelined`: the same with `PIPELINE` calls in flight at once, the batching a client
//!   gets from HTTP/2 multiplexing (the API has no batch call).
//! - `notify`: the messages the two `put` scenarios left, consumed by a `Notify` stream with
//!   prefetch `PREFETCH`, acknowledged `ACK_BATCH` delivery ids at a time (no latency: the
//!   messages were waiting).
//! - `pubsub`: transient messages published (`SYNC_NONE`, `PIPELINE` in flight) to a topic
//!   exchange and received by one `Subscribe` stream; the latency is publish → event.
//! - `filter`: a five-clause filter evaluated over messages with headers and properties, in
//!   process; the figure is evaluations per second (and so ns per message).
//! - `embedded-put`, `embedded-notify`: `postino-client` on an embedded broker
//!   (`grpc_embedded`).
//!
//! Broker CPU is read from `/proc/<pid>/stat` of the server process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::Histogram;
use postino_grpc::proto;
use postino_grpc::{PubSubClient, QueuesClient};
use tonic::transport::Channel;

use crate::amqp::cpu_of;
use crate::storage::Size;
use crate::{Printer, Row, age_us, latency_histogram, stamped_body};

/// Calls in flight at once in the pipelined scenarios.
pub(crate) const PIPELINE: usize = 64;
/// The `Notify` stream's prefetch.
pub(crate) const PREFETCH: u32 = 256;
/// How long `notify` waits for one more delivery before it counts the queue drained.
const IDLE: Duration = Duration::from_secs(2);
/// Delivery ids acknowledged by one `Ack` call.
const ACK_BATCH: usize = 64;
/// The five-clause filter of the `filter` scenario.
pub const FILTER: &str = "country = 'IT' AND amount BETWEEN 10 AND 100 AND \
                          properties.priority > 2 AND tier IN ('gold', 'silver') AND \
                          sku LIKE 'A-%'";

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario",
        "msg_size",
        "messages",
        "msgs_per_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "broker_cpu_s_per_m",
    ]
}

fn messages(size: Size) -> u64 {
    match size {
        Size::Quick => 2_000,
        Size::Full => 100_000,
    }
}

/// What one scenario measured.
pub(crate) struct Measured {
    pub counted: u64,
    pub elapsed: Duration,
    pub latencies: Option<Histogram<u64>>,
    pub broker_cpu: Option<Duration>,
}

impl Measured {
    fn row(&self, scenario: &str, msg_size: usize) -> Row {
        let rate = self.counted as f64 / self.elapsed.as_secs_f64();
        let mut row = Row::new(scenario)
            .with("msg_size", msg_size)
            .with("messages", self.counted)
            .with_rounded("msgs_per_s", rate, 0);
        if let Some(latencies) = &self.latencies {
            row = row
                .with("p50_us", latencies.value_at_quantile(0.5))
                .with("p99_us", latencies.value_at_quantile(0.99))
                .with("p999_us", latencies.value_at_quantile(0.999));
        }
        if let Some(cpu) = self.broker_cpu {
            let per_million = cpu.as_secs_f64() * 1e6 / self.counted as f64;
            row = row.with_rounded("broker_cpu_s_per_m", per_million, 1);
        }
        row
    }
}

/// Runs the scenarios whose label (`scenario/size`) contains `filter`; the server's data goes
/// under `parent`.
///
/// # Errors
/// A server that cannot be started or reached, or a failed call.
pub fn run(
    parent: &Path,
    binary: &Path,
    size: Size,
    filter: &str,
    printer: &mut Printer,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for msg_size in [16usize, 1024] {
        if format!("filter/{msg_size}").contains(filter) {
            let row = measure_filter(messages(size) * 10, msg_size)?.row("filter", msg_size);
            printer.print(&row);
            rows.push(row);
        }
    }
    let embedded: Vec<(&str, usize)> = ["embedded-put", "embedded-notify"]
        .into_iter()
        .flat_map(|scenario| [(scenario, 16), (scenario, 1024)])
        .filter(|(scenario, msg_size)| format!("{scenario}/{msg_size}").contains(filter))
        .collect();
    if !embedded.is_empty() {
        let scratch = crate::scratch_dir(parent, "postino-bench-embedded-")?;
        let runtime = crate::runtime()?;
        for (scenario, msg_size) in embedded {
            let measured = runtime.block_on(crate::grpc_embedded::run(
                scratch.path(),
                scenario,
                msg_size,
                messages(size),
            ))?;
            let row = measured.row(scenario, msg_size);
            printer.print(&row);
            rows.push(row);
        }
    }
    let wanted: Vec<(&str, usize)> = ["put", "put-pipelined", "notify", "pubsub"]
        .into_iter()
        .flat_map(|scenario| [(scenario, 16), (scenario, 1024)])
        .filter(|(scenario, msg_size)| format!("{scenario}/{msg_size}").contains(filter))
        .collect();
    if wanted.is_empty() {
        return Ok(rows);
    }
    let scratch = crate::scratch_dir(parent, "postino-bench-grpc-")?;
    let server = crate::server::start(binary, scratch.path(), true, true)?;
    let http = server.http.clone().unwrap_or_default();
    for msg_size in [16, 1024] {
        declare(&http, &format!("bench-{msg_size}"))?;
    }
    let address = format!("http://{}", server.grpc.clone().unwrap_or_default());
    let pid = server.child.id();
    let runtime = crate::runtime()?;
    let count = messages(size);
    for (scenario, msg_size) in wanted {
        let queue = format!("bench-{msg_size}");
        let measured = runtime.block_on(async {
            let channel = Channel::from_shared(address.clone())?
                .connect()
                .await
                .context("connect to the native API")?;
            let before = cpu_of(pid);
            let mut measured = match scenario {
                "put" => put(channel, &queue, msg_size, count, 1).await,
                "put-pipelined" => put(channel, &queue, msg_size, count, PIPELINE).await,
                "notify" => notify(channel, &queue).await,
                _ => pubsub(channel, msg_size, count).await,
            }?;
            measured.broker_cpu = cpu_of(pid)
                .zip(before)
                .map(|(after, before)| after.saturating_sub(before));
            anyhow::Ok(measured)
        })?;
        let row = measured.row(scenario, msg_size);
        printer.print(&row);
        rows.push(row);
    }
    drop(server);
    Ok(rows)
}

fn persistent(body: Vec<u8>) -> proto::Message {
    proto::Message {
        body,
        headers: Default::default(),
        properties: Some(proto::Properties {
            persistent: true,
            ..proto::Properties::default()
        }),
    }
}

/// Puts `count` messages of `msg_size` bytes to `queue` with `in_flight` calls at once, each
/// durable before it returns.
async fn put(
    channel: Channel,
    queue: &str,
    msg_size: usize,
    count: u64,
    in_flight: usize,
) -> Result<Measured> {
    let epoch = Instant::now();
    let began = Instant::now();
    let mut tasks = Vec::new();
    let share = count / in_flight as u64;
    for _ in 0..in_flight {
        let mut client = QueuesClient::new(channel.clone());
        let queue = queue.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = latency_histogram()?;
            for _ in 0..share {
                let started = Instant::now();
                let request = proto::PutRequest {
                    vhost: String::new(),
                    queue: queue.clone(),
                    message: Some(persistent(stamped_body(epoch, msg_size))),
                    sync: proto::Sync::Stored.into(),
                    ..proto::PutRequest::default()
                };
                client.put(request).await.context("put")?;
                latencies.record(started.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let latencies = merged(tasks).await?;
    Ok(Measured {
        counted: share * in_flight as u64,
        elapsed: began.elapsed(),
        latencies: Some(latencies),
        broker_cpu: None,
    })
}

/// The latencies each of `tasks` recorded, together.
pub(crate) async fn merged(
    tasks: Vec<tokio::task::JoinHandle<Result<Histogram<u64>>>>,
) -> Result<Histogram<u64>> {
    let mut latencies = latency_histogram()?;
    for task in tasks {
        latencies.add(task.await??)?;
    }
    Ok(latencies)
}

/// Declares the durable queue `queue` through the management API (the native API puts to
/// existing queues only).
fn declare(http: &str, queue: &str) -> Result<()> {
    let token = base64::engine::general_purpose::STANDARD.encode("guest:guest");
    let url = format!("http://{http}/api/queues/%2F/{queue}");
    ureq::put(&url)
        .header("authorization", &format!("Basic {token}"))
        .header("content-type", "application/json")
        .send(r#"{"durable": true}"#)
        .with_context(|| format!("PUT {url}"))?;
    Ok(())
}

/// Consumes what `put` left in `queue` with a `Notify` stream, acknowledging in batches.
async fn notify(channel: Channel, queue: &str) -> Result<Measured> {
    let mut client = QueuesClient::new(channel);
    let request = proto::NotifyRequest {
        queue: queue.to_owned(),
        prefetch: PREFETCH,
        ..proto::NotifyRequest::default()
    };
    let mut stream = client.notify(request).await?.into_inner();
    let began = Instant::now();
    let mut counted = 0u64;
    let mut pending = Vec::new();
    // The queue is drained when no delivery came for `IDLE`.
    while let Ok(item) = tokio::time::timeout(IDLE, stream.message()).await {
        let Some(delivery) = item? else {
            break;
        };
        counted += 1;
        pending.push(delivery.delivery_id);
        if pending.len() >= ACK_BATCH {
            ack(&mut client, queue, &mut pending).await?;
        }
    }
    ack(&mut client, queue, &mut pending).await?;
    Ok(Measured {
        counted,
        elapsed: began.elapsed().saturating_sub(IDLE),
        latencies: None,
        broker_cpu: None,
    })
}

async fn ack(client: &mut QueuesClient<Channel>, queue: &str, ids: &mut Vec<u64>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let request = proto::SettleRequest {
        vhost: String::new(),
        queue: queue.to_owned(),
        delivery_ids: std::mem::take(ids),
        ..proto::SettleRequest::default()
    };
    client.ack(request).await.context("ack")?;
    Ok(())
}

/// Publishes `count` transient messages to `amq.topic` while one subscription receives them.
async fn pubsub(channel: Channel, msg_size: usize, count: u64) -> Result<Measured> {
    let mut subscriber = PubSubClient::new(channel.clone());
    let request = proto::SubscribeRequest {
        binding_key: "bench.#".into(),
        ..proto::SubscribeRequest::default()
    };
    let mut stream = subscriber.subscribe(request).await?.into_inner();
    stream
        .message()
        .await?
        .context("the subscription's handle")?;
    let epoch = Instant::now();
    let began = Instant::now();
    let share = count / PIPELINE as u64;
    let mut publishers = Vec::new();
    for _ in 0..PIPELINE {
        let mut client = PubSubClient::new(channel.clone());
        publishers.push(tokio::spawn(async move {
            for _ in 0..share {
                let request = proto::PublishRequest {
                    vhost: String::new(),
                    exchange: "amq.topic".into(),
                    routing_key: "bench.event".into(),
                    message: Some(proto::Message {
                        body: stamped_body(epoch, msg_size),
                        ..proto::Message::default()
                    }),
                    sync: proto::Sync::None.into(),
                    ..proto::PublishRequest::default()
                };
                client.publish(request).await.context("publish")?;
            }
            anyhow::Ok(())
        }));
    }
    let expected = share * PIPELINE as u64;
    let mut latencies = latency_histogram()?;
    let mut counted = 0u64;
    while counted < expected {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("the events stopped")??
            .context("the subscription ended")?;
        if let Some(proto::subscription_event::Item::Event(delivery)) = item.item {
            let body = delivery
                .message
                .map(|message| message.body)
                .unwrap_or_default();
            latencies.record(age_us(&body, epoch.elapsed().as_nanos() as u64).max(1))?;
            counted += 1;
        }
    }
    for publisher in publishers {
        publisher.await??;
    }
    Ok(Measured {
        counted,
        elapsed: began.elapsed(),
        latencies: Some(latencies),
        broker_cpu: None,
    })
}

/// Evaluates `FILTER` over `count` messages, a third of which match.
fn measure_filter(count: u64, msg_size: usize) -> Result<Measured> {
    use postino_types::{HeaderValue, Message};
    let filter = postino_core::Filter::parse(FILTER).context("the benchmark's filter")?;
    let samples: Vec<Message> = (0..3)
        .map(|index| {
            let mut message = Message::new(vec![b'p'; msg_size]);
            message.properties.priority = Some(3 + index);
            let headers = &mut message.properties.headers;
            let country = if index == 2 { "FR" } else { "IT" };
            headers.insert("country".into(), HeaderValue::Text(country.into()));
            headers.insert("amount".into(), HeaderValue::Int(40 + i64::from(index)));
            headers.insert("tier".into(), HeaderValue::Text("gold".into()));
            let sku = if index == 1 { "B-7" } else { "A-19" };
            headers.insert("sku".into(), HeaderValue::Text(sku.into()));
            message
        })
        .collect();
    let began = Instant::now();
    let mut matched = 0u64;
    for index in 0..count {
        let message = &samples[(index % 3) as usize];
        matched += u64::from(filter.matches(message, "amq.topic", "orders.new"));
    }
    anyhow::ensure!(matched == count.div_ceil(3), "{matched} of {count} matched");
    Ok(Measured {
        counted: count,
        elapsed: began.elapsed(),
        latencies: None,
        broker_cpu: None,
    })
}
