//! Publishing and getting messages for testing, as RabbitMQ's API does it:
//! `POST /api/exchanges/{vhost}/{name}/publish` answers `{"routed": bool}` once the message
//! is durable where it must be; `POST /api/queues/{vhost}/{name}/get` takes up to `count`
//! messages and then acknowledges, requeues or rejects them all as `ackmode` says.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use postino_core::catalog::{arguments_from_json, arguments_json};
use postino_core::{Action, Alarm, GetSpec, Outcome};
use postino_types::{DeliveryMode, Message, Properties};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, parse};
use crate::topology::exchange_name;
use crate::{Api, host_of};

/// The most messages one get may take.
const GET_COUNT_MAX: usize = 1000;

fn text(value: &Value, key: &str) -> Option<String> {
    value[key].as_str().map(str::to_owned)
}

/// Message properties from RabbitMQ's JSON shape.
fn properties_from_json(value: &Value) -> ApiResult<Properties> {
    if !(value.is_null() || value.is_object()) {
        return Err(ApiError::bad_request("properties must be an object"));
    }
    let delivery_mode = match value["delivery_mode"].as_u64() {
        Some(2) => DeliveryMode::Persistent,
        None | Some(1) => DeliveryMode::Transient,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "delivery_mode {other} is not 1 or 2"
            )));
        }
    };
    let expiration_ms =
        match &value["expiration"] {
            Value::Null => None,
            Value::String(text) => Some(text.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "expiration {text:?} is not a number of milliseconds"
                ))
            })?),
            other => Some(other.as_u64().ok_or_else(|| {
                ApiError::bad_request("expiration must be a number of milliseconds")
            })?),
        };
    let priority = match value["priority"].as_u64() {
        None => None,
        Some(priority) => Some(u8::try_from(priority).map_err(|_| {
            ApiError::bad_request(format!("priority {priority} is not in 0..=255"))
        })?),
    };
    Ok(Properties {
        content_type: text(value, "content_type"),
        content_encoding: text(value, "content_encoding"),
        headers: arguments_from_json(&value["headers"]),
        delivery_mode,
        priority,
        correlation_id: text(value, "correlation_id"),
        reply_to: text(value, "reply_to"),
        expiration_ms,
        message_id: text(value, "message_id"),
        timestamp_ms: value["timestamp"]
            .as_i64()
            .map(|seconds| seconds.saturating_mul(1000)),
        kind: text(value, "type"),
        user_id: text(value, "user_id"),
        app_id: text(value, "app_id"),
    })
}

/// Message properties in RabbitMQ's JSON shape; absent ones are left out.
fn properties_json(properties: &Properties) -> Value {
    let mut object = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            object.insert(key.to_owned(), value);
        }
    };
    put(
        "content_type",
        properties.content_type.clone().map(Value::from),
    );
    put(
        "content_encoding",
        properties.content_encoding.clone().map(Value::from),
    );
    if !properties.headers.is_empty() {
        put("headers", Some(arguments_json(&properties.headers)));
    }
    put(
        "delivery_mode",
        Some(json!(match properties.delivery_mode {
            DeliveryMode::Persistent => 2,
            DeliveryMode::Transient => 1,
        })),
    );
    put("priority", properties.priority.map(Value::from));
    put(
        "correlation_id",
        properties.correlation_id.clone().map(Value::from),
    );
    put("reply_to", properties.reply_to.clone().map(Value::from));
    put(
        "expiration",
        properties
            .expiration_ms
            .map(|ms| Value::from(ms.to_string())),
    );
    put("message_id", properties.message_id.clone().map(Value::from));
    put(
        "timestamp",
        properties.timestamp_ms.map(|ms| Value::from(ms / 1000)),
    );
    put("type", properties.kind.clone().map(Value::from));
    put("user_id", properties.user_id.clone().map(Value::from));
    put("app_id", properties.app_id.clone().map(Value::from));
    Value::Object(object)
}

#[derive(Debug, Deserialize)]
struct PublishBody {
    #[serde(default)]
    properties: Value,
    #[serde(default)]
    routing_key: String,
    payload: String,
    #[serde(default = "string_encoding")]
    payload_encoding: String,
}

fn string_encoding() -> String {
    "string".to_owned()
}

pub async fn publish(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body: PublishBody = parse(&body)?;
    let exchange = exchange_name(&name);
    caller.authorize(&vhost, Action::Write, "exchange", exchange)?;
    let host = host_of(&api, &vhost)?;
    let payload = match body.payload_encoding.as_str() {
        "string" => Bytes::from(body.payload),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(body.payload.as_bytes())
                .map_err(|error| ApiError::bad_request(format!("payload: {error}")))?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding '{other}' is not string or base64"
            )));
        }
    };
    if api.broker.resources().alarm != Alarm::Clear {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "resource_alarm",
            "publishing is blocked by a resource alarm",
        ));
    }
    let message = Message {
        body: payload,
        properties: properties_from_json(&body.properties)?,
        ..Message::default()
    };
    let routed = host.publish(exchange, &body.routing_key, message).await?;
    Ok(Json(json!({ "routed": routed.queues > 0 })))
}

#[derive(Debug, Deserialize)]
struct GetBody {
    #[serde(default = "one")]
    count: usize,
    ackmode: String,
    #[serde(default = "auto_encoding")]
    encoding: String,
    truncate: Option<usize>,
}

fn one() -> usize {
    1
}

fn auto_encoding() -> String {
    "auto".to_owned()
}

pub async fn get(
    State(api): State<Arc<Api>>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let body: GetBody = parse(&body)?;
    let outcome = match body.ackmode.as_str() {
        "ack_requeue_true" | "reject_requeue_true" => Outcome::Requeue,
        "ack_requeue_false" => Outcome::Accept,
        "reject_requeue_false" => Outcome::Discard,
        other => {
            return Err(ApiError::bad_request(format!(
                "ackmode '{other}' is not ack_requeue_true, ack_requeue_false, \
                 reject_requeue_true or reject_requeue_false"
            )));
        }
    };
    if !matches!(body.encoding.as_str(), "auto" | "base64") {
        return Err(ApiError::bad_request(format!(
            "encoding '{}' is not auto or base64",
            body.encoding
        )));
    }
    if body.count == 0 || body.count > GET_COUNT_MAX {
        return Err(ApiError::bad_request(format!(
            "count {} is not in 1..={GET_COUNT_MAX}",
            body.count
        )));
    }
    caller.authorize(&vhost, Action::Read, "queue", &name)?;
    let queue = host_of(&api, &vhost)?
        .queue(&name)
        .ok_or_else(|| ApiError::not_found("queue", &name))?;
    let spec = GetSpec {
        auto_ack: false,
        lease_ms: None,
    };
    let mut taken = Vec::new();
    while taken.len() < body.count {
        match queue.get(spec, None).await? {
            Some(delivery) => taken.push(delivery),
            None => break,
        }
    }
    let ids: Vec<u64> = taken.iter().map(|delivery| delivery.id).collect();
    if !ids.is_empty() {
        queue.settle(ids, outcome).await?;
    }
    let remaining = queue.stats().await?.ready;
    let described = taken
        .iter()
        .map(|delivery| {
            let message = &delivery.message;
            let mut payload = message.body.as_ref();
            if let Some(limit) = body.truncate {
                payload = &payload[..payload.len().min(limit)];
            }
            let (payload, encoding) = match std::str::from_utf8(payload) {
                Ok(text) if body.encoding == "auto" => (text.to_owned(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(payload),
                    "base64",
                ),
            };
            json!({
                "payload_bytes": message.body.len(),
                "redelivered": message.annotations.redelivered,
                "exchange": message.annotations.exchange,
                "routing_key": message.annotations.routing_key,
                "message_count": remaining,
                "properties": properties_json(&message.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    Ok(Json(described))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_json_round_trip() {
        let given = json!({
            "content_type": "text/plain",
            "delivery_mode": 2,
            "priority": 5,
            "expiration": "60000",
            "headers": { "k": "v", "n": 3 },
            "timestamp": 1_700_000_000,
            "type": "greeting",
        });
        let properties = properties_from_json(&given).expect("valid properties");
        assert_eq!(properties.delivery_mode, DeliveryMode::Persistent);
        assert_eq!(properties.expiration_ms, Some(60_000));
        assert_eq!(properties_json(&properties), given);
        for bad in [
            json!({ "delivery_mode": 3 }),
            json!({ "priority": 300 }),
            json!({ "expiration": "soon" }),
            json!([1]),
        ] {
            assert!(properties_from_json(&bad).is_err(), "{bad} must be refused");
        }
    }
}
