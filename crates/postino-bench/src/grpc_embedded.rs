//! The embedded scenarios of `postino bench grpc`: `postino-client` on a broker opened in the
//! benchmark's own process (`Client::embedded` on a scratch directory), through the client's
//! API — the native service over in-memory pipes, no socket.
//!
//! - `embedded-put`: persistent messages to a durable queue with `Queue::put` (each returns
//!   once durable), `PIPELINE` calls in flight at once.
//! - `embedded-notify`: what `embedded-put` left, consumed by `Queue::notify` with prefetch
//!   `PREFETCH`, the callback acknowledging each delivery.
//!
//! CPU is the whole process's (client and broker share it).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postino_client::{Client, Message, Settle};

use crate::amqp::cpu_of;
use crate::grpc::{Measured, PIPELINE, PREFETCH, merged};
use crate::{latency_histogram, stamped_body};

/// How long `embedded-notify` waits for one more delivery before it counts the queue drained.
const IDLE: Duration = Duration::from_secs(2);

/// Runs `scenario` (`embedded-put` or `embedded-notify`) with `count` messages of
/// `msg_size` bytes on the embedded broker of `dir` (the queue `bench-<size>` is declared on
/// first use, so `notify` drains what `put` left).
pub(crate) async fn run(
    dir: &Path,
    scenario: &str,
    msg_size: usize,
    count: u64,
) -> Result<Measured> {
    let client = Client::embedded(dir)
        .await
        .context("open the embedded broker")?;
    let queue = client.queue(&format!("bench-{msg_size}"));
    queue.declare().await.context("declare")?;
    let pid = std::process::id();
    let before = cpu_of(pid);
    let name = queue.name().to_owned();
    drop(queue);
    let mut measured = if scenario == "embedded-put" {
        put(&client, &name, msg_size, count).await?
    } else {
        notify(&client, &name).await?
    };
    measured.broker_cpu = cpu_of(pid)
        .zip(before)
        .map(|(after, before)| after.saturating_sub(before));
    client.close().await.context("close the embedded broker")?;
    Ok(measured)
}

async fn put(client: &Client, queue: &str, msg_size: usize, count: u64) -> Result<Measured> {
    let epoch = Instant::now();
    let began = Instant::now();
    let share = count / PIPELINE as u64;
    let mut tasks = Vec::new();
    for _ in 0..PIPELINE {
        let queue = client.queue(queue);
        tasks.push(tokio::spawn(async move {
            let mut latencies = latency_histogram()?;
            for _ in 0..share {
                let started = Instant::now();
                queue
                    .put(Message::new(stamped_body(epoch, msg_size)))
                    .await
                    .context("put")?;
                latencies.record(started.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(latencies)
        }));
    }
    let latencies = merged(tasks).await?;
    Ok(Measured {
        counted: share * PIPELINE as u64,
        elapsed: began.elapsed(),
        latencies: Some(latencies),
        broker_cpu: None,
    })
}

async fn notify(client: &Client, queue: &str) -> Result<Measured> {
    let seen = Arc::new(AtomicU64::new(0));
    // When the last delivery came, in ns after `began`.
    let last = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let (counter, latest) = (Arc::clone(&seen), Arc::clone(&last));
    let notification = client
        .queue(queue)
        .notify(PREFETCH, move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            latest.store(began.elapsed().as_nanos() as u64, Ordering::Relaxed);
            Settle::Ack
        })
        .await
        .context("notify")?;
    // The queue is drained when no delivery came for `IDLE`.
    let mut counted = 0;
    loop {
        tokio::time::sleep(IDLE).await;
        let now = seen.load(Ordering::Relaxed);
        if now == counted {
            break;
        }
        counted = now;
    }
    notification.stop().await;
    Ok(Measured {
        counted,
        elapsed: Duration::from_nanos(last.load(Ordering::Relaxed)),
        latencies: None,
        broker_cpu: None,
    })
}
