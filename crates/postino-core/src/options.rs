//! Queue options from declaration arguments, with RabbitMQ's names (`x-message-ttl`,
//! `x-max-length`, …), checked once at declaration so that the engine never sees a bad one.

use postino_types::{HeaderValue, Headers};

use crate::error::CoreError;

/// What happens to a publish that would take a queue past its length limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The oldest ready messages are dropped (or dead-lettered) to make room.
    #[default]
    DropHead,
    /// The publish is refused.
    RejectPublish,
    /// The publish is refused and the message dead-lettered.
    RejectPublishDlx,
}

/// The behaviour a queue's arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    /// `x-message-ttl`: ms a message may wait in the queue.
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: ms the queue may stay unused (no consumer, no get) before it is deleted.
    pub expires_ms: Option<u64>,
    /// `x-max-length`: ready messages at most.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: ready body bytes at most.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: replaces the message's routing key when dead-lettered.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`: priority levels 0..=max (at most 255); messages above go to max.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: one consumer at a time gets deliveries.
    pub single_active_consumer: bool,
    /// `x-delivery-limit`: a message delivered more often is dead-lettered instead of requeued.
    pub delivery_limit: Option<u32>,
    /// `x-message-deduplication`: a message whose `x-deduplication-header` (or message id) was
    /// published within the window is confirmed without being stored again.
    pub deduplication: bool,
    /// `x-cache-size`: ids the deduplication window holds (default 10,000).
    pub deduplication_size: usize,
    /// `x-cache-ttl`: ms an id stays in the deduplication window (default: until pushed out).
    pub deduplication_ttl_ms: Option<u64>,
    /// `x-message-groups`: at most one message per `x-group-id` in flight at a time.
    pub message_groups: bool,
}

/// Ids a deduplication window holds unless `x-cache-size` says otherwise.
pub const DEDUPLICATION_SIZE_DEFAULT: usize = 10_000;

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            message_ttl_ms: None,
            expires_ms: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
            delivery_limit: None,
            deduplication: false,
            deduplication_size: DEDUPLICATION_SIZE_DEFAULT,
            deduplication_ttl_ms: None,
            message_groups: false,
        }
    }
}

fn flag(name: &str, value: &HeaderValue) -> Result<bool, CoreError> {
    match value {
        HeaderValue::Bool(flag) => Ok(*flag),
        other => Err(invalid(name, format!("expected a boolean, found {other}"))),
    }
}

fn invalid(name: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

fn non_negative(name: &str, value: &HeaderValue) -> Result<u64, CoreError> {
    match value {
        HeaderValue::Int(number) => {
            u64::try_from(*number).map_err(|_| invalid(name, format!("{number} is negative")))
        }
        other => Err(invalid(name, format!("expected an integer, found {other}"))),
    }
}

fn text(name: &str, value: &HeaderValue) -> Result<String, CoreError> {
    match value {
        HeaderValue::Text(text) => Ok(text.clone()),
        other => Err(invalid(name, format!("expected a string, found {other}"))),
    }
}

impl QueueOptions {
    /// Reads the options from declaration arguments. Unknown `x-` arguments are ignored, as
    /// RabbitMQ does; `x-queue-type` other than `classic` or `quorum` is refused (streams are a
    /// different entity).
    ///
    /// # Errors
    /// `InvalidArgument` naming the argument with a wrong type or value.
    pub fn from_arguments(arguments: &Headers) -> Result<Self, CoreError> {
        let mut options = Self::default();
        for (name, value) in arguments {
            match name.as_str() {
                "x-message-ttl" => options.message_ttl_ms = Some(non_negative(name, value)?),
                "x-expires" => {
                    let expires = non_negative(name, value)?;
                    if expires == 0 {
                        return Err(invalid(name, "must be positive"));
                    }
                    options.expires_ms = Some(expires);
                }
                "x-max-length" => options.max_length = Some(non_negative(name, value)?),
                "x-max-length-bytes" => options.max_length_bytes = Some(non_negative(name, value)?),
                "x-overflow" => {
                    options.overflow = match text(name, value)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => return Err(invalid(name, format!("unknown overflow '{other}'"))),
                    };
                }
                "x-dead-letter-exchange" => options.dead_letter_exchange = Some(text(name, value)?),
                "x-dead-letter-routing-key" => {
                    options.dead_letter_routing_key = Some(text(name, value)?);
                }
                "x-max-priority" => {
                    let max = non_negative(name, value)?;
                    let max = u8::try_from(max).map_err(|_| invalid(name, "at most 255"))?;
                    options.max_priority = Some(max);
                }
                "x-single-active-consumer" => options.single_active_consumer = flag(name, value)?,
                "x-message-deduplication" => options.deduplication = flag(name, value)?,
                "x-cache-size" => {
                    let size = non_negative(name, value)?;
                    options.deduplication_size = usize::try_from(size)
                        .ok()
                        .filter(|size| *size > 0)
                        .ok_or_else(|| invalid(name, "must be positive"))?;
                }
                "x-cache-ttl" => options.deduplication_ttl_ms = Some(non_negative(name, value)?),
                "x-message-groups" => options.message_groups = flag(name, value)?,
                "x-delivery-limit" => {
                    let limit = non_negative(name, value)?;
                    options.delivery_limit =
                        Some(u32::try_from(limit).map_err(|_| invalid(name, "too large"))?);
                }
                "x-queue-type" => match text(name, value)?.as_str() {
                    "classic" | "quorum" => {}
                    other => {
                        return Err(invalid(
                            name,
                            format!("queue type '{other}' is not supported here"),
                        ));
                    }
                },
                _ => {}
            }
        }
        if options.dead_letter_routing_key.is_some() && options.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "needs x-dead-letter-exchange",
            ));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(pairs: &[(&str, HeaderValue)]) -> Headers {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }

    #[test]
    fn rabbitmq_arguments_are_read() {
        let options = QueueOptions::from_arguments(&arguments(&[
            ("x-message-ttl", HeaderValue::Int(60_000)),
            ("x-max-length", HeaderValue::Int(10)),
            ("x-overflow", HeaderValue::Text("reject-publish".into())),
            ("x-dead-letter-exchange", HeaderValue::Text("dlx".into())),
            (
                "x-dead-letter-routing-key",
                HeaderValue::Text("dead".into()),
            ),
            ("x-max-priority", HeaderValue::Int(9)),
            ("x-single-active-consumer", HeaderValue::Bool(true)),
            ("x-delivery-limit", HeaderValue::Int(3)),
            ("x-something-new", HeaderValue::Int(1)),
        ]))
        .expect("valid");
        assert_eq!(options.message_ttl_ms, Some(60_000));
        assert_eq!(options.overflow, Overflow::RejectPublish);
        assert_eq!(options.max_priority, Some(9));
        assert!(options.single_active_consumer);
        assert_eq!(options.delivery_limit, Some(3));
    }

    #[test]
    fn bad_arguments_name_themselves() {
        for (name, value) in [
            ("x-message-ttl", HeaderValue::Int(-1)),
            ("x-max-length", HeaderValue::Text("ten".into())),
            ("x-overflow", HeaderValue::Text("explode".into())),
            ("x-max-priority", HeaderValue::Int(300)),
            ("x-expires", HeaderValue::Int(0)),
            ("x-queue-type", HeaderValue::Text("stream".into())),
            ("x-single-active-consumer", HeaderValue::Int(1)),
        ] {
            match QueueOptions::from_arguments(&arguments(&[(name, value)])) {
                Err(CoreError::InvalidArgument { name: named, .. }) => assert_eq!(named, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(
            QueueOptions::from_arguments(&arguments(&[(
                "x-dead-letter-routing-key",
                HeaderValue::Text("k".into())
            )]))
            .is_err()
        );
    }
}
