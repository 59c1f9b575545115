//! RabbitMQ's stream-queue arguments (`x-queue-type: stream`, `x-max-age`,
//! `x-max-length-bytes`, `x-stream-max-segment-size-bytes`) as a [`StreamSpec`]: what an AMQP
//! `queue.declare`, a management API `PUT /api/queues/…` and a definitions import share.

use std::time::Duration;

use postino_types::{HeaderValue, Headers};

use super::StreamSpec;
use crate::error::CoreError;

/// Whether a queue declaration's arguments ask for a stream queue.
#[must_use]
pub fn is_stream_queue(arguments: &Headers) -> bool {
    matches!(arguments.get("x-queue-type"), Some(HeaderValue::Text(kind)) if kind == "stream")
}

fn invalid(name: &str, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// A RabbitMQ duration such as `7D` or `12h` (units `Y`, `M`, `D`, `h`, `m`, `s`; a year is
/// 365 days and a month 30), for the argument `name`.
///
/// # Errors
/// `InvalidArgument` naming `name`.
pub fn parse_age(name: &str, text: &str) -> Result<Duration, CoreError> {
    let split = text.len().saturating_sub(1);
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| {
        invalid(
            name,
            format!("{text:?} is not a number with a unit (Y M D h m s)"),
        )
    })?;
    let seconds = match unit {
        "Y" => 365 * 86_400,
        "M" => 30 * 86_400,
        "D" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(invalid(name, format!("{text:?} has no unit (Y M D h m s)"))),
    };
    Ok(Duration::from_secs(count.saturating_mul(seconds)))
}

fn positive(name: &str, value: &HeaderValue) -> Result<u64, CoreError> {
    match value {
        HeaderValue::Int(number) if *number > 0 => Ok(number.unsigned_abs()),
        _ => Err(invalid(name, "must be a positive integer")),
    }
}

/// The one-partition stream a stream-queue declaration asks for.
///
/// # Errors
/// `PreconditionFailed` for a stream that is not durable or is exclusive or auto-delete;
/// `InvalidArgument` for a bad `x-max-age`, `x-max-length-bytes` or
/// `x-stream-max-segment-size-bytes`, or another `x-` argument.
pub fn stream_queue_spec(
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: &Headers,
) -> Result<StreamSpec, CoreError> {
    if !durable || exclusive || auto_delete {
        return Err(CoreError::PreconditionFailed {
            reason: "a stream queue must be durable, not exclusive and not auto-delete".to_owned(),
        });
    }
    let mut spec = StreamSpec::with_partitions(1);
    for (name, value) in arguments {
        match name.as_str() {
            "x-queue-type" => {}
            "x-max-age" => match value {
                HeaderValue::Text(text) => spec.retention = Some(parse_age(name, text)?),
                _ => return Err(invalid(name, "must be a string such as 7D")),
            },
            "x-max-length-bytes" => spec.retention_bytes = Some(positive(name, value)?),
            "x-stream-max-segment-size-bytes" => {
                spec.segment_bytes_max = Some(positive(name, value)?);
            }
            other if other.starts_with("x-") => {
                return Err(invalid(other, "is not an argument of stream queues"));
            }
            _ => {}
        }
    }
    Ok(spec)
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
    fn stream_arguments_become_the_stream_spec() {
        let spec = stream_queue_spec(
            true,
            false,
            false,
            &arguments(&[
                ("x-queue-type", HeaderValue::Text("stream".into())),
                ("x-max-age", HeaderValue::Text("7D".into())),
                ("x-max-length-bytes", HeaderValue::Int(1 << 30)),
            ]),
        )
        .expect("a valid stream");
        assert_eq!(spec.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(spec.retention_bytes, Some(1 << 30));
        assert!(matches!(
            stream_queue_spec(false, false, false, &Headers::new()),
            Err(CoreError::PreconditionFailed { .. })
        ));
        assert!(matches!(
            stream_queue_spec(
                true,
                false,
                false,
                &arguments(&[("x-max-age", HeaderValue::Text("7 days".into()))])
            ),
            Err(CoreError::InvalidArgument { .. })
        ));
        assert!(matches!(
            stream_queue_spec(
                true,
                false,
                false,
                &arguments(&[("x-message-ttl", HeaderValue::Int(5))])
            ),
            Err(CoreError::InvalidArgument { .. })
        ));
    }
}
