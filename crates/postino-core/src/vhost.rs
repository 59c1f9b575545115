//! A virtual host: its topology, its queues (each run by an owner task), publishing with
//! confirmation after durability, and its durable definitions.
//!
//! Durable definitions (durable exchanges and queues, and bindings between durable ends) are
//! kept in `<dir>/definitions.json`, in the shape of RabbitMQ's definitions export, rewritten
//! atomically (write, fsync, rename, fsync the directory) on every change. Each durable queue
//! keeps its log in `<dir>/queues/<escaped name>/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use postino_storage::{FileLog, LogConfig, MemLog, MemStore};
use postino_types::{Clock, DeliveryMode, HeaderValue, Headers, Message};
use serde_json::{Map, Value, json};

use crate::error::CoreError;
use crate::owner::{Enqueued, QueueHandle};
use crate::queue::QueueEngine;
use crate::topology::{Binding, Destination, ExchangeKind, ExchangeSpec, Topology};

/// What a queue declaration asks for; declaring an existing queue with a different spec fails.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Survives a restart (its persistent messages too).
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: Headers,
}

impl QueueSpec {
    /// A durable queue with no options.
    #[must_use]
    pub fn durable() -> Self {
        Self {
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Headers::new(),
        }
    }

    /// A transient queue with no options.
    #[must_use]
    pub fn transient() -> Self {
        Self {
            durable: false,
            ..Self::durable()
        }
    }
}

/// Where a publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Queues that took the message; 0 means it was unroutable.
    pub queues: usize,
}

/// Resolves when a pipelined publish is durable on every durable queue it went to.
#[derive(Debug)]
#[must_use = "a publish is confirmed only once its Confirm resolves"]
pub struct Confirm {
    /// Each queue's pending append, and whether its durability must be awaited.
    appends: Vec<(Enqueued, bool)>,
}

impl Confirm {
    /// Waits until the message is appended everywhere, and durable where it must be.
    ///
    /// # Errors
    /// A queue's append error; `Storage(Failed)` when a queue's sync failed: the outcome is
    /// unknown.
    pub async fn wait(self) -> Result<(), CoreError> {
        for (enqueued, durable) in self.appends {
            let ticket = enqueued.appended().await?;
            if durable {
                ticket.await?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct QueueEntry {
    spec: QueueSpec,
    handle: QueueHandle,
}

#[derive(Debug, Default)]
struct State {
    topology: Topology,
    queues: BTreeMap<String, QueueEntry>,
}

/// One virtual host. Calls that start queues must run inside a tokio runtime.
#[derive(Debug)]
pub struct VirtualHost {
    name: String,
    dir: Option<PathBuf>,
    log_config: LogConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl VirtualHost {
    /// Opens a virtual host keeping its durable data in `dir` (nothing is durable with `None`),
    /// re-creating the durable exchanges, queues and bindings saved there.
    ///
    /// # Errors
    /// `Definitions` when the saved definitions do not load; storage errors of a queue's log.
    pub fn open(
        name: &str,
        dir: Option<PathBuf>,
        log_config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CoreError> {
        let host = Self {
            name: name.to_owned(),
            dir,
            log_config,
            clock,
            state: Mutex::new(State::default()),
        };
        if let Some(path) = host.definitions_path().filter(|path| path.exists()) {
            host.load_definitions(&path)?;
        }
        Ok(host)
    }

    /// The virtual host's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Declares an exchange; returns whether it was created.
    ///
    /// # Errors
    /// As [`Topology::declare_exchange`]; `Definitions` when saving fails.
    pub fn declare_exchange(&self, name: &str, spec: ExchangeSpec) -> Result<bool, CoreError> {
        let mut state = self.lock();
        let durable = spec.durable;
        let created = state.topology.declare_exchange(name, spec)?;
        if created && durable {
            self.save(&state)?;
        }
        Ok(created)
    }

    /// Deletes an exchange and its bindings.
    ///
    /// # Errors
    /// As [`Topology::delete_exchange`]; `Definitions` when saving fails.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), CoreError> {
        let mut state = self.lock();
        state.topology.delete_exchange(name, if_unused)?;
        self.save(&state)
    }

    /// Declares a queue and starts its owner; returns its handle and whether it was created.
    ///
    /// # Errors
    /// `PreconditionFailed` when it exists with a different spec; storage errors of its log;
    /// `Definitions` when saving fails.
    pub fn declare_queue(
        &self,
        name: &str,
        spec: QueueSpec,
    ) -> Result<(QueueHandle, bool), CoreError> {
        let mut state = self.lock();
        if let Some(existing) = state.queues.get(name) {
            if existing.spec != spec {
                return Err(CoreError::PreconditionFailed {
                    reason: format!("queue '{name}' exists with different properties"),
                });
            }
            return Ok((existing.handle.clone(), false));
        }
        let handle = self.start_queue(name, &spec)?;
        let durable = spec.durable;
        state.topology.add_queue(name);
        state.queues.insert(
            name.to_owned(),
            QueueEntry {
                spec,
                handle: handle.clone(),
            },
        );
        if durable {
            self.save(&state)?;
        }
        Ok((handle, true))
    }

    fn start_queue(&self, name: &str, spec: &QueueSpec) -> Result<QueueHandle, CoreError> {
        let clock = Arc::clone(&self.clock);
        match (&self.dir, spec.durable) {
            (Some(dir), true) => {
                let log = FileLog::open(queue_dir(dir, name), self.log_config.clone())?;
                Ok(QueueHandle::spawn(QueueEngine::open(name, log)?, clock))
            }
            _ => {
                let log = MemLog::open(
                    &MemStore::new(),
                    self.log_config.clone(),
                    Arc::clone(&clock),
                )?;
                Ok(QueueHandle::spawn(QueueEngine::open(name, log)?, clock))
            }
        }
    }

    /// Deletes a queue, its bindings and its stored messages; its owner stops first.
    ///
    /// # Errors
    /// `NotFound`; `Definitions` when saving fails.
    pub async fn delete_queue(&self, name: &str) -> Result<(), CoreError> {
        let entry = {
            let mut state = self.lock();
            let entry = state
                .queues
                .remove(name)
                .ok_or_else(|| CoreError::NotFound {
                    kind: "queue",
                    name: name.to_owned(),
                })?;
            state.topology.remove_queue(name);
            self.save(&state)?;
            entry
        };
        if let Err(error) = entry.handle.close().await {
            tracing::warn!(queue = name, %error, "deleted queue did not close cleanly");
        }
        if let (Some(dir), true) = (&self.dir, entry.spec.durable) {
            let path = queue_dir(dir, name);
            if let Err(error) = fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove a deleted queue's data");
            }
        }
        Ok(())
    }

    /// Stops every queue's owner, syncing and closing their logs.
    ///
    /// # Errors
    /// The first error met; every queue is asked to close regardless.
    pub async fn close(&self) -> Result<(), CoreError> {
        let handles: Vec<QueueHandle> = self
            .lock()
            .queues
            .values()
            .map(|entry| entry.handle.clone())
            .collect();
        let mut outcome = Ok(());
        for handle in handles {
            if let Err(error) = handle.close().await
                && outcome.is_ok()
            {
                outcome = Err(error);
            }
        }
        outcome
    }

    /// The handle of a queue, if it exists.
    #[must_use]
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.lock()
            .queues
            .get(name)
            .map(|entry| entry.handle.clone())
    }

    /// Adds a binding.
    ///
    /// # Errors
    /// As [`Topology::bind`]; `Definitions` when saving fails.
    pub fn bind(&self, binding: Binding) -> Result<(), CoreError> {
        let mut state = self.lock();
        state.topology.bind(binding)?;
        self.save(&state)
    }

    /// Removes a binding.
    ///
    /// # Errors
    /// As [`Topology::unbind`]; `Definitions` when saving fails.
    pub fn unbind(&self, binding: &Binding) -> Result<(), CoreError> {
        let mut state = self.lock();
        state.topology.unbind(binding)?;
        self.save(&state)
    }

    /// Routes a message and appends it to every queue it reaches. Returns once the message is
    /// durable on every durable queue it went to when it is persistent (a publisher confirm),
    /// and once it is enqueued otherwise.
    ///
    /// # Errors
    /// Routing errors (`NotFound`, `AccessRefused`); a queue's storage error; a durability
    /// failure (`Storage(Failed)`: the outcome is unknown, not "not stored").
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<Routed, CoreError> {
        let (routed, confirm) = self
            .publish_pipelined(exchange, routing_key, message)
            .await?;
        confirm.wait().await?;
        Ok(routed)
    }

    /// Routes a message like [`VirtualHost::publish`] but returns once it is in every target
    /// queue's mailbox, with a [`Confirm`] that resolves when it is appended everywhere and
    /// durable where it must be: publishers that pipeline (AMQP confirm mode, Kafka producers)
    /// keep many in flight.
    ///
    /// # Errors
    /// Routing errors; `QueueStopped`.
    pub async fn publish_pipelined(
        &self,
        exchange: &str,
        routing_key: &str,
        mut message: Message,
    ) -> Result<(Routed, Confirm), CoreError> {
        let targets: Vec<(QueueHandle, bool)> = {
            let state = self.lock();
            let queues =
                state
                    .topology
                    .route(exchange, routing_key, &message.properties.headers)?;
            queues
                .iter()
                .filter_map(|queue| state.queues.get(queue))
                .map(|entry| {
                    (
                        entry.handle.clone(),
                        entry.spec.durable && self.dir.is_some(),
                    )
                })
                .collect()
        };
        message.annotations.exchange = exchange.to_owned();
        message.annotations.routing_key = routing_key.to_owned();
        let persistent = message.properties.delivery_mode == DeliveryMode::Persistent;
        let mut appends = Vec::with_capacity(targets.len());
        let last = targets.len().saturating_sub(1);
        let mut message = Some(message);
        for (index, (handle, durable)) in targets.iter().enumerate() {
            // The last queue takes the message itself; the others a copy (bodies are shared).
            let copy = if index == last {
                message.take()
            } else {
                message.clone()
            };
            let enqueued = handle
                .enqueue(copy.expect("one message per target"))
                .await?;
            appends.push((enqueued, persistent && *durable));
        }
        Ok((
            Routed {
                queues: targets.len(),
            },
            Confirm { appends },
        ))
    }

    fn definitions_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join("definitions.json"))
    }

    /// Writes the durable definitions atomically.
    fn save(&self, state: &State) -> Result<(), CoreError> {
        let Some(path) = self.definitions_path() else {
            return Ok(());
        };
        let fail = |reason: String| CoreError::Definitions {
            path: path.display().to_string(),
            reason,
        };
        let document = definitions(state);
        let dir = path.parent().expect("definitions live in a directory");
        fs::create_dir_all(dir).map_err(|error| fail(error.to_string()))?;
        let temporary = path.with_extension("json.tmp");
        let mut file = fs::File::create(&temporary).map_err(|error| fail(error.to_string()))?;
        file.write_all(document.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|error| fail(error.to_string()))?;
        fs::rename(&temporary, &path).map_err(|error| fail(error.to_string()))?;
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| fail(error.to_string()))
    }

    fn load_definitions(&self, path: &Path) -> Result<(), CoreError> {
        let fail = |reason: String| CoreError::Definitions {
            path: path.display().to_string(),
            reason,
        };
        let text = fs::read_to_string(path).map_err(|error| fail(error.to_string()))?;
        let document: Value =
            serde_json::from_str(&text).map_err(|error| fail(error.to_string()))?;
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
            self.lock()
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
            let handle = self.start_queue(&name, &spec)?;
            let mut state = self.lock();
            state.topology.add_queue(&name);
            state.queues.insert(name, QueueEntry { spec, handle });
        }
        for binding in list("bindings") {
            let destination = text_of(&binding, "destination");
            let destination = if binding["destination_type"] == "exchange" {
                Destination::Exchange(destination)
            } else {
                Destination::Queue(destination)
            };
            self.lock().topology.bind(Binding {
                source: text_of(&binding, "source"),
                destination,
                key: text_of(&binding, "routing_key"),
                arguments: headers_from_json(&binding["arguments"]),
            })?;
        }
        Ok(())
    }
}

/// The durable part of a virtual host, as RabbitMQ's definitions export shapes it.
fn definitions(state: &State) -> Value {
    let topology = &state.topology;
    let durable_exchange = |name: &str| {
        topology
            .exchange(name)
            .is_some_and(|spec| spec.durable && !name.is_empty())
    };
    let durable_queue = |name: &str| {
        state
            .queues
            .get(name)
            .is_some_and(|entry| entry.spec.durable)
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
        .filter(|(_, entry)| entry.spec.durable)
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

fn headers_to_json(headers: &Headers) -> Value {
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

fn headers_from_json(value: &Value) -> Headers {
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

/// A queue's directory: its name with every byte outside `[A-Za-z0-9_-]` written `%XX`, so
/// that any name is one safe path component.
fn queue_dir(dir: &Path, name: &str) -> PathBuf {
    let mut escaped = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    dir.join("queues").join(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_become_safe_directory_names() {
        let dir = Path::new("/data");
        assert_eq!(
            queue_dir(dir, "orders-1"),
            Path::new("/data/queues/orders-1")
        );
        assert_eq!(queue_dir(dir, "a/b.c"), Path::new("/data/queues/a%2Fb%2Ec"));
        assert_eq!(queue_dir(dir, ".."), Path::new("/data/queues/%2E%2E"));
    }

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
