//! Transactions: a set of publishes and settlements, on any queues of a virtual host, applied
//! all together on commit and not at all on rollback — also across a crash.
//!
//! Commit is Kafka's protocol: (1) every queue involved prepares its part (one transactional
//! batch, invisible) and syncs it; (2) the host's coordinator log records the decision
//! `commit` and syncs it — the commit point; (3) every queue appends a commit marker and makes
//! its part visible; (4) the coordinator records `done`. A crash before (2) leaves prepared
//! parts that recovery aborts; after (2), recovery commits them from the recorded decision.
//! Commits of one host are serialised by the coordinator's lock.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use postino_storage::batch::BatchBuilder;
use postino_storage::{Durable, FileLog, Log, LogConfig, MemLog, MemStore};
use postino_types::{Clock, Message};

use crate::error::CoreError;
use crate::owner::QueueHandle;
use crate::queue::Outcome;
use crate::vhost::VirtualHost;

const COMMIT: &[u8] = b"commit";
const DONE: &[u8] = b"done";

/// The decisions of a host's transactions.
#[derive(Debug)]
pub(crate) struct Coordinator {
    log: Box<dyn Log>,
    next_id: u64,
}

impl Coordinator {
    /// Opens the coordinator log in `dir` (in memory without one); returns it and the
    /// transactions decided `commit` but not `done`, whose queue parts may lack their marker.
    pub(crate) fn open(
        dir: Option<&Path>,
        log_config: &LogConfig,
        clock: &Arc<dyn Clock>,
    ) -> Result<(Self, HashSet<u64>), CoreError> {
        let log: Box<dyn Log> = match dir {
            Some(dir) => Box::new(FileLog::open(dir.join("transactions"), log_config.clone())?),
            None => Box::new(MemLog::open(
                &MemStore::new(),
                log_config.clone(),
                Arc::clone(clock),
            )?),
        };
        let mut committed = HashSet::new();
        let mut highest = 0;
        postino_storage::scan(log.as_ref(), |batch| {
            for record in batch.records().map_err(postino_storage::LogError::from)? {
                let Some(id) = record.key.as_deref().and_then(|key| key.try_into().ok()) else {
                    continue;
                };
                let id = u64::from_be_bytes(id);
                highest = highest.max(id);
                match record.value.as_deref() {
                    Some(COMMIT) => committed.insert(id),
                    Some(DONE) => committed.remove(&id),
                    _ => false,
                };
            }
            Ok::<(), CoreError>(())
        })?;
        // Ids only need to differ from those of transactions that may still be undecided;
        // starting past the clock's microseconds keeps them apart across restarts too.
        let next_id = highest.max(clock.now_ms().max(0) as u64 * 1_000) + 1;
        Ok((Self { log, next_id }, committed))
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn record(&mut self, id: u64, what: &[u8], now_ms: i64) -> Result<Durable, CoreError> {
        let mut builder = BatchBuilder::new();
        builder.push(now_ms, Some(&id.to_be_bytes()), Some(what), &[]);
        Ok(self.log.append(&mut builder.build())?.durable)
    }

    /// Records and syncs the decision to commit: the commit point.
    async fn decide(&mut self, id: u64, now_ms: i64) -> Result<(), CoreError> {
        self.record(id, COMMIT, now_ms)?.await?;
        Ok(())
    }

    /// Records that every queue has the transaction's marker; forgets what is all done.
    pub(crate) fn done(&mut self, id: u64, now_ms: i64) -> Result<(), CoreError> {
        self.record(id, DONE, now_ms)?;
        let next = self.log.next_offset();
        self.log.delete_up_to(next)?;
        Ok(())
    }
}

/// A transaction being built; nothing happens until [`Transaction::commit`].
#[derive(Debug)]
#[must_use = "a transaction does nothing until committed"]
pub struct Transaction {
    host: Arc<VirtualHost>,
    publishes: Vec<(String, String, Message)>,
    settles: Vec<(String, Vec<u64>, Outcome)>,
}

/// What a committed transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// For each publish, in order, how many queues it reached (0: unroutable).
    pub routed: Vec<usize>,
}

impl Transaction {
    pub(crate) fn new(host: Arc<VirtualHost>) -> Self {
        Self {
            host,
            publishes: Vec::new(),
            settles: Vec::new(),
        }
    }

    /// Adds a publish.
    pub fn publish(&mut self, exchange: &str, routing_key: &str, message: Message) {
        self.publishes
            .push((exchange.to_owned(), routing_key.to_owned(), message));
    }

    /// Adds a settlement of deliveries of `queue`.
    pub fn settle(&mut self, queue: &str, ids: Vec<u64>, outcome: Outcome) {
        self.settles.push((queue.to_owned(), ids, outcome));
    }

    /// Discards the transaction.
    pub fn rollback(self) {}

    /// Applies every publish and settlement, or none.
    ///
    /// # Errors
    /// Routing errors, `NotFound` for a settled queue, a queue's refusal (`UnknownDelivery`,
    /// `PublishRejected`): nothing is applied. A storage failure after the commit point is
    /// reported as such: the transaction is committed and completes at recovery.
    pub async fn commit(self) -> Result<Committed, CoreError> {
        let Self {
            host,
            publishes,
            settles,
        } = self;
        let mut parts: BTreeMap<String, Part> = BTreeMap::new();
        let mut routed = Vec::with_capacity(publishes.len());
        for (exchange, routing_key, mut message) in publishes {
            message.annotations.exchange.clone_from(&exchange);
            message.annotations.routing_key.clone_from(&routing_key);
            let queues = host.route(&exchange, &routing_key, &message)?;
            routed.push(queues.len());
            for (name, handle) in queues {
                parts
                    .entry(name)
                    .or_insert_with(|| Part::new(handle))
                    .messages
                    .push(message.clone());
            }
        }
        for (queue, ids, outcome) in settles {
            let handle = host.queue(&queue).ok_or_else(|| CoreError::NotFound {
                kind: "queue",
                name: queue.clone(),
            })?;
            parts
                .entry(queue)
                .or_insert_with(|| Part::new(handle))
                .settles
                .push((ids, outcome));
        }
        if parts.is_empty() {
            return Ok(Committed { routed });
        }
        let mut coordinator = host.coordinator().lock().await;
        let id = coordinator.next_id();
        let now = host.now_ms();
        let mut prepared: Vec<(QueueHandle, Durable)> = Vec::with_capacity(parts.len());
        let mut failure = None;
        for part in parts.into_values() {
            match part.handle.prepare(id, part.messages, part.settles).await {
                Ok(ticket) => prepared.push((part.handle, ticket)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if failure.is_none() {
            for (_, ticket) in &prepared {
                if let Err(error) = ticket.clone().await {
                    failure = Some(error.into());
                    break;
                }
            }
        }
        if let Some(error) = failure {
            for (handle, _) in &prepared {
                let _ = handle.abort_transaction(id).await;
            }
            return Err(error);
        }
        coordinator.decide(id, now).await?;
        let mut markers = Vec::with_capacity(prepared.len());
        for (handle, _) in &prepared {
            markers.push(handle.commit_transaction(id).await?);
        }
        for marker in markers {
            marker.await?;
        }
        coordinator.done(id, now)?;
        Ok(Committed { routed })
    }
}

/// One queue's share of a transaction.
struct Part {
    handle: QueueHandle,
    messages: Vec<Message>,
    settles: Vec<(Vec<u64>, Outcome)>,
}

impl Part {
    fn new(handle: QueueHandle) -> Self {
        Self {
            handle,
            messages: Vec::new(),
            settles: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_types::SystemClock;

    #[tokio::test]
    async fn decided_transactions_stay_in_doubt_until_done() {
        let dir = tempfile::tempdir().expect("dir");
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let config = LogConfig::default();
        let (mut coordinator, in_doubt) =
            Coordinator::open(Some(dir.path()), &config, &clock).expect("open");
        assert!(in_doubt.is_empty());
        let first = coordinator.next_id();
        let second = coordinator.next_id();
        assert!(second > first);
        coordinator.decide(first, 0).await.expect("decide");
        coordinator.decide(second, 0).await.expect("decide");
        coordinator.done(first, 0).expect("done");
        drop(coordinator);
        let (mut coordinator, in_doubt) =
            Coordinator::open(Some(dir.path()), &config, &clock).expect("reopen");
        assert_eq!(in_doubt, HashSet::from([second]));
        assert!(coordinator.next_id() > second, "ids are not reused");
        coordinator.done(second, 0).expect("done");
        drop(coordinator);
        let (_, in_doubt) = Coordinator::open(Some(dir.path()), &config, &clock).expect("reopen");
        assert!(in_doubt.is_empty());
    }
}
