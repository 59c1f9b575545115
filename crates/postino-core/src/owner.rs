//! The owner task of a queue: the only code that touches its [`QueueEngine`]. Others talk to it
//! through a [`QueueHandle`] over a bounded mailbox (back-pressure: a full mailbox makes
//! senders wait). The task drains the mailbox in batches, hands the commands to the engine,
//! sends deliveries to consumers' channels, and wakes up for lease deadlines and `get` timeouts.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use postino_storage::{Durable, Log};
use postino_types::{Clock, Message};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::error::CoreError;
use crate::queue::{
    ConsumerId, ConsumerSpec, DeadLetter, Delivery, GetOutcome, GetSpec, Outcome, Push,
    QueueEngine, QueueStats, WaiterId,
};

/// What a queue's owner tells its virtual host.
#[derive(Debug)]
pub enum QueueEvent {
    /// A message died: publish it to its dead-letter exchange.
    DeadLetter(Box<DeadLetter>),
    /// The queue is no longer used and asks to be deleted: `auto-delete` after its last
    /// consumer left, or `x-expires` elapsed with no consumer and no get.
    Unused { queue: String, reason: &'static str },
}

/// The lifecycle rules an owner enforces for its queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lifecycle {
    /// Ask for deletion when the last consumer leaves (after there was one).
    pub auto_delete: bool,
    /// Ask for deletion after this many ms without consumers and without gets.
    pub expires_ms: Option<u64>,
}

/// Commands waiting in a queue's mailbox before senders must wait.
pub const MAILBOX_CAPACITY: usize = 1024;
/// Commands the owner takes from its mailbox at once.
const DRAIN_MAX: usize = 256;

/// Where an owner sends a command's outcome.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, CoreError>>;

/// Sends a command built around a reply channel to an owner's mailbox and waits for the
/// outcome; `stopped` is the error when the owner is gone.
pub(crate) async fn call<C, T>(
    mailbox: &mpsc::Sender<C>,
    command: impl FnOnce(Reply<T>) -> C,
    stopped: impl Fn() -> CoreError,
) -> Result<T, CoreError> {
    let (reply, answer) = oneshot::channel();
    mailbox.send(command(reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

enum Command {
    Publish {
        message: Box<Message>,
        /// Told when a consumer or a get first takes delivery of the message.
        receipt: Option<oneshot::Sender<()>>,
        reply: Reply<Durable>,
    },
    Consume {
        consumer: ConsumerId,
        spec: ConsumerSpec,
        sink: mpsc::UnboundedSender<Delivery>,
        reply: Reply<()>,
    },
    Cancel {
        consumer: ConsumerId,
        reply: Reply<()>,
    },
    Recover {
        consumer: ConsumerId,
        reply: Reply<()>,
    },
    Written {
        consumer: ConsumerId,
        count: u32,
    },
    Get {
        spec: GetSpec,
        wait: Option<Duration>,
        reply: Reply<Option<Delivery>>,
    },
    GetMatching {
        spec: GetSpec,
        scan_max: usize,
        matches: Box<dyn Fn(&Message) -> bool + Send>,
        reply: Reply<Option<Delivery>>,
    },
    Settle {
        ids: Vec<u64>,
        outcome: Outcome,
        reply: Reply<()>,
    },
    ChangeLease {
        id: u64,
        lease_ms: u64,
        reply: Reply<()>,
    },
    Stats {
        reply: Reply<QueueStats>,
    },
    Purge {
        reply: Reply<u64>,
    },
    Close {
        reply: Reply<()>,
    },
    Touch {
        reply: Reply<()>,
    },
    Prepare {
        transaction: u64,
        messages: Vec<Message>,
        settles: Vec<(Vec<u64>, Outcome)>,
        reply: Reply<Durable>,
    },
    Commit {
        transaction: u64,
        reply: Reply<Durable>,
    },
    Abort {
        transaction: u64,
        reply: Reply<Durable>,
    },
}

/// How other tasks talk to a queue's owner. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueueHandle {
    name: Arc<str>,
    mailbox: mpsc::Sender<Command>,
}

/// A publish's message, receipt and reply, taken out of its command to join a run.
type PublishRequest = (Box<Message>, Option<oneshot::Sender<()>>, Reply<Durable>);

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Publish { .. } => "Publish",
            Command::Consume { .. } => "Consume",
            Command::Cancel { .. } => "Cancel",
            Command::Recover { .. } => "Recover",
            Command::Written { .. } => "Written",
            Command::Get { .. } => "Get",
            Command::GetMatching { .. } => "GetMatching",
            Command::Settle { .. } => "Settle",
            Command::ChangeLease { .. } => "ChangeLease",
            Command::Stats { .. } => "Stats",
            Command::Purge { .. } => "Purge",
            Command::Close { .. } => "Close",
            Command::Touch { .. } => "Touch",
            Command::Prepare { .. } => "Prepare",
            Command::Commit { .. } => "Commit",
            Command::Abort { .. } => "Abort",
        })
    }
}

impl QueueHandle {
    /// Starts the owner task of `engine` on the current tokio runtime. Dead letters and
    /// lifecycle events go to `events` (dead letters are dropped without it).
    pub fn spawn<L: Log + 'static>(
        engine: QueueEngine<L>,
        clock: Arc<dyn Clock>,
        events: Option<mpsc::UnboundedSender<QueueEvent>>,
        lifecycle: Lifecycle,
    ) -> Self {
        let (mailbox, inbox) = mpsc::channel(MAILBOX_CAPACITY);
        let name: Arc<str> = engine.name().into();
        let last_used_ms = clock.now_ms();
        let owner = Owner {
            engine,
            clock,
            events,
            lifecycle,
            had_consumer: false,
            last_used_ms,
            unused_sent: false,
            sinks: HashMap::new(),
            waiters: HashMap::new(),
            waiter_deadlines: BTreeSet::new(),
            next_waiter: 0,
            receipts: HashMap::new(),
        };
        tokio::spawn(owner.run(inbox));
        Self { name, mailbox }
    }

    /// A handle of a queue whose owner never started (its log did not open): every call
    /// answers `QueueStopped`.
    #[must_use]
    pub fn stopped_queue(name: &str) -> Self {
        let (mailbox, _) = mpsc::channel(1);
        Self {
            name: name.into(),
            mailbox,
        }
    }

    /// The queue's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, CoreError> {
        crate::owner::call(&self.mailbox, command, || self.stopped()).await
    }

    fn stopped(&self) -> CoreError {
        CoreError::QueueStopped {
            queue: self.name.to_string(),
        }
    }

    /// Sends a message to the queue without waiting for the owner: returns once it is in the
    /// mailbox, with a receiver of the append's outcome (the durability ticket, or the error).
    /// Publishers that pipeline use this; [`QueueHandle::publish`] waits for the outcome.
    ///
    /// # Errors
    /// `QueueStopped` when the owner is gone.
    pub async fn enqueue(&self, message: Message) -> Result<Enqueued, CoreError> {
        self.enqueue_with(message, None).await
    }

    /// [`QueueHandle::enqueue`], with a [`Receipt`] that resolves when a consumer or a get
    /// first takes delivery of the message: the notes' delivery-based synchronous
    /// communication.
    ///
    /// # Errors
    /// `QueueStopped` when the owner is gone.
    pub async fn enqueue_with_receipt(
        &self,
        message: Message,
    ) -> Result<(Enqueued, Receipt), CoreError> {
        let (sender, delivered) = oneshot::channel();
        let enqueued = self.enqueue_with(message, Some(sender)).await?;
        let receipt = Receipt {
            queue: Arc::clone(&self.name),
            delivered,
        };
        Ok((enqueued, receipt))
    }

    async fn enqueue_with(
        &self,
        message: Message,
        receipt: Option<oneshot::Sender<()>>,
    ) -> Result<Enqueued, CoreError> {
        let (reply, outcome) = oneshot::channel();
        self.mailbox
            .send(Command::Publish {
                message: Box::new(message),
                receipt,
                reply,
            })
            .await
            .map_err(|_| self.stopped())?;
        Ok(Enqueued {
            queue: Arc::clone(&self.name),
            outcome,
        })
    }

    /// Appends a message; the returned ticket resolves when it is durable.
    ///
    /// # Errors
    /// Storage errors; `QueueStopped` when the owner is gone.
    pub async fn publish(&self, message: Message) -> Result<Durable, CoreError> {
        self.call(|reply| Command::Publish {
            message: Box::new(message),
            receipt: None,
            reply,
        })
        .await
    }

    /// Adds a consumer whose deliveries arrive on the returned channel. Dropping the receiver
    /// does not cancel the consumer: call [`QueueHandle::cancel`] (a front-end does when the
    /// consumer's channel or connection goes away).
    ///
    /// # Errors
    /// `PreconditionFailed` when the id is taken; `QueueStopped`.
    pub async fn consume(
        &self,
        consumer: ConsumerId,
        spec: ConsumerSpec,
    ) -> Result<mpsc::UnboundedReceiver<Delivery>, CoreError> {
        let (sink, deliveries) = mpsc::unbounded_channel();
        self.call(|reply| Command::Consume {
            consumer,
            spec,
            sink,
            reply,
        })
        .await?;
        Ok(deliveries)
    }

    /// Removes a consumer; its unsettled deliveries return to the queue.
    ///
    /// # Errors
    /// `QueueStopped`.
    pub async fn cancel(&self, consumer: ConsumerId) -> Result<(), CoreError> {
        self.call(|reply| Command::Cancel { consumer, reply }).await
    }

    /// Reports `count` more deliveries of `consumer` written to its client, so that the queue
    /// hands over more within the consumer's `window` (see [`ConsumerSpec::window`]).
    ///
    /// # Errors
    /// `QueueStopped`.
    pub async fn written(&self, consumer: ConsumerId, count: u32) -> Result<(), CoreError> {
        self.mailbox
            .send(Command::Written { consumer, count })
            .await
            .map_err(|_| self.stopped())
    }

    /// Returns a consumer's unsettled deliveries to the queue (AMQP `basic.recover`).
    ///
    /// # Errors
    /// Storage errors; `QueueStopped`.
    pub async fn recover(&self, consumer: ConsumerId) -> Result<(), CoreError> {
        self.call(|reply| Command::Recover { consumer, reply })
            .await
    }

    /// Adds a consumer whose deliveries are handed to `callback` (the lecture notes'
    /// `notify`): a task calls it for each delivery, in order, until the consumer is cancelled.
    /// The callback settles through this handle like any consumer.
    ///
    /// # Errors
    /// As [`QueueHandle::consume`].
    pub async fn notify(
        &self,
        consumer: ConsumerId,
        spec: ConsumerSpec,
        mut callback: impl FnMut(Delivery) + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<()>, CoreError> {
        let mut deliveries = self.consume(consumer, spec).await?;
        Ok(tokio::spawn(async move {
            while let Some(delivery) = deliveries.recv().await {
                callback(delivery);
            }
        }))
    }

    /// Takes the first ready message: at once (`wait` = `None`, the seeds' `poll`) or waiting
    /// up to `wait` for one to arrive (their blocking `get`). `None` when there was none.
    ///
    /// # Errors
    /// Storage errors; `QueueStopped`.
    pub async fn get(
        &self,
        spec: GetSpec,
        wait: Option<Duration>,
    ) -> Result<Option<Delivery>, CoreError> {
        self.call(|reply| Command::Get { spec, wait, reply }).await
    }

    /// Takes the first of the next `scan_max` ready messages that `matches` accepts, at once
    /// (see [`QueueEngine::get_matching`]); `None` when none in the window does.
    ///
    /// # Errors
    /// Storage errors; `QueueStopped`.
    pub async fn get_matching(
        &self,
        spec: GetSpec,
        scan_max: usize,
        matches: impl Fn(&Message) -> bool + Send + 'static,
    ) -> Result<Option<Delivery>, CoreError> {
        self.call(|reply| Command::GetMatching {
            spec,
            scan_max,
            matches: Box::new(matches),
            reply,
        })
        .await
    }

    /// Settles deliveries (see [`QueueEngine::settle`]).
    ///
    /// # Errors
    /// `UnknownDelivery`; storage errors; `QueueStopped`.
    pub async fn settle(&self, ids: Vec<u64>, outcome: Outcome) -> Result<(), CoreError> {
        self.call(|reply| Command::Settle {
            ids,
            outcome,
            reply,
        })
        .await
    }

    /// Settles deliveries without waiting for the owner: returns once the command is in the
    /// mailbox, so a client's stream of acks costs no round trip each and the owner takes a
    /// burst of them in one drain. Commands keep their order, so a later command sees the
    /// settlement. The owner logs an error it cannot report (an id no longer in flight).
    ///
    /// # Errors
    /// `QueueStopped` when the owner is gone.
    pub async fn settle_pipelined(&self, ids: Vec<u64>, outcome: Outcome) -> Result<(), CoreError> {
        let (reply, _unheard) = oneshot::channel();
        self.mailbox
            .send(Command::Settle {
                ids,
                outcome,
                reply,
            })
            .await
            .map_err(|_| self.stopped())
    }

    /// Moves a delivery's lease deadline (see [`QueueEngine::change_lease`]).
    ///
    /// # Errors
    /// `UnknownDelivery`; `QueueStopped`.
    pub async fn change_lease(&self, id: u64, lease_ms: u64) -> Result<(), CoreError> {
        self.call(|reply| Command::ChangeLease {
            id,
            lease_ms,
            reply,
        })
        .await
    }

    /// Stops the owner after the commands already sent, syncing and closing the queue's log.
    /// Consumers' channels end; later calls answer `QueueStopped`.
    ///
    /// # Errors
    /// Storage errors while closing; `QueueStopped` when it had already stopped.
    pub async fn close(&self) -> Result<(), CoreError> {
        self.call(|reply| Command::Close { reply }).await
    }

    /// Writes this queue's part of a transaction, invisible until committed (see
    /// [`QueueEngine::prepare`]); the ticket resolves when it is durable.
    ///
    /// # Errors
    /// As [`QueueEngine::prepare`]; `QueueStopped`.
    pub async fn prepare(
        &self,
        transaction: u64,
        messages: Vec<Message>,
        settles: Vec<(Vec<u64>, Outcome)>,
    ) -> Result<Durable, CoreError> {
        self.call(|reply| Command::Prepare {
            transaction,
            messages,
            settles,
            reply,
        })
        .await
    }

    /// Makes a prepared transaction's part visible; the ticket is its marker's.
    ///
    /// # Errors
    /// As [`QueueEngine::commit_transaction`]; `QueueStopped`.
    pub async fn commit_transaction(&self, transaction: u64) -> Result<Durable, CoreError> {
        self.call(|reply| Command::Commit { transaction, reply })
            .await
    }

    /// Forgets a prepared transaction's part.
    ///
    /// # Errors
    /// Storage errors; `QueueStopped`.
    pub async fn abort_transaction(&self, transaction: u64) -> Result<Durable, CoreError> {
        self.call(|reply| Command::Abort { transaction, reply })
            .await
    }

    /// Removes every ready message; returns how many.
    ///
    /// # Errors
    /// Storage errors; `QueueStopped`.
    pub async fn purge(&self) -> Result<u64, CoreError> {
        self.call(|reply| Command::Purge { reply }).await
    }

    /// Counts as a use of the queue for `x-expires` (a re-declaration).
    ///
    /// # Errors
    /// `QueueStopped`.
    pub async fn touch(&self) -> Result<(), CoreError> {
        self.call(|reply| Command::Touch { reply }).await
    }

    /// Ready and unacknowledged counts.
    ///
    /// # Errors
    /// `QueueStopped`.
    pub async fn stats(&self) -> Result<QueueStats, CoreError> {
        self.call(|reply| Command::Stats { reply }).await
    }
}

/// A message in a queue's mailbox; resolves to its append's durability ticket.
#[derive(Debug)]
pub struct Enqueued {
    queue: Arc<str>,
    outcome: oneshot::Receiver<Result<Durable, CoreError>>,
}

impl Enqueued {
    /// Waits for the owner to append the message.
    ///
    /// # Errors
    /// The append's error; `QueueStopped` when the owner stopped before answering.
    pub async fn appended(self) -> Result<Durable, CoreError> {
        self.outcome.await.map_err(|_| CoreError::QueueStopped {
            queue: self.queue.to_string(),
        })?
    }
}

/// Resolves when a consumer or a get first takes delivery of a message put with
/// [`QueueHandle::enqueue_with_receipt`].
#[derive(Debug)]
pub struct Receipt {
    queue: Arc<str>,
    delivered: oneshot::Receiver<()>,
}

impl Receipt {
    /// Waits for the delivery.
    ///
    /// # Errors
    /// `QueueStopped` when the queue stopped (or was deleted) before anyone took the message.
    pub async fn delivered(self) -> Result<(), CoreError> {
        self.delivered.await.map_err(|_| CoreError::QueueStopped {
            queue: self.queue.to_string(),
        })
    }
}

struct Owner<L: Log> {
    engine: QueueEngine<L>,
    clock: Arc<dyn Clock>,
    events: Option<mpsc::UnboundedSender<QueueEvent>>,
    lifecycle: Lifecycle,
    had_consumer: bool,
    last_used_ms: i64,
    unused_sent: bool,
    sinks: HashMap<ConsumerId, mpsc::UnboundedSender<Delivery>>,
    waiters: HashMap<WaiterId, Reply<Option<Delivery>>>,
    waiter_deadlines: BTreeSet<(i64, WaiterId)>,
    next_waiter: WaiterId,
    /// Receipts of messages not delivered yet, by delivery id.
    receipts: HashMap<u64, oneshot::Sender<()>>,
}

impl<L: Log> Owner<L> {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(DRAIN_MAX);
        loop {
            self.report();
            let wake = self.next_wake();
            let received = match wake {
                Some(at_ms) => {
                    let delay = at_ms.saturating_sub(self.clock.now_ms()).max(0) as u64;
                    tokio::select! {
                        count = inbox.recv_many(&mut batch, DRAIN_MAX) => count,
                        () = tokio::time::sleep(Duration::from_millis(delay)) => {
                            self.on_timers();
                            continue;
                        }
                    }
                }
                None => inbox.recv_many(&mut batch, DRAIN_MAX).await,
            };
            if received == 0 {
                return;
            }
            // The round's acks write one settlement record, at its end.
            self.engine.hold_settlements();
            let mut commands = batch.drain(..).peekable();
            while let Some(command) = commands.next() {
                match command {
                    Command::Close { reply } => {
                        self.release_settlements();
                        let closed = self.engine.into_log().close().map_err(CoreError::from);
                        let _ = reply.send(closed);
                        return;
                    }
                    Command::Publish {
                        message,
                        receipt,
                        reply,
                    } => {
                        // Consecutive publishes are appended together.
                        let mut run = vec![(message, receipt, reply)];
                        while let Some(Command::Publish {
                            message,
                            receipt,
                            reply,
                        }) = commands.next_if(|next| matches!(next, Command::Publish { .. }))
                        {
                            run.push((message, receipt, reply));
                        }
                        self.on_publishes(run);
                    }
                    command => self.on_command(command),
                }
            }
            self.release_settlements();
        }
    }

    fn release_settlements(&mut self) {
        let now = self.clock.now_ms();
        if let Err(error) = self.engine.release_settlements(now) {
            error!(queue = %self.engine.name(), %error, "queue could not persist settlements");
        }
    }

    /// Publishes a run of messages, answering each as a single publish would be.
    fn on_publishes(&mut self, run: Vec<PublishRequest>) {
        let now = self.clock.now_ms();
        let (messages, answers): (Vec<Message>, Vec<_>) = run
            .into_iter()
            .map(|(message, receipt, reply)| (*message, (receipt, reply)))
            .unzip();
        let outcomes = self.engine.publish_many(now, messages);
        for ((receipt, reply), outcome) in answers.into_iter().zip(outcomes) {
            let outcome = outcome.map(|published| {
                if let Some(receipt) = receipt {
                    // Receipts whose waiters left go first: the map holds live ones only.
                    self.receipts.retain(|_, waiting| !waiting.is_closed());
                    self.receipts.insert(published.id, receipt);
                }
                self.dispatch(Ok(published.pushes));
                published.durable
            });
            let _ = reply.send(outcome);
        }
    }

    fn next_wake(&mut self) -> Option<i64> {
        let waiter = self.waiter_deadlines.first().map(|(at, _)| *at);
        let engine = self.engine.next_deadline().unwrap_or_else(|error| {
            error!(queue = %self.engine.name(), %error, "queue cannot read its head");
            None
        });
        let idle = self
            .lifecycle
            .expires_ms
            .filter(|_| self.engine.stats().consumers == 0);
        let expiry = idle.map(|expires| self.last_used_ms.saturating_add(expires as i64));
        [engine, waiter, expiry].into_iter().flatten().min()
    }

    /// Sends dead letters, and asks for deletion when the lifecycle rules say so.
    fn report(&mut self) {
        let letters = self.engine.take_dead_letters();
        let Some(sink) = &self.events else { return };
        for letter in letters {
            let _ = sink.send(QueueEvent::DeadLetter(Box::new(letter)));
        }
        let consumers = self.engine.stats().consumers;
        self.had_consumer |= consumers > 0;
        let now = self.clock.now_ms();
        let reason = if self.lifecycle.auto_delete && self.had_consumer && consumers == 0 {
            Some("auto-delete")
        } else if consumers == 0
            && self
                .lifecycle
                .expires_ms
                .is_some_and(|expires| now >= self.last_used_ms.saturating_add(expires as i64))
        {
            Some("expired")
        } else {
            None
        };
        if let Some(reason) = reason.filter(|_| !self.unused_sent) {
            self.unused_sent = true;
            let queue = self.engine.name().to_owned();
            let _ = sink.send(QueueEvent::Unused { queue, reason });
        }
    }

    fn on_timers(&mut self) {
        let now = self.clock.now_ms();
        while let Some(&(at, waiter)) = self.waiter_deadlines.first() {
            if at > now {
                break;
            }
            self.waiter_deadlines.remove(&(at, waiter));
            self.engine.cancel_get(waiter);
            if let Some(reply) = self.waiters.remove(&waiter) {
                let _ = reply.send(Ok(None));
            }
        }
        let pushes = self.engine.expire(now);
        self.dispatch(pushes);
    }

    fn on_command(&mut self, command: Command) {
        let now = self.clock.now_ms();
        if matches!(
            command,
            Command::Consume { .. }
                | Command::Cancel { .. }
                | Command::Get { .. }
                | Command::GetMatching { .. }
                | Command::Touch { .. }
        ) {
            self.last_used_ms = now;
        }
        match command {
            Command::Publish {
                message,
                receipt,
                reply,
            } => self.on_publishes(vec![(message, receipt, reply)]),
            Command::Consume {
                consumer,
                spec,
                sink,
                reply,
            } => {
                if self.sinks.contains_key(&consumer) {
                    let _ = reply.send(Err(CoreError::PreconditionFailed {
                        reason: format!("consumer {consumer} already exists"),
                    }));
                    return;
                }
                self.sinks.insert(consumer, sink);
                let _ = reply.send(Ok(()));
                let pushes = self.engine.consume(now, consumer, spec);
                self.dispatch(pushes);
            }
            Command::Recover { consumer, reply } => {
                let pushes = self.engine.recover(now, consumer);
                let _ = reply.send(Ok(()));
                self.dispatch(pushes);
            }
            Command::Written { consumer, count } => {
                let pushes = self.engine.written(now, consumer, count);
                self.dispatch(pushes);
            }
            Command::Cancel { consumer, reply } => {
                self.sinks.remove(&consumer);
                let pushes = self.engine.cancel(now, consumer);
                let _ = reply.send(Ok(()));
                self.dispatch(pushes);
            }
            Command::Get { spec, wait, reply } => {
                let waiter = wait.map(|_| {
                    self.next_waiter += 1;
                    self.next_waiter
                });
                match self.engine.get(now, spec, waiter) {
                    Ok(GetOutcome::Delivered(delivery)) => {
                        self.delivered(delivery.id);
                        let _ = reply.send(Ok(Some(*delivery)));
                    }
                    Ok(GetOutcome::Empty) => {
                        let _ = reply.send(Ok(None));
                    }
                    Ok(GetOutcome::Waiting) => {
                        let (waiter, wait) = waiter.zip(wait).expect("waiting needs a waiter");
                        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
                        self.waiters.insert(waiter, reply);
                        self.waiter_deadlines
                            .insert((now.saturating_add(wait_ms), waiter));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::GetMatching {
                spec,
                scan_max,
                matches,
                reply,
            } => {
                let found = self.engine.get_matching(now, spec, scan_max, &*matches);
                if let Ok(Some(delivery)) = &found {
                    self.delivered(delivery.id);
                }
                let _ = reply.send(found);
            }
            Command::Settle {
                ids,
                outcome,
                reply,
            } => match self.engine.settle(now, &ids, outcome) {
                Ok(pushes) => {
                    let _ = reply.send(Ok(()));
                    self.dispatch(Ok(pushes));
                }
                Err(error) => {
                    if let Err(Err(error)) = reply.send(Err(error)) {
                        warn!(queue = %self.engine.name(), %error, "a pipelined settle failed");
                    }
                }
            },
            Command::ChangeLease {
                id,
                lease_ms,
                reply,
            } => match self.engine.change_lease(now, id, lease_ms) {
                Ok(pushes) => {
                    let _ = reply.send(Ok(()));
                    self.dispatch(Ok(pushes));
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::Purge { reply } => {
                let _ = reply.send(self.engine.purge(now));
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(self.engine.stats()));
            }
            Command::Touch { reply } => {
                let _ = reply.send(Ok(()));
            }
            Command::Prepare {
                transaction,
                messages,
                settles,
                reply,
            } => {
                let _ = reply.send(self.engine.prepare(now, transaction, messages, settles));
            }
            Command::Commit { transaction, reply } => {
                match self.engine.commit_transaction(now, transaction) {
                    Ok((durable, pushes)) => {
                        let _ = reply.send(Ok(durable));
                        self.dispatch(Ok(pushes));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Abort { transaction, reply } => {
                let _ = reply.send(self.engine.abort_transaction(now, transaction));
            }
            Command::Close { reply } => {
                let _ = reply.send(Err(CoreError::PreconditionFailed {
                    reason: "close is handled by the owner loop".to_owned(),
                }));
            }
        }
    }

    /// Tells the receipt of a message, if any, that it was delivered.
    fn delivered(&mut self, id: u64) {
        if let Some(receipt) = self.receipts.remove(&id) {
            let _ = receipt.send(());
        }
    }

    /// Sends deliveries to their consumers and waiters. A consumer whose receiver is gone keeps
    /// its deliveries in flight until it is cancelled; a waiter that left gets its delivery
    /// returned to the queue.
    fn dispatch(&mut self, pushes: Result<Vec<Push>, CoreError>) {
        let pushes = match pushes {
            Ok(pushes) => pushes,
            Err(error) => {
                error!(queue = %self.engine.name(), %error, "queue failed while delivering");
                return;
            }
        };
        for push in pushes {
            match push {
                Push::Consumer { consumer, delivery } => {
                    let id = delivery.id;
                    let sent = self
                        .sinks
                        .get(&consumer)
                        .is_some_and(|sink| sink.send(delivery).is_ok());
                    if sent {
                        self.delivered(id);
                    }
                }
                Push::Waiter { waiter, delivery } => {
                    self.waiter_deadlines.retain(|(_, id)| *id != waiter);
                    let id = delivery.id;
                    let delivered = self
                        .waiters
                        .remove(&waiter)
                        .is_some_and(|reply| reply.send(Ok(Some(delivery))).is_ok());
                    if delivered {
                        self.delivered(id);
                    } else {
                        let now = self.clock.now_ms();
                        let pushes = self.engine.settle(now, &[id], Outcome::Requeue);
                        self.dispatch(pushes);
                    }
                }
            }
        }
    }
}
