//! Messages between the wire's `postino.v1` types and the core's.

use std::collections::HashMap;

use postino_core::Delivery;
use postino_core::stream::Record;
use postino_types::{DeliveryMode, HeaderValue, Headers, Message, Properties};

use crate::proto;

fn value_of(value: &proto::Value) -> HeaderValue {
    use proto::value::Kind;
    match &value.kind {
        None => HeaderValue::Void,
        Some(Kind::Text(text)) => HeaderValue::Text(text.clone()),
        Some(Kind::Int(int)) => HeaderValue::Int(*int),
        Some(Kind::Float(float)) => HeaderValue::Float(*float),
        Some(Kind::Bool(flag)) => HeaderValue::Bool(*flag),
        Some(Kind::Bytes(bytes)) => HeaderValue::Bytes(bytes.clone()),
        Some(Kind::TimestampMs(ms)) => HeaderValue::Timestamp(*ms),
    }
}

/// A header value on the wire; `None` for those the wire has no type for (arrays, tables),
/// which are left out.
fn wire_value(value: &HeaderValue) -> Option<proto::Value> {
    use proto::value::Kind;
    let kind = match value {
        HeaderValue::Void => None,
        HeaderValue::Bool(flag) => Some(Kind::Bool(*flag)),
        HeaderValue::Int(int) => Some(Kind::Int(*int)),
        HeaderValue::Float(float) => Some(Kind::Float(*float)),
        HeaderValue::Text(text) => Some(Kind::Text(text.clone())),
        HeaderValue::Bytes(bytes) => Some(Kind::Bytes(bytes.clone())),
        HeaderValue::Timestamp(ms) => Some(Kind::TimestampMs(*ms)),
        HeaderValue::Array(_) | HeaderValue::Table(_) => return None,
    };
    Some(proto::Value { kind })
}

/// The core's headers (or arguments) from the wire's.
pub(crate) fn headers_from(wire: &HashMap<String, proto::Value>) -> Headers {
    wire.iter()
        .map(|(name, value)| (name.clone(), value_of(value)))
        .collect()
}

/// The core's message from the wire's.
pub(crate) fn message_from(wire: proto::Message) -> Message {
    let properties = wire.properties.unwrap_or_default();
    let headers = headers_from(&wire.headers);
    Message {
        body: wire.body.into(),
        properties: Properties {
            content_type: properties.content_type,
            content_encoding: properties.content_encoding,
            headers,
            delivery_mode: if properties.persistent {
                DeliveryMode::Persistent
            } else {
                DeliveryMode::Transient
            },
            priority: properties
                .priority
                .map(|priority| u8::try_from(priority).unwrap_or(u8::MAX)),
            correlation_id: properties.correlation_id,
            reply_to: properties.reply_to,
            expiration_ms: properties.expiration_ms,
            message_id: properties.message_id,
            timestamp_ms: properties.timestamp_ms,
            kind: properties.r#type,
            user_id: properties.user_id,
            app_id: properties.app_id,
        },
        annotations: postino_types::Annotations::default(),
    }
}

/// The wire's message from the core's.
pub(crate) fn wire_message(message: &Message) -> proto::Message {
    let properties = &message.properties;
    proto::Message {
        body: message.body.to_vec(),
        headers: properties
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), wire_value(value)?)))
            .collect(),
        properties: Some(proto::Properties {
            content_type: properties.content_type.clone(),
            content_encoding: properties.content_encoding.clone(),
            persistent: properties.delivery_mode == DeliveryMode::Persistent,
            priority: properties.priority.map(u32::from),
            correlation_id: properties.correlation_id.clone(),
            reply_to: properties.reply_to.clone(),
            expiration_ms: properties.expiration_ms,
            message_id: properties.message_id.clone(),
            timestamp_ms: properties.timestamp_ms,
            r#type: properties.kind.clone(),
            user_id: properties.user_id.clone(),
            app_id: properties.app_id.clone(),
        }),
    }
}

/// A core delivery from `queue` on the wire.
pub(crate) fn wire_delivery(queue: &str, delivery: &Delivery) -> proto::Delivery {
    let annotations = &delivery.message.annotations;
    proto::Delivery {
        queue: queue.to_owned(),
        delivery_id: delivery.id,
        message: Some(wire_message(&delivery.message)),
        redelivered: annotations.redelivered,
        delivery_count: annotations.delivery_count,
        exchange: annotations.exchange.clone(),
        routing_key: annotations.routing_key.clone(),
    }
}

/// A record of `partition` of `stream` on the wire: the message it holds, or, for a record
/// postino did not write (a Kafka client's), its value as body and its headers as bytes.
pub(crate) fn wire_record(stream: &str, partition: u32, record: &Record) -> proto::Record {
    let message = postino_core::record::decode(record).map_or_else(
        |_| proto::Message {
            body: record.value.as_deref().unwrap_or_default().to_vec(),
            headers: record
                .headers
                .iter()
                .map(|(name, value)| {
                    let kind = value
                        .as_ref()
                        .map(|value| proto::value::Kind::Bytes(value.to_vec()));
                    (
                        String::from_utf8_lossy(name).into_owned(),
                        proto::Value { kind },
                    )
                })
                .collect(),
            properties: None,
        },
        |message| wire_message(&message),
    );
    proto::Record {
        stream: stream.to_owned(),
        partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        key: record.key.as_ref().map(|key| key.to_vec()),
        message: Some(message),
    }
}
