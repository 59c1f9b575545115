//! Messages as an application builds and reads them: a body, headers and properties — the
//! native API's `Message`, with a builder and typed header values.

use std::time::Duration;

use postino_grpc::proto::{self, value::Kind};

pub use postino_grpc::proto::Properties;

/// A header value: one of the types every protocol can carry.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<i32> for Value {
    fn from(number: i32) -> Self {
        Self::Int(i64::from(number))
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Self::Int(number)
    }
}

impl From<f64> for Value {
    fn from(number: f64) -> Self {
        Self::Float(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Self::Bool(flag)
    }
}

impl From<Value> for proto::Value {
    fn from(value: Value) -> Self {
        let kind = match value {
            Value::Text(text) => Kind::Text(text),
            Value::Int(number) => Kind::Int(number),
            Value::Float(number) => Kind::Float(number),
            Value::Bool(flag) => Kind::Bool(flag),
            Value::Bytes(bytes) => Kind::Bytes(bytes),
            Value::Timestamp(ms) => Kind::TimestampMs(ms),
        };
        Self { kind: Some(kind) }
    }
}

impl Value {
    fn of(value: &proto::Value) -> Option<Self> {
        Some(match value.kind.as_ref()? {
            Kind::Text(text) => Self::Text(text.clone()),
            Kind::Int(number) => Self::Int(*number),
            Kind::Float(number) => Self::Float(*number),
            Kind::Bool(flag) => Self::Bool(*flag),
            Kind::Bytes(bytes) => Self::Bytes(bytes.clone()),
            Kind::TimestampMs(ms) => Self::Timestamp(*ms),
        })
    }
}

/// A message: a body, headers and properties (content type, persistence, priority,
/// correlation id, reply-to, expiration, …), as every protocol of the broker carries them.
#[derive(Debug, Clone, PartialEq)]
pub struct Message(pub(crate) proto::Message);

impl Message {
    /// A persistent message with `body` and no headers: on a durable queue it is durable
    /// before a put returns, and survives a restart.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self(proto::Message {
            body: body.into(),
            headers: std::collections::HashMap::new(),
            properties: Some(Properties {
                persistent: true,
                ..Properties::default()
            }),
        })
    }

    fn properties_mut(&mut self) -> &mut Properties {
        self.0.properties.get_or_insert_with(Properties::default)
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.0.headers.insert(name.to_owned(), value.into().into());
        self
    }

    /// Kept in memory only: faster, and lost at a restart (AMQP's delivery mode 1).
    #[must_use]
    pub fn transient(mut self) -> Self {
        self.properties_mut().persistent = false;
        self
    }

    /// Its priority in a queue declared with `x-max-priority`.
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.properties_mut().priority = Some(u32::from(priority));
        self
    }

    #[must_use]
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.properties_mut().content_type = Some(content_type.to_owned());
        self
    }

    #[must_use]
    pub fn correlation_id(mut self, id: &str) -> Self {
        self.properties_mut().correlation_id = Some(id.to_owned());
        self
    }

    #[must_use]
    pub fn reply_to(mut self, queue: &str) -> Self {
        self.properties_mut().reply_to = Some(queue.to_owned());
        self
    }

    /// An id the broker deduplicates by on queues that ask for it.
    #[must_use]
    pub fn message_id(mut self, id: &str) -> Self {
        self.properties_mut().message_id = Some(id.to_owned());
        self
    }

    /// Dropped (or dead-lettered) when not delivered within `ttl`.
    #[must_use]
    pub fn expiration(mut self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.properties_mut().expiration_ms = Some(ms);
        self
    }

    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// The body as text, when it is UTF-8.
    #[must_use]
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0.body).ok()
    }

    /// The header `name`, if it is there.
    #[must_use]
    pub fn header_value(&self, name: &str) -> Option<Value> {
        self.0.headers.get(name).and_then(Value::of)
    }

    /// Every header, by name.
    pub fn headers(&self) -> impl Iterator<Item = (&str, Value)> {
        self.0
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), Value::of(value)?)))
    }

    /// Its properties (defaults when it has none).
    #[must_use]
    pub fn properties(&self) -> Properties {
        self.0.properties.clone().unwrap_or_default()
    }
}

impl From<&str> for Message {
    fn from(body: &str) -> Self {
        Self::new(body.as_bytes())
    }
}

impl From<String> for Message {
    fn from(body: String) -> Self {
        Self::new(body.into_bytes())
    }
}

impl From<Vec<u8>> for Message {
    fn from(body: Vec<u8>) -> Self {
        Self::new(body)
    }
}

impl From<&[u8]> for Message {
    fn from(body: &[u8]) -> Self {
        Self::new(body)
    }
}
