//! The `Transactions` service: a transaction the server keeps between calls, named by the
//! id `Begin` answers, holding the puts, publishes and settlements that name it until
//! `Commit` applies them together (the core's [`Transaction`]) or `Rollback` (or its idle
//! timeout) drops them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use postino_core::{Outcome, Transaction};
use postino_types::Message;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, caller};
use crate::{Shared, proto, status_of};

/// How long an open transaction may go unnamed before it is rolled back, by default.
const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// Open transactions a server keeps at once; `Begin` past it is `RESOURCE_EXHAUSTED`.
const MAX_OPEN: usize = 10_000;

#[derive(Debug)]
struct Open {
    transaction: Transaction,
    user: String,
    vhost: String,
    timeout: Duration,
    last_used: Instant,
}

/// The open transactions of a server.
#[derive(Debug, Default)]
pub(crate) struct Transactions {
    open: Mutex<HashMap<String, Open>>,
    next: std::sync::atomic::AtomicU64,
}

/// What a call adds to a transaction.
pub(crate) enum Part {
    Publish {
        exchange: String,
        routing_key: String,
        message: Box<Message>,
    },
    Settle {
        queue: String,
        ids: Vec<u64>,
        outcome: Outcome,
    },
}

impl Transactions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Open>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, caller: &Caller, timeout_ms: Option<u64>) -> Result<String, Status> {
        let now = Instant::now();
        let mut open = self.lock();
        // Those past their timeout are rolled back (dropped) here.
        open.retain(|_, entry| now.duration_since(entry.last_used) < entry.timeout);
        if open.len() >= MAX_OPEN {
            return Err(Status::resource_exhausted(format!(
                "{MAX_OPEN} transactions are open on this server"
            )));
        }
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("tx-{number}");
        open.insert(
            id.clone(),
            Open {
                transaction: caller.host.begin(),
                user: caller.user.clone(),
                vhost: caller.host.name().to_owned(),
                timeout: Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                last_used: now,
            },
        );
        Ok(id)
    }

    /// Adds `part` to the caller's open transaction `id`.
    pub(crate) fn add(&self, caller: &Caller, id: &str, part: Part) -> Result<(), Status> {
        let mut open = self.lock();
        let entry = find(&mut open, caller, id)?;
        entry.last_used = Instant::now();
        match part {
            Part::Publish {
                exchange,
                routing_key,
                message,
            } => entry.transaction.publish(&exchange, &routing_key, *message),
            Part::Settle {
                queue,
                ids,
                outcome,
            } => entry.transaction.settle(&queue, ids, outcome),
        }
        Ok(())
    }

    /// Takes the caller's open transaction `id` out, to commit or roll back.
    fn take(&self, caller: &Caller, id: &str) -> Result<Transaction, Status> {
        let mut open = self.lock();
        find(&mut open, caller, id)?;
        let entry = open.remove(id).ok_or_else(|| unknown(id))?;
        Ok(entry.transaction)
    }
}

fn unknown(id: &str) -> Status {
    Status::not_found(format!(
        "no open transaction '{id}' (committed, rolled back or timed out)"
    ))
}

/// The caller's open transaction `id`; one past its timeout is rolled back and unknown, one
/// of another user or virtual host unknown too.
fn find<'a>(
    open: &'a mut HashMap<String, Open>,
    caller: &Caller,
    id: &str,
) -> Result<&'a mut Open, Status> {
    let now = Instant::now();
    if open
        .get(id)
        .is_some_and(|entry| now.duration_since(entry.last_used) >= entry.timeout)
    {
        open.remove(id);
    }
    open.get_mut(id)
        .filter(|entry| entry.user == caller.user && entry.vhost == caller.host.name())
        .ok_or_else(|| unknown(id))
}

#[derive(Debug)]
pub(crate) struct Service(pub Arc<Shared>);

#[tonic::async_trait]
impl proto::transactions_server::Transactions for Service {
    async fn begin(
        &self,
        request: Request<proto::BeginRequest>,
    ) -> Result<Response<proto::BeginReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let transaction = self
            .0
            .transactions
            .begin(&caller, request.get_ref().timeout_ms)?;
        Ok(Response::new(proto::BeginReply { transaction }))
    }

    async fn commit(
        &self,
        request: Request<proto::TransactionRequest>,
    ) -> Result<Response<proto::CommitTransactionReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        let transaction = self
            .0
            .transactions
            .take(&caller, &request.get_ref().transaction)?;
        let committed = transaction
            .commit()
            .await
            .map_err(|error| status_of(&error))?;
        let routed = committed
            .routed
            .into_iter()
            .map(|queues| u32::try_from(queues).unwrap_or(u32::MAX))
            .collect();
        Ok(Response::new(proto::CommitTransactionReply { routed }))
    }

    async fn rollback(
        &self,
        request: Request<proto::TransactionRequest>,
    ) -> Result<Response<proto::RollbackReply>, Status> {
        let caller = caller(&self.0, &request, &request.get_ref().vhost).await?;
        self.0
            .transactions
            .take(&caller, &request.get_ref().transaction)?
            .rollback();
        Ok(Response::new(proto::RollbackReply {}))
    }
}
