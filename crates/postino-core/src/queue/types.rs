//! The public vocabulary of the queue engine: how consumers and gets take messages, what
//! settlement does, and what the engine hands out.

use postino_storage::Durable;
use postino_types::Message;

use crate::filter::Filter;

/// Identifies a consumer within its queue.
pub type ConsumerId = u64;
/// Identifies a waiting `get` within its queue.
pub type WaiterId = u64;

/// How a consumer takes deliveries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumerSpec {
    /// Unsettled deliveries allowed at once (0: no limit), AMQP `basic.qos` prefetch-count.
    pub prefetch_count: u32,
    /// Unsettled body bytes allowed at once (0: no limit); one delivery may exceed it when the
    /// consumer holds nothing.
    pub prefetch_bytes: u64,
    /// Settled on delivery (at-most-once): AMQP `no-ack`, MQTT QoS 0.
    pub auto_ack: bool,
    /// A delivery not settled within this many ms returns to the queue (visibility timeout).
    pub lease_ms: Option<u64>,
    /// Consumers of a higher priority get deliveries first while they have credit (`x-priority`).
    pub priority: i32,
    /// Only messages this filter accepts (`x-filter`); others stay for other consumers.
    pub filter: Option<Filter>,
    /// Deliveries handed to the front-end and not yet reported written to the client
    /// ([`crate::QueueEngine::written`]) allowed at once, acks aside (0: no limit). A front-end
    /// whose client stops reading stops reporting, so the backlog stays in the queue instead of
    /// in the front-end's buffers, whatever the prefetch (none, or no-ack).
    pub window: u32,
}

/// How a `get` takes a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetSpec {
    /// Settled on delivery.
    pub auto_ack: bool,
    /// A delivery not settled within this many ms returns to the queue.
    pub lease_ms: Option<u64>,
}

/// What settling a delivery does with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done with it (ack).
    Accept,
    /// Back to the queue for another delivery (nack/reject with requeue).
    Requeue,
    /// Refused (nack/reject without requeue): dead-lettered with reason `rejected`, or dropped.
    Discard,
}

/// One message handed to a consumer or a waiting `get`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The delivery id (the message's offset in the queue's log); settle with it.
    pub id: u64,
    /// The message, with `redelivered` and `delivery_count` set.
    pub message: Message,
}

/// A delivery the engine pushes, caused by the call that returned it.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// To a consumer.
    Consumer {
        consumer: ConsumerId,
        delivery: Delivery,
    },
    /// To a waiting `get`, which is then done.
    Waiter {
        waiter: WaiterId,
        delivery: Delivery,
    },
}

/// The result of a publish: where the message went and when it is durable.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: u64,
    /// The message was a duplicate within the deduplication window: not stored again; `id` is
    /// the original's.
    pub duplicate: bool,
    /// Resolves when the message is durable under the queue log's policy.
    pub durable: Durable,
    /// Deliveries the new message caused.
    pub pushes: Vec<Push>,
}

/// The result of a `get`.
#[derive(Debug, Clone, PartialEq)]
pub enum GetOutcome {
    Delivered(Box<Delivery>),
    /// Nothing was ready and the caller did not wait.
    Empty,
    /// Nothing was ready; the waiter gets a [`Push::Waiter`] later (or is cancelled).
    Waiting,
}

/// Counters of a queue, as the management API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub ready: u64,
    /// Waiting for their `x-delay` to pass.
    pub delayed: u64,
    pub ready_bytes: u64,
    pub unacked: u64,
    pub consumers: usize,
    /// Since the queue's owner started: messages published to it (outside transactions),
    /// handed to consumers and gets, and acknowledged by them; rates come from these.
    pub published: u64,
    pub delivered: u64,
    pub acknowledged: u64,
}
