//! AMQP 0-9-1 properties and field tables ⇄ the core's neutral message properties.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use postino_types::{DeliveryMode, HeaderValue, Headers, Message, Properties};

/// A field table as neutral headers. Integers of every width become `Int`, decimals and
/// floats `Float`, both string kinds `Text` (a long string that is not UTF-8 becomes `Bytes`).
#[must_use]
pub fn headers_from_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value_from_amqp(value)))
        .collect()
}

fn value_from_amqp(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::Boolean(value) => HeaderValue::Bool(*value),
        AMQPValue::ShortShortInt(value) => HeaderValue::Int(i64::from(*value)),
        AMQPValue::ShortShortUInt(value) => HeaderValue::Int(i64::from(*value)),
        AMQPValue::ShortInt(value) => HeaderValue::Int(i64::from(*value)),
        AMQPValue::ShortUInt(value) => HeaderValue::Int(i64::from(*value)),
        AMQPValue::LongInt(value) => HeaderValue::Int(i64::from(*value)),
        AMQPValue::LongUInt(value) => HeaderValue::Int(i64::from(*value)),
        AMQPValue::LongLongInt(value) => HeaderValue::Int(*value),
        AMQPValue::Float(value) => HeaderValue::Float(f64::from(*value)),
        AMQPValue::Double(value) => HeaderValue::Float(*value),
        AMQPValue::DecimalValue(decimal) => {
            HeaderValue::Float(f64::from(decimal.value) / 10f64.powi(i32::from(decimal.scale)))
        }
        AMQPValue::ShortString(text) => HeaderValue::Text(text.as_str().to_owned()),
        AMQPValue::LongString(text) => match std::str::from_utf8(text.as_bytes()) {
            Ok(text) => HeaderValue::Text(text.to_owned()),
            Err(_) => HeaderValue::Bytes(text.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(values) => {
            HeaderValue::Array(values.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::Timestamp(seconds) => {
            HeaderValue::Timestamp((*seconds as i64).saturating_mul(1_000))
        }
        AMQPValue::FieldTable(table) => HeaderValue::Table(headers_from_table(table)),
        AMQPValue::ByteArray(bytes) => HeaderValue::Bytes(bytes.as_slice().to_vec()),
        AMQPValue::Void => HeaderValue::Void,
    }
}

/// Neutral headers as a field table (text as long strings, timestamps in seconds).
#[must_use]
pub fn table_from_headers(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(ShortString::from(name.as_str()), value_to_amqp(value));
    }
    table
}

fn value_to_amqp(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Void => AMQPValue::Void,
        HeaderValue::Bool(value) => AMQPValue::Boolean(*value),
        HeaderValue::Int(value) => AMQPValue::LongLongInt(*value),
        HeaderValue::Float(value) => AMQPValue::Double(*value),
        HeaderValue::Text(text) => AMQPValue::LongString(text.as_str().into()),
        HeaderValue::Bytes(bytes) => AMQPValue::ByteArray(bytes.clone().into()),
        HeaderValue::Timestamp(millis) => AMQPValue::Timestamp((*millis / 1_000).max(0) as u64),
        HeaderValue::Array(values) => AMQPValue::FieldArray(FieldArray::from(
            values.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        HeaderValue::Table(table) => AMQPValue::FieldTable(table_from_headers(table)),
    }
}

fn text(value: &Option<ShortString>) -> Option<String> {
    value.as_ref().map(|text| text.as_str().to_owned())
}

/// A published message's properties. An `expiration` that is not a decimal number of ms is
/// ignored, as RabbitMQ rejects it only on some versions.
#[must_use]
pub fn properties_from_amqp(properties: &BasicProperties) -> Properties {
    Properties {
        content_type: text(properties.content_type()),
        content_encoding: text(properties.content_encoding()),
        headers: properties
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default(),
        delivery_mode: match properties.delivery_mode() {
            Some(2) => DeliveryMode::Persistent,
            _ => DeliveryMode::Transient,
        },
        priority: *properties.priority(),
        correlation_id: text(properties.correlation_id()),
        reply_to: text(properties.reply_to()),
        expiration_ms: properties
            .expiration()
            .as_ref()
            .and_then(|value| value.as_str().parse().ok()),
        message_id: text(properties.message_id()),
        timestamp_ms: properties
            .timestamp()
            .map(|seconds| (seconds as i64).saturating_mul(1_000)),
        kind: text(properties.kind()),
        user_id: text(properties.user_id()),
        app_id: text(properties.app_id()),
    }
}

/// The AMQP properties of a message being delivered; the death history becomes `x-death`.
#[must_use]
pub fn properties_to_amqp(message: &Message) -> BasicProperties {
    let source = &message.properties;
    let mut properties = BasicProperties::default();
    let short = |value: &Option<String>| value.as_deref().map(ShortString::from);
    if let Some(value) = short(&source.content_type) {
        properties = properties.with_content_type(value);
    }
    if let Some(value) = short(&source.content_encoding) {
        properties = properties.with_content_encoding(value);
    }
    let mut headers = source.headers.clone();
    if !message.annotations.deaths.is_empty() {
        headers.insert(
            "x-death".to_owned(),
            postino_core::record::deaths_value(&message.annotations.deaths),
        );
    }
    if !headers.is_empty() {
        properties = properties.with_headers(table_from_headers(&headers));
    }
    if source.delivery_mode == DeliveryMode::Persistent {
        properties = properties.with_delivery_mode(2);
    }
    if let Some(priority) = source.priority {
        properties = properties.with_priority(priority);
    }
    if let Some(value) = short(&source.correlation_id) {
        properties = properties.with_correlation_id(value);
    }
    if let Some(value) = short(&source.reply_to) {
        properties = properties.with_reply_to(value);
    }
    if let Some(expiration) = source.expiration_ms {
        properties = properties.with_expiration(ShortString::from(expiration.to_string()));
    }
    if let Some(value) = short(&source.message_id) {
        properties = properties.with_message_id(value);
    }
    if let Some(millis) = source.timestamp_ms {
        properties = properties.with_timestamp((millis / 1_000).max(0) as u64);
    }
    if let Some(value) = short(&source.kind) {
        properties = properties.with_type(value);
    }
    if let Some(value) = short(&source.user_id) {
        properties = properties.with_user_id(value);
    }
    if let Some(value) = short(&source.app_id) {
        properties = properties.with_app_id(value);
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_round_trip() {
        let mut message = Message::new(&b"m"[..]).persistent();
        message.properties.content_type = Some("text/plain".into());
        message.properties.priority = Some(4);
        message.properties.expiration_ms = Some(60_000);
        message.properties.timestamp_ms = Some(1_700_000_000_000);
        message
            .properties
            .headers
            .insert("n".into(), HeaderValue::Int(5));
        let amqp = properties_to_amqp(&message);
        assert_eq!(properties_from_amqp(&amqp), message.properties);
    }
}
