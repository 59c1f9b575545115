//! What a broker holds, listed for the management API, and its whole topology as one
//! definitions document in the shape of RabbitMQ's export (`users`, `vhosts`, `permissions`,
//! `exchanges`, `queues`, `bindings`, plus postino's `streams`), to export and import.
//!
//! An import checks every item before it changes anything (exchange types, queue and stream
//! arguments, permission patterns, password hashes), then applies them in dependency order
//! through the same calls a client's declarations use, so durable items are saved as usual.
//! An item that contradicts what exists (a queue re-declared with other arguments) stops the
//! import there, naming it; items before it stay. Policies and parameters, which postino does
//! not have, are reported as skipped, as are users whose password hash is not argon2.

use std::sync::Arc;

use postino_types::Headers;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access::hash_is_argon2;
use crate::broker::{Broker, DEFAULT_VHOST};
use crate::definitions::{headers_from_json, headers_to_json};
use crate::error::CoreError;
use crate::options::QueueOptions;
use crate::owner::QueueHandle;
use crate::stream::{StreamSpec, is_stream_queue, stream_queue_spec};
use crate::topology::{Binding, Destination, ExchangeKind, ExchangeSpec};
use crate::vhost::{ConnectionId, QueueSpec, VirtualHost};

/// The algorithm name an export gives postino's password hashes (PHC strings).
pub const HASHING_ALGORITHM: &str = "postino_argon2id";

/// A queue as a listing shows it.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub name: String,
    pub spec: QueueSpec,
    /// The connection an exclusive queue belongs to.
    pub owner: Option<ConnectionId>,
    pub handle: QueueHandle,
}

impl VirtualHost {
    /// The names of the host's queues (not streams), sorted.
    #[must_use]
    pub fn queue_names(&self) -> Vec<String> {
        self.lock().queues.keys().cloned().collect()
    }

    /// One queue's listing.
    #[must_use]
    pub fn queue_info(&self, name: &str) -> Option<QueueInfo> {
        self.lock().queues.get(name).map(|entry| QueueInfo {
            name: name.to_owned(),
            spec: entry.spec.clone(),
            owner: entry.owner,
            handle: entry.handle.clone(),
        })
    }

    /// Every exchange with its spec, by name (the default exchange is `""`).
    #[must_use]
    pub fn exchanges(&self) -> Vec<(String, ExchangeSpec)> {
        let state = self.lock();
        state
            .topology
            .exchange_names()
            .filter_map(|name| {
                let spec = state.topology.exchange(name)?;
                Some((name.to_owned(), spec.clone()))
            })
            .collect()
    }

    /// Every explicit binding, by source exchange (the default exchange's implicit bindings
    /// are not listed).
    #[must_use]
    pub fn bindings(&self) -> Vec<Binding> {
        let state = self.lock();
        state
            .topology
            .exchange_names()
            .flat_map(|name| state.topology.bindings(name).cloned())
            .collect()
    }

    /// Declares a queue, or a one-partition stream when its arguments say
    /// `x-queue-type: stream` (what RabbitMQ's declarations mean by it); returns whether it
    /// was created.
    ///
    /// # Errors
    /// As [`VirtualHost::declare_queue`] and [`VirtualHost::declare_stream`].
    pub fn declare_queue_or_stream(&self, name: &str, spec: QueueSpec) -> Result<bool, CoreError> {
        if is_stream_queue(&spec.arguments) {
            let stream = stream_queue_spec(
                spec.durable,
                spec.exclusive,
                spec.auto_delete,
                &spec.arguments,
            )?;
            Ok(self.declare_stream(name, stream)?.1)
        } else {
            Ok(self.declare_queue(name, spec)?.1)
        }
    }
}

/// A whole broker's topology and users, as exported and imported.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Definitions {
    pub product_name: Option<String>,
    pub product_version: Option<String>,
    pub users: Vec<UserDefinition>,
    pub vhosts: Vec<VhostDefinition>,
    pub permissions: Vec<PermissionDefinition>,
    pub exchanges: Vec<ExchangeDefinition>,
    pub queues: Vec<QueueDefinition>,
    pub bindings: Vec<BindingDefinition>,
    /// postino's streams: name, vhost and the stream's spec (`partitions`, `retention_ms`, …).
    pub streams: Vec<Value>,
    /// RabbitMQ's policies and parameters: read only to be reported as skipped.
    #[serde(skip_serializing)]
    pub policies: Vec<Value>,
    #[serde(skip_serializing)]
    pub parameters: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDefinition {
    pub name: String,
    /// A plain password (accepted on import, never exported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub password_hash: String,
    #[serde(default)]
    pub hashing_algorithm: String,
    /// RabbitMQ writes a list (3.10 on) or a comma-separated string (before).
    #[serde(default)]
    pub tags: Tags,
}

/// A user's tags, read from a list or a comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TagsForm")]
pub struct Tags(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum TagsForm {
    List(Vec<String>),
    Text(String),
}

impl From<TagsForm> for Tags {
    fn from(form: TagsForm) -> Self {
        match form {
            TagsForm::List(tags) => Tags(tags),
            TagsForm::Text(text) => Tags::parse(&text),
        }
    }
}

impl Tags {
    /// Tags from RabbitMQ's comma-separated form.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        Tags(
            text.split(',')
                .map(str::trim)
                .filter(|tag| !tag.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VhostDefinition {
    pub name: String,
}

fn default_vhost() -> String {
    DEFAULT_VHOST.to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PermissionDefinition {
    pub user: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeDefinition {
    pub name: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueDefinition {
    pub name: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    #[serde(default = "yes")]
    pub durable: bool,
    #[serde(default)]
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingDefinition {
    pub source: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    pub destination: String,
    pub destination_type: String,
    #[serde(default)]
    pub routing_key: String,
    #[serde(default)]
    pub arguments: Value,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub vhosts: usize,
    pub users: usize,
    pub permissions: usize,
    pub exchanges: usize,
    pub queues: usize,
    pub streams: usize,
    pub bindings: usize,
    /// Items not imported, each with why.
    pub skipped: Vec<String>,
}

fn invalid(item: String, reason: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument {
        name: item,
        reason: reason.into(),
    }
}

/// Names an item's error: `queues[3] (orders)`.
fn naming(item: String) -> impl FnOnce(CoreError) -> CoreError {
    move |error| invalid(item, error.to_string())
}

impl QueueDefinition {
    fn spec(&self) -> QueueSpec {
        QueueSpec {
            durable: self.durable,
            exclusive: false,
            auto_delete: self.auto_delete,
            arguments: headers_from_json(&self.arguments),
        }
    }
}

impl ExchangeDefinition {
    fn spec(&self) -> Result<ExchangeSpec, CoreError> {
        let kind: ExchangeKind = self.kind.parse()?;
        Ok(ExchangeSpec::declared(
            kind,
            self.durable,
            self.auto_delete,
            self.internal,
            headers_from_json(&self.arguments),
        ))
    }
}

impl BindingDefinition {
    fn binding(&self) -> Result<Binding, CoreError> {
        let destination = match self.destination_type.as_str() {
            "queue" => Destination::Queue(self.destination.clone()),
            "exchange" => Destination::Exchange(self.destination.clone()),
            other => {
                return Err(CoreError::InvalidArgument {
                    name: "destination_type".to_owned(),
                    reason: format!("'{other}' is not queue or exchange"),
                });
            }
        };
        Ok(Binding {
            source: self.source.clone(),
            destination,
            key: self.routing_key.clone(),
            arguments: headers_from_json(&self.arguments),
        })
    }
}

fn stream_name(value: &Value) -> (String, String) {
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    (
        text("vhost").unwrap_or_else(default_vhost),
        text("name").unwrap_or_default(),
    )
}

impl Broker {
    /// Every user, virtual host, permission, exchange (but the predeclared ones), queue (but
    /// exclusive ones), binding and stream, as one document.
    #[must_use]
    pub fn export_definitions(&self) -> Definitions {
        let mut definitions = Definitions {
            product_name: Some("postino".to_owned()),
            product_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            ..Definitions::default()
        };
        for user in self.access().users() {
            definitions.users.push(UserDefinition {
                name: user.name,
                password: None,
                password_hash: user.password_hash,
                hashing_algorithm: HASHING_ALGORITHM.to_owned(),
                tags: Tags(user.tags),
            });
        }
        for permission in self.access().permissions() {
            definitions.permissions.push(PermissionDefinition {
                user: permission.user,
                vhost: permission.vhost,
                configure: permission.configure,
                write: permission.write,
                read: permission.read,
            });
        }
        for name in self.vhost_names() {
            if let Some(host) = self.vhost(&name) {
                export_host(&host, &mut definitions);
            }
            definitions.vhosts.push(VhostDefinition { name });
        }
        definitions
    }

    /// Imports a definitions document (see the module's documentation).
    ///
    /// # Errors
    /// `InvalidArgument` naming the first item that is malformed (nothing is changed then) or
    /// that cannot be applied; `Definitions` when a change cannot be saved.
    pub fn import_definitions(&self, definitions: &Definitions) -> Result<ImportReport, CoreError> {
        let mut report = ImportReport::default();
        let checked = check(definitions, &mut report)?;
        for vhost in &definitions.vhosts {
            self.create_vhost(&vhost.name)?;
            report.vhosts += 1;
        }
        for (index, user) in definitions.users.iter().enumerate() {
            let item = format!("users[{index}] ({})", user.name);
            let tags = user.tags.0.clone();
            let outcome = match (&user.password, checked.users.contains(&index)) {
                (Some(password), _) => self.access().put_user(&user.name, Some(password), tags),
                (None, true) => {
                    self.access()
                        .put_user_hashed(&user.name, &user.password_hash, tags)
                }
                (None, false) => continue,
            };
            outcome.map_err(naming(item))?;
            report.users += 1;
        }
        let host = |vhost: &str, item: &str| {
            self.vhost(vhost)
                .ok_or_else(|| invalid(item.to_owned(), format!("vhost '{vhost}' does not exist")))
        };
        for (index, permission) in definitions.permissions.iter().enumerate() {
            let item = format!("permissions[{index}] ({})", permission.user);
            host(&permission.vhost, &item)?;
            self.access()
                .set_permissions(
                    &permission.user,
                    &permission.vhost,
                    &permission.configure,
                    &permission.write,
                    &permission.read,
                )
                .map_err(naming(item))?;
            report.permissions += 1;
        }
        for (index, (exchange, spec)) in definitions
            .exchanges
            .iter()
            .zip(checked.exchanges)
            .enumerate()
        {
            let item = format!("exchanges[{index}] ({})", exchange.name);
            host(&exchange.vhost, &item)?
                .declare_exchange(&exchange.name, spec)
                .map_err(naming(item))?;
            report.exchanges += 1;
        }
        for (index, queue) in definitions.queues.iter().enumerate() {
            let item = format!("queues[{index}] ({})", queue.name);
            host(&queue.vhost, &item)?
                .declare_queue_or_stream(&queue.name, queue.spec())
                .map_err(naming(item))?;
            report.queues += 1;
        }
        for (index, (stream, spec)) in definitions.streams.iter().zip(checked.streams).enumerate() {
            let (vhost, name) = stream_name(stream);
            let item = format!("streams[{index}] ({name})");
            host(&vhost, &item)?
                .declare_stream(&name, spec)
                .map_err(naming(item))?;
            report.streams += 1;
        }
        for (index, (definition, binding)) in definitions
            .bindings
            .iter()
            .zip(checked.bindings)
            .enumerate()
        {
            let item = format!(
                "bindings[{index}] ({} -> {})",
                definition.source, definition.destination
            );
            host(&definition.vhost, &item)?
                .bind(binding)
                .map_err(naming(item))?;
            report.bindings += 1;
        }
        Ok(report)
    }
}

fn export_host(host: &Arc<VirtualHost>, definitions: &mut Definitions) {
    let vhost = host.name().to_owned();
    for (name, spec) in host.exchanges() {
        if name.is_empty() || name.starts_with("amq.") {
            continue;
        }
        definitions.exchanges.push(ExchangeDefinition {
            name,
            vhost: vhost.clone(),
            kind: spec.kind.to_string(),
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: headers_to_json(&spec.arguments),
        });
    }
    for name in host.queue_names() {
        let Some(queue) = host.queue_info(&name) else {
            continue;
        };
        if queue.spec.exclusive {
            continue;
        }
        definitions.queues.push(QueueDefinition {
            name,
            vhost: vhost.clone(),
            durable: queue.spec.durable,
            auto_delete: queue.spec.auto_delete,
            arguments: headers_to_json(&queue.spec.arguments),
        });
    }
    for name in host.stream_names() {
        if let Some(stream) = host.stream(&name) {
            let mut entry = stream.spec().to_json();
            entry["name"] = json!(name);
            entry["vhost"] = json!(vhost);
            definitions.streams.push(entry);
        }
    }
    let exclusive = |name: &str| {
        host.queue_info(name)
            .is_some_and(|queue| queue.spec.exclusive)
    };
    for binding in host.bindings() {
        let (destination, kind) = match &binding.destination {
            Destination::Queue(queue) if !exclusive(queue) => (queue.clone(), "queue"),
            Destination::Queue(_) => continue,
            Destination::Exchange(exchange) => (exchange.clone(), "exchange"),
        };
        definitions.bindings.push(BindingDefinition {
            source: binding.source,
            vhost: vhost.clone(),
            destination,
            destination_type: kind.to_owned(),
            routing_key: binding.key,
            arguments: headers_to_json(&binding.arguments),
        });
    }
}

/// The items of a document, checked and converted before anything is applied.
struct Checked {
    /// Indexes of users imported from their hash.
    users: Vec<usize>,
    exchanges: Vec<ExchangeSpec>,
    streams: Vec<StreamSpec>,
    bindings: Vec<Binding>,
}

fn check(definitions: &Definitions, report: &mut ImportReport) -> Result<Checked, CoreError> {
    let mut users = Vec::new();
    for (index, user) in definitions.users.iter().enumerate() {
        let item = format!("users[{index}] ({})", user.name);
        if user.name.is_empty() {
            return Err(invalid(item, "a user name must not be empty"));
        }
        if user.password.is_some() {
            continue;
        }
        if hash_is_argon2(&user.password_hash) {
            users.push(index);
        } else {
            report.skipped.push(format!(
                "{item}: its password hash ({}) is not argon2; set a password for it",
                if user.hashing_algorithm.is_empty() {
                    "none"
                } else {
                    &user.hashing_algorithm
                }
            ));
        }
    }
    for (index, permission) in definitions.permissions.iter().enumerate() {
        for pattern in [&permission.configure, &permission.write, &permission.read] {
            regex::Regex::new(pattern).map_err(|error| {
                invalid(
                    format!("permissions[{index}] ({})", permission.user),
                    error.to_string(),
                )
            })?;
        }
    }
    let exchanges = definitions
        .exchanges
        .iter()
        .enumerate()
        .map(|(index, exchange)| {
            exchange
                .spec()
                .map_err(naming(format!("exchanges[{index}] ({})", exchange.name)))
        })
        .collect::<Result<_, _>>()?;
    for (index, queue) in definitions.queues.iter().enumerate() {
        let spec = queue.spec();
        let checked = if is_stream_queue(&spec.arguments) {
            stream_queue_spec(spec.durable, false, spec.auto_delete, &spec.arguments).map(drop)
        } else {
            QueueOptions::from_arguments(&spec.arguments).map(drop)
        };
        checked.map_err(naming(format!("queues[{index}] ({})", queue.name)))?;
    }
    let streams = definitions
        .streams
        .iter()
        .enumerate()
        .map(|(index, stream)| {
            let item = format!("streams[{index}] ({})", stream_name(stream).1);
            let spec =
                StreamSpec::from_json(stream).map_err(|reason| invalid(item.clone(), reason))?;
            spec.check().map_err(naming(item))?;
            Ok(spec)
        })
        .collect::<Result<_, CoreError>>()?;
    let bindings = definitions
        .bindings
        .iter()
        .enumerate()
        .map(|(index, binding)| {
            binding
                .binding()
                .map_err(naming(format!("bindings[{index}] ({})", binding.source)))
        })
        .collect::<Result<_, _>>()?;
    for policy in &definitions.policies {
        report.skipped.push(format!(
            "policy '{}': postino has no policies; give queues their arguments",
            policy["name"].as_str().unwrap_or_default()
        ));
    }
    for parameter in &definitions.parameters {
        report.skipped.push(format!(
            "parameter '{}': postino has no runtime parameters",
            parameter["name"].as_str().unwrap_or_default()
        ));
    }
    Ok(Checked {
        users,
        exchanges,
        streams,
        bindings,
    })
}

/// Arguments as JSON, the way listings show them.
#[must_use]
pub fn arguments_json(arguments: &Headers) -> Value {
    headers_to_json(arguments)
}

/// Arguments from JSON, the way management requests give them.
#[must_use]
pub fn arguments_from_json(value: &Value) -> Headers {
    headers_from_json(value)
}
