//! Which consumer a ready message goes to. Waiting gets take the head first; then the
//! highest-priority consumers with credit whose filter accepts it, round-robin (with single
//! active consumer, only the first registered). A consumer with a filter (JMS selectors on a
//! queue, AMQP's `x-filter` consumer argument) that the head does not suit looks further: the
//! first `FILTER_SCAN_MAX` ready messages are offered to the filtered consumers with credit, so
//! a message no consumer accepts stays in the queue without holding the others back.

use postino_storage::Log;
use postino_types::Message;

use super::{GetSpec, Holder, Push, QueueEngine, groups};
use crate::error::CoreError;

/// Ready messages a filtered consumer looks at past the head.
const FILTER_SCAN_MAX: usize = 1024;

impl<L: Log> QueueEngine<L> {
    /// The consumer the next delivery of `bytes` goes to, among those that accept `message`
    /// (`None` when no consumer has a filter: every consumer accepts every message).
    pub(super) fn choose_consumer(&self, bytes: u64, message: Option<&Message>) -> Option<usize> {
        let suits = |index: usize| {
            let consumer = &self.consumers[index];
            consumer.can_take(bytes) && message.is_none_or(|message| consumer.accepts(message))
        };
        if self.options.single_active_consumer {
            return (!self.consumers.is_empty() && suits(0)).then_some(0);
        }
        let count = self.consumers.len();
        let top = (0..count)
            .filter(|index| suits(*index))
            .map(|index| self.consumers[index].spec.priority)
            .max()?;
        (0..count)
            .map(|step| (self.next_consumer + step) % count)
            .find(|index| self.consumers[*index].spec.priority == top && suits(*index))
    }

    fn filtered(&self) -> bool {
        self.consumers
            .iter()
            .any(|consumer| consumer.spec.filter.is_some())
    }

    /// Hands ready messages to waiting gets first, then to consumers, while someone can take
    /// them; expired heads die on the way. A read error stops the round: what was handed out
    /// before it is still answered (those messages are in flight now), and the error only when
    /// nothing was.
    pub(super) fn deliver(&mut self, now_ms: i64) -> Result<Vec<Push>, CoreError> {
        let mut pushes = Vec::new();
        match self.deliver_into(now_ms, &mut pushes) {
            Err(error) if pushes.is_empty() => Err(error),
            Err(error) => {
                tracing::error!(queue = %self.name, %error, "queue failed while delivering");
                Ok(pushes)
            }
            Ok(()) => Ok(pushes),
        }
    }

    fn deliver_into(&mut self, now_ms: i64, pushes: &mut Vec<Push>) -> Result<(), CoreError> {
        self.expire_heads(now_ms)?;
        let filtered = self.filtered();
        while let Some((level, offset)) = self.next_deliverable()? {
            self.read_ahead(offset)?;
            let meta = self.meta(offset)?;
            if self.is_expired(now_ms, meta) {
                let (message, meta) = self.take(offset)?;
                self.ready.remove(level, offset, meta.bytes);
                self.die(now_ms, Some(offset), message, super::DeathReason::Expired);
                continue;
            }
            if let Some((waiter, spec)) = self.waiters.pop_front() {
                let (message, meta) = self.take(offset)?;
                let delivery =
                    self.hand_out(now_ms, (level, offset), message, meta, Holder::Get, spec);
                pushes.push(Push::Waiter { waiter, delivery });
                continue;
            }
            let head = if filtered {
                Some(self.peek(offset)?)
            } else {
                None
            };
            let Some(index) = self.choose_consumer(meta.bytes, head.as_ref()) else {
                if head.is_some() {
                    self.deliver_past_the_head(now_ms, pushes)?;
                }
                break;
            };
            pushes.push(self.give(now_ms, index, (level, offset))?);
        }
        Ok(())
    }

    /// Offers the first `FILTER_SCAN_MAX` ready messages to the consumers that can take them
    /// and accept them, while a filtered consumer has credit.
    fn deliver_past_the_head(
        &mut self,
        now_ms: i64,
        pushes: &mut Vec<Push>,
    ) -> Result<(), CoreError> {
        for (level, offset) in self.ready.in_order(FILTER_SCAN_MAX) {
            let waiting = self
                .consumers
                .iter()
                .any(|consumer| consumer.spec.filter.is_some() && consumer.can_take(0));
            if !waiting {
                break;
            }
            let meta = self.meta(offset)?;
            if self.is_expired(now_ms, meta) {
                continue;
            }
            let message = self.peek(offset)?;
            let group_busy = self.options.message_groups
                && groups::group_of(&message).is_some_and(|group| self.busy.is_busy(&group));
            if group_busy {
                continue;
            }
            if let Some(index) = self.choose_consumer(meta.bytes, Some(&message)) {
                pushes.push(self.give(now_ms, index, (level, offset))?);
            }
        }
        Ok(())
    }

    /// Hands the ready message at `offset` to consumer `index`.
    fn give(
        &mut self,
        now_ms: i64,
        index: usize,
        (level, offset): (usize, u64),
    ) -> Result<Push, CoreError> {
        self.next_consumer = (index + 1) % self.consumers.len();
        if self.consumers[index].spec.window > 0 {
            self.consumers[index].in_transit += 1;
        }
        let consumer = self.consumers[index].clone();
        let (message, meta) = self.take(offset)?;
        let mode = GetSpec {
            auto_ack: consumer.spec.auto_ack,
            lease_ms: consumer.spec.lease_ms,
        };
        let delivery = self.hand_out(
            now_ms,
            (level, offset),
            message,
            meta,
            Holder::Consumer(consumer.id),
            mode,
        );
        Ok(Push::Consumer {
            consumer: consumer.id,
            delivery,
        })
    }
}
