//! A virtual host: its topology, its queues (each run by an owner task), publishing with
//! confirmation after durability, and its durable definitions.
//!
//! Durable definitions (durable exchanges and queues, and bindings between durable ends) are
//! kept in `<dir>/definitions.json`, in the shape of RabbitMQ's definitions export, rewritten
//! atomically (write, fsync, rename, fsync the directory) on every change. Each durable queue
//! keeps its log in `<dir>/queues/<escaped name>/`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use postino_storage::{FileLog, Log, LogConfig, MemLog, MemStore};
use postino_types::{Clock, DeliveryMode, Headers, Message};
use tokio::sync::{mpsc, watch};

use crate::broker::Alarm;
use crate::definitions;
use crate::error::CoreError;
use crate::group::{GroupHandle, GroupLimits, OffsetStore};
use crate::options::QueueOptions;
use crate::owner::{Enqueued, Lifecycle, QueueEvent, QueueHandle, Receipt};
use crate::queue::{DeadLetter, QueueEngine, QueueStore};
use crate::stream::transactions::{self, ProducerTransactions};
use crate::stream::{ProducerIds, Stream, StreamEnqueued};
use crate::topology::{Binding, ExchangeSpec, Topology};
use crate::transaction::{Coordinator, Transaction};

/// What a queue declaration asks for; declaring an existing queue with a different spec fails.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Survives a restart (its persistent messages too).
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Headers,
}

impl QueueSpec {
    /// A durable queue with no options.
    #[must_use]
    pub fn durable() -> Self {
        Self {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Headers::new(),
        }
    }

    /// A transient queue with no options.
    #[must_use]
    pub fn transient() -> Self {
        Self {
            durable: false,
            ..Self::durable()
        }
    }
}

/// Where a routed message goes.
enum Target {
    Queue(QueueHandle),
    Stream(Arc<Stream>),
}

/// Where a publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Queues and streams that took the message; 0 means it was unroutable.
    pub queues: usize,
}

/// A message handed to one target's owner, not yet appended.
#[derive(Debug)]
enum Pending {
    Queue(Enqueued),
    Partition(StreamEnqueued),
}

/// Resolves when a pipelined publish is durable on every durable queue or stream it went to.
#[derive(Debug)]
#[must_use = "a publish is confirmed only once its Confirm resolves"]
pub struct Confirm {
    /// Each target's pending append, and whether its durability must be awaited.
    appends: Vec<(Pending, bool)>,
}

impl Confirm {
    /// Waits until the message is appended everywhere, and durable where it must be.
    ///
    /// # Errors
    /// A queue's append error; `Storage(Failed)` when a queue's sync failed: the outcome is
    /// unknown.
    pub async fn wait(self) -> Result<(), CoreError> {
        for (pending, durable) in self.appends {
            let ticket = match pending {
                Pending::Queue(enqueued) => enqueued.appended().await?,
                Pending::Partition(enqueued) => enqueued.appended().await?.durable,
            };
            if durable {
                ticket.await?;
            }
        }
        Ok(())
    }
}

/// Identifies a client connection, for exclusive queues.
pub type ConnectionId = u64;

#[derive(Debug)]
pub(crate) struct QueueEntry {
    pub(crate) spec: QueueSpec,
    pub(crate) handle: QueueHandle,
    /// The connection an exclusive queue belongs to.
    pub(crate) owner: Option<ConnectionId>,
}

fn check_owner(
    name: &str,
    entry: &QueueEntry,
    connection: Option<ConnectionId>,
) -> Result<(), CoreError> {
    match entry.owner {
        Some(owner) if Some(owner) != connection => Err(CoreError::ResourceLocked {
            queue: name.to_owned(),
        }),
        _ => Ok(()),
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) topology: Topology,
    pub(crate) queues: BTreeMap<String, QueueEntry>,
    pub(crate) streams: BTreeMap<String, Arc<Stream>>,
}

/// One virtual host, shared as `Arc<VirtualHost>`. Calls that start queues must run inside a
/// tokio runtime.
#[derive(Debug)]
pub struct VirtualHost {
    name: String,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) log_config: LogConfig,
    pub(crate) clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Ids for idempotent producers of this host's streams.
    pub(crate) producer_ids: Mutex<ProducerIds>,
    /// The consumer groups' coordinator.
    groups: GroupHandle,
    /// Transactional producers of the host's streams; its lock serialises their requests.
    pub(crate) producer_transactions: Arc<tokio::sync::Mutex<ProducerTransactions>>,
    /// Where queue owners send dead letters and lifecycle events; a task handles them.
    events: mpsc::UnboundedSender<QueueEvent>,
    /// Publishers wait while it holds an alarm.
    flow: watch::Receiver<Alarm>,
    /// Transaction decisions; its lock serialises commits.
    coordinator: tokio::sync::Mutex<Coordinator>,
    /// Transactions decided `commit` before the last stop whose markers may be missing.
    in_doubt: HashSet<u64>,
}

impl VirtualHost {
    /// Opens a virtual host keeping its durable data in `dir` (nothing is durable with `None`),
    /// re-creating the durable exchanges, queues and bindings saved there.
    ///
    /// # Errors
    /// `Definitions` when the saved definitions do not load; storage errors of a queue's log.
    pub fn open(
        name: &str,
        dir: Option<PathBuf>,
        log_config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, CoreError> {
        let (_, never_blocked) = watch::channel(Alarm::Clear);
        Self::open_with_flow(name, dir, log_config, clock, never_blocked)
    }

    /// Opens a virtual host whose publishers wait while `flow` holds an alarm (the node is
    /// over its memory or disk limit).
    ///
    /// # Errors
    /// As [`VirtualHost::open`].
    pub fn open_with_flow(
        name: &str,
        dir: Option<PathBuf>,
        log_config: LogConfig,
        clock: Arc<dyn Clock>,
        flow: watch::Receiver<Alarm>,
    ) -> Result<Arc<Self>, CoreError> {
        let (events, received) = mpsc::unbounded_channel();
        let (coordinator, in_doubt) = Coordinator::open(dir.as_deref(), &log_config, &clock)?;
        let producer_ids = ProducerIds::open(dir.as_ref().map(|dir| dir.join("producer-ids")))?;
        let groups = open_groups(dir.as_deref(), &log_config, &clock)?;
        let producer_transactions = transactions::open_state(internal_log(
            dir.as_deref(),
            "transactional-ids",
            &log_config,
            &clock,
        )?)?;
        let host = Arc::new(Self {
            name: name.to_owned(),
            dir,
            log_config,
            clock,
            state: Mutex::new(State::default()),
            producer_ids: Mutex::new(producer_ids),
            groups,
            producer_transactions,
            events,
            flow,
            coordinator: tokio::sync::Mutex::new(coordinator),
            in_doubt,
        });
        tokio::spawn(handle_events(Arc::downgrade(&host), received));
        // Streams first: saved bindings may name them.
        host.open_streams()?;
        let coordinator_state = Arc::clone(&host.producer_transactions)
            .try_lock_owned()
            .expect("nobody else holds the transaction coordinator while the host opens");
        tokio::spawn(VirtualHost::run_transaction_coordinator(
            Arc::downgrade(&host),
            coordinator_state,
        ));
        if let Some(path) = host.definitions_path().filter(|path| path.exists()) {
            definitions::load(&host, &path)?;
        }
        // Every queue has now written the markers of the transactions decided before the stop.
        if !host.in_doubt.is_empty() {
            let mut coordinator = host
                .coordinator
                .try_lock()
                .expect("nobody else holds the coordinator while the host opens");
            let now = host.clock.now_ms();
            for id in &host.in_doubt {
                coordinator.done(*id, now)?;
            }
        }
        Ok(host)
    }

    /// The virtual host's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Declares an exchange; returns whether it was created.
    ///
    /// # Errors
    /// As [`Topology::declare_exchange`]; `Definitions` when saving fails.
    pub fn declare_exchange(&self, name: &str, spec: ExchangeSpec) -> Result<bool, CoreError> {
        let mut state = self.lock();
        let durable = spec.durable;
        let created = state.topology.declare_exchange(name, spec)?;
        if created && durable {
            self.save_definitions(&state)?;
        }
        Ok(created)
    }

    /// Deletes an exchange and its bindings.
    ///
    /// # Errors
    /// As [`Topology::delete_exchange`]; `Definitions` when saving fails.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), CoreError> {
        let mut state = self.lock();
        state.topology.delete_exchange(name, if_unused)?;
        self.save_definitions(&state)
    }

    /// Declares a queue and starts its owner; returns its handle and whether it was created.
    ///
    /// # Errors
    /// As [`VirtualHost::declare_queue_for`].
    pub fn declare_queue(
        &self,
        name: &str,
        spec: QueueSpec,
    ) -> Result<(QueueHandle, bool), CoreError> {
        self.declare_queue_for(name, spec, None)
    }

    /// Declares a queue on behalf of `connection` (an exclusive queue belongs to it) and
    /// starts its owner; returns its handle and whether it was created. Re-declaring counts as
    /// a use for `x-expires`.
    ///
    /// # Errors
    /// `PreconditionFailed` when it exists with a different spec; `ResourceLocked` when it is
    /// exclusive to another connection; `InvalidArgument` for an exclusive queue without a
    /// connection or a bad argument; storage errors of its log; `Definitions` when saving
    /// fails.
    pub fn declare_queue_for(
        &self,
        name: &str,
        spec: QueueSpec,
        connection: Option<ConnectionId>,
    ) -> Result<(QueueHandle, bool), CoreError> {
        let mut state = self.lock();
        if let Some(existing) = state.queues.get(name) {
            check_owner(name, existing, connection)?;
            if existing.spec != spec {
                return Err(CoreError::PreconditionFailed {
                    reason: format!("queue '{name}' exists with different properties"),
                });
            }
            let handle = existing.handle.clone();
            tokio::spawn({
                let handle = handle.clone();
                async move { handle.touch().await }
            });
            return Ok((handle, false));
        }
        if state.streams.contains_key(name) {
            return Err(CoreError::PreconditionFailed {
                reason: format!("'{name}' is a stream, not a queue"),
            });
        }
        if spec.exclusive && connection.is_none() {
            return Err(CoreError::InvalidArgument {
                name: "exclusive".to_owned(),
                reason: "an exclusive queue needs a connection to belong to".to_owned(),
            });
        }
        let handle = self.start_queue(name, &spec)?;
        let persisted = spec.durable && !spec.exclusive;
        state.topology.add_queue(name);
        let owner = connection.filter(|_| spec.exclusive);
        state.queues.insert(
            name.to_owned(),
            QueueEntry {
                spec,
                handle: handle.clone(),
                owner,
            },
        );
        if persisted {
            self.save_definitions(&state)?;
        }
        Ok((handle, true))
    }

    /// The handle of a queue that `connection` may use.
    ///
    /// # Errors
    /// `NotFound`; `ResourceLocked` when the queue is exclusive to another connection.
    pub fn queue_for(
        &self,
        name: &str,
        connection: Option<ConnectionId>,
    ) -> Result<QueueHandle, CoreError> {
        let state = self.lock();
        let entry = state.queues.get(name).ok_or_else(|| CoreError::NotFound {
            kind: "queue",
            name: name.to_owned(),
        })?;
        check_owner(name, entry, connection)?;
        Ok(entry.handle.clone())
    }

    /// A connection went away: its exclusive queues are deleted.
    ///
    /// # Errors
    /// The first deletion error.
    pub async fn connection_closed(&self, connection: ConnectionId) -> Result<(), CoreError> {
        let owned: Vec<String> = self
            .lock()
            .queues
            .iter()
            .filter(|(_, entry)| entry.owner == Some(connection))
            .map(|(name, _)| name.clone())
            .collect();
        for name in owned {
            self.delete_queue(&name).await?;
        }
        Ok(())
    }

    /// Starts the owner of a queue over its log (a file log for a durable queue of a host
    /// with a directory, else memory).
    pub(crate) fn start_queue(
        &self,
        name: &str,
        spec: &QueueSpec,
    ) -> Result<QueueHandle, CoreError> {
        let options = QueueOptions::from_arguments(&spec.arguments)?;
        let lifecycle = Lifecycle {
            auto_delete: spec.auto_delete,
            expires_ms: options.expires_ms,
        };
        let clock = Arc::clone(&self.clock);
        let events = Some(self.events.clone());
        match (&self.dir, spec.durable) {
            (Some(dir), true) => {
                let path = queue_dir(dir, name);
                let log = FileLog::open(&path, self.log_config.clone())?;
                let store = QueueStore {
                    delay_dir: Some(path.join("delays")),
                    committed_transactions: self.committed_transactions(),
                };
                let engine = QueueEngine::open(name, log, options, store)?;
                Ok(QueueHandle::spawn(engine, clock, events, lifecycle))
            }
            _ => {
                let log = MemLog::open(
                    &MemStore::new(),
                    self.log_config.clone(),
                    Arc::clone(&clock),
                )?;
                let engine = QueueEngine::open(name, log, options, QueueStore::default())?;
                Ok(QueueHandle::spawn(engine, clock, events, lifecycle))
            }
        }
    }

    /// Deletes a queue only if it has no consumer (`if_unused`) and holds no message
    /// (`if_empty`), as AMQP `queue.delete` asks; see [`VirtualHost::delete_queue`].
    ///
    /// # Errors
    /// `PreconditionFailed` when a condition does not hold; as [`VirtualHost::delete_queue`].
    pub async fn delete_queue_if(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(), CoreError> {
        let handle = self.queue(name).ok_or_else(|| CoreError::NotFound {
            kind: "queue",
            name: name.to_owned(),
        })?;
        let stats = handle.stats().await?;
        if if_unused && stats.consumers > 0 {
            return Err(CoreError::PreconditionFailed {
                reason: format!("queue '{name}' in use"),
            });
        }
        if if_empty && stats.ready + stats.unacked + stats.delayed > 0 {
            return Err(CoreError::PreconditionFailed {
                reason: format!("queue '{name}' not empty"),
            });
        }
        self.delete_queue(name).await
    }

    /// Deletes a queue, its bindings and its stored messages; its owner stops first.
    ///
    /// # Errors
    /// `NotFound`; `Definitions` when saving fails.
    pub async fn delete_queue(&self, name: &str) -> Result<(), CoreError> {
        let entry = {
            let mut state = self.lock();
            let entry = state
                .queues
                .remove(name)
                .ok_or_else(|| CoreError::NotFound {
                    kind: "queue",
                    name: name.to_owned(),
                })?;
            state.topology.remove_queue(name);
            self.save_definitions(&state)?;
            entry
        };
        if let Err(error) = entry.handle.close().await {
            tracing::warn!(queue = name, %error, "deleted queue did not close cleanly");
        }
        if let (Some(dir), true) = (&self.dir, entry.spec.durable) {
            let path = queue_dir(dir, name);
            if let Err(error) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove a deleted queue's data");
            }
        }
        Ok(())
    }

    /// Stops every queue's and partition's owner and the group coordinator, syncing and closing
    /// their logs.
    ///
    /// # Errors
    /// The first error met; every queue is asked to close regardless.
    pub async fn close(&self) -> Result<(), CoreError> {
        let (handles, streams): (Vec<QueueHandle>, Vec<Arc<Stream>>) = {
            let state = self.lock();
            let handles = state
                .queues
                .values()
                .map(|entry| entry.handle.clone())
                .collect();
            (handles, state.streams.values().cloned().collect())
        };
        let mut outcome = Ok(());
        for handle in handles {
            if let Err(error) = handle.close().await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        for stream in streams {
            if let Err(error) = stream.close().await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        if let Err(error) = self.groups.close().await
            && outcome.is_ok()
        {
            outcome = Err(error);
        }
        outcome
    }

    /// The host's consumer-group coordinator.
    #[must_use]
    pub fn groups(&self) -> &GroupHandle {
        &self.groups
    }

    /// The spec of an exchange, if it exists.
    #[must_use]
    pub fn exchange_spec(&self, name: &str) -> Option<ExchangeSpec> {
        self.lock().topology.exchange(name).cloned()
    }

    /// Starts a transaction on this host.
    pub fn begin(self: &Arc<Self>) -> Transaction {
        Transaction::new(Arc::clone(self))
    }

    /// The queues a message goes to, by name.
    pub(crate) fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<Vec<(String, QueueHandle)>, CoreError> {
        let state = self.lock();
        let queues = state.topology.route(exchange, routing_key, message)?;
        if let Some(stream) = queues.iter().find(|name| state.streams.contains_key(*name)) {
            return Err(CoreError::PreconditionFailed {
                reason: format!("a transaction cannot publish to stream '{stream}' yet"),
            });
        }
        Ok(queues
            .into_iter()
            .filter_map(|queue| {
                let handle = state.queues.get(&queue)?.handle.clone();
                Some((queue, handle))
            })
            .collect())
    }

    pub(crate) fn coordinator(&self) -> &tokio::sync::Mutex<Coordinator> {
        &self.coordinator
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Transactions decided before the last stop whose markers queues may lack.
    pub(crate) fn committed_transactions(&self) -> HashSet<u64> {
        self.in_doubt.clone()
    }

    /// The handle of a queue, if it exists.
    #[must_use]
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.lock()
            .queues
            .get(name)
            .map(|entry| entry.handle.clone())
    }

    /// Adds a binding.
    ///
    /// # Errors
    /// As [`Topology::bind`]; `Definitions` when saving fails.
    pub fn bind(&self, binding: Binding) -> Result<(), CoreError> {
        let mut state = self.lock();
        state.topology.bind(binding)?;
        self.save_definitions(&state)
    }

    /// Removes a binding.
    ///
    /// # Errors
    /// As [`Topology::unbind`]; `Definitions` when saving fails.
    pub fn unbind(&self, binding: &Binding) -> Result<(), CoreError> {
        let mut state = self.lock();
        state.topology.unbind(binding)?;
        self.save_definitions(&state)
    }

    /// Routes a message and appends it to every queue it reaches. Returns once the message is
    /// durable on every durable queue it went to when it is persistent (a publisher confirm),
    /// and once it is enqueued otherwise.
    ///
    /// # Errors
    /// Routing errors (`NotFound`, `AccessRefused`); a queue's storage error; a durability
    /// failure (`Storage(Failed)`: the outcome is unknown, not "not stored").
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<Routed, CoreError> {
        let (routed, confirm) = self
            .publish_pipelined(exchange, routing_key, message)
            .await?;
        confirm.wait().await?;
        Ok(routed)
    }

    /// Routes a message like [`VirtualHost::publish`] but returns once it is in every target
    /// queue's mailbox, with a [`Confirm`] that resolves when it is appended everywhere and
    /// durable where it must be: publishers that pipeline (AMQP confirm mode, Kafka producers)
    /// keep many in flight.
    ///
    /// # Errors
    /// Routing errors; `QueueStopped`.
    pub async fn publish_pipelined(
        &self,
        exchange: &str,
        routing_key: &str,
        mut message: Message,
    ) -> Result<(Routed, Confirm), CoreError> {
        self.flow_clear().await;
        let targets: Vec<(Target, bool)> = {
            let state = self.lock();
            let names = state.topology.route(exchange, routing_key, &message)?;
            names
                .iter()
                .filter_map(|name| {
                    if let Some(entry) = state.queues.get(name) {
                        let durable = entry.spec.durable && self.dir.is_some();
                        Some((Target::Queue(entry.handle.clone()), durable))
                    } else {
                        let stream = state.streams.get(name)?;
                        Some((Target::Stream(Arc::clone(stream)), self.dir.is_some()))
                    }
                })
                .collect()
        };
        message.annotations.exchange = exchange.to_owned();
        message.annotations.routing_key = routing_key.to_owned();
        let persistent = message.properties.delivery_mode == DeliveryMode::Persistent;
        let mut appends = Vec::with_capacity(targets.len());
        let last = targets.len().saturating_sub(1);
        let mut message = Some(message);
        for (index, (target, durable)) in targets.iter().enumerate() {
            // The last target takes the message itself; the others a copy (bodies are shared).
            let copy = if index == last {
                message.take()
            } else {
                message.clone()
            }
            .expect("one message per target");
            let pending = match target {
                Target::Queue(handle) => Pending::Queue(handle.enqueue(copy).await?),
                Target::Stream(stream) => Pending::Partition(
                    stream
                        .enqueue_routed(routing_key, &copy, self.now_ms())
                        .await?,
                ),
            };
            appends.push((pending, persistent && *durable));
        }
        Ok((
            Routed {
                queues: targets.len(),
            },
            Confirm { appends },
        ))
    }

    /// Waits while the node is over a flow limit.
    async fn flow_clear(&self) {
        if *self.flow.borrow() != Alarm::Clear {
            let mut flow = self.flow.clone();
            // A closed channel means nobody raises alarms any more: publish.
            let _ = flow.wait_for(|alarm| *alarm == Alarm::Clear).await;
        }
    }

    /// Puts a message into the queue `name` as the default exchange routes it, like
    /// [`VirtualHost::publish_pipelined`], and also returns a [`Receipt`] that resolves when
    /// a consumer or a get first takes delivery of it.
    ///
    /// # Errors
    /// `NotFound` when there is no such queue (a stream has no deliveries to wait for);
    /// `QueueStopped`.
    pub async fn put_with_receipt(
        &self,
        name: &str,
        mut message: Message,
    ) -> Result<(Confirm, Receipt), CoreError> {
        self.flow_clear().await;
        let (handle, durable) = {
            let state = self.lock();
            let entry = state.queues.get(name).ok_or_else(|| CoreError::NotFound {
                kind: "queue",
                name: name.to_owned(),
            })?;
            (
                entry.handle.clone(),
                entry.spec.durable && self.dir.is_some(),
            )
        };
        message.annotations.exchange = String::new();
        message.annotations.routing_key = name.to_owned();
        let persistent = message.properties.delivery_mode == DeliveryMode::Persistent;
        let (enqueued, receipt) = handle.enqueue_with_receipt(message).await?;
        let confirm = Confirm {
            appends: vec![(Pending::Queue(enqueued), persistent && durable)],
        };
        Ok((confirm, receipt))
    }

    pub(crate) fn definitions_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join("definitions.json"))
    }

    /// Writes the durable definitions atomically.
    pub(crate) fn save_definitions(&self, state: &State) -> Result<(), CoreError> {
        match self.definitions_path() {
            Some(path) => definitions::save(state, &path),
            None => Ok(()),
        }
    }
}

/// Handles the events of the host's queues until the host is dropped: publishes dead letters
/// (at most once: a dead letter whose target is gone is dropped) and deletes queues that ask
/// to be deleted.
async fn handle_events(host: Weak<VirtualHost>, mut events: mpsc::UnboundedReceiver<QueueEvent>) {
    while let Some(event) = events.recv().await {
        let Some(host) = host.upgrade() else { return };
        match event {
            QueueEvent::DeadLetter(letter) => {
                let DeadLetter {
                    exchange,
                    routing_key,
                    message,
                } = *letter;
                match host
                    .publish_pipelined(&exchange, &routing_key, message)
                    .await
                {
                    Ok((_, confirm)) => {
                        tokio::spawn(async move {
                            if let Err(error) = confirm.wait().await {
                                tracing::warn!(%error, "dead letter not stored");
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%exchange, %error, "dead letter dropped"),
                }
            }
            QueueEvent::Unused { queue, reason } => {
                tracing::info!(%queue, reason, "deleting unused queue");
                match host.delete_queue(&queue).await {
                    Ok(()) | Err(CoreError::NotFound { .. }) => {}
                    Err(error) => tracing::warn!(%queue, %error, "unused queue not deleted"),
                }
            }
        }
    }
}

/// A queue's directory under its host's.
/// One of the host's internal logs: `<dir>/<path>` in 4 MiB segments (so that compaction gives
/// disk back soon), in memory without a directory.
fn internal_log(
    dir: Option<&Path>,
    path: &str,
    log_config: &LogConfig,
    clock: &Arc<dyn Clock>,
) -> Result<Box<dyn Log>, CoreError> {
    let config = LogConfig {
        segment_bytes_max: 4 << 20,
        batch_bytes_max: 4 << 20,
        ..log_config.clone()
    };
    Ok(match dir {
        Some(dir) => Box::new(FileLog::open(dir.join(path), config)?),
        None => Box::new(MemLog::open(&MemStore::new(), config, Arc::clone(clock))?),
    })
}

/// Starts the group coordinator over its offsets log (`<dir>/groups/offsets/`).
fn open_groups(
    dir: Option<&Path>,
    log_config: &LogConfig,
    clock: &Arc<dyn Clock>,
) -> Result<GroupHandle, CoreError> {
    let log = internal_log(dir, "groups/offsets", log_config, clock)?;
    Ok(GroupHandle::spawn(
        OffsetStore::open(log)?,
        GroupLimits::default(),
        Arc::clone(clock),
    ))
}

fn queue_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("queues").join(escape_name(name))
}

/// A name as one safe path component: every byte outside `[A-Za-z0-9_-]` written `%XX`.
pub(crate) fn escape_name(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// The name a path component made by [`escape_name`] stands for.
pub(crate) fn unescape_name(escaped: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&first, after)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(after.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &after[2..];
        } else {
            bytes.push(first);
            rest = after;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_names_come_back() {
        for name in ["/", "orders", "a/b.c", "..", "ünïcode"] {
            assert_eq!(unescape_name(&escape_name(name)).as_deref(), Some(name));
        }
        assert_eq!(unescape_name("%zz"), None);
    }

    #[test]
    fn queue_names_become_safe_directory_names() {
        let dir = Path::new("/data");
        assert_eq!(
            queue_dir(dir, "orders-1"),
            Path::new("/data/queues/orders-1")
        );
        assert_eq!(queue_dir(dir, "a/b.c"), Path::new("/data/queues/a%2Fb%2Ec"));
        assert_eq!(queue_dir(dir, ".."), Path::new("/data/queues/%2E%2E"));
    }
}
