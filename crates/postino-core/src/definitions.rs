//! Durable definitions of a virtual host in `<dir>/definitions.json`, in the shape of
//! RabbitMQ's definitions export: durable exchanges and queues, and bindings whose ends are
//! durable. Rewritten whole and atomically (write, fsync, rename, fsync the directory) on every
//! change; loaded when the host opens.

use std::fs;
use std::io::Write;
use std::path::Path;

use postino_types::{HeaderValue, Headers};
use serde_json::{Map, Value, json};

use crate::error::CoreError;
use crate::owner::QueueHandle;
use crate::topology::{Binding, Destination, ExchangeKind, ExchangeSpec};
use crate::vhost::{QueueEntry, QueueSpec, State, VirtualHost};

/// Writes the durable definitions of `state` to `path` atomically.
pub(crate) fn save(state: &State, path: &Path) -> Result<(), CoreError> {
    write_atomically(path, definitions(state).to_string().as_bytes()).map_err(|error| {
        CoreError::Definitions {
            path: path.display().to_string(),
            reason: error.to_string(),
        }
    })
}

/// Replaces the file at `path` with `contents` so that a crash leaves the old or the new
/// contents, never a mix: write a temporary file, fsync it, rename it over, fsync the directory.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .expect("a file to replace lives in a directory");
    fs::create_dir_all(dir)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Re-creates the exchanges, queues and bindings saved at `path`.
pub(crate) fn load(host: &VirtualHost, path: &Path) -> Result<(), CoreError> {
    let fail = |reason: String| CoreError::Definitions {
        path: path.display().to_string(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
    let document: Value = serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
    let list = |key: &str| document[key].as_array().cloned().unwrap_or_default();
    let text_of = |value: &Value, key: &str| value[key].as_str().unwrap_or_default().to_owned();
    let flag = |value: &Value, key: &str| value[key].as_bool().unwrap_or(false);
    for exchange in list("exchanges") {
        let kind: ExchangeKind = text_of(&exchange, "type").parse()?;
        let spec = ExchangeSpec {
            kind,
            durable: true,
            auto_delete: flag(&exchange, "auto_delete"),
            internal: flag(&exchange, "internal"),
            alternate: exchange["alternate_exchange"].as_str().map(str::to_owned),
            arguments: headers_from_json(&exchange["arguments"]),
        };
        host.lock()
            .topology
            .declare_exchange(&text_of(&exchange, "name"), spec)?;
    }
    for queue in list("queues") {
        let spec = QueueSpec {
            durable: true,
            exclusive: false,
            auto_delete: flag(&queue, "auto_delete"),
            arguments: headers_from_json(&queue["arguments"]),
        };
        let name = text_of(&queue, "name");
        // A queue whose log does not open stays declared (and saved) but stopped: the others
        // run, and a restart once the fault is gone opens it with everything it holds.
        let handle = host.start_queue(&name, &spec).unwrap_or_else(|error| {
            tracing::error!(queue = %name, %error, "queue did not open; it stays stopped until a restart opens it");
            QueueHandle::stopped_queue(&name)
        });
        let mut state = host.lock();
        state.topology.add_queue(&name);
        state.queues.insert(
            name,
            QueueEntry {
                spec,
                handle,
                owner: None,
            },
        );
    }
    for binding in list("bindings") {
        let destination = text_of(&binding, "destination");
        let destination = if binding["destination_type"] == "exchange" {
            Destination::Exchange(destination)
        } else {
            Destination::Queue(destination)
        };
        host.lock().topology.bind(Binding {
            source: text_of(&binding, "source"),
            destination,
            key: text_of(&binding, "routing_key"),
            arguments: headers_from_json(&binding["arguments"]),
        })?;
    }
    Ok(())
}

/// The durable part of a virtual host, as RabbitMQ's definitions export shapes it.
fn definitions(state: &State) -> Value {
    let topology = &state.topology;
    let durable_exchange = |name: &str| {
        topology
            .exchange(name)
            .is_some_and(|spec| spec.durable && !name.is_empty())
    };
    // A stream of a host that saves definitions keeps its records: it is durable.
    let durable_queue = |name: &str| {
        state
            .queues
            .get(name)
            .is_some_and(|entry| entry.spec.durable)
            || state.streams.contains_key(name)
    };
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    for name in topology.exchange_names() {
        let Some(spec) = topology.exchange(name) else {
            continue;
        };
        if spec.durable && !name.is_empty() && !name.starts_with("amq.") {
            exchanges.push(json!({
                "name": name,
                "type": spec.kind.to_string(),
                "durable": true,
                "auto_delete": spec.auto_delete,
                "internal": spec.internal,
                "alternate_exchange": spec.alternate,
                "arguments": headers_to_json(&spec.arguments),
            }));
        }
        if !durable_exchange(name) {
            continue;
        }
        for binding in topology.bindings(name) {
            let (destination, kind, durable) = match &binding.destination {
                Destination::Queue(queue) => (queue, "queue", durable_queue(queue)),
                Destination::Exchange(exchange) => {
                    (exchange, "exchange", durable_exchange(exchange))
                }
            };
            if durable {
                bindings.push(json!({
                    "source": binding.source,
                    "destination": destination,
                    "destination_type": kind,
                    "routing_key": binding.key,
                    "arguments": headers_to_json(&binding.arguments),
                }));
            }
        }
    }
    let queues: Vec<Value> = state
        .queues
        .iter()
        .filter(|(_, entry)| entry.spec.durable && !entry.spec.exclusive)
        .map(|(name, entry)| {
            json!({
                "name": name,
                "durable": true,
                "auto_delete": entry.spec.auto_delete,
                "arguments": headers_to_json(&entry.spec.arguments),
            })
        })
        .collect();
    json!({ "exchanges": exchanges, "queues": queues, "bindings": bindings })
}

pub(crate) fn headers_to_json(headers: &Headers) -> Value {
    Value::Object(
        headers
            .iter()
            .map(|(name, value)| (name.clone(), value_to_json(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn value_to_json(value: &HeaderValue) -> Value {
    match value {
        HeaderValue::Void => Value::Null,
        HeaderValue::Bool(value) => Value::from(*value),
        HeaderValue::Int(value) | HeaderValue::Timestamp(value) => Value::from(*value),
        HeaderValue::Float(value) => Value::from(*value),
        HeaderValue::Text(value) => Value::from(value.clone()),
        HeaderValue::Bytes(value) => Value::from(String::from_utf8_lossy(value).into_owned()),
        HeaderValue::Array(values) => Value::Array(values.iter().map(value_to_json).collect()),
        HeaderValue::Table(table) => headers_to_json(table),
    }
}

pub(crate) fn headers_from_json(value: &Value) -> Headers {
    value
        .as_object()
        .map(|object| {
            object
                .iter()
                .map(|(name, value)| (name.clone(), value_from_json(value)))
                .collect()
        })
        .unwrap_or_default()
}

fn value_from_json(value: &Value) -> HeaderValue {
    match value {
        Value::Null => HeaderValue::Void,
        Value::Bool(value) => HeaderValue::Bool(*value),
        Value::Number(number) => number.as_i64().map_or_else(
            || HeaderValue::Float(number.as_f64().unwrap_or(0.0)),
            HeaderValue::Int,
        ),
        Value::String(text) => HeaderValue::Text(text.clone()),
        Value::Array(values) => HeaderValue::Array(values.iter().map(value_from_json).collect()),
        Value::Object(_) => HeaderValue::Table(headers_from_json(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_survive_the_json_round_trip() {
        let mut headers = Headers::new();
        headers.insert("x-max-length".into(), HeaderValue::Int(10));
        headers.insert(
            "x-overflow".into(),
            HeaderValue::Text("reject-publish".into()),
        );
        headers.insert("ratio".into(), HeaderValue::Float(0.5));
        headers.insert("flag".into(), HeaderValue::Bool(true));
        headers.insert("none".into(), HeaderValue::Void);
        assert_eq!(headers_from_json(&headers_to_json(&headers)), headers);
    }
}
