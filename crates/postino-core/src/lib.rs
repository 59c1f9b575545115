//! The broker core: routing (exchanges and bindings of a virtual host) and queues (a log plus a
//! shared cursor), protocol-neutral.
//!
//! Main types: [`VirtualHost`] (topology + queues + durable definitions; `publish` confirms
//! after durability), [`Topology`] (exchanges, bindings, `route`), [`QueueEngine`] (publish,
//! consume, get, settle, leases, recovery from its log) run by an owner task behind a
//! [`QueueHandle`], [`OffsetSet`], [`CoreError`]; [`record`] maps a [`postino_types::Message`]
//! onto a log record; [`Stream`] (partitions, each a log with its owner task behind a
//! [`PartitionHandle`]: produce with idempotent-producer checks, fetch by offset with long
//! polling, retention).
//!
//! Invariants: the core never sees protocol types and never reads the wall clock (every call
//! takes `now_ms`); each queue is mutated by one owner; a message is settled for good only after
//! its settlement record is appended to the queue's log.
//!
//! What it must not know: sockets, frames, protocol error codes.

pub mod access;
pub mod broker;
pub mod catalog;
mod certificates;
mod compacted;
pub mod connections;
mod definitions;
pub mod error;
pub mod filter;
pub mod group;
pub mod logins;
pub mod offsets;
pub mod options;
pub mod owner;
pub mod queue;
pub mod record;
pub mod stream;
pub mod topology;
pub mod transaction;
pub mod vhost;

pub use access::{Access, Action, DefaultUser, PermissionInfo, UserInfo};
pub use broker::{Alarm, Broker, DEFAULT_VHOST, FlowLimits, Resources};
pub use catalog::{Definitions, ImportReport, QueueInfo, Tags};
pub use certificates::user_of_certificate;
pub use connections::{
    ChannelInfo, Connection, Connections, ConsumerInfo, Origin, Registered, TrafficCounts,
};
pub use error::{CoreError, GroupError, TransactionError};
pub use filter::{Filter, FilterError};
pub use group::{Committer, GroupHandle, GroupLimits, Join, Joined, OffsetCommit};
pub use logins::{LoginGuard, LoginLimits};
pub use offsets::OffsetSet;
pub use options::{Overflow, QueueOptions};
pub use owner::{Enqueued, Lifecycle, QueueEvent, QueueHandle, Receipt};
pub use queue::{
    ConsumerId, ConsumerSpec, DeadLetter, Delivery, GetOutcome, GetSpec, Outcome, Published, Push,
    QueueEngine, QueueStats, QueueStore, WaiterId,
};
pub use stream::{
    FetchSpec, Fetched, OnOutOfRange, PartitionHandle, Partitioner, Produced, ProducerRecord,
    StartAt, Stream, StreamSpec,
};
pub use topology::{Binding, Destination, ExchangeKind, ExchangeSpec, Topology, topic_matches};
pub use transaction::{Committed, Transaction};
pub use vhost::{Confirm, ConnectionId, QueueSpec, Routed, VirtualHost};
