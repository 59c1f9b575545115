//! Slow and dead consumers over a backlog: a durable queue filled with `count` persistent
//! messages, then three consumers that never read their sockets — one with manual acks and
//! no prefetch limit, one with no-ack, one that also stops sending heartbeats (the broker must
//! drop it and take its deliveries back). Meanwhile the broker's memory must stay bounded
//! whatever the backlog, and another queue's round trips go on; the report gives that queue's
//! throughput before the backlog and during it. It runs on a server of its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::raw;
use crate::server::{Addresses, Server};
use crate::storm::rss_of;
use crate::workload;

/// The queue that holds the backlog.
const BACKLOG_QUEUE: &str = "torture-backlog";
/// The queue whose throughput is watched.
const PROBE_QUEUE: &str = "torture-probe";
/// How long each throughput probe runs.
const PROBE: Duration = Duration::from_secs(3);
/// Publishers filling the backlog, and the confirms each waits for at once.
const FILLERS: u64 = 4;
const FILL_WINDOW: usize = 256;
/// How far the server's memory may grow over its size with the backlog stored, while the
/// stalled consumers hold on: what a few consumers may hold (their windows and their
/// connections' write buffers), never the backlog.
const MEMORY_BOUND_BYTES: u64 = 64 << 20;
/// The heartbeat the vanishing consumer negotiates, in seconds.
const VANISHING_HEARTBEAT_S: u16 = 1;

#[derive(Debug)]
pub struct BacklogReport {
    pub messages: u64,
    pub fill_seconds: f64,
    pub rss_empty: u64,
    pub rss_filled: u64,
    pub rss_peak: u64,
    pub rss_after: u64,
    pub probe_before: f64,
    pub probe_during: f64,
    /// Messages back in the queue once the stalled consumers are gone.
    pub ready_after: u64,
}

impl BacklogReport {
    pub fn violations(&self) -> u64 {
        u64::from(self.rss_peak > self.rss_filled + MEMORY_BOUND_BYTES)
    }
}

async fn declare(channel: &lapin::Channel, queue: &str) -> Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .with_context(|| format!("declare {queue}"))?;
    Ok(())
}

/// Publishes `count` persistent messages of `bytes` to `queue`, confirmed.
async fn fill(addresses: &Addresses, queue: &str, count: u64, bytes: usize) -> Result<()> {
    let mut fillers = Vec::new();
    for filler in 0..FILLERS {
        let share = count / FILLERS + u64::from(filler < count % FILLERS);
        let (addresses, queue) = (addresses.clone(), queue.to_owned());
        fillers.push(tokio::spawn(async move {
            let connection = workload::amqp(&addresses).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let body = vec![b'b'; bytes];
            let persistent = BasicProperties::default().with_delivery_mode(2);
            let mut pending = std::collections::VecDeque::with_capacity(FILL_WINDOW);
            for _ in 0..share {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        persistent.clone(),
                    )
                    .await?;
                pending.push_back(confirm);
                if pending.len() >= FILL_WINDOW
                    && let Some(oldest) = pending.pop_front()
                {
                    anyhow::ensure!(oldest.await?.is_ack(), "a backlog publish was refused");
                }
            }
            for confirm in pending {
                anyhow::ensure!(confirm.await?.is_ack(), "a backlog publish was refused");
            }
            connection.close(200, "filled".into()).await?;
            anyhow::Ok(())
        }));
    }
    for filler in fillers {
        filler.await.context("a filler")??;
    }
    Ok(())
}

/// Round trips through `PROBE_QUEUE` for [`PROBE`] (a publisher with confirms, a consumer
/// with acks); answers deliveries per second.
async fn probe(addresses: &Addresses, bytes: usize) -> Result<f64> {
    let connection = workload::amqp(addresses).await?;
    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(256, BasicQosOptions::default())
        .await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut deliveries = consumer_channel
        .basic_consume(
            PROBE_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let counted = Arc::clone(&delivered);
    let consumer = tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'p'; bytes];
    let began = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    while began.elapsed() < PROBE {
        let confirm = publisher
            .basic_publish(
                "".into(),
                PROBE_QUEUE.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= 64
            && let Some(oldest) = pending.pop_front()
        {
            oldest.await?;
        }
    }
    let rate = delivered.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64();
    consumer.abort();
    let _ = connection.close(200, "probed".into()).await;
    Ok(rate)
}

/// A consumer of `queue` that opens, subscribes, and never reads its socket.
async fn stalled(addresses: &Addresses, no_ack: bool, heartbeat_s: u16) -> Result<TcpStream> {
    let mut socket = TcpStream::connect(&addresses.amqp).await?;
    socket.write_all(&raw::handshake(heartbeat_s)).await?;
    socket
        .write_all(&raw::consume(BACKLOG_QUEUE, no_ack))
        .await?;
    Ok(socket)
}

/// Runs the test on a server of its own in `run` (segments of the default size: with the crash
/// cycles' 64 KiB ones a deep backlog would be tens of thousands of open segment files).
pub fn run(
    binary: &Path,
    run: &Path,
    runtime: &tokio::runtime::Runtime,
    count: u64,
    bytes: usize,
) -> Result<BacklogReport> {
    let mut server = Server::new(binary, run, Vec::new(), Addresses::free()?)
        .with_data(run.join("backlog-data"));
    server.start().context("start for the backlog")?;
    let pid = server.pid().context("the server's pid")?;
    let addresses = server.addresses.clone();
    let report = runtime.block_on(measure(&addresses, pid, count, bytes))?;
    server.stop().context("the clean stop after the backlog")?;
    Ok(report)
}

async fn measure(
    addresses: &Addresses,
    pid: u32,
    count: u64,
    bytes: usize,
) -> Result<BacklogReport> {
    let connection = workload::amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    declare(&channel, BACKLOG_QUEUE).await?;
    declare(&channel, PROBE_QUEUE).await?;
    let rss_empty = rss_of(pid)?;
    let probe_before = probe(addresses, bytes).await?;
    let began = Instant::now();
    fill(addresses, BACKLOG_QUEUE, count, bytes).await?;
    let fill_seconds = began.elapsed().as_secs_f64();
    let rss_filled = rss_of(pid)?;
    let held = [
        stalled(addresses, false, 0).await?,
        stalled(addresses, true, 0).await?,
        stalled(addresses, false, VANISHING_HEARTBEAT_S).await?,
    ];
    let sampling = Arc::new(AtomicU64::new(rss_filled));
    let peak = Arc::clone(&sampling);
    let sampler = tokio::spawn(async move {
        while let Ok(rss) = rss_of(pid) {
            peak.fetch_max(rss, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Long enough for the vanishing one to miss its heartbeats, and for the others to fill
    // whatever the broker lets them.
    tokio::time::sleep(Duration::from_secs(u64::from(VANISHING_HEARTBEAT_S) * 3)).await;
    let probe_during = probe(addresses, bytes).await?;
    let rss_peak = sampling.load(Ordering::Relaxed).max(rss_of(pid)?);
    drop(held);
    sampler.abort();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let queue = channel
        .queue_declare(
            BACKLOG_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let ready_after = u64::from(queue.message_count());
    channel
        .queue_purge(BACKLOG_QUEUE.into(), QueuePurgeOptions::default())
        .await?;
    let rss_after = rss_of(pid)?;
    connection.close(200, "done".into()).await?;
    Ok(BacklogReport {
        messages: count,
        fill_seconds,
        rss_empty,
        rss_filled,
        rss_peak,
        rss_after,
        probe_before,
        probe_during,
        ready_after,
    })
}
