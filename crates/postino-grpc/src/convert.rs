//! Messages between the wire's `postino.v1` types and the core's.

use postino_core::Delivery;
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

/// The core's message from the wire's.
pub(crate) fn message_from(wire: proto::Message) -> Message {
    let properties = wire.properties.unwrap_or_default();
    let headers: Headers = wire
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value_of(value)))
        .collect();
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
