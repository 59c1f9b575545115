//! The node's client connections as the management API lists them: each front-end registers a
//! connection when it accepts one and describes it as the session goes (user, virtual host,
//! channels, consumers), counts its bytes, and is told when an operator closes it.
//!
//! A [`Registered`] connection leaves the registry when it is dropped; its traffic then adds
//! to the node's totals, so byte counters only grow.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use postino_types::LatencyHistogram;
use tokio::sync::Notify;

/// Where a connection comes from and how it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The protocol, as RabbitMQ names it (`AMQP 0-9-1`).
    pub protocol: &'static str,
    /// The client's address (`None` for a connection inside the process).
    pub peer: Option<SocketAddr>,
    /// The listener's address the client reached.
    pub local: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The user a client certificate the handshake verified names (its subject's CN).
    pub certificate_user: Option<String>,
}

/// Bytes and reads/writes of one connection (or of the node's closed connections).
#[derive(Debug, Default)]
pub struct Traffic {
    received_bytes: AtomicU64,
    received_reads: AtomicU64,
    sent_bytes: AtomicU64,
    sent_writes: AtomicU64,
}

/// [`Traffic`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    pub received_bytes: u64,
    pub received_reads: u64,
    pub sent_bytes: u64,
    pub sent_writes: u64,
}

impl Traffic {
    /// One read of `bytes` from the client.
    pub fn received(&self, bytes: usize) {
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.received_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// One write of `bytes` to the client.
    pub fn sent(&self, bytes: usize) {
        self.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.sent_writes.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn counts(&self) -> TrafficCounts {
        TrafficCounts {
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
            received_reads: self.received_reads.load(Ordering::Relaxed),
            sent_bytes: self.sent_bytes.load(Ordering::Relaxed),
            sent_writes: self.sent_writes.load(Ordering::Relaxed),
        }
    }

    fn add(&self, counts: TrafficCounts) {
        self.received_bytes
            .fetch_add(counts.received_bytes, Ordering::Relaxed);
        self.received_reads
            .fetch_add(counts.received_reads, Ordering::Relaxed);
        self.sent_bytes
            .fetch_add(counts.sent_bytes, Ordering::Relaxed);
        self.sent_writes
            .fetch_add(counts.sent_writes, Ordering::Relaxed);
    }
}

/// A consumer as its session describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub queue: String,
    pub ack_required: bool,
    pub exclusive: bool,
    pub prefetch_count: u32,
    /// Its arguments, rendered as text (`x-priority` → `5`).
    pub arguments: BTreeMap<String, String>,
}

/// Counts a session reads when asked (a channel's unsettled deliveries).
pub type Probe = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A channel as its session describes it.
#[derive(Clone, Default)]
pub struct ChannelInfo {
    pub confirm: bool,
    pub transactional: bool,
    /// `basic.qos` per consumer, for the consumers started from now on.
    pub prefetch_count: u32,
    /// `basic.qos` with `global`: shared by all the channel's consumers.
    pub global_prefetch_count: u32,
    pub consumers: BTreeMap<String, ConsumerInfo>,
    /// Deliveries handed to the client and not yet settled.
    pub unacked: Option<Probe>,
}

impl std::fmt::Debug for ChannelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelInfo")
            .field("confirm", &self.confirm)
            .field("transactional", &self.transactional)
            .field("prefetch_count", &self.prefetch_count)
            .field("global_prefetch_count", &self.global_prefetch_count)
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

/// What a session has learnt of its connection.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Empty until the login succeeds.
    pub user: String,
    /// Empty until a virtual host is opened.
    pub vhost: String,
    pub auth_mechanism: String,
    /// What the client said of itself (`product`, `version`, `platform`, `connection_name`).
    pub client_properties: BTreeMap<String, String>,
    pub heartbeat_s: u16,
    pub frame_max: u32,
    pub channel_max: u16,
    pub channels: BTreeMap<u16, ChannelInfo>,
}

/// One live connection.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    name: String,
    origin: Origin,
    connected_at_ms: i64,
    traffic: Traffic,
    session: Mutex<Session>,
    close: Mutex<Option<String>>,
    closing: Notify,
}

impl Connection {
    /// The node-unique number of the connection.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// RabbitMQ's name: `peer -> listener` (or `in-process N`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    #[must_use]
    pub fn connected_at_ms(&self) -> i64 {
        self.connected_at_ms
    }

    #[must_use]
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Changes what the registry shows of the session.
    pub fn describe(&self, change: impl FnOnce(&mut Session)) {
        change(&mut self.lock());
    }

    /// Changes one channel's description, if the channel is listed.
    pub fn describe_channel(&self, channel: u16, change: impl FnOnce(&mut ChannelInfo)) {
        if let Some(info) = self.lock().channels.get_mut(&channel) {
            change(info);
        }
    }

    /// A copy of the session's description.
    #[must_use]
    pub fn session(&self) -> Session {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the connection's session to close, telling the client `reason`.
    pub fn close(&self, reason: &str) {
        *self.close.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
        self.closing.notify_one();
    }

    /// Resolves when an operator asks the connection to close, with the reason given.
    pub async fn closed(&self) -> String {
        loop {
            if let Some(reason) = self
                .close
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                return reason;
            }
            self.closing.notified().await;
        }
    }
}

/// A connection in the registry; dropping it takes the connection out.
#[derive(Debug)]
pub struct Registered {
    connection: Arc<Connection>,
    registry: Arc<Registry>,
}

impl std::ops::Deref for Registered {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.connection.id);
        self.registry.closed.add(self.connection.traffic.counts());
        self.registry.closed_count.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Registry {
    next: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<Connection>>>,
    closed: Traffic,
    closed_count: AtomicU64,
    confirm_latency: LatencyHistogram,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The node's live connections and its connection totals.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    registry: Arc<Registry>,
}

impl Connections {
    /// Lists a new connection; it stays listed while the returned value lives.
    #[must_use]
    pub fn register(&self, origin: Origin, now_ms: i64) -> Registered {
        let id = self.registry.next.fetch_add(1, Ordering::Relaxed) + 1;
        let name = match (origin.peer, origin.local) {
            (Some(peer), Some(local)) => format!("{peer} -> {local}"),
            (Some(peer), None) => peer.to_string(),
            _ => format!("in-process {id}"),
        };
        let connection = Arc::new(Connection {
            id,
            name,
            origin,
            connected_at_ms: now_ms,
            traffic: Traffic::default(),
            session: Mutex::default(),
            close: Mutex::new(None),
            closing: Notify::new(),
        });
        self.registry.lock().insert(id, Arc::clone(&connection));
        Registered {
            connection,
            registry: Arc::clone(&self.registry),
        }
    }

    /// The live connections, oldest first.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<Connection>> {
        self.registry.lock().values().cloned().collect()
    }

    /// The live connection called `name`.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<Arc<Connection>> {
        self.registry
            .lock()
            .values()
            .find(|connection| connection.name == name)
            .cloned()
    }

    /// Traffic of every connection the node has served, the live ones included.
    #[must_use]
    pub fn traffic(&self) -> TrafficCounts {
        let mut total = self.registry.closed.counts();
        for connection in self.registry.lock().values() {
            let counts = connection.traffic.counts();
            total.received_bytes += counts.received_bytes;
            total.received_reads += counts.received_reads;
            total.sent_bytes += counts.sent_bytes;
            total.sent_writes += counts.sent_writes;
        }
        total
    }

    /// Connections opened since the node started, and how many of them have closed.
    #[must_use]
    pub fn opened_and_closed(&self) -> (u64, u64) {
        (
            self.registry.next.load(Ordering::Relaxed),
            self.registry.closed_count.load(Ordering::Relaxed),
        )
    }

    /// From a publish's arrival to its confirm being sent, over every connection.
    #[must_use]
    pub fn confirm_latency(&self) -> &LatencyHistogram {
        &self.registry.confirm_latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(port: u16) -> Origin {
        Origin {
            protocol: "AMQP 0-9-1",
            peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            local: Some(SocketAddr::from(([127, 0, 0, 1], 5672))),
            tls: false,
            certificate_user: None,
        }
    }

    #[test]
    fn a_connection_is_listed_while_registered_and_its_traffic_outlives_it() {
        let connections = Connections::default();
        let first = connections.register(origin(40_000), 1);
        let second = connections.register(origin(40_001), 2);
        assert_eq!(first.name(), "127.0.0.1:40000 -> 127.0.0.1:5672");
        assert_eq!(connections.list().len(), 2);
        first.traffic().received(100);
        second.traffic().sent(7);
        first.describe(|session| {
            session.user = "guest".into();
            session.channels.insert(1, ChannelInfo::default());
        });
        first.describe_channel(1, |channel| channel.confirm = true);
        first.describe_channel(2, |channel| channel.confirm = true);
        let session = connections
            .find("127.0.0.1:40000 -> 127.0.0.1:5672")
            .expect("listed")
            .session();
        assert_eq!(session.user, "guest");
        assert_eq!(session.channels.len(), 1);
        assert!(session.channels[&1].confirm);
        drop(first);
        assert_eq!(connections.list().len(), 1);
        assert_eq!(connections.opened_and_closed(), (2, 1));
        let traffic = connections.traffic();
        assert_eq!(traffic.received_bytes, 100);
        assert_eq!(traffic.sent_bytes, 7);
        assert_eq!((traffic.received_reads, traffic.sent_writes), (1, 1));
    }

    #[tokio::test]
    async fn closing_wakes_the_session_with_the_reason() {
        let connections = Connections::default();
        let registered = connections.register(origin(40_002), 0);
        let listed = connections.list().pop().expect("listed");
        listed.close("maintenance");
        assert_eq!(registered.closed().await, "maintenance");
    }
}
