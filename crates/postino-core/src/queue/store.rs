//! Where the engine finds a message: recently published ones in memory ("hot"), the others
//! in the queue's log.

use postino_storage::{Log, LogError, Offset};
use postino_types::Message;

use crate::error::CoreError;
use crate::record;

use super::{QueueEngine, delay};

/// Memory a hot message is counted for: its body and what a message costs besides (the
/// struct, its properties, the map entry), estimated generously so that tiny messages do not
/// fill memory with overhead.
const HOT_ENTRY_OVERHEAD_BYTES: usize = 512;

/// What keeping `message` hot costs.
pub(super) fn hot_cost(message: &Message) -> usize {
    message.body.len() + HOT_ENTRY_OVERHEAD_BYTES
}

/// What the engine needs to know of a message before taking it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meta {
    pub(super) bytes: u64,
    pub(super) published_ms: i64,
    pub(super) expiration_ms: Option<u64>,
}

impl Meta {
    pub(super) fn of(message: &Message, published_ms: i64) -> Self {
        Self {
            bytes: message.body.len() as u64,
            published_ms,
            expiration_ms: message.properties.expiration_ms,
        }
    }
}

#[derive(Debug)]
pub(super) struct Hot {
    pub(super) message: Message,
    pub(super) published_ms: i64,
}

impl<L: Log> QueueEngine<L> {
    /// Size, publish time and expiration of a ready message.
    pub(super) fn meta(&self, offset: u64) -> Result<Meta, CoreError> {
        Ok(match self.hot.get(&offset) {
            Some(hot) => Meta::of(&hot.message, hot.published_ms),
            None => self.read(offset)?.1,
        })
    }

    /// The message at a ready offset, from memory when it is hot, else from the log.
    pub(super) fn take(&mut self, offset: u64) -> Result<(Message, Meta), CoreError> {
        match self.hot.remove(&offset) {
            Some(hot) => {
                self.hot_bytes -= hot_cost(&hot.message);
                let meta = Meta::of(&hot.message, hot.published_ms);
                Ok((hot.message, meta))
            }
            None => self.read(offset),
        }
    }

    pub(super) fn read(&self, offset: u64) -> Result<(Message, Meta), CoreError> {
        let batches = self.log.read(Offset(offset), 1)?;
        let record = batches
            .first()
            .map(|batch| batch.records().map_err(LogError::from))
            .transpose()?
            .and_then(|records| records.into_iter().find(|record| record.offset == offset))
            .ok_or(CoreError::CorruptMessage {
                reason: "a ready offset holds no record",
            })?;
        let message = record::decode(&record)?;
        // A delayed message enters the queue when its delay has passed; its time to live
        // counts from then, as with RabbitMQ's delayed exchange.
        let entered_ms = delay::delay_of(&message).map_or(record.timestamp_ms, |delay| {
            record.timestamp_ms.saturating_add(delay as i64)
        });
        let meta = Meta::of(&message, entered_ms);
        Ok((message, meta))
    }
}
