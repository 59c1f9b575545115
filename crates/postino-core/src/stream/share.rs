//! Share groups (Kafka's KIP-932): queue semantics on a stream, so that more consumers than
//! partitions compete for its records with per-record settlement and leases.
//!
//! Each partition of the stream gets a durable queue of the host, `amq.share.<group>.<stream>.<n>`
//! (a reserved name no client can declare), whose messages are pointers: an empty body and the
//! record's offset in the `x-stream-offset` header. The queue engine's shared cursor does the
//! rest, as for any queue: acquisition with a lease (Kafka's acquisition lock), accept, release
//! and reject, redelivery counts, and a delivery limit past which a record is archived. A feeder
//! task per partition reads the stream and appends pointers while fewer than
//! [`SHARE_WINDOW`] are outstanding (Kafka bounds a share partition's in-flight records the same
//! way); once its pointers are durable it records how far it fed as the committed offset of the
//! group `amq.share.<group>` in the host's offsets store, where a restart resumes. A stop between
//! the two feeds the last pointers again: delivery is at least once, as in Kafka.

use std::sync::Arc;
use std::time::Duration;

use postino_types::{HeaderValue, Headers, Message};

use crate::error::CoreError;
use crate::group::{Committer, OffsetCommit};
use crate::queue::{GetSpec, Outcome};
use crate::stream::{FetchSpec, OnOutOfRange, Stream, records_of};
use crate::vhost::{QueueSpec, VirtualHost};
use crate::{Delivery, QueueHandle};
use postino_storage::batch::Record;

/// Pointers a share partition holds ready or acquired at most; the feeder waits below it.
pub const SHARE_WINDOW: u64 = 1_000;
/// Deliveries of one record before it is archived (Kafka `group.share.delivery.count.limit`).
pub const SHARE_DELIVERY_LIMIT: i64 = 5;
/// How long a feeder waits for new records, or for room in the window, before looking again.
const FEED_WAIT: Duration = Duration::from_millis(200);

/// A record a share consumer acquired.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub partition: u32,
    /// Settle with this (and the partition) through [`ShareGroup::acknowledge`].
    pub delivery: u64,
    /// How many times the record was delivered, this time included.
    pub delivery_count: u32,
    pub record: Record,
}

/// A share group reading one stream.
#[derive(Debug)]
pub struct ShareGroup {
    name: String,
    stream: Arc<Stream>,
    queues: Vec<QueueHandle>,
    feeders: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ShareGroup {
    fn drop(&mut self) {
        for feeder in &self.feeders {
            feeder.abort();
        }
    }
}

fn queue_name(group: &str, stream: &str, partition: u32) -> String {
    format!("amq.share.{group}.{stream}.{partition}")
}

fn position_group(group: &str) -> String {
    format!("amq.share.{group}")
}

impl VirtualHost {
    /// Opens share group `group` on `stream` (creating its queues the first time, resuming
    /// where it fed up to after a restart) and starts feeding it. New share groups start at
    /// the stream's latest offset, as Kafka's `share.auto.offset.reset=latest`.
    ///
    /// # Errors
    /// `NotFound` for a missing stream; storage errors of its queues.
    pub async fn share_group(
        self: &Arc<Self>,
        group: &str,
        stream_name: &str,
    ) -> Result<ShareGroup, CoreError> {
        let stream = self
            .stream(stream_name)
            .ok_or_else(|| CoreError::NotFound {
                kind: "stream",
                name: stream_name.to_owned(),
            })?;
        let fed = self.groups().offsets(&position_group(group)).await?;
        let mut arguments = Headers::new();
        // RabbitMQ's limit counts redeliveries, Kafka's counts deliveries.
        arguments.insert(
            "x-delivery-limit".to_owned(),
            HeaderValue::Int(SHARE_DELIVERY_LIMIT - 1),
        );
        let spec = QueueSpec {
            arguments,
            ..QueueSpec::durable()
        };
        let mut queues = Vec::new();
        let mut feeders = Vec::new();
        for partition in 0..stream.partition_count() {
            let (queue, _) =
                self.declare_queue(&queue_name(group, stream_name, partition), spec.clone())?;
            let start = match fed
                .iter()
                .find(|((name, number), _)| name == stream_name && *number == partition)
            {
                Some((_, committed)) => committed.offset,
                None => {
                    stream
                        .partition(partition)?
                        .resolve(crate::StartAt::Latest)
                        .await?
                }
            };
            feeders.push(tokio::spawn(feed(
                Arc::downgrade(self),
                group.to_owned(),
                Arc::clone(&stream),
                partition,
                queue.clone(),
                start,
            )));
            queues.push(queue);
        }
        Ok(ShareGroup {
            name: group.to_owned(),
            stream,
            queues,
            feeders,
        })
    }
}

/// Feeds one share partition: reads the stream from `at` and appends a pointer per record
/// while the window has room; records how far it fed once the pointers are durable.
async fn feed(
    host: std::sync::Weak<VirtualHost>,
    group: String,
    stream: Arc<Stream>,
    partition: u32,
    queue: QueueHandle,
    mut at: u64,
) {
    let Ok(handle) = stream.partition(partition) else {
        return;
    };
    loop {
        let Ok(stats) = queue.stats().await else {
            return;
        };
        let outstanding = stats.ready + stats.unacked;
        if outstanding >= SHARE_WINDOW {
            tokio::time::sleep(FEED_WAIT).await;
            continue;
        }
        let spec = FetchSpec {
            on_out_of_range: OnOutOfRange::Earliest,
            ..FetchSpec::at(at).waiting(FEED_WAIT).committed()
        };
        let Ok(fetched) = handle.fetch(spec).await else {
            return;
        };
        let next = fetched.next_offset();
        let records = records_of(&fetched).unwrap_or_default();
        let room = usize::try_from(SHARE_WINDOW - outstanding).unwrap_or(usize::MAX);
        let mut tickets = Vec::new();
        let mut fed_to = next;
        for record in &records {
            if tickets.len() >= room {
                fed_to = record.offset;
                break;
            }
            let pointer = Message::new(bytes::Bytes::new())
                .persistent()
                .with_header("x-stream-offset", HeaderValue::Int(record.offset as i64));
            match queue.publish(pointer).await {
                Ok(ticket) => tickets.push(ticket),
                Err(_) => return,
            }
        }
        for ticket in tickets {
            if ticket.await.is_err() {
                return;
            }
        }
        if fed_to != at {
            let Some(host) = host.upgrade() else { return };
            let position = OffsetCommit {
                stream: stream.name().to_owned(),
                partition,
                offset: fed_to,
                metadata: String::new(),
            };
            let committed = host
                .groups()
                .commit(
                    &position_group(&group),
                    Committer::Transaction,
                    vec![position],
                )
                .await;
            if let Err(error) = committed {
                tracing::error!(group, partition, %error, "share group position not saved");
                return;
            }
            at = fed_to;
        }
    }
}

impl ShareGroup {
    /// The group's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Acquires up to `max_records` records, each leased for `lease` (back to the group if not
    /// acknowledged by then), from the partitions in turn; waits up to `wait` for one when
    /// none is there (on the first partition). Records retention removed meanwhile are skipped.
    ///
    /// # Errors
    /// `QueueStopped`; storage errors.
    pub async fn acquire(
        &self,
        max_records: usize,
        lease: Duration,
        wait: Option<Duration>,
    ) -> Result<Vec<Acquired>, CoreError> {
        let spec = GetSpec {
            auto_ack: false,
            lease_ms: Some(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)),
        };
        let mut acquired = Vec::new();
        let mut waited = false;
        while acquired.len() < max_records {
            let before = acquired.len();
            for (partition, queue) in self.queues.iter().enumerate() {
                if acquired.len() >= max_records {
                    break;
                }
                if let Some(delivery) = queue.get(spec, None).await? {
                    self.resolve(partition as u32, queue, delivery, &mut acquired)
                        .await?;
                }
            }
            if acquired.len() > before {
                continue;
            }
            match (wait, waited, self.queues.first()) {
                (Some(wait), false, Some(queue)) if acquired.is_empty() => {
                    waited = true;
                    if let Some(delivery) = queue.get(spec, Some(wait)).await? {
                        self.resolve(0, queue, delivery, &mut acquired).await?;
                    }
                }
                _ => break,
            }
        }
        Ok(acquired)
    }

    /// Reads the record a pointer names; a pointer to a record that is gone is settled.
    async fn resolve(
        &self,
        partition: u32,
        queue: &QueueHandle,
        delivery: Delivery,
        acquired: &mut Vec<Acquired>,
    ) -> Result<(), CoreError> {
        let offset = match delivery.message.properties.headers.get("x-stream-offset") {
            Some(HeaderValue::Int(offset)) => u64::try_from(*offset).unwrap_or(0),
            _ => {
                queue.settle(vec![delivery.id], Outcome::Discard).await?;
                return Ok(());
            }
        };
        let spec = FetchSpec {
            max_bytes: 1,
            ..FetchSpec::at(offset)
        };
        let record = match self.stream.fetch(partition, spec).await {
            Ok(fetched) => records_of(&fetched)?
                .into_iter()
                .find(|record| record.offset == offset),
            Err(CoreError::OffsetOutOfRange { .. }) => None,
            Err(error) => return Err(error),
        };
        match record {
            Some(record) => acquired.push(Acquired {
                partition,
                delivery: delivery.id,
                delivery_count: delivery.message.annotations.delivery_count + 1,
                record,
            }),
            None => queue.settle(vec![delivery.id], Outcome::Discard).await?,
        }
        Ok(())
    }

    /// Settles acquired records: `Accept` (done), `Requeue` (Kafka's release: back to the
    /// group, its delivery count raised) or `Discard` (Kafka's reject: archived).
    ///
    /// # Errors
    /// `UnknownPartition`; `UnknownDelivery` for a delivery no longer acquired (its lease
    /// ran out); storage errors.
    pub async fn acknowledge(
        &self,
        partition: u32,
        deliveries: Vec<u64>,
        outcome: Outcome,
    ) -> Result<(), CoreError> {
        let queue =
            self.queues
                .get(partition as usize)
                .ok_or_else(|| CoreError::UnknownPartition {
                    stream: self.stream.name().to_owned(),
                    partition,
                    partitions: self.queues.len() as u32,
                })?;
        queue.settle(deliveries, outcome).await
    }
}
