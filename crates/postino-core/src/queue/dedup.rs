//! Publish deduplication: a window of recently published message ids per queue, bounded in
//! size and age, rebuilt from the log on open, so a re-sent message is confirmed as already
//! stored instead of stored twice (SQS FIFO deduplication, RabbitMQ's deduplication plugin).

use std::collections::{HashMap, VecDeque};

use postino_types::{HeaderValue, Message};

/// The application header that carries a deduplication id, as RabbitMQ's plugin names it;
/// without it the message id is used.
pub(crate) const HEADER: &str = "x-deduplication-header";

/// The deduplication id of a message, if it has one.
pub(crate) fn key_of(message: &Message) -> Option<String> {
    match message.properties.headers.get(HEADER) {
        Some(HeaderValue::Text(key)) => Some(key.clone()),
        _ => message.properties.message_id.clone(),
    }
}

/// Ids seen, with the offset and time of their first publish.
#[derive(Debug, Default)]
pub(crate) struct Window {
    size_max: usize,
    ttl_ms: Option<u64>,
    seen: HashMap<String, (u64, i64)>,
    order: VecDeque<String>,
}

impl Window {
    pub(crate) fn new(size_max: usize, ttl_ms: Option<u64>) -> Self {
        Self {
            size_max: size_max.max(1),
            ttl_ms,
            ..Self::default()
        }
    }

    /// The offset of an earlier publish of `key` still in the window at `now_ms`.
    pub(crate) fn find(&self, key: &str, now_ms: i64) -> Option<u64> {
        let (offset, at) = *self.seen.get(key)?;
        let fresh = self
            .ttl_ms
            .is_none_or(|ttl| now_ms.saturating_sub(at) < ttl as i64);
        fresh.then_some(offset)
    }

    /// Remembers a publish, forgetting the oldest ones past the size limit.
    pub(crate) fn remember(&mut self, key: String, offset: u64, at_ms: i64) {
        if self.seen.insert(key.clone(), (offset, at_ms)).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.size_max {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_bounded_by_size_and_age() {
        let mut window = Window::new(2, Some(100));
        window.remember("a".into(), 1, 0);
        window.remember("b".into(), 2, 50);
        assert_eq!(window.find("a", 99), Some(1));
        assert_eq!(window.find("a", 100), None, "too old");
        window.remember("c".into(), 3, 60);
        assert_eq!(window.find("a", 61), None, "pushed out by size");
        assert_eq!(window.find("b", 61), Some(2));
        let message = Message::new(&b""[..]).with_header(HEADER, HeaderValue::Text("k".into()));
        assert_eq!(key_of(&message).as_deref(), Some("k"));
    }
}
