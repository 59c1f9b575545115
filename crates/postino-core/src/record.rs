//! How a [`Message`] is stored as a record of a log (mapping version 1, documented in
//! `docs/storage-format.md`): the body is the record value; each set property and annotation is
//! a record header named `postino.<property>` holding UTF-8 text; each application header keeps
//! its name (one that starts with `postino.` is stored as `postino.app.<name>`) and holds a typed
//! value: a one-byte tag, then the payload.

use std::borrow::Cow;

use bytes::Bytes;
use postino_storage::batch::{BatchBuilder, Record};
use postino_types::{
    Annotations, Death, DeathReason, DeliveryMode, HeaderValue, Headers, Message, Properties,
};

use crate::error::CoreError;
use crate::stream::ProducerRecord;

/// A property's record header name: `postino.<name>`.
macro_rules! prefixed {
    ($name:literal) => {
        concat!("postino.", $name)
    };
}

const PREFIX: &str = prefixed!("");
const APP_ESCAPE: &str = prefixed!("app.");

/// Appends `message` to `builder` as one record stamped `timestamp_ms`, without a key.
pub fn push(builder: &mut BatchBuilder, message: &Message, timestamp_ms: i64) {
    push_keyed(builder, None, message, timestamp_ms);
}

/// Appends `message` to `builder` as one record with `key` (a stream's partitioning key)
/// stamped `timestamp_ms`.
pub fn push_keyed(
    builder: &mut BatchBuilder,
    key: Option<&[u8]>,
    message: &Message,
    timestamp_ms: i64,
) {
    let headers = encoded_headers(message);
    let borrowed: Vec<(&[u8], Option<&[u8]>)> = headers
        .iter()
        .map(|(name, value)| (name.as_ref(), Some(value.as_ref())))
        .collect();
    builder.push(timestamp_ms, key, Some(&message.body), &borrowed);
}

/// `message` as a record to produce with `key`, to `partition` or the one the partitioner
/// chooses, stamped by the broker.
#[must_use]
pub fn producer_record(
    key: Option<Bytes>,
    message: &Message,
    partition: Option<u32>,
) -> ProducerRecord {
    let headers = encoded_headers(message)
        .into_iter()
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(&name).into_owned(),
                value.into_owned().into(),
            )
        })
        .collect();
    ProducerRecord {
        key,
        value: Some(message.body.clone()),
        headers,
        timestamp_ms: None,
        partition,
    }
}

/// A record header's name or value: borrowed from the message where it can be.
type Part<'a> = Cow<'a, [u8]>;

/// A text property's bytes, borrowed.
fn borrowed(value: Option<&str>) -> Option<Part<'_>> {
    value.map(|value| Cow::Borrowed(value.as_bytes()))
}

/// A number property as its decimal text.
fn decimal(value: Option<impl ToString>) -> Option<Part<'static>> {
    value.map(|value| Cow::Owned(value.to_string().into_bytes()))
}

/// The record headers of `message`'s properties, annotations and application headers. Names of
/// properties are static and text values borrowed, so that a plain message costs few
/// allocations (this runs for every publish).
fn encoded_headers(message: &Message) -> Vec<(Part<'_>, Part<'_>)> {
    let properties = &message.properties;
    let annotations = &message.annotations;
    let persistent = properties.delivery_mode == DeliveryMode::Persistent;
    let named: [(&'static str, Option<Part<'_>>); 14] = [
        (
            prefixed!("content-type"),
            borrowed(properties.content_type.as_deref()),
        ),
        (
            prefixed!("content-encoding"),
            borrowed(properties.content_encoding.as_deref()),
        ),
        (
            prefixed!("delivery-mode"),
            persistent.then_some(Cow::Borrowed(b"2")),
        ),
        (prefixed!("priority"), decimal(properties.priority)),
        (
            prefixed!("correlation-id"),
            borrowed(properties.correlation_id.as_deref()),
        ),
        (
            prefixed!("reply-to"),
            borrowed(properties.reply_to.as_deref()),
        ),
        (prefixed!("expiration"), decimal(properties.expiration_ms)),
        (
            prefixed!("message-id"),
            borrowed(properties.message_id.as_deref()),
        ),
        (prefixed!("timestamp"), decimal(properties.timestamp_ms)),
        (prefixed!("type"), borrowed(properties.kind.as_deref())),
        (
            prefixed!("user-id"),
            borrowed(properties.user_id.as_deref()),
        ),
        (prefixed!("app-id"), borrowed(properties.app_id.as_deref())),
        (prefixed!("exchange"), borrowed(Some(&annotations.exchange))),
        (
            prefixed!("routing-key"),
            borrowed(Some(&annotations.routing_key)),
        ),
    ];
    let mut headers: Vec<(Part<'_>, Part<'_>)> =
        Vec::with_capacity(named.len() + properties.headers.len());
    for (name, value) in named {
        if let Some(value) = value {
            headers.push((Cow::Borrowed(name.as_bytes()), value));
        }
    }
    if !annotations.deaths.is_empty() {
        let deaths = deaths_value(&annotations.deaths);
        headers.push((
            Cow::Borrowed(prefixed!("deaths").as_bytes()),
            Cow::Owned(encode_value(&deaths)),
        ));
    }
    for (name, value) in &properties.headers {
        let stored = if name.starts_with(PREFIX) {
            Cow::Owned(format!("{APP_ESCAPE}{name}").into_bytes())
        } else {
            Cow::Borrowed(name.as_bytes())
        };
        headers.push((stored, Cow::Owned(encode_value(value))));
    }
    headers
}

/// The message a record holds.
///
/// # Errors
/// [`CoreError::CorruptMessage`] when a header does not decode.
pub fn decode(record: &Record) -> Result<Message, CoreError> {
    let mut message = Message {
        body: record.value.clone().unwrap_or_default(),
        properties: Properties::default(),
        annotations: Annotations::default(),
    };
    for (name, value) in &record.headers {
        let name = std::str::from_utf8(name).map_err(|_| corrupt("header name is not UTF-8"))?;
        let value = value.clone().unwrap_or_default();
        if let Some(app) = name.strip_prefix(APP_ESCAPE) {
            message
                .properties
                .headers
                .insert(app.to_owned(), decode_value(&value)?);
        } else if let Some(property) = name.strip_prefix(PREFIX) {
            set_property(&mut message, property, &value)?;
        } else {
            message
                .properties
                .headers
                .insert(name.to_owned(), decode_value(&value)?);
        }
    }
    Ok(message)
}

fn corrupt(reason: &'static str) -> CoreError {
    CoreError::CorruptMessage { reason }
}

fn text(value: &[u8]) -> Result<String, CoreError> {
    String::from_utf8(value.to_vec()).map_err(|_| corrupt("property is not UTF-8"))
}

fn number<T: std::str::FromStr>(value: &[u8]) -> Result<T, CoreError> {
    text(value)?
        .parse()
        .map_err(|_| corrupt("numeric property does not parse"))
}

fn set_property(message: &mut Message, property: &str, value: &[u8]) -> Result<(), CoreError> {
    let properties = &mut message.properties;
    match property {
        "content-type" => properties.content_type = Some(text(value)?),
        "content-encoding" => properties.content_encoding = Some(text(value)?),
        "delivery-mode" => properties.delivery_mode = DeliveryMode::Persistent,
        "priority" => properties.priority = Some(number(value)?),
        "correlation-id" => properties.correlation_id = Some(text(value)?),
        "reply-to" => properties.reply_to = Some(text(value)?),
        "expiration" => properties.expiration_ms = Some(number(value)?),
        "message-id" => properties.message_id = Some(text(value)?),
        "timestamp" => properties.timestamp_ms = Some(number(value)?),
        "type" => properties.kind = Some(text(value)?),
        "user-id" => properties.user_id = Some(text(value)?),
        "app-id" => properties.app_id = Some(text(value)?),
        "exchange" => message.annotations.exchange = text(value)?,
        "routing-key" => message.annotations.routing_key = text(value)?,
        "deaths" => {
            let HeaderValue::Array(entries) = decode_value(value)? else {
                return Err(corrupt("deaths is not an array"));
            };
            message.annotations.deaths = entries
                .iter()
                .map(death_from_value)
                .collect::<Result<_, _>>()?;
        }
        _ => return Err(corrupt("unknown postino property")),
    }
    Ok(())
}

/// A death history as RabbitMQ's `x-death` shapes it: an array of tables (`queue`, `reason`,
/// `exchange`, `routing-keys`, `count`, `time`), most recent first.
#[must_use]
pub fn deaths_value(deaths: &[Death]) -> HeaderValue {
    HeaderValue::Array(deaths.iter().map(death_to_value).collect())
}

fn death_to_value(death: &Death) -> HeaderValue {
    let mut table = Headers::new();
    table.insert("queue".into(), HeaderValue::Text(death.queue.clone()));
    table.insert(
        "reason".into(),
        HeaderValue::Text(death.reason.as_str().to_owned()),
    );
    table.insert("exchange".into(), HeaderValue::Text(death.exchange.clone()));
    table.insert(
        "routing-keys".into(),
        HeaderValue::Array(
            death
                .routing_keys
                .iter()
                .map(|key| HeaderValue::Text(key.clone()))
                .collect(),
        ),
    );
    table.insert("count".into(), HeaderValue::Int(death.count as i64));
    table.insert("time".into(), HeaderValue::Timestamp(death.time_ms));
    HeaderValue::Table(table)
}

fn death_from_value(value: &HeaderValue) -> Result<Death, CoreError> {
    let HeaderValue::Table(table) = value else {
        return Err(corrupt("death is not a table"));
    };
    let text = |name: &str| match table.get(name) {
        Some(HeaderValue::Text(text)) => Ok(text.clone()),
        _ => Err(corrupt("death field missing")),
    };
    let reason = match text("reason")?.as_str() {
        "rejected" => DeathReason::Rejected,
        "expired" => DeathReason::Expired,
        "maxlen" => DeathReason::MaxLength,
        "delivery_limit" => DeathReason::DeliveryLimit,
        _ => return Err(corrupt("unknown death reason")),
    };
    let routing_keys = match table.get("routing-keys") {
        Some(HeaderValue::Array(keys)) => keys
            .iter()
            .map(|key| match key {
                HeaderValue::Text(key) => Ok(key.clone()),
                _ => Err(corrupt("routing key is not text")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(corrupt("death field missing")),
    };
    let (Some(HeaderValue::Int(count)), Some(HeaderValue::Timestamp(time_ms))) =
        (table.get("count"), table.get("time"))
    else {
        return Err(corrupt("death field missing"));
    };
    Ok(Death {
        queue: text("queue")?,
        reason,
        exchange: text("exchange")?,
        routing_keys,
        count: u64::try_from(*count).map_err(|_| corrupt("negative death count"))?,
        time_ms: *time_ms,
    })
}

const TAG_VOID: u8 = b'V';
const TAG_BOOL: u8 = b't';
const TAG_INT: u8 = b'l';
const TAG_FLOAT: u8 = b'd';
const TAG_TEXT: u8 = b'S';
const TAG_BYTES: u8 = b'x';
const TAG_TIMESTAMP: u8 = b'T';
const TAG_ARRAY: u8 = b'A';
const TAG_TABLE: u8 = b'F';

/// Tag byte, then payload. Inside arrays and tables each value is `u32` length + encoding, and
/// each table name is `u16` length + UTF-8.
fn encode_value(value: &HeaderValue) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut Vec<u8>, value: &HeaderValue) {
    match value {
        HeaderValue::Void => out.push(TAG_VOID),
        HeaderValue::Bool(value) => out.extend_from_slice(&[TAG_BOOL, u8::from(*value)]),
        HeaderValue::Int(value) => {
            out.push(TAG_INT);
            out.extend_from_slice(&value.to_be_bytes());
        }
        HeaderValue::Float(value) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&value.to_be_bytes());
        }
        HeaderValue::Text(value) => {
            out.push(TAG_TEXT);
            out.extend_from_slice(value.as_bytes());
        }
        HeaderValue::Bytes(value) => {
            out.push(TAG_BYTES);
            out.extend_from_slice(value);
        }
        HeaderValue::Timestamp(value) => {
            out.push(TAG_TIMESTAMP);
            out.extend_from_slice(&value.to_be_bytes());
        }
        HeaderValue::Array(values) => {
            out.push(TAG_ARRAY);
            for value in values {
                write_nested(out, value);
            }
        }
        HeaderValue::Table(table) => {
            out.push(TAG_TABLE);
            for (name, value) in table {
                let name = &name.as_bytes()[..name.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name);
                write_nested(out, value);
            }
        }
    }
}

fn write_nested(out: &mut Vec<u8>, value: &HeaderValue) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write_value(out, value);
    let length = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&length.to_be_bytes());
}

fn decode_value(bytes: &[u8]) -> Result<HeaderValue, CoreError> {
    let (&tag, payload) = bytes.split_first().ok_or(corrupt("empty header value"))?;
    let fixed = |payload: &[u8]| -> Result<[u8; 8], CoreError> {
        payload
            .try_into()
            .map_err(|_| corrupt("fixed-size value of the wrong length"))
    };
    Ok(match tag {
        TAG_VOID => HeaderValue::Void,
        TAG_BOOL => HeaderValue::Bool(payload.first().is_some_and(|byte| *byte != 0)),
        TAG_INT => HeaderValue::Int(i64::from_be_bytes(fixed(payload)?)),
        TAG_FLOAT => HeaderValue::Float(f64::from_be_bytes(fixed(payload)?)),
        TAG_TEXT => HeaderValue::Text(text(payload)?),
        TAG_BYTES => HeaderValue::Bytes(payload.to_vec()),
        TAG_TIMESTAMP => HeaderValue::Timestamp(i64::from_be_bytes(fixed(payload)?)),
        TAG_ARRAY => {
            let mut values = Vec::new();
            let mut rest = payload;
            while !rest.is_empty() {
                let (value, after) = read_nested(rest)?;
                values.push(value);
                rest = after;
            }
            HeaderValue::Array(values)
        }
        TAG_TABLE => {
            let mut table = Headers::new();
            let mut rest = payload;
            while !rest.is_empty() {
                let (name_length, after) = split(rest, 2)?;
                let name_length = usize::from(u16::from_be_bytes([name_length[0], name_length[1]]));
                let (name, after) = split(after, name_length)?;
                let (value, after) = read_nested(after)?;
                table.insert(text(name)?, value);
                rest = after;
            }
            HeaderValue::Table(table)
        }
        _ => return Err(corrupt("unknown header value tag")),
    })
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), CoreError> {
    if bytes.len() < at {
        return Err(corrupt("header value truncated"));
    }
    Ok(bytes.split_at(at))
}

fn read_nested(bytes: &[u8]) -> Result<(HeaderValue, &[u8]), CoreError> {
    let (length, rest) = split(bytes, 4)?;
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    let (value, rest) = split(rest, length)?;
    Ok((decode_value(value)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postino_storage::batch::Batch;
    use proptest::prelude::*;

    fn round_trip(message: &Message) -> Message {
        let mut builder = BatchBuilder::new();
        push(&mut builder, message, 1_234);
        let batch = Batch::from_bytes(builder.build().freeze()).expect("valid batch");
        let records = batch.records().expect("records");
        assert_eq!(records[0].timestamp_ms, 1_234);
        decode(&records[0]).expect("decodes")
    }

    #[test]
    fn every_property_and_annotation_round_trips() {
        let mut message = Message::new(&b"body"[..]).persistent();
        let properties = &mut message.properties;
        properties.content_type = Some("text/plain".into());
        properties.content_encoding = Some("gzip".into());
        properties.priority = Some(7);
        properties.correlation_id = Some("c-1".into());
        properties.reply_to = Some("replies".into());
        properties.expiration_ms = Some(60_000);
        properties.message_id = Some("m-1".into());
        properties.timestamp_ms = Some(1_700_000_000_000);
        properties.kind = Some("order".into());
        properties.user_id = Some("guest".into());
        properties.app_id = Some("shop".into());
        properties
            .headers
            .insert("postino.mine".into(), HeaderValue::Text("escaped".into()));
        let mut nested = Headers::new();
        nested.insert("n".into(), HeaderValue::Float(1.5));
        properties.headers.insert(
            "list".into(),
            HeaderValue::Array(vec![
                HeaderValue::Void,
                HeaderValue::Bool(true),
                HeaderValue::Bytes(vec![0, 1]),
                HeaderValue::Table(nested),
            ]),
        );
        message.annotations.exchange = "amq.topic".into();
        message.annotations.routing_key = "a.b".into();
        message.annotations.deaths.push(Death {
            queue: "q".into(),
            reason: DeathReason::Expired,
            exchange: "x".into(),
            routing_keys: vec!["k".into()],
            count: 2,
            time_ms: 99,
        });
        assert_eq!(round_trip(&message), message);
    }

    #[test]
    fn garbage_header_values_are_errors() {
        for bytes in [
            &b""[..],
            b"?",
            b"l123",
            b"A\x00\x00\x00\x09S",
            b"F\x00\x05ab",
        ] {
            assert!(decode_value(bytes).is_err(), "{bytes:?}");
        }
    }

    fn value() -> impl Strategy<Value = HeaderValue> {
        let leaf = prop_oneof![
            Just(HeaderValue::Void),
            any::<bool>().prop_map(HeaderValue::Bool),
            any::<i64>().prop_map(HeaderValue::Int),
            any::<i64>().prop_map(HeaderValue::Timestamp),
            ".{0,12}".prop_map(HeaderValue::Text),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(HeaderValue::Bytes),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(HeaderValue::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..4).prop_map(HeaderValue::Table),
            ]
        })
    }

    proptest! {
        #[test]
        fn header_values_round_trip(value in value()) {
            prop_assert_eq!(decode_value(&encode_value(&value)).expect("decodes"), value);
        }

        #[test]
        fn arbitrary_header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_value(&bytes);
        }
    }
}
