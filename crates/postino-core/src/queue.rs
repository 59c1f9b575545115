//! The queue engine: a log plus a shared cursor, as a plain struct whose methods return the
//! deliveries they cause (the owner task around it only moves commands and effects).
//!
//! State: every message is a record of the queue's log; its offset is its delivery id. The
//! cursor holds the `ready` offsets (as ranges), the in-flight deliveries (consumer, lease
//! deadline, size), the delivery counts of messages delivered before, and the consumers with
//! their credit. Settling a message for good (ack, reject without requeue) appends a settlement
//! control batch to the same log, so that a restart rebuilds the cursor by reading the log; the
//! log's segments are deleted once every offset in them is settled.
//!
//! Known gaps of this first version (later steps of the core issue): TTL, dead-lettering, max
//! length, priorities, delayed delivery, message groups, deduplication, transactions; delivery
//! counts are not persisted, so a restart delivers in-flight messages again with
//! `redelivered = false`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use postino_storage::batch::{BatchBuilder, Record, control_kind};
use postino_storage::{Durable, Log, Offset};
use postino_types::Message;

use crate::error::CoreError;
use crate::offsets::OffsetSet;
use crate::record;

/// Identifies a consumer within its queue.
pub type ConsumerId = u64;
/// Identifies a waiting `get` within its queue.
pub type WaiterId = u64;

/// Control record type of a settlement (Kafka uses 0 and 1 for transaction markers).
const SETTLE_CONTROL_TYPE: i16 = 100;
/// Reads while recovering ask for this many bytes at a time.
const RECOVERY_READ_BYTES: usize = 1 << 20;
/// Body bytes of recently published messages kept in memory, so that a delivery soon after
/// its publish does not read the log back. Past it, deliveries read the log.
const HOT_BYTES_MAX: usize = 8 << 20;

/// How a consumer takes deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// Dropped (nack/reject without requeue).
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
}

#[derive(Debug, Clone)]
struct Consumer {
    id: ConsumerId,
    spec: ConsumerSpec,
    unsettled: u32,
    unsettled_bytes: u64,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.spec.prefetch_count == 0 || self.unsettled < self.spec.prefetch_count
    }

    fn takes_bytes(&self, bytes: u64) -> bool {
        self.spec.prefetch_bytes == 0
            || self.unsettled == 0
            || self.unsettled_bytes + bytes <= self.spec.prefetch_bytes
    }
}

/// Counters of a queue, as the management API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: usize,
}

/// One queue: its log and its shared cursor.
#[derive(Debug)]
pub struct QueueEngine<L: Log> {
    name: String,
    log: L,
    ready: OffsetSet,
    in_flight: BTreeMap<u64, InFlight>,
    leases: BTreeSet<(i64, u64)>,
    delivery_counts: HashMap<u64, u32>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    waiters: VecDeque<(WaiterId, GetSpec)>,
    /// Ready messages published recently, by offset (see `HOT_BYTES_MAX`).
    hot: HashMap<u64, Message>,
    hot_bytes: usize,
}

impl<L: Log> QueueEngine<L> {
    /// Opens the queue over `log`, rebuilding its cursor from what the log holds: every
    /// persistent message not settled by a settlement record is ready again. Transient messages
    /// do not survive a reopen.
    ///
    /// # Errors
    /// Storage errors, or a stored message that does not decode.
    pub fn open(name: &str, log: L) -> Result<Self, CoreError> {
        let mut ready = OffsetSet::new();
        let mut settled = OffsetSet::new();
        let mut from = log.earliest_offset();
        while from < log.next_offset() {
            let batches = log.read(from, RECOVERY_READ_BYTES)?;
            let Some(last) = batches.last() else { break };
            from = Offset(last.last_offset() + 1);
            for batch in &batches {
                let records = batch.records().map_err(postino_storage::LogError::from)?;
                for record in &records {
                    if batch.header().is_control() {
                        for (start, end) in settle_ranges(record)? {
                            settled.insert_range(start, end);
                        }
                    } else if is_persistent(record) {
                        ready.insert(record.offset);
                    }
                }
            }
        }
        for offset in settled.iter() {
            ready.remove(offset);
        }
        let mut engine = Self {
            name: name.to_owned(),
            log,
            ready,
            in_flight: BTreeMap::new(),
            leases: BTreeSet::new(),
            delivery_counts: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            waiters: VecDeque::new(),
            hot: HashMap::new(),
            hot_bytes: 0,
        };
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
            unacked: self.in_flight.len() as u64,
            consumers: self.consumers.len(),
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

    /// Appends a message and delivers what can be delivered.
    ///
    /// # Errors
    /// Storage errors (the queue must stop).
    pub fn publish(&mut self, now_ms: i64, message: Message) -> Result<Published, CoreError> {
        let mut builder = BatchBuilder::new();
        record::push(&mut builder, &message, now_ms);
        let appended = self.log.append(&mut builder.build())?;
        let id = appended.base_offset.0;
        self.ready.insert(id);
        if self.hot_bytes + message.body.len() <= HOT_BYTES_MAX {
            self.hot_bytes += message.body.len();
            self.hot.insert(id, message);
        }
        let pushes = self.deliver(now_ms)?;
        Ok(Published {
            id,
            durable: appended.durable,
            pushes,
        })
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
        });
        self.deliver(now_ms)
    }

    /// Removes a consumer (cancelled, or its channel or connection went away); its unsettled
    /// deliveries return to the queue and go to the other consumers.
    ///
    /// # Errors
    /// Storage errors.
    pub fn cancel(&mut self, now_ms: i64, consumer: ConsumerId) -> Result<Vec<Push>, CoreError> {
        self.consumers.retain(|existing| existing.id != consumer);
        self.next_consumer = 0;
        let held: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| matches!(flight.holder, Holder::Consumer(id) if id == consumer))
            .map(|(offset, _)| *offset)
            .collect();
        for offset in held {
            self.release(offset);
            self.ready.insert(offset);
        }
        self.deliver(now_ms)
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
        if let Some(offset) = self.ready.first() {
            let message = self.take_message(offset)?;
            let delivery = self.hand_out(
                now_ms,
                offset,
                message,
                Holder::Get,
                spec.auto_ack,
                spec.lease_ms,
            )?;
            return Ok(GetOutcome::Delivered(Box::new(delivery)));
        }
        match waiter {
            Some(waiter) => {
                self.waiters.push_back((waiter, spec));
                Ok(GetOutcome::Waiting)
            }
            None => Ok(GetOutcome::Empty),
        }
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
        let window: Vec<u64> = self.ready.iter().take(scan_max).collect();
        for offset in window {
            let message = match self.hot.get(&offset) {
                Some(message) => message.clone(),
                None => self.read(offset)?,
            };
            if matches(&message) {
                self.forget_hot(offset);
                return self
                    .hand_out(
                        now_ms,
                        offset,
                        message,
                        Holder::Get,
                        spec.auto_ack,
                        spec.lease_ms,
                    )
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// Forgets a waiting `get` (it timed out or its client left).
    pub fn cancel_get(&mut self, waiter: WaiterId) {
        self.waiters.retain(|(id, _)| *id != waiter);
    }

    /// Settles deliveries. `Accept` and `Discard` settle them for good (a settlement record is
    /// appended to the log); `Requeue` returns them to the queue with their count raised.
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
        for id in ids {
            self.release(*id);
        }
        match outcome {
            Outcome::Requeue => {
                for id in ids {
                    self.ready.insert(*id);
                }
            }
            Outcome::Accept | Outcome::Discard => {
                for id in ids {
                    self.delivery_counts.remove(id);
                }
                self.persist_settled(now_ms, ids.iter().copied())?;
            }
        }
        self.deliver(now_ms)
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

    /// Returns every delivery whose lease ended to the queue and delivers again.
    ///
    /// # Errors
    /// Storage errors.
    pub fn expire(&mut self, now_ms: i64) -> Result<Vec<Push>, CoreError> {
        while let Some(&(deadline, id)) = self.leases.first() {
            if deadline > now_ms {
                break;
            }
            self.release(id);
            self.ready.insert(id);
        }
        self.deliver(now_ms)
    }

    /// The earliest lease deadline, for the owner to wake up at.
    #[must_use]
    pub fn next_deadline(&self) -> Option<i64> {
        self.leases.first().map(|(deadline, _)| *deadline)
    }

    /// Removes an in-flight delivery and gives its holder its credit back; counts a delivery.
    fn release(&mut self, id: u64) {
        let Some(flight) = self.in_flight.remove(&id) else {
            return;
        };
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
    }

    /// The message at a ready offset, from memory when it is hot, else from the log.
    fn take_message(&mut self, offset: u64) -> Result<Message, CoreError> {
        match self.hot.remove(&offset) {
            Some(message) => {
                self.hot_bytes -= message.body.len();
                Ok(message)
            }
            None => self.read(offset),
        }
    }

    fn forget_hot(&mut self, offset: u64) {
        if let Some(message) = self.hot.remove(&offset) {
            self.hot_bytes -= message.body.len();
        }
    }

    fn read(&self, offset: u64) -> Result<Message, CoreError> {
        let batches = self.log.read(Offset(offset), 1)?;
        let record = batches
            .first()
            .map(|batch| batch.records().map_err(postino_storage::LogError::from))
            .transpose()?
            .and_then(|records| records.into_iter().find(|record| record.offset == offset))
            .ok_or(CoreError::CorruptMessage {
                reason: "a ready offset holds no record",
            })?;
        record::decode(&record)
    }

    /// Takes `offset` out of the ready set and hands it to `holder`.
    fn hand_out(
        &mut self,
        now_ms: i64,
        offset: u64,
        mut message: Message,
        holder: Holder,
        auto_ack: bool,
        lease_ms: Option<u64>,
    ) -> Result<Delivery, CoreError> {
        self.ready.remove(offset);
        let count = self.delivery_counts.get(&offset).copied().unwrap_or(0);
        message.annotations.delivery_count = count;
        message.annotations.redelivered = count > 0;
        if auto_ack {
            self.delivery_counts.remove(&offset);
            self.persist_settled(now_ms, [offset])?;
        } else {
            let bytes = message.body.len() as u64;
            let deadline_ms = lease_ms.map(|lease| now_ms.saturating_add(lease as i64));
            if let Some(deadline) = deadline_ms {
                self.leases.insert((deadline, offset));
            }
            if let Holder::Consumer(id) = holder
                && let Some(consumer) = self.consumers.iter_mut().find(|consumer| consumer.id == id)
            {
                consumer.unsettled += 1;
                consumer.unsettled_bytes += bytes;
            }
            self.in_flight.insert(
                offset,
                InFlight {
                    holder,
                    deadline_ms,
                    bytes,
                },
            );
        }
        Ok(Delivery {
            id: offset,
            message,
        })
    }

    /// Hands ready messages to waiting gets first, then to consumers round-robin, while
    /// someone has credit.
    fn deliver(&mut self, now_ms: i64) -> Result<Vec<Push>, CoreError> {
        let mut pushes = Vec::new();
        while let Some(offset) = self.ready.first() {
            if let Some((waiter, spec)) = self.waiters.pop_front() {
                let message = self.take_message(offset)?;
                let delivery = self.hand_out(
                    now_ms,
                    offset,
                    message,
                    Holder::Get,
                    spec.auto_ack,
                    spec.lease_ms,
                )?;
                pushes.push(Push::Waiter { waiter, delivery });
                continue;
            }
            if !self.consumers.iter().any(Consumer::has_credit) {
                break;
            }
            let bytes = match self.hot.get(&offset) {
                Some(message) => message.body.len() as u64,
                None => self.read(offset)?.body.len() as u64,
            };
            let count = self.consumers.len();
            let chosen = (0..count)
                .map(|step| (self.next_consumer + step) % count)
                .find(|index| {
                    let consumer = &self.consumers[*index];
                    consumer.has_credit() && consumer.takes_bytes(bytes)
                });
            let Some(index) = chosen else { break };
            self.next_consumer = (index + 1) % count;
            let consumer = self.consumers[index].clone();
            let message = self.take_message(offset)?;
            let delivery = self.hand_out(
                now_ms,
                offset,
                message,
                Holder::Consumer(consumer.id),
                consumer.spec.auto_ack,
                consumer.spec.lease_ms,
            )?;
            pushes.push(Push::Consumer {
                consumer: consumer.id,
                delivery,
            });
        }
        Ok(pushes)
    }

    /// Appends a settlement record for `ids` and deletes the log segments everything before the
    /// cursor's head has left.
    fn persist_settled(
        &mut self,
        now_ms: i64,
        ids: impl IntoIterator<Item = u64>,
    ) -> Result<(), CoreError> {
        let mut settled = OffsetSet::new();
        for id in ids {
            settled.insert(id);
        }
        let mut value = Vec::with_capacity(4 + settled.range_count() * 16);
        value.extend_from_slice(&(settled.range_count() as u32).to_be_bytes());
        for (start, end) in settled.ranges() {
            value.extend_from_slice(&start.to_be_bytes());
            value.extend_from_slice(&end.to_be_bytes());
        }
        let mut batch = postino_storage::batch::control_record(SETTLE_CONTROL_TYPE, &value, now_ms);
        self.log.append(&mut batch)?;
        self.reclaim()
    }

    /// Deletes the log segments that hold only settled records.
    fn reclaim(&mut self) -> Result<(), CoreError> {
        let head = [self.ready.first(), self.in_flight.keys().next().copied()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.log.next_offset().0);
        self.log.delete_up_to(Offset(head))?;
        Ok(())
    }
}

fn is_persistent(record: &Record) -> bool {
    record
        .headers
        .iter()
        .any(|(name, _)| name.as_ref() == b"postino.delivery-mode")
}

/// The offset ranges a settlement control record names; other control records name none.
fn settle_ranges(record: &Record) -> Result<Vec<(u64, u64)>, CoreError> {
    let corrupt = CoreError::CorruptMessage {
        reason: "settlement record does not parse",
    };
    let is_settlement = record.key.as_ref().is_some_and(|key| {
        key.len() == 4 && i16::from_be_bytes([key[2], key[3]]) == SETTLE_CONTROL_TYPE
    });
    if !is_settlement || control_kind(record).is_some() {
        return Ok(Vec::new());
    }
    let value = record.value.as_deref().unwrap_or_default();
    let (count, mut rest) = value.split_at_checked(4).ok_or(corrupt.clone())?;
    let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
    let mut ranges = Vec::with_capacity(count.min(rest.len() / 16));
    for _ in 0..count {
        let (range, after) = rest.split_at_checked(16).ok_or(corrupt.clone())?;
        let mut start = [0u8; 8];
        let mut end = [0u8; 8];
        start.copy_from_slice(&range[..8]);
        end.copy_from_slice(&range[8..]);
        ranges.push((u64::from_be_bytes(start), u64::from_be_bytes(end)));
        rest = after;
    }
    Ok(ranges)
}
