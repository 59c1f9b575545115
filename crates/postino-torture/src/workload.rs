//! What clients do during a cycle, until the server dies under them: AMQP publishers with
//! confirms and a native-API publisher on durable queues, a native-API producer on a stream,
//! AMQP consumers with manual acks, and a transactional AMQP consumer — each writing what it
//! saw into the ledger — and the final drain after the last restart.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use postino_client::{Client, Options, Start};

use crate::body::{self, Id};
use crate::ledger::Ledger;
use crate::server::Addresses;

/// Queues AMQP publishers publish to with confirms.
pub const AMQP_QUEUES: &[&str] = &["torture-a", "torture-b"];
/// The queue the native API puts to.
pub const NATIVE_QUEUE: &str = "torture-native";
/// The queue a transactional consumer takes from (AMQP publishers publish there too).
pub const TX_QUEUE: &str = "torture-tx";
/// A stream with a retention limit (a RabbitMQ stream queue with `x-max-length-bytes`), which
/// an AMQP publisher publishes to: with 64 KiB segments, retention deletes one every few
/// hundred messages, so kills land in it too.
pub const RETAINED: &str = "torture-retained";
const RETAINED_BYTES_MAX: i64 = 256 << 10;
/// The stream the native API produces to, and its partitions.
pub const STREAM: &str = "torture-stream";
const PARTITIONS: u32 = 2;
/// Confirms an AMQP publisher waits for at once.
const WINDOW: usize = 64;
/// The final drain counts a queue empty when no delivery came for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// Concurrent native-API puts.
const NATIVE_PUTTERS: u32 = 4;

/// How long the broker has to react to a fault, or to its end.
const REACT_WAIT: Duration = Duration::from_secs(60);

pub type Shared = Arc<Mutex<Ledger>>;

/// Waits until `ready` holds, or fails with `what` after [`REACT_WAIT`].
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let began = std::time::Instant::now();
    while !ready() {
        anyhow::ensure!(
            began.elapsed() <= REACT_WAIT,
            "{what} within {REACT_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn lock(ledger: &Shared) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

fn every_queue() -> impl Iterator<Item = &'static str> {
    AMQP_QUEUES.iter().copied().chain([NATIVE_QUEUE, TX_QUEUE])
}

pub async fn amqp(addresses: &Addresses) -> Result<Connection> {
    let uri = format!("amqp://guest:guest@{}/%2f", addresses.amqp);
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .context("connect over AMQP")
}

async fn native(addresses: &Addresses) -> Result<Client> {
    // No retries: a put that fails is an unknown outcome, never sent twice.
    let options = Options::default().retry_for(Duration::ZERO);
    Client::connect_with(&format!("http://{}", addresses.grpc), options)
        .await
        .context("connect over the native API")
}

/// Declares the durable queues and the stream (idempotent: every cycle does it).
pub async fn declare(addresses: &Addresses) -> Result<()> {
    let connection = amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for queue in every_queue() {
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .with_context(|| format!("declare {queue}"))?;
    }
    let mut retained = FieldTable::default();
    retained.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    retained.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(RETAINED_BYTES_MAX),
    );
    channel
        .queue_declare(RETAINED.into(), durable, retained)
        .await
        .with_context(|| format!("declare {RETAINED}"))?;
    connection.close(200, "declared".into()).await?;
    let client = native(addresses).await?;
    client.stream(STREAM).declare(PARTITIONS).await?;
    Ok(())
}

/// Starts every client of a cycle; they run until the server dies (their errors end them).
/// Publisher ids start at `first_publisher`.
pub fn spawn(
    addresses: &Addresses,
    ledger: &Shared,
    first_publisher: u32,
    message_bytes: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = spawn_publishers(addresses, ledger, first_publisher, message_bytes);
    let (stream_addresses, stream_ledger, id) = (
        addresses.clone(),
        Arc::clone(ledger),
        first_publisher + PUBLISHERS + 1,
    );
    tasks.push(tokio::spawn(async move {
        let _ = produce(&stream_addresses, &stream_ledger, id, message_bytes).await;
    }));
    let (retained_addresses, retained_ledger, id) = (
        addresses.clone(),
        Arc::clone(ledger),
        first_publisher + PUBLISHERS + 2,
    );
    tasks.push(tokio::spawn(async move {
        let _ = publish_amqp(
            &retained_addresses,
            &retained_ledger,
            id,
            RETAINED,
            message_bytes,
        )
        .await;
    }));
    for queue in AMQP_QUEUES.iter().copied().chain([NATIVE_QUEUE]) {
        let (addresses, ledger) = (addresses.clone(), Arc::clone(ledger));
        tasks.push(tokio::spawn(async move {
            let _ = consume(&addresses, &ledger, queue).await;
        }));
    }
    let (addresses, ledger) = (addresses.clone(), Arc::clone(ledger));
    tasks.push(tokio::spawn(async move {
        let _ = consume_in_transactions(&addresses, &ledger).await;
    }));
    tasks
}

/// Publishers to queues [`spawn_publishers`] starts.
pub const PUBLISHERS: u32 = 3 + NATIVE_PUTTERS;

/// Starts the queue publishers alone (ids `first_publisher + 1` on): AMQP with confirms to
/// each AMQP queue and the transactional one, and the native-API putters.
pub fn spawn_publishers(
    addresses: &Addresses,
    ledger: &Shared,
    first_publisher: u32,
    message_bytes: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut publisher = first_publisher;
    let mut next_publisher = || {
        publisher += 1;
        publisher
    };
    for queue in AMQP_QUEUES.iter().chain([&TX_QUEUE]) {
        let (addresses, ledger, id) = (addresses.clone(), Arc::clone(ledger), next_publisher());
        tasks.push(tokio::spawn(async move {
            let _ = publish_amqp(&addresses, &ledger, id, queue, message_bytes).await;
        }));
    }
    for _ in 0..NATIVE_PUTTERS {
        let (addresses, ledger, id) = (addresses.clone(), Arc::clone(ledger), next_publisher());
        tasks.push(tokio::spawn(async move {
            let _ = put_native(&addresses, &ledger, id, message_bytes).await;
        }));
    }
    tasks
}

pub async fn publish_amqp(
    addresses: &Addresses,
    ledger: &Shared,
    publisher: u32,
    queue: &str,
    message_bytes: usize,
) -> Result<()> {
    let connection = amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let mut pending = VecDeque::with_capacity(WINDOW);
    for seq in 0.. {
        let id = Id { publisher, seq };
        lock(ledger).sent(id, queue);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body::encode(id, message_bytes),
                persistent.clone(),
            )
            .await?;
        pending.push_back((id, confirm));
        if pending.len() >= WINDOW
            && let Some((oldest, confirm)) = pending.pop_front()
        {
            let confirmation = confirm.await?;
            lock(ledger).answered(oldest, confirmation.is_ack());
        }
    }
    Ok(())
}

async fn put_native(
    addresses: &Addresses,
    ledger: &Shared,
    publisher: u32,
    message_bytes: usize,
) -> Result<()> {
    let client = native(addresses).await?;
    let queue = client.queue(NATIVE_QUEUE);
    for seq in 0.. {
        let id = Id { publisher, seq };
        lock(ledger).sent(id, NATIVE_QUEUE);
        match queue.put(body::encode(id, message_bytes)).await {
            Ok(()) => lock(ledger).answered(id, true),
            // A refusal is definite; a lost connection leaves the outcome unknown.
            Err(error)
                if error.code().is_some_and(|code| {
                    matches!(
                        code,
                        postino_client::Code::ResourceExhausted
                            | postino_client::Code::InvalidArgument
                    )
                }) =>
            {
                lock(ledger).answered(id, false);
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

async fn produce(
    addresses: &Addresses,
    ledger: &Shared,
    publisher: u32,
    message_bytes: usize,
) -> Result<()> {
    let client = native(addresses).await?;
    let stream = client.stream(STREAM);
    for seq in 0.. {
        let id = Id { publisher, seq };
        let key = [b'k', (seq % 4) as u8];
        let position = stream
            .produce(Some(&key), body::encode(id, message_bytes))
            .await?;
        lock(ledger).record_confirmed(position, id);
    }
    Ok(())
}

pub async fn consume(addresses: &Addresses, ledger: &Shared, queue: &str) -> Result<()> {
    let connection = amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(32, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        lock(ledger).delivered(queue, body::decode(&delivery.data));
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

async fn consume_in_transactions(addresses: &Addresses, ledger: &Shared) -> Result<()> {
    let connection = amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    channel.tx_select().await?;
    loop {
        let got = channel
            .basic_get(TX_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await?;
        let Some(got) = got else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let id = lock(ledger).delivered(TX_QUEUE, body::decode(&got.delivery.data));
        got.delivery.ack(BasicAckOptions::default()).await?;
        channel.tx_commit().await?;
        if let Some(id) = id {
            lock(ledger).committed(&[id]);
        }
    }
}

/// Publishes one confirmed persistent message to a queue of its own and takes it back: the
/// broker still serves.
pub async fn round_trip(addresses: &Addresses) -> Result<()> {
    let connection = amqp(addresses).await?;
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare("torture-alive".into(), durable, FieldTable::default())
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirmation = channel
        .basic_publish(
            "".into(),
            "torture-alive".into(),
            BasicPublishOptions::default(),
            b"alive",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    anyhow::ensure!(
        confirmation.is_ack(),
        "the broker refused a publish after the storm"
    );
    let got = channel
        .basic_get("torture-alive".into(), BasicGetOptions { no_ack: true })
        .await?
        .context("the message published after the storm is not there")?;
    anyhow::ensure!(
        got.delivery.data == b"alive",
        "a different message came back"
    );
    connection.close(200, "alive".into()).await?;
    Ok(())
}

/// After the last restart: takes everything left in every queue (acknowledged), and reads
/// every partition of the stream from its start; answers the positions read.
pub async fn drain(addresses: &Addresses, ledger: &Shared) -> Result<HashSet<(u32, u64)>> {
    let connection = amqp(addresses).await?;
    let channel: Channel = connection.create_channel().await?;
    channel.basic_qos(1_000, BasicQosOptions::default()).await?;
    for queue in every_queue() {
        let mut deliveries = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // Drained when nothing came for `DRAIN_IDLE` (nothing publishes any more).
        while let Ok(Some(delivery)) = tokio::time::timeout(DRAIN_IDLE, deliveries.next()).await {
            let delivery = delivery?;
            lock(ledger).delivered(queue, body::decode(&delivery.data));
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
    connection.close(200, "drained".into()).await?;
    let client = native(addresses).await?;
    let stream = client.stream(STREAM);
    let mut read = HashSet::new();
    for partition in 0..PARTITIONS {
        let mut next = 0;
        loop {
            let records = stream.fetch(partition, Start::Offset(next), 500).await?;
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in records {
                let position = (partition, record.offset);
                lock(ledger).record_read(position, body::decode(record.message.body()));
                read.insert(position);
            }
        }
    }
    let retained = client.stream(RETAINED);
    let mut from = Start::Earliest;
    loop {
        let records = retained.fetch(0, from, 500).await?;
        let Some(last) = records.last() else { break };
        from = Start::Offset(last.offset + 1);
        for record in records {
            lock(ledger).delivered(RETAINED, body::decode(record.message.body()));
        }
    }
    Ok(read)
}
