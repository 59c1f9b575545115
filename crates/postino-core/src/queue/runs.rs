//! Runs of operations handled together, so that a busy queue pays one log write for many:
//! consecutive publishes appended as one batch, and the settlements of many acks persisted as
//! one record at the end of the owner's round.

use postino_storage::Log;
use postino_storage::batch::BatchBuilder;
use postino_types::Message;

use super::{Published, QueueEngine};
use crate::error::CoreError;
use crate::record;

/// The most body bytes one batch of publishes holds; a larger message goes alone.
const RUN_BYTES_MAX: usize = 256 << 10;

impl<L: Log> QueueEngine<L> {
    /// [`QueueEngine::publish`] of each message in turn, with the outcome `publish` would give
    /// each, but appended as one batch per [`RUN_BYTES_MAX`] of bodies when the queue has
    /// neither length limits nor deduplication (whose checks depend on what each publish
    /// before delivered). Deliveries the run caused are in the last stored message's pushes.
    pub fn publish_many(
        &mut self,
        now_ms: i64,
        messages: Vec<Message>,
    ) -> Vec<Result<Published, CoreError>> {
        let plain = self.dedup.is_none()
            && self.options.max_length.is_none()
            && self.options.max_length_bytes.is_none();
        if !plain || messages.len() < 2 {
            return messages
                .into_iter()
                .map(|message| self.publish(now_ms, message))
                .collect();
        }
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut rest = messages.into_iter().peekable();
        while rest.peek().is_some() {
            let mut run = Vec::new();
            let mut bytes = 0;
            while let Some(next) = rest.peek() {
                if !run.is_empty() && bytes + next.body.len() > RUN_BYTES_MAX {
                    break;
                }
                bytes += next.body.len();
                run.extend(rest.next());
            }
            self.append_run(now_ms, run, &mut outcomes);
        }
        let pushes = self.finish(now_ms).unwrap_or_else(|error| {
            tracing::error!(queue = %self.name, %error, "queue failed while delivering");
            Vec::new()
        });
        if let Some(Ok(last)) = outcomes.iter_mut().rev().find(|outcome| outcome.is_ok()) {
            last.pushes = pushes;
        }
        outcomes
    }

    /// Appends `run` as one batch and lets its messages enter the queue. A batch the log
    /// refuses (a full file system, a batch over its limit) is published message by message
    /// instead, so that each gets its own outcome.
    fn append_run(
        &mut self,
        now_ms: i64,
        run: Vec<Message>,
        outcomes: &mut Vec<Result<Published, CoreError>>,
    ) {
        let mut builder = BatchBuilder::new();
        for message in &run {
            record::push(&mut builder, message, now_ms);
        }
        let Ok(appended) = self.log.append(&mut builder.build()) else {
            for message in run {
                outcomes.push(self.publish(now_ms, message));
            }
            return;
        };
        for (id, message) in (appended.base_offset.0..).zip(run) {
            let entered = self.enter(now_ms, id, message).map(|()| {
                self.totals.published += 1;
                Published {
                    id,
                    duplicate: false,
                    durable: appended.durable.clone(),
                    pushes: Vec::new(),
                }
            });
            outcomes.push(entered);
        }
    }

    /// Keeps what acks settle in memory until [`QueueEngine::release_settlements`], so that
    /// a round of many acks writes one settlement record. Acks are not promised durable: a
    /// restart before the record redelivers them, as at-least-once allows.
    pub fn hold_settlements(&mut self) {
        self.holding_settlements = true;
    }

    /// Ends [`QueueEngine::hold_settlements`]: persists what was settled meanwhile and deletes
    /// the segments that hold only settled records.
    ///
    /// # Errors
    /// Storage errors.
    pub fn release_settlements(&mut self, now_ms: i64) -> Result<(), CoreError> {
        self.holding_settlements = false;
        self.flush(now_ms)
    }
}
