//! The queue engine: a log plus a shared cursor, as a plain struct whose methods return the
//! deliveries they cause (the owner task around it only moves commands and effects).
//!
//! State: every message is a record of the queue's log; its offset is its delivery id. The
//! cursor holds the ready offsets (as ranges, one set per priority level), the in-flight
//! deliveries (holder, lease deadline, size), the delivery counts of messages delivered before,
//! and the consumers with their credit. A message leaves the queue for good (ack, reject,
//! expiry, overflow, delivery limit) through one settlement control record appended to the same
//! log at the end of the call, so that a restart rebuilds the cursor by reading the log; the
//! log's segments are deleted once every offset in them is settled. Messages that die are
//! returned as [`DeadLetter`]s for the caller to publish to the dead-letter exchange
//! (at-most-once, as RabbitMQ's default dead-lettering).
//!
//! Expiry (`x-message-ttl`, per-message `expiration`) applies at the head of each priority
//! level, as in RabbitMQ: a message behind a longer-lived one waits for it.
//!
//! Known gaps (later steps of the core issue): delayed delivery, message groups,
//! deduplication, transactions; delivery counts are not persisted, so a restart delivers
//! in-flight messages again with `redelivered = false`.

mod death;
mod dedup;
mod delay;
mod dispatch;
mod groups;
mod ready;
mod recovery;
mod runs;
mod store;
mod transaction;
mod types;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use postino_storage::batch::{BatchBuilder, ControlKind, control_batch};
use postino_storage::{Durable, Log, LogError, Offset};
use postino_types::{DeathReason, Message};

pub use death::DeadLetter;
pub use types::{
    ConsumerId, ConsumerSpec, Delivery, GetOutcome, GetSpec, Outcome, Published, Push, QueueStats,
    WaiterId,
};

use crate::error::CoreError;
use crate::offsets::OffsetSet;
use crate::options::{Overflow, QueueOptions};
use crate::record;
use ready::Ready;
use store::{Hot, Meta};

/// Ready messages a delivery looks through for one whose group is free, when message groups
/// are on; past it, delivery waits for a group to free up.
const GROUP_SCAN_MAX: usize = 1024;
/// Memory for recently published messages kept in memory (bodies plus a per-message
/// overhead), so that a delivery soon after its publish does not read the log back. Past it,
/// deliveries read the log; a backlog costs this at most, not memory per message.
const HOT_BYTES_MAX: usize = 8 << 20;

#[derive(Debug, Clone, Copy)]
enum Holder {
    Consumer(ConsumerId),
    Get,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    holder: Holder,
    deadline_ms: Option<i64>,
    bytes: u64,
    level: usize,
}

#[derive(Debug, Clone)]
struct Consumer {
    id: ConsumerId,
    spec: ConsumerSpec,
    unsettled: u32,
    unsettled_bytes: u64,
    /// Deliveries not yet reported written (see `ConsumerSpec::window`).
    in_transit: u32,
}

impl Consumer {
    /// Whether the consumer's filter, if any, accepts `message`.
    fn accepts(&self, message: &Message) -> bool {
        self.spec.filter.as_ref().is_none_or(|filter| {
            let annotations = &message.annotations;
            filter.matches(message, &annotations.exchange, &annotations.routing_key)
        })
    }

    fn can_take(&self, bytes: u64) -> bool {
        let count_ok = self.spec.prefetch_count == 0 || self.unsettled < self.spec.prefetch_count;
        let bytes_ok = self.spec.prefetch_bytes == 0
            || self.unsettled == 0
            || self.unsettled_bytes + bytes <= self.spec.prefetch_bytes;
        let window_ok = self.spec.window == 0 || self.in_transit < self.spec.window;
        count_ok && bytes_ok && window_ok
    }
}

/// One queue: its log and its shared cursor.
#[derive(Debug)]
pub struct QueueEngine<L: Log> {
    name: String,
    log: L,
    options: QueueOptions,
    ready: Ready,
    in_flight: BTreeMap<u64, InFlight>,
    leases: BTreeSet<(i64, u64)>,
    delivery_counts: HashMap<u64, u32>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    waiters: VecDeque<(WaiterId, GetSpec)>,
    hot: HashMap<u64, Hot>,
    hot_bytes: usize,
    /// Messages that left the queue for good during the current call; persisted at its end,
    /// or at the end of the owner's round while it holds them (`runs.rs`).
    settled: OffsetSet,
    holding_settlements: bool,
    dead_letters: Vec<DeadLetter>,
    dedup: Option<dedup::Window>,
    /// The last append's ticket: a duplicate is confirmed when it resolves, since everything
    /// appended before it is durable by then.
    last_ticket: Option<Durable>,
    busy: groups::Busy,
    delays: delay::Delays,
    /// Prepared transactions waiting for their outcome, by id.
    pending: BTreeMap<u64, transaction::Pending>,
    /// The counters [`QueueStats`] reports since the engine opened.
    totals: Totals,
}

#[derive(Debug, Default)]
struct Totals {
    published: u64,
    delivered: u64,
    acknowledged: u64,
}

/// Where a queue keeps what is not in its log, and what its host knows for its recovery.
#[derive(Debug, Clone, Default)]
pub struct QueueStore {
    /// The delay index's slot files (in memory without one).
    pub delay_dir: Option<PathBuf>,
    /// Transactions the host decided to commit whose markers may be missing.
    pub committed_transactions: HashSet<u64>,
}

impl<L: Log> QueueEngine<L> {
    /// Opens the queue over `log` with `options`, rebuilding its cursor from what the log
    /// holds: every persistent message not settled and not in an aborted transaction is ready
    /// again, or delayed until its `x-delay` has passed. Transient messages do not survive a
    /// reopen. A transaction prepared but never marked is committed when `store` says its host
    /// decided so, aborted otherwise, and its marker is written (and synced) now.
    ///
    /// # Errors
    /// Storage errors, or a stored message that does not decode.
    pub fn open(
        name: &str,
        log: L,
        options: QueueOptions,
        store: QueueStore,
    ) -> Result<Self, CoreError> {
        let levels = usize::from(options.max_priority.unwrap_or(0)) + 1;
        let mut dedup = options
            .deduplication
            .then(|| dedup::Window::new(options.deduplication_size, options.deduplication_ttl_ms));
        let mut delays = delay::Delays::open(store.delay_dir)?;
        let recovered = recovery::recover_ready(
            &log,
            levels,
            &store.committed_transactions,
            |record, live| {
                let delayed =
                    live && recovery::header_value(record, delay::HEADER.as_bytes()).is_some();
                if dedup.is_none() && !delayed {
                    return Ok(false);
                }
                let message = record::decode(record)?;
                if let Some(window) = &mut dedup
                    && let Some(key) = dedup::key_of(&message)
                {
                    window.remember(key, record.offset, record.timestamp_ms);
                }
                match delay::delay_of(&message).filter(|_| delayed) {
                    Some(delay) => {
                        let due = record.timestamp_ms.saturating_add(delay as i64);
                        delays.add(record.offset, due)?;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            },
        )?;
        let mut engine = Self {
            name: name.to_owned(),
            log,
            options,
            ready: recovered.ready,
            in_flight: BTreeMap::new(),
            leases: BTreeSet::new(),
            delivery_counts: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            waiters: VecDeque::new(),
            hot: HashMap::new(),
            hot_bytes: 0,
            settled: OffsetSet::new(),
            holding_settlements: false,
            dead_letters: Vec::new(),
            dedup,
            last_ticket: None,
            busy: groups::Busy::default(),
            delays,
            pending: BTreeMap::new(),
            totals: Totals::default(),
        };
        for (transaction, commit) in recovered.resolved {
            let kind = if commit {
                ControlKind::Commit
            } else {
                ControlKind::Abort
            };
            let mut marker = control_batch(kind, transaction as i64, 0, 0, 0);
            engine.log.append(&mut marker)?.durable.wait()?;
        }
        engine.reclaim()?;
        Ok(engine)
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ready and unacknowledged counts and consumers.
    #[must_use]
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.ready.len(),
            delayed: self.delays.len(),
            ready_bytes: self.ready.bytes(),
            unacked: self.in_flight.len() as u64,
            consumers: self.consumers.len(),
            published: self.totals.published,
            delivered: self.totals.delivered,
            acknowledged: self.totals.acknowledged,
        }
    }

    /// The log under the queue.
    #[must_use]
    pub fn log(&self) -> &L {
        &self.log
    }

    /// Gives the log back, e.g. to close it.
    pub fn into_log(self) -> L {
        self.log
    }

    /// The messages that died since the last call, for the dead-letter exchange.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// Appends a message and delivers what can be delivered. Length limits apply as
    /// `x-overflow` says.
    ///
    /// # Errors
    /// `PublishRejected` when the queue is full under `reject-publish(-dlx)`; storage errors
    /// (the queue must stop).
    pub fn publish(&mut self, now_ms: i64, message: Message) -> Result<Published, CoreError> {
        if let Some(duplicate) = self.admit(now_ms, &message)? {
            return Ok(duplicate);
        }
        let mut builder = BatchBuilder::new();
        record::push(&mut builder, &message, now_ms);
        let appended = self.log.append(&mut builder.build())?;
        let id = appended.base_offset.0;
        if self.dedup.is_some() {
            self.last_ticket = Some(appended.durable.clone());
        }
        self.enter(now_ms, id, message)?;
        self.totals.published += 1;
        // The message is stored: a failure to deliver (a read error further up the queue) is
        // the queue's, not this publish's, whose outcome must not be reported as a failure.
        let pushes = self.finish(now_ms).unwrap_or_else(|error| {
            tracing::error!(queue = %self.name, %error, "queue failed while delivering");
            Vec::new()
        });
        Ok(Published {
            id,
            duplicate: false,
            durable: appended.durable,
            pushes,
        })
    }

    /// Decides whether a message may be stored: `Some` answer for a duplicate within the
    /// deduplication window, an error when the queue is full under `reject-publish(-dlx)`.
    fn admit(&mut self, now_ms: i64, message: &Message) -> Result<Option<Published>, CoreError> {
        if let (Some(window), Some(key)) = (&self.dedup, dedup::key_of(message))
            && let Some(original) = window.find(&key, now_ms)
        {
            return Ok(Some(Published {
                id: original,
                duplicate: true,
                durable: self.last_ticket.clone().unwrap_or_else(Durable::ready),
                pushes: Vec::new(),
            }));
        }
        let bytes = message.body.len() as u64;
        if self.options.overflow != Overflow::DropHead && self.over_limits(1, bytes) {
            if self.options.overflow == Overflow::RejectPublishDlx {
                self.die(now_ms, None, message.clone(), DeathReason::MaxLength);
            }
            return Err(CoreError::PublishRejected {
                queue: self.name.clone(),
                reason: "queue is full (x-overflow)".to_owned(),
            });
        }
        Ok(None)
    }

    /// A stored message enters the queue: remembered for deduplication, then delayed or made
    /// ready (dropping the oldest past the length limits).
    fn enter(&mut self, now_ms: i64, id: u64, message: Message) -> Result<(), CoreError> {
        if let (Some(window), Some(key)) = (&mut self.dedup, dedup::key_of(&message)) {
            window.remember(key, id, now_ms);
        }
        if let Some(delay) = delay::delay_of(&message) {
            return self.delays.add(id, now_ms.saturating_add(delay as i64));
        }
        let bytes = message.body.len() as u64;
        let level = self.ready.level_of(message.properties.priority);
        self.ready.insert(level, id, bytes);
        let cost = store::hot_cost(&message);
        if self.hot_bytes + cost <= HOT_BYTES_MAX {
            self.hot_bytes += cost;
            let published_ms = now_ms;
            self.hot.insert(
                id,
                Hot {
                    message,
                    published_ms,
                },
            );
        }
        while self.over_limits(0, 0) {
            let Some((level, offset)) = self.ready.oldest() else {
                break;
            };
            let (message, meta) = self.take(offset)?;
            self.ready.remove(level, offset, meta.bytes);
            self.die(now_ms, Some(offset), message, DeathReason::MaxLength);
        }
        Ok(())
    }

    /// Whether `more` messages of `bytes` would take the ready messages past a length limit.
    fn over_limits(&self, more: u64, bytes: u64) -> bool {
        let count = self.ready.len() + more;
        let total = self.ready.bytes() + bytes;
        self.options.max_length.is_some_and(|max| count > max)
            || self.options.max_length_bytes.is_some_and(|max| total > max)
    }

    /// Adds a consumer and gives it what it can take.
    ///
    /// # Errors
    /// `PreconditionFailed` when the id is taken; storage errors.
    pub fn consume(
        &mut self,
        now_ms: i64,
        consumer: ConsumerId,
        spec: ConsumerSpec,
    ) -> Result<Vec<Push>, CoreError> {
        if self
            .consumers
            .iter()
            .any(|existing| existing.id == consumer)
        {
            return Err(CoreError::PreconditionFailed {
                reason: format!(
                    "consumer {consumer} already exists on queue '{}'",
                    self.name
                ),
            });
        }
        self.consumers.push(Consumer {
            id: consumer,
            spec,
            unsettled: 0,
            unsettled_bytes: 0,
            in_transit: 0,
        });
        self.finish(now_ms)
    }

    /// The front-end wrote `count` more of `consumer`'s deliveries to its client: that many
    /// more may be handed over within its window. An unknown consumer is ignored (it may have
    /// been cancelled meanwhile).
    ///
    /// # Errors
    /// Storage errors.
    pub fn written(
        &mut self,
        now_ms: i64,
        consumer: ConsumerId,
        count: u32,
    ) -> Result<Vec<Push>, CoreError> {
        if let Some(consumer) = self
            .consumers
            .iter_mut()
            .find(|existing| existing.id == consumer)
        {
            consumer.in_transit = consumer.in_transit.saturating_sub(count);
        }
        self.finish(now_ms)
    }

    /// Removes a consumer (cancelled, or its channel or connection went away); its unsettled
    /// deliveries return to the queue and go to the other consumers.
    ///
    /// # Errors
    /// Storage errors.
    pub fn cancel(&mut self, now_ms: i64, consumer: ConsumerId) -> Result<Vec<Push>, CoreError> {
        self.consumers.retain(|existing| existing.id != consumer);
        self.next_consumer = 0;
        self.recover(now_ms, consumer)
    }

    /// Returns a consumer's unsettled deliveries to the queue without cancelling it (AMQP
    /// `basic.recover` with requeue); they are delivered again, marked redelivered.
    ///
    /// # Errors
    /// Storage errors.
    pub fn recover(&mut self, now_ms: i64, consumer: ConsumerId) -> Result<Vec<Push>, CoreError> {
        let held: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| matches!(flight.holder, Holder::Consumer(id) if id == consumer))
            .map(|(offset, _)| *offset)
            .collect();
        for offset in held {
            self.return_to_queue(now_ms, offset)?;
        }
        self.finish(now_ms)
    }

    /// The consumers, in registration order (with single active consumer, the first is the
    /// active one).
    pub fn consumer_ids(&self) -> impl Iterator<Item = ConsumerId> + '_ {
        self.consumers.iter().map(|consumer| consumer.id)
    }

    /// Takes the first ready message (pull). With `waiter`, an empty queue registers the
    /// waiter, which a later message satisfies (a blocking get); without, it answers `Empty`
    /// (poll).
    ///
    /// # Errors
    /// Storage errors.
    pub fn get(
        &mut self,
        now_ms: i64,
        spec: GetSpec,
        waiter: Option<WaiterId>,
    ) -> Result<GetOutcome, CoreError> {
        self.expire_heads(now_ms)?;
        let outcome = match self.next_deliverable()? {
            Some((level, offset)) => {
                self.read_ahead(offset)?;
                let (message, meta) = self.take(offset)?;
                let delivery =
                    self.hand_out(now_ms, (level, offset), message, meta, Holder::Get, spec);
                GetOutcome::Delivered(Box::new(delivery))
            }
            None => match waiter {
                Some(waiter) => {
                    self.waiters.push_back((waiter, spec));
                    GetOutcome::Waiting
                }
                None => GetOutcome::Empty,
            },
        };
        self.flush(now_ms)?;
        Ok(outcome)
    }

    /// Takes the first of the next `scan_max` ready messages that `matches` accepts, leaving
    /// the others in place (the lecture notes' "get with a matching pattern"); `None` when no
    /// message in the window matches.
    ///
    /// # Errors
    /// Storage errors.
    pub fn get_matching(
        &mut self,
        now_ms: i64,
        spec: GetSpec,
        scan_max: usize,
        matches: impl Fn(&Message) -> bool,
    ) -> Result<Option<Delivery>, CoreError> {
        self.expire_heads(now_ms)?;
        let mut found = None;
        for (level, offset) in self.ready.in_order(scan_max) {
            let candidate = self.peek(offset)?;
            let group_busy = self.options.message_groups
                && groups::group_of(&candidate).is_some_and(|group| self.busy.is_busy(&group));
            let accepted = !group_busy && matches(&candidate);
            if accepted {
                let (message, meta) = self.take(offset)?;
                found =
                    Some(self.hand_out(now_ms, (level, offset), message, meta, Holder::Get, spec));
                break;
            }
        }
        self.flush(now_ms)?;
        Ok(found)
    }

    /// Removes every ready message (AMQP `queue.purge`); in-flight and delayed ones stay.
    /// Returns how many went.
    ///
    /// # Errors
    /// Storage errors.
    pub fn purge(&mut self, now_ms: i64) -> Result<u64, CoreError> {
        let mut purged = 0;
        while let Some((level, offset)) = self.ready.next() {
            let bytes = self.meta(offset)?.bytes;
            self.ready.remove(level, offset, bytes);
            if let Some(hot) = self.hot.remove(&offset) {
                self.hot_bytes -= store::hot_cost(&hot.message);
            }
            self.delivery_counts.remove(&offset);
            self.settled.insert(offset);
            purged += 1;
        }
        self.flush(now_ms)?;
        Ok(purged)
    }

    /// Forgets a waiting `get` (it timed out or its client left).
    pub fn cancel_get(&mut self, waiter: WaiterId) {
        self.waiters.retain(|(id, _)| *id != waiter);
    }

    /// Settles deliveries. `Accept` settles them for good; `Discard` too, dead-lettering them
    /// (reason `rejected`); `Requeue` returns them to the queue with their count raised (or
    /// dead-letters them past `x-delivery-limit`).
    ///
    /// # Errors
    /// `UnknownDelivery` when an id is not in flight (nothing is settled then); storage errors.
    pub fn settle(
        &mut self,
        now_ms: i64,
        ids: &[u64],
        outcome: Outcome,
    ) -> Result<Vec<Push>, CoreError> {
        if let Some(unknown) = ids.iter().find(|id| !self.in_flight.contains_key(id)) {
            return Err(CoreError::UnknownDelivery { delivery: *unknown });
        }
        self.apply_settle(now_ms, ids, outcome)?;
        self.finish(now_ms)
    }

    /// Settles in-flight deliveries (checked by the caller), without delivering.
    fn apply_settle(
        &mut self,
        now_ms: i64,
        ids: &[u64],
        outcome: Outcome,
    ) -> Result<(), CoreError> {
        for &id in ids {
            match outcome {
                Outcome::Requeue => self.return_to_queue(now_ms, id)?,
                Outcome::Accept => {
                    self.release(id);
                    self.totals.acknowledged += 1;
                    self.delivery_counts.remove(&id);
                    self.settled.insert(id);
                }
                Outcome::Discard => {
                    self.release(id);
                    let (message, _) = self.read(id)?;
                    self.die(now_ms, Some(id), message, DeathReason::Rejected);
                }
            }
        }
        Ok(())
    }

    /// Moves a delivery's lease deadline to `lease_ms` from now (SQS ChangeMessageVisibility);
    /// 0 returns it to the queue at once.
    ///
    /// # Errors
    /// `UnknownDelivery` when it is not in flight; storage errors.
    pub fn change_lease(
        &mut self,
        now_ms: i64,
        id: u64,
        lease_ms: u64,
    ) -> Result<Vec<Push>, CoreError> {
        let flight = self
            .in_flight
            .get_mut(&id)
            .ok_or(CoreError::UnknownDelivery { delivery: id })?;
        if let Some(deadline) = flight.deadline_ms.take() {
            self.leases.remove(&(deadline, id));
        }
        let deadline = now_ms.saturating_add(lease_ms as i64);
        flight.deadline_ms = Some(deadline);
        self.leases.insert((deadline, id));
        self.expire(now_ms)
    }

    /// Returns every delivery whose lease ended to the queue, expires messages whose time to
    /// live ended, and delivers again.
    ///
    /// # Errors
    /// Storage errors.
    pub fn expire(&mut self, now_ms: i64) -> Result<Vec<Push>, CoreError> {
        while let Some(&(deadline, id)) = self.leases.first() {
            if deadline > now_ms {
                break;
            }
            self.return_to_queue(now_ms, id)?;
        }
        self.finish(now_ms)
    }

    /// The earliest time something is due (a lease ends, a head message expires), for the
    /// owner to wake up at.
    ///
    /// # Errors
    /// Storage errors while reading a head message.
    pub fn next_deadline(&mut self) -> Result<Option<i64>, CoreError> {
        let mut next = [
            self.leases.first().map(|(deadline, _)| *deadline),
            self.delays.next_due(),
        ]
        .into_iter()
        .flatten()
        .min();
        let heads: Vec<u64> = self.ready.heads().map(|(_, offset)| offset).collect();
        for offset in heads {
            if let Some(expiry) = self.expiry_of(self.meta(offset)?) {
                next = Some(next.map_or(expiry, |next| next.min(expiry)));
            }
        }
        Ok(next)
    }

    /// When a message expires, if it does.
    fn expiry_of(&self, meta: Meta) -> Option<i64> {
        let ttl = match (self.options.message_ttl_ms, meta.expiration_ms) {
            (Some(queue), Some(message)) => queue.min(message),
            (Some(ttl), None) | (None, Some(ttl)) => ttl,
            (None, None) => return None,
        };
        // A zero time to live lets a message reach a consumer that is there at once.
        Some(
            meta.published_ms
                .saturating_add(ttl as i64)
                .saturating_add(i64::from(ttl == 0)),
        )
    }

    fn is_expired(&self, now_ms: i64, meta: Meta) -> bool {
        self.expiry_of(meta).is_some_and(|expiry| now_ms >= expiry)
    }

    /// Makes delayed messages whose time came ready, then expires messages at the head of
    /// every level whose time to live ended.
    fn expire_heads(&mut self, now_ms: i64) -> Result<(), CoreError> {
        for offset in self.delays.take_due(now_ms)? {
            let (message, meta) = self.read(offset)?;
            let level = self.ready.level_of(message.properties.priority);
            self.ready.insert(level, offset, meta.bytes);
        }
        loop {
            let heads: Vec<(usize, u64)> = self.ready.heads().collect();
            let mut expired_any = false;
            for (level, offset) in heads {
                let meta = self.meta(offset)?;
                if self.is_expired(now_ms, meta) {
                    let (message, meta) = self.take(offset)?;
                    self.ready.remove(level, offset, meta.bytes);
                    self.die(now_ms, Some(offset), message, DeathReason::Expired);
                    expired_any = true;
                }
            }
            if !expired_any {
                return Ok(());
            }
        }
    }

    /// Removes an in-flight delivery, gives its holder its credit back, counts the delivery;
    /// returns what it was.
    fn release(&mut self, id: u64) -> Option<InFlight> {
        let flight = self.in_flight.remove(&id)?;
        self.busy.release(id);
        if let Some(deadline) = flight.deadline_ms {
            self.leases.remove(&(deadline, id));
        }
        if let Holder::Consumer(holder) = flight.holder
            && let Some(consumer) = self
                .consumers
                .iter_mut()
                .find(|consumer| consumer.id == holder)
        {
            consumer.unsettled -= 1;
            consumer.unsettled_bytes -= flight.bytes;
        }
        *self.delivery_counts.entry(id).or_insert(0) += 1;
        Some(flight)
    }

    /// An in-flight message goes back to ready, or dies past the delivery limit.
    fn return_to_queue(&mut self, now_ms: i64, id: u64) -> Result<(), CoreError> {
        let Some(flight) = self.release(id) else {
            return Ok(());
        };
        let count = self.delivery_counts.get(&id).copied().unwrap_or(0);
        if self
            .options
            .delivery_limit
            .is_some_and(|limit| count > limit)
        {
            let (message, _) = self.read(id)?;
            self.die(now_ms, Some(id), message, DeathReason::DeliveryLimit);
        } else {
            self.ready.insert(flight.level, id, flight.bytes);
        }
        Ok(())
    }

    /// A message leaves the queue for good: settled (when it was stored) and dead-lettered.
    fn die(&mut self, now_ms: i64, offset: Option<u64>, message: Message, reason: DeathReason) {
        if let Some(offset) = offset {
            self.delivery_counts.remove(&offset);
            self.settled.insert(offset);
        }
        if let Some(letter) = death::dead_letter(message, &self.name, reason, &self.options, now_ms)
        {
            self.dead_letters.push(letter);
        }
    }

    /// The next message to hand out: the head, or with message groups the first (within
    /// `GROUP_SCAN_MAX`) whose group has nothing in flight.
    fn next_deliverable(&self) -> Result<Option<(usize, u64)>, CoreError> {
        if !self.options.message_groups {
            return Ok(self.ready.next());
        }
        for (level, offset) in self.ready.in_order(GROUP_SCAN_MAX) {
            let group = groups::group_of(&self.peek(offset)?);
            if group.is_none_or(|group| !self.busy.is_busy(&group)) {
                return Ok(Some((level, offset)));
            }
        }
        Ok(None)
    }

    /// Takes `offset` out of the ready set and hands it to `holder`, settling it at once or
    /// leasing it as `mode` says.
    fn hand_out(
        &mut self,
        now_ms: i64,
        (level, offset): (usize, u64),
        mut message: Message,
        meta: Meta,
        holder: Holder,
        mode: GetSpec,
    ) -> Delivery {
        let GetSpec { auto_ack, lease_ms } = mode;
        self.ready.remove(level, offset, meta.bytes);
        let count = self.delivery_counts.get(&offset).copied().unwrap_or(0);
        message.annotations.delivery_count = count;
        message.annotations.redelivered = count > 0;
        self.totals.delivered += 1;
        if auto_ack {
            self.delivery_counts.remove(&offset);
            self.settled.insert(offset);
        } else {
            let deadline_ms = lease_ms.map(|lease| now_ms.saturating_add(lease as i64));
            if let Some(deadline) = deadline_ms {
                self.leases.insert((deadline, offset));
            }
            if let Holder::Consumer(id) = holder
                && let Some(consumer) = self.consumers.iter_mut().find(|consumer| consumer.id == id)
            {
                consumer.unsettled += 1;
                consumer.unsettled_bytes += meta.bytes;
            }
            if self.options.message_groups
                && let Some(group) = groups::group_of(&message)
            {
                self.busy.hold(group, offset);
            }
            let flight = InFlight {
                holder,
                deadline_ms,
                bytes: meta.bytes,
                level,
            };
            self.in_flight.insert(offset, flight);
        }
        Delivery {
            id: offset,
            message,
        }
    }

    /// Expires heads, delivers, and persists what the call settled. Deliveries made are
    /// answered even when persisting fails after them (they are in flight now).
    fn finish(&mut self, now_ms: i64) -> Result<Vec<Push>, CoreError> {
        let pushes = self.deliver(now_ms)?;
        match self.flush(now_ms) {
            Err(error) if pushes.is_empty() => Err(error),
            Err(error) => {
                tracing::error!(queue = %self.name, %error, "queue could not persist settlements");
                Ok(pushes)
            }
            Ok(()) => Ok(pushes),
        }
    }

    /// Appends one settlement record for everything the call settled, then deletes the log
    /// segments that hold only settled records. When the file system is full, the settlements
    /// wait for the next call's record (acks were never promised durable: a restart meanwhile
    /// redelivers them, as at-least-once allows), and the segments are deleted all the same,
    /// which is what frees space.
    fn flush(&mut self, now_ms: i64) -> Result<(), CoreError> {
        if self.settled.is_empty() || self.holding_settlements {
            return Ok(());
        }
        let settled = std::mem::take(&mut self.settled);
        match self
            .log
            .append(&mut recovery::settlement_batch(&settled, now_ms))
        {
            Ok(_) => {}
            Err(LogError::NoSpace { .. }) => {
                tracing::debug!(queue = %self.name, settled = settled.len(), "no space for settlements; they wait for the next record");
                self.settled = settled;
            }
            Err(error) => return Err(error.into()),
        }
        self.reclaim()
    }

    /// Deletes the log segments that hold only settled records.
    fn reclaim(&mut self) -> Result<(), CoreError> {
        let head = [
            self.ready.first_offset(),
            self.in_flight.keys().next().copied(),
            self.delays.lowest_offset(),
            self.pending
                .values()
                .filter_map(transaction::Pending::first_offset)
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.log.next_offset().0);
        self.log.delete_up_to(Offset(head))?;
        Ok(())
    }
}
