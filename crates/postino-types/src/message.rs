//! The protocol-neutral message every front-end translates to and from.
//!
//! A message is a body, the usual properties (those of AMQP 0-9-1's basic class, which the other
//! protocols' properties map onto), an application headers table, and broker annotations that the
//! broker sets while routing and delivering.

use std::collections::BTreeMap;
use std::fmt;

/// A typed value of an application header (AMQP field-table types, narrowed to what the other
/// protocols can carry).
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    Void,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// UTF-8 text (AMQP long string, MQTT user property, STOMP header, SQS string attribute).
    Text(String),
    /// Raw bytes (SQS binary attribute, AMQP byte array).
    Bytes(Vec<u8>),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Array(Vec<HeaderValue>),
    Table(Headers),
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Void => f.write_str("void"),
            HeaderValue::Bool(value) => value.fmt(f),
            HeaderValue::Int(value) => value.fmt(f),
            HeaderValue::Float(value) => value.fmt(f),
            HeaderValue::Text(value) => value.fmt(f),
            HeaderValue::Bytes(value) => write!(f, "<{} bytes>", value.len()),
            HeaderValue::Timestamp(value) => write!(f, "@{value}"),
            HeaderValue::Array(values) => write!(f, "[{} values]", values.len()),
            HeaderValue::Table(table) => write!(f, "{{{} entries}}", table.len()),
        }
    }
}

/// An application headers table, ordered by name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// Whether a message survives a broker restart on a durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Kept in memory only (AMQP delivery-mode 1).
    #[default]
    Transient,
    /// Written to the queue's log under its durability policy (AMQP delivery-mode 2).
    Persistent,
}

/// The properties a publisher sets; `None` is "not set".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub headers: Headers,
    pub delivery_mode: DeliveryMode,
    pub priority: Option<u8>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    /// Per-message time to live in milliseconds (AMQP carries it as a decimal string).
    pub expiration_ms: Option<u64>,
    pub message_id: Option<String>,
    /// Milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub app_id: Option<String>,
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLength,
    DeliveryLimit,
}

impl DeathReason {
    /// RabbitMQ's spelling, as in `x-death` headers.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLength => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// One dead-lettering of a message (RabbitMQ's `x-death` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct Death {
    pub queue: String,
    pub reason: DeathReason,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    pub count: u64,
    pub time_ms: i64,
}

/// What the broker knows of a message beyond what the publisher set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Annotations {
    /// The exchange it was published to ("" for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    /// Set on a delivery of a message that was delivered before.
    pub redelivered: bool,
    /// Deliveries before this one.
    pub delivery_count: u32,
    pub deaths: Vec<Death>,
}

/// A message: body, properties, annotations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub body: bytes::Bytes,
    pub properties: Properties,
    pub annotations: Annotations,
}

impl Message {
    /// A transient message with `body` and no properties.
    #[must_use]
    pub fn new(body: impl Into<bytes::Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Marks the message persistent.
    #[must_use]
    pub fn persistent(mut self) -> Self {
        self.properties.delivery_mode = DeliveryMode::Persistent;
        self
    }

    /// Adds an application header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: HeaderValue) -> Self {
        self.properties.headers.insert(name.to_owned(), value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_set_what_they_name() {
        let message = Message::new(&b"hi"[..])
            .persistent()
            .with_header("k", HeaderValue::Int(3));
        assert_eq!(message.properties.delivery_mode, DeliveryMode::Persistent);
        assert_eq!(message.properties.headers["k"], HeaderValue::Int(3));
        assert_eq!(&message.body[..], b"hi");
        assert_eq!(DeathReason::MaxLength.as_str(), "maxlen");
    }
}
