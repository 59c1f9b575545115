//! Where the engine finds a message: recently published ones in memory ("hot"), the others
//! in the queue's log.

use postino_storage::batch::Record;
use postino_storage::{Log, LogError, Offset};
use postino_types::Message;

use crate::error::CoreError;
use crate::record;

use super::{HOT_BYTES_MAX, QueueEngine, delay};

/// Bytes of log a read-ahead asks for.
const READ_AHEAD_BYTES: usize = 256 << 10;

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

/// A message record as the engine sees it. A delayed message enters the queue when its delay
/// has passed, and its time to live counts from then, as with RabbitMQ's delayed exchange.
fn decode(record: &Record) -> Result<(Message, Meta), CoreError> {
    let message = record::decode(record)?;
    let entered_ms = delay::delay_of(&message).map_or(record.timestamp_ms, |delay| {
        record.timestamp_ms.saturating_add(delay as i64)
    });
    let meta = Meta::of(&message, entered_ms);
    Ok((message, meta))
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

    /// A copy of the message at a ready offset, which stays ready.
    pub(super) fn peek(&self, offset: u64) -> Result<Message, CoreError> {
        Ok(match self.hot.get(&offset) {
            Some(hot) => hot.message.clone(),
            None => self.read(offset)?.0,
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
        decode(&record)
    }

    /// Makes the ready messages from `offset` on hot, reading up to `READ_AHEAD_BYTES` of the
    /// log at once within the hot budget: a backlog is delivered from memory a chunk at a
    /// time instead of one log read per message.
    pub(super) fn read_ahead(&mut self, offset: u64) -> Result<(), CoreError> {
        if self.hot.contains_key(&offset) {
            return Ok(());
        }
        let batches = self.log.read(Offset(offset), READ_AHEAD_BYTES)?;
        for batch in batches.iter().filter(|batch| !batch.header().is_control()) {
            for record in batch.records().map_err(LogError::from)? {
                let wanted = record.offset >= offset
                    && self.ready.contains(record.offset)
                    && !self.hot.contains_key(&record.offset);
                if !wanted {
                    continue;
                }
                let (message, meta) = decode(&record)?;
                let cost = hot_cost(&message);
                if self.hot_bytes + cost > HOT_BYTES_MAX {
                    return Ok(());
                }
                self.hot_bytes += cost;
                let published_ms = meta.published_ms;
                self.hot.insert(
                    record.offset,
                    Hot {
                        message,
                        published_ms,
                    },
                );
            }
        }
        Ok(())
    }
}
