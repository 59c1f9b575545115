//! A queue's part in a transaction. `prepare` appends one transactional batch (producer id =
//! the transaction id) holding the transaction's messages and a record of its settlements; it
//! stays invisible — its messages are not ready, its settlements not applied — until
//! `commit_transaction` appends a Kafka commit marker and applies it, or
//! `abort_transaction` appends an abort marker and forgets it. A batch is written whole or not
//! at all, and recovery applies a transaction only when its marker (or the host's recorded
//! decision) says commit, so a queue's part is all-or-nothing across a crash; the host's
//! coordinator makes the parts of many queues agree (see [`crate::transaction`]).

use postino_storage::batch::{BatchBuilder, ControlKind, control_batch};
use postino_storage::{Durable, Log};
use postino_types::Message;

use crate::error::CoreError;
use crate::offsets::OffsetSet;
use crate::record;

use super::recovery::{SETTLE_HEADER, encode_ranges};
use super::{Outcome, Push, QueueEngine};

/// A prepared transaction's part in this queue.
#[derive(Debug)]
pub(super) struct Pending {
    /// Offset of its batch (none when it wrote nothing: only requeues, or only duplicates).
    batch: Option<u64>,
    messages: Vec<(u64, Message)>,
    settles: Vec<(Vec<u64>, Outcome)>,
}

impl Pending {
    /// The offset the log must keep from while the transaction is undecided.
    pub(super) fn first_offset(&self) -> Option<u64> {
        self.batch
    }
}

impl<L: Log> QueueEngine<L> {
    /// Writes a transaction's messages and settlements, invisible until committed. Duplicates
    /// within the deduplication window are left out.
    ///
    /// # Errors
    /// `PreconditionFailed` for a transaction already prepared here; `UnknownDelivery` when a
    /// settlement names a delivery not in flight; `PublishRejected` when the queue is full under
    /// `reject-publish`; storage errors.
    pub fn prepare(
        &mut self,
        now_ms: i64,
        transaction: u64,
        messages: Vec<Message>,
        settles: Vec<(Vec<u64>, Outcome)>,
    ) -> Result<Durable, CoreError> {
        if self.pending.contains_key(&transaction) {
            return Err(CoreError::PreconditionFailed {
                reason: format!("transaction {transaction} is already prepared"),
            });
        }
        if let Some(unknown) = settles
            .iter()
            .flat_map(|(ids, _)| ids)
            .find(|id| !self.in_flight.contains_key(id))
        {
            return Err(CoreError::UnknownDelivery { delivery: *unknown });
        }
        let mut kept = Vec::with_capacity(messages.len());
        for message in messages {
            if self.admit(now_ms, &message)?.is_none() {
                kept.push(message);
            }
        }
        let mut builder = BatchBuilder::new()
            .producer(transaction as i64, 0, 0)
            .transactional();
        for message in &kept {
            record::push(&mut builder, message, now_ms);
        }
        let mut settled = OffsetSet::new();
        for (ids, outcome) in &settles {
            if *outcome != Outcome::Requeue {
                ids.iter().for_each(|id| {
                    settled.insert(*id);
                });
            }
        }
        if !settled.is_empty() {
            let ranges = encode_ranges(&settled);
            builder.push(now_ms, None, Some(&ranges), &[(SETTLE_HEADER, Some(b""))]);
        }
        let (batch, durable) = if builder.is_empty() {
            (None, Durable::ready())
        } else {
            let appended = self.log.append(&mut builder.build())?;
            (Some(appended.base_offset.0), appended.durable)
        };
        let first = batch.unwrap_or(0);
        let messages = (first..).zip(kept).collect();
        self.pending.insert(
            transaction,
            Pending {
                batch,
                messages,
                settles,
            },
        );
        Ok(durable)
    }

    /// Makes a prepared transaction visible: its messages enter the queue, its settlements
    /// apply (deliveries no longer in flight are skipped). Returns the marker's ticket.
    ///
    /// # Errors
    /// `PreconditionFailed` for a transaction not prepared here; storage errors.
    pub fn commit_transaction(
        &mut self,
        now_ms: i64,
        transaction: u64,
    ) -> Result<(Durable, Vec<Push>), CoreError> {
        let pending =
            self.pending
                .remove(&transaction)
                .ok_or_else(|| CoreError::PreconditionFailed {
                    reason: format!("transaction {transaction} is not prepared"),
                })?;
        let durable = match pending.batch {
            Some(_) => {
                let mut marker =
                    control_batch(ControlKind::Commit, transaction as i64, 0, 0, now_ms);
                self.log.append(&mut marker)?.durable
            }
            None => Durable::ready(),
        };
        for (id, message) in pending.messages {
            self.enter(now_ms, id, message)?;
        }
        for (ids, outcome) in pending.settles {
            let live: Vec<u64> = ids
                .into_iter()
                .filter(|id| self.in_flight.contains_key(id))
                .collect();
            self.apply_settle(now_ms, &live, outcome)?;
        }
        let pushes = self.finish(now_ms)?;
        Ok((durable, pushes))
    }

    /// Forgets a prepared transaction (nothing of it ever becomes visible).
    ///
    /// # Errors
    /// Storage errors.
    pub fn abort_transaction(
        &mut self,
        now_ms: i64,
        transaction: u64,
    ) -> Result<Durable, CoreError> {
        let Some(pending) = self.pending.remove(&transaction) else {
            return Ok(Durable::ready());
        };
        let durable = match pending.batch {
            Some(_) => {
                let mut marker =
                    control_batch(ControlKind::Abort, transaction as i64, 0, 0, now_ms);
                self.log.append(&mut marker)?.durable
            }
            None => Durable::ready(),
        };
        self.reclaim()?;
        Ok(durable)
    }
}
