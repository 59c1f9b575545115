//! The owner task of one partition: the only code that touches its [`PartitionEngine`].
//! Producers and readers reach it through a [`PartitionHandle`] over a bounded mailbox. It
//! watches the newest append's durability ticket to move the high watermark, answers fetches
//! that wait (Kafka's `min.bytes` / `max.wait`) when enough durable data arrives or their time
//! is up, and applies retention periodically.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postino_storage::batch::ControlKind;
use postino_storage::{Durable, Log, LogError};
use postino_types::Clock;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::error::CoreError;
use crate::stream::partition::{
    FetchSpec, Fetched, PartitionEngine, PartitionStats, Produced, StartAt,
};

/// Commands waiting in a partition's mailbox before senders must wait.
pub const MAILBOX_CAPACITY: usize = 1024;
/// Commands the owner takes from its mailbox at once.
const DRAIN_MAX: usize = 256;
/// How often retention runs: segments roll rarely, so a minute late costs little disk.
const RETENTION_EVERY_MS: i64 = 60_000;

type Reply<T> = crate::owner::Reply<T>;

enum Command {
    Produce {
        batch: BytesMut,
        reply: Reply<Produced>,
    },
    Fetch {
        spec: FetchSpec,
        reply: Reply<Fetched>,
    },
    Resolve {
        start: StartAt,
        reply: Reply<u64>,
    },
    Stats {
        reply: Reply<PartitionStats>,
    },
    EnforceRetention {
        reply: Reply<usize>,
    },
    Compact {
        reply: Reply<u64>,
    },
    RegisterTransaction {
        producer_id: i64,
        epoch: i16,
        reply: Reply<()>,
    },
    WriteMarker {
        producer_id: i64,
        epoch: i16,
        kind: ControlKind,
        reply: Reply<Durable>,
    },
    OpenTransactions {
        reply: Reply<Vec<i64>>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// How other tasks talk to a partition's owner. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    stream: Arc<str>,
    partition: u32,
    mailbox: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Produce { .. } => "Produce",
            Command::Fetch { .. } => "Fetch",
            Command::Resolve { .. } => "Resolve",
            Command::Stats { .. } => "Stats",
            Command::EnforceRetention { .. } => "EnforceRetention",
            Command::Compact { .. } => "Compact",
            Command::RegisterTransaction { .. } => "RegisterTransaction",
            Command::WriteMarker { .. } => "WriteMarker",
            Command::OpenTransactions { .. } => "OpenTransactions",
            Command::Close { .. } => "Close",
        })
    }
}

impl PartitionHandle {
    /// Starts the owner task of `engine` on the current tokio runtime; `compaction` is the
    /// tombstone retention of a compacted stream.
    pub fn spawn<L: Log + 'static>(
        engine: PartitionEngine<L>,
        clock: Arc<dyn Clock>,
        compaction: Option<Duration>,
    ) -> Self {
        let (mailbox, inbox) = mpsc::channel(MAILBOX_CAPACITY);
        let stream: Arc<str> = engine.stream().into();
        let partition = engine.partition();
        let next_retention_ms = clock.now_ms() + RETENTION_EVERY_MS;
        let owner = Owner {
            engine,
            clock,
            compaction,
            waiters: Vec::new(),
            next_retention_ms,
        };
        tokio::spawn(owner.run(inbox));
        Self {
            stream,
            partition,
            mailbox,
        }
    }

    /// The partition's number.
    #[must_use]
    pub fn partition(&self) -> u32 {
        self.partition
    }

    fn stopped(&self) -> CoreError {
        CoreError::PartitionStopped {
            stream: self.stream.to_string(),
            partition: self.partition,
        }
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, CoreError> {
        crate::owner::call(&self.mailbox, command, || self.stopped()).await
    }

    /// Appends one RecordBatch v2 (see [`PartitionEngine::produce`]); acknowledge the producer
    /// once the returned ticket resolves.
    ///
    /// # Errors
    /// As [`PartitionEngine::produce`]; `PartitionStopped`.
    pub async fn produce(&self, batch: BytesMut) -> Result<Produced, CoreError> {
        self.call(|reply| Command::Produce { batch, reply }).await
    }

    /// Hands a batch to the owner without waiting for it: returns once it is in the mailbox
    /// (publishers that pipeline keep many in flight).
    ///
    /// # Errors
    /// `PartitionStopped`.
    pub async fn enqueue(&self, batch: BytesMut) -> Result<StreamEnqueued, CoreError> {
        let (reply, outcome) = oneshot::channel();
        self.mailbox
            .send(Command::Produce { batch, reply })
            .await
            .map_err(|_| self.stopped())?;
        Ok(StreamEnqueued {
            handle: self.clone(),
            outcome,
        })
    }

    /// Reads from the partition, waiting as `spec` allows for data to arrive.
    ///
    /// # Errors
    /// As [`PartitionEngine::fetch`]; `PartitionStopped`.
    pub async fn fetch(&self, spec: FetchSpec) -> Result<Fetched, CoreError> {
        self.call(|reply| Command::Fetch { spec, reply }).await
    }

    /// The offset a reader starting at `start` reads first.
    ///
    /// # Errors
    /// As [`PartitionEngine::resolve`]; `PartitionStopped`.
    pub async fn resolve(&self, start: StartAt) -> Result<u64, CoreError> {
        self.call(|reply| Command::Resolve { start, reply }).await
    }

    /// Offsets and size.
    ///
    /// # Errors
    /// `PartitionStopped`.
    pub async fn stats(&self) -> Result<PartitionStats, CoreError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Applies retention now (the owner also does every minute); returns segments deleted.
    ///
    /// # Errors
    /// Storage errors; `PartitionStopped`.
    pub async fn enforce_retention(&self) -> Result<usize, CoreError> {
        self.call(|reply| Command::EnforceRetention { reply }).await
    }

    /// Compacts the partition by key now (the owner also does every minute when the stream is
    /// compacted); returns how many records went. A stream without compaction keeps all.
    ///
    /// # Errors
    /// Storage errors; `PartitionStopped`.
    pub async fn compact(&self) -> Result<u64, CoreError> {
        self.call(|reply| Command::Compact { reply }).await
    }

    /// Lets `producer_id` at `epoch` write transactional batches here until a marker (see
    /// [`PartitionEngine::register_transaction`]).
    ///
    /// # Errors
    /// `ProducerFenced`; `PartitionStopped`.
    pub async fn register_transaction(
        &self,
        producer_id: i64,
        epoch: i16,
    ) -> Result<(), CoreError> {
        self.call(|reply| Command::RegisterTransaction {
            producer_id,
            epoch,
            reply,
        })
        .await
    }

    /// Ends `producer_id`'s transaction here with a commit or abort marker; returns once the
    /// marker is durable.
    ///
    /// # Errors
    /// `ProducerFenced`; storage errors; `PartitionStopped`.
    pub async fn write_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        kind: ControlKind,
    ) -> Result<(), CoreError> {
        let ticket = self
            .call(|reply| Command::WriteMarker {
                producer_id,
                epoch,
                kind,
                reply,
            })
            .await?;
        Ok(ticket.await?)
    }

    /// Producers with a transaction open here.
    ///
    /// # Errors
    /// `PartitionStopped`.
    pub async fn open_transactions(&self) -> Result<Vec<i64>, CoreError> {
        self.call(|reply| Command::OpenTransactions { reply }).await
    }

    /// Stops the owner after the commands already sent, syncing and closing the log; waiting
    /// fetches are answered with what there is.
    ///
    /// # Errors
    /// Storage errors while closing; `PartitionStopped` when it had already stopped.
    pub async fn close(&self) -> Result<(), CoreError> {
        self.call(|reply| Command::Close { reply }).await
    }
}

/// A batch in a partition's mailbox; resolves to its append's outcome.
#[derive(Debug)]
pub struct StreamEnqueued {
    handle: PartitionHandle,
    outcome: oneshot::Receiver<Result<Produced, CoreError>>,
}

impl StreamEnqueued {
    /// Waits for the owner to append the batch.
    ///
    /// # Errors
    /// The append's error; `PartitionStopped` when the owner stopped before answering.
    pub async fn appended(self) -> Result<Produced, CoreError> {
        self.outcome.await.map_err(|_| self.handle.stopped())?
    }
}

struct Waiter {
    spec: FetchSpec,
    deadline_ms: i64,
    reply: Reply<Fetched>,
}

enum Wake {
    Commands(usize),
    Durable(Result<(), LogError>),
    Timer,
}

struct Owner<L: Log> {
    engine: PartitionEngine<L>,
    clock: Arc<dyn Clock>,
    /// Compaction by key, with the tombstone retention; `None` keeps every record.
    compaction: Option<Duration>,
    waiters: Vec<Waiter>,
    next_retention_ms: i64,
}

impl<L: Log> Owner<L> {
    async fn run(mut self, mut inbox: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(DRAIN_MAX);
        // The newest append's ticket: when it resolves, everything before it is durable too.
        let mut newest: Option<Durable> = None;
        loop {
            let wake_ms = self
                .waiters
                .iter()
                .map(|waiter| waiter.deadline_ms)
                .min()
                .map_or(self.next_retention_ms, |deadline| {
                    deadline.min(self.next_retention_ms)
                });
            let delay_ms = wake_ms.saturating_sub(self.clock.now_ms()).max(0) as u64;
            let wake = tokio::select! {
                count = inbox.recv_many(&mut batch, DRAIN_MAX) => Wake::Commands(count),
                outcome = async {
                    match newest.as_mut() {
                        Some(ticket) => ticket.await,
                        None => std::future::pending().await,
                    }
                } => Wake::Durable(outcome),
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => Wake::Timer,
            };
            match wake {
                Wake::Commands(0) => break,
                Wake::Commands(_) => {
                    for command in batch.drain(..) {
                        match command {
                            Command::Close { reply } => {
                                self.answer_all();
                                let _ = reply.send(self.engine.close());
                                return;
                            }
                            other => {
                                if let Some(ticket) = self.on_command(other) {
                                    newest = Some(ticket);
                                }
                            }
                        }
                    }
                }
                Wake::Durable(outcome) => {
                    newest = None;
                    if let Err(error) = outcome {
                        error!(stream = self.engine.stream(), partition = self.engine.partition(), %error, "partition log failed");
                    }
                }
                Wake::Timer => self.on_timer(),
            }
            self.serve_waiters();
        }
        self.answer_all();
        let (stream, partition) = (self.engine.stream().to_owned(), self.engine.partition());
        if let Err(error) = self.engine.close() {
            warn!(stream, partition, %error, "partition did not close cleanly");
        }
    }

    /// Handles one command; returns the ticket of an append it made.
    fn on_command(&mut self, command: Command) -> Option<Durable> {
        match command {
            Command::Produce { batch, reply } => {
                let produced = self.engine.produce(batch);
                let ticket = produced
                    .as_ref()
                    .ok()
                    .filter(|produced| !produced.duplicate)
                    .map(|produced| produced.durable.clone());
                let _ = reply.send(produced);
                return ticket;
            }
            Command::Fetch { spec, reply } => {
                let fetched = self.engine.fetch(&spec);
                match fetched {
                    Ok(fetched)
                        if fetched.bytes() < spec.min_bytes.max(1) && !spec.max_wait.is_zero() =>
                    {
                        let wait_ms = i64::try_from(spec.max_wait.as_millis()).unwrap_or(i64::MAX);
                        self.waiters.push(Waiter {
                            spec: FetchSpec {
                                from: fetched.from,
                                ..spec
                            },
                            deadline_ms: self.clock.now_ms().saturating_add(wait_ms),
                            reply,
                        });
                    }
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            Command::Resolve { start, reply } => {
                let _ = reply.send(self.engine.resolve(start));
            }
            Command::Stats { reply } => {
                let _ = reply.send(Ok(self.engine.stats()));
            }
            Command::EnforceRetention { reply } => {
                let _ = reply.send(self.engine.enforce_retention());
            }
            Command::Compact { reply } => {
                let _ = reply.send(self.compact());
            }
            Command::RegisterTransaction {
                producer_id,
                epoch,
                reply,
            } => {
                let _ = reply.send(self.engine.register_transaction(producer_id, epoch));
            }
            Command::WriteMarker {
                producer_id,
                epoch,
                kind,
                reply,
            } => {
                let now = self.clock.now_ms();
                let written = self.engine.write_marker(now, producer_id, epoch, kind);
                let ticket = written.as_ref().ok().cloned();
                let _ = reply.send(written);
                return ticket;
            }
            Command::OpenTransactions { reply } => {
                let _ = reply.send(Ok(self.engine.open_transactions()));
            }
            Command::Close { .. } => unreachable!("the run loop handles Close"),
        }
        None
    }

    fn on_timer(&mut self) {
        let now = self.clock.now_ms();
        if now >= self.next_retention_ms {
            self.next_retention_ms = now + RETENTION_EVERY_MS;
            if let Err(error) = self.engine.enforce_retention() {
                error!(stream = self.engine.stream(), partition = self.engine.partition(), %error, "retention failed");
            }
            if let Err(error) = self.compact() {
                error!(stream = self.engine.stream(), partition = self.engine.partition(), %error, "compaction failed");
            }
        }
    }

    /// Compacts when the stream is compacted.
    fn compact(&mut self) -> Result<u64, CoreError> {
        match self.compaction {
            Some(tombstone_retention) => {
                let now = self.clock.now_ms();
                self.engine.compact(now, tombstone_retention)
            }
            None => Ok(0),
        }
    }

    /// Answers the waiting fetches that have enough data, whose time is up, or whose reader
    /// went away.
    fn serve_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        let mut index = 0;
        while index < self.waiters.len() {
            let waiter = &self.waiters[index];
            let due = waiter.deadline_ms <= now;
            if waiter.reply.is_closed() {
                self.waiters.swap_remove(index);
                continue;
            }
            if !due && waiter.spec.from >= self.engine.readable_end(waiter.spec.isolation) {
                index += 1;
                continue;
            }
            let spec = waiter.spec;
            let fetched = self.engine.fetch(&spec);
            let enough = match &fetched {
                Ok(fetched) => fetched.bytes() >= spec.min_bytes.max(1),
                Err(_) => true,
            };
            if enough || due {
                let waiter = self.waiters.swap_remove(index);
                let _ = waiter.reply.send(fetched);
            } else {
                index += 1;
            }
        }
    }

    /// Answers every waiting fetch with what there is now.
    fn answer_all(&mut self) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.reply.send(self.engine.fetch(&waiter.spec));
        }
    }
}
