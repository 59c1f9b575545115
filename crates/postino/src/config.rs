//! The server's settings: defaults, then a TOML file (`--config FILE` or `POSTINO_CONFIG`), then
//! `POSTINO_<SECTION>_<KEY>` environment variables, then flags — each layer overrides the one
//! before. Every key is checked: an unknown key, a value of the wrong type or a value out of
//! range stops the server with a message naming the key and where the value came from.
//! `docs/configuration.md` is the reference of every key.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use postino_amqp::Limits;
use postino_core::{DefaultUser, FlowLimits, LoginLimits};
use postino_storage::{Durability, LogConfig};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// Every setting of `postino server`, after all layers were applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub log: LogSection,
    pub auth: AuthSection,
    pub amqp: AmqpSection,
    pub http: HttpSection,
    pub grpc: GrpcSection,
    pub tls: TlsSection,
    pub storage: StorageSection,
    pub flow: FlowSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Where the broker keeps its data.
    pub data_dir: PathBuf,
    /// Threads running connections and queues; 0 picks one fewer than the available cores
    /// (at least one), leaving a core to the storage sync threads and the clients.
    pub worker_threads: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./postino-data"),
            worker_threads: 0,
        }
    }
}

/// The most worker threads a server may be given.
const WORKER_THREADS_MAX: usize = 1024;

impl ServerSection {
    /// The worker threads to start: `worker_threads`, or the automatic choice for 0.
    #[must_use]
    pub fn workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |cores| cores.get().saturating_sub(1))
                .max(1),
            chosen => chosen,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter: a level, or per-module levels such as `info,postino_amqp=debug`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "text".to_owned(),
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// The user created, as administrator of `/`, when the broker has no user yet.
    pub default_user: String,
    /// Its password (stored only as an argon2 hash).
    pub default_password: String,
    /// The default user may log in only from a loopback address, as RabbitMQ's `guest`.
    pub default_user_loopback_only: bool,
    /// Failed logins a source address may have per window before its logins are refused
    /// without a check; 0 turns the limit off.
    pub failed_logins_max: u32,
    /// The window of `failed_logins_max`, in milliseconds.
    pub failed_logins_window_ms: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            default_user: "guest".to_owned(),
            default_password: "guest".to_owned(),
            default_user_loopback_only: true,
            failed_logins_max: LoginLimits::default().failures_max,
            failed_logins_window_ms: LoginLimits::default().window_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSection {
    /// `host:port` (port 0 picks one) or `off`.
    pub listen: String,
    /// Where AMQP over TLS listens (conventionally port 5671), or `off`; needs `[tls]`.
    pub tls_listen: String,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat_s: u16,
    pub body_bytes_max: u64,
    /// How long a client has to open its connection after connecting.
    pub handshake_timeout_ms: u64,
}

impl Default for AmqpSection {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            listen: "0.0.0.0:5672".to_owned(),
            tls_listen: "off".to_owned(),
            frame_max: limits.frame_max,
            channel_max: limits.channel_max,
            heartbeat_s: limits.heartbeat_s,
            body_bytes_max: limits.body_bytes_max,
            handshake_timeout_ms: limits.handshake_timeout.as_millis() as u64,
        }
    }
}

/// The management HTTP API and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// `host:port` (port 0 picks one) or `off`.
    pub listen: String,
    /// Where the API listens over TLS (conventionally port 15671), or `off`; needs `[tls]`.
    pub tls_listen: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:15672".to_owned(),
            tls_listen: "off".to_owned(),
        }
    }
}

/// The native gRPC API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSection {
    /// `host:port` (port 0 picks one) or `off`.
    pub listen: String,
    /// Where the native API listens over TLS, or `off`; needs `[tls]`.
    pub tls_listen: String,
}

impl Default for GrpcSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:5680".to_owned(),
            tls_listen: "off".to_owned(),
        }
    }
}

/// The certificate of the TLS listeners, and client certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// The CAs client certificates must chain to (PEM); needed unless `verify` is `none`.
    pub ca_file: String,
    /// Client certificates: `none` (not asked for), `optional` (verified when presented),
    /// `required` (a client without one is refused).
    pub verify: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            verify: "none".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `fsync`, `interval(MS)` or `none`.
    pub durability: String,
    pub segment_bytes_max: u64,
    pub index_interval_bytes: u32,
    pub preallocate_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        let log = LogConfig::default();
        Self {
            durability: log.durability.to_string(),
            segment_bytes_max: log.segment_bytes_max,
            index_interval_bytes: log.index_interval_bytes,
            preallocate_bytes: log.preallocate_bytes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowSection {
    /// Fraction of the machine's memory above which publishers are blocked.
    pub memory_high_watermark: f64,
    /// Free space on the data directory's file system below which publishers are blocked.
    pub disk_free_bytes_min: u64,
    /// How often both are checked.
    pub check_interval_ms: u64,
}

impl Default for FlowSection {
    fn default() -> Self {
        Self {
            memory_high_watermark: 0.4,
            disk_free_bytes_min: FlowLimits::default().disk_free_bytes_min,
            check_interval_ms: 1000,
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Environment(String),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Environment(name) => write!(f, "environment {name}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A setting that cannot be used; the message names the key and the value's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Values given as flags; `None` leaves the lower layers' value.
#[derive(Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    pub amqp_listen: Option<String>,
    pub http_listen: Option<String>,
    pub amqp_tls_listen: Option<String>,
    pub http_tls_listen: Option<String>,
    pub grpc_listen: Option<String>,
    pub grpc_tls_listen: Option<String>,
}

/// The effective configuration, and the source of each `section.key`.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    sources: BTreeMap<String, Source>,
}

/// Applies the layers: defaults, the file, the environment (read through `env`), the flags.
///
/// # Errors
/// The first unknown key, wrong type, unreadable file or invalid value.
pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let defaults = Table::try_from(Config::default())
        .map_err(|error| ConfigError(format!("the default configuration: {error}")))?;
    let mut layers = Layers {
        table: defaults.clone(),
        defaults,
        sources: BTreeMap::new(),
    };
    let file = flags
        .config
        .clone()
        .or_else(|| env("POSTINO_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        layers.apply_file(&path)?;
    }
    layers.apply_environment(env)?;
    let flag_values = [
        (
            "server",
            "data_dir",
            "--data-dir",
            flags.data_dir.as_ref().map(|dir| dir.display().to_string()),
        ),
        ("log", "format", "--log-format", flags.log_format.clone()),
        ("amqp", "listen", "--amqp-listen", flags.amqp_listen.clone()),
        ("http", "listen", "--http-listen", flags.http_listen.clone()),
        ("grpc", "listen", "--grpc-listen", flags.grpc_listen.clone()),
        (
            "grpc",
            "tls_listen",
            "--grpc-tls-listen",
            flags.grpc_tls_listen.clone(),
        ),
        (
            "amqp",
            "tls_listen",
            "--amqp-tls-listen",
            flags.amqp_tls_listen.clone(),
        ),
        (
            "http",
            "tls_listen",
            "--http-tls-listen",
            flags.http_tls_listen.clone(),
        ),
    ];
    for (section, key, flag, value) in flag_values {
        if let Some(value) = value {
            layers.set(section, key, Value::String(value), Source::Flag(flag));
        }
    }
    let config = layers.deserialize()?;
    let loaded = Loaded {
        config,
        sources: layers.sources,
    };
    loaded.validate()?;
    Ok(loaded)
}

struct Layers {
    defaults: Table,
    table: Table,
    sources: BTreeMap<String, Source>,
}

impl Layers {
    /// The merged table as a [`Config`]; a value out of its key's range (say 70000 for a
    /// 16-bit count) is named with its key and source.
    fn deserialize(&self) -> Result<Config, ConfigError> {
        Value::Table(self.table.clone())
            .try_into::<Config>()
            .map_err(|error| {
                self.culprit()
                    .unwrap_or_else(|| ConfigError(format!("configuration: {}", error.message())))
            })
    }

    /// The first key whose value alone, over the defaults, does not deserialize.
    fn culprit(&self) -> Option<ConfigError> {
        self.sources.iter().find_map(|(key, source)| {
            let (section, name) = key.split_once('.')?;
            let value = self.table.get(section)?.get(name)?.clone();
            let mut alone = self.defaults.clone();
            if let Some(Value::Table(keys)) = alone.get_mut(section) {
                keys.insert(name.to_owned(), value);
            }
            let error = Value::Table(alone).try_into::<Config>().err()?;
            Some(ConfigError(format!(
                "{key} ({source}): {}",
                error.message()
            )))
        })
    }

    fn set(&mut self, section: &str, key: &str, value: Value, source: Source) {
        if let Some(Value::Table(keys)) = self.table.get_mut(section) {
            keys.insert(key.to_owned(), value);
        }
        self.sources.insert(format!("{section}.{key}"), source);
    }

    /// The default value of `section.key`, which fixes its type.
    fn default_of(&self, section: &str, key: &str) -> Option<&Value> {
        match self.defaults.get(section) {
            Some(Value::Table(keys)) => keys.get(key),
            _ => None,
        }
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError(format!("config file {}: {error}", path.display())))?;
        let file: Table = text.parse().map_err(|error: toml::de::Error| {
            ConfigError(format!("config file {}: {error}", path.display()))
        })?;
        for (section, keys) in file {
            let Some(Value::Table(known)) = self.defaults.get(&section) else {
                return Err(ConfigError(format!(
                    "config file {}: unknown section [{section}] (known: {})",
                    path.display(),
                    self.defaults.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            };
            let Value::Table(keys) = keys else {
                return Err(ConfigError(format!(
                    "config file {}: {section} must be a table ([{section}])",
                    path.display()
                )));
            };
            let known: Vec<String> = known.keys().cloned().collect();
            for (key, value) in keys {
                let Some(default) = self.default_of(&section, &key) else {
                    return Err(ConfigError(format!(
                        "config file {}: unknown key {section}.{key} (known in [{section}]: {})",
                        path.display(),
                        known.join(", ")
                    )));
                };
                let value = conform(default, value).map_err(|expected| {
                    ConfigError(format!(
                        "config file {}: {section}.{key} must be {expected}",
                        path.display()
                    ))
                })?;
                self.set(&section, &key, value, Source::File(path.to_path_buf()));
            }
        }
        Ok(())
    }

    fn apply_environment(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        // `POSTINO_LOG` set the log filter before the file existed; it still does, below
        // `POSTINO_LOG_LEVEL`.
        if let Some(level) = env("POSTINO_LOG") {
            self.set(
                "log",
                "level",
                Value::String(level),
                Source::Environment("POSTINO_LOG".to_owned()),
            );
        }
        let keys: Vec<(String, String, Value)> = self
            .defaults
            .iter()
            .filter_map(|(section, keys)| keys.as_table().map(|keys| (section, keys)))
            .flat_map(|(section, keys)| {
                keys.iter()
                    .map(move |(key, default)| (section.clone(), key.clone(), default.clone()))
            })
            .collect();
        for (section, key, default) in keys {
            let name = format!("POSTINO_{}_{}", section.to_uppercase(), key.to_uppercase());
            let Some(text) = env(&name) else { continue };
            let value = from_text(&default, &text).map_err(|expected| {
                ConfigError(format!(
                    "environment {name}: {text:?} is not {expected} ({section}.{key})"
                ))
            })?;
            self.set(&section, &key, value, Source::Environment(name));
        }
        Ok(())
    }
}

/// `value` in the type of `default`, or the name of that type. An integer may stand for a
/// float.
fn conform(default: &Value, value: Value) -> Result<Value, &'static str> {
    match (default, value) {
        (Value::String(_), value @ Value::String(_))
        | (Value::Boolean(_), value @ Value::Boolean(_))
        | (Value::Float(_), value @ Value::Float(_)) => Ok(value),
        (Value::Integer(_), value @ Value::Integer(_)) => Ok(value),
        (Value::Float(_), Value::Integer(integer)) => Ok(Value::Float(integer as f64)),
        (default, _) => Err(type_name(default)),
    }
}

/// An environment variable's text in the type of `default`.
fn from_text(default: &Value, text: &str) -> Result<Value, &'static str> {
    let expected = type_name(default);
    match default {
        Value::String(_) => Ok(Value::String(text.to_owned())),
        Value::Integer(_) => text
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|_| expected),
        Value::Float(_) => text.trim().parse().map(Value::Float).map_err(|_| expected),
        Value::Boolean(_) => match text.trim() {
            "true" | "1" | "yes" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" => Ok(Value::Boolean(false)),
            _ => Err(expected),
        },
        _ => Err(expected),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// A listener address, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Off,
    At(String),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::At(address) => f.write_str(address),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Listen::Off);
        }
        let valid = text
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if valid {
            Ok(Listen::At(text.to_owned()))
        } else {
            Err(format!("'{text}' is not host:port or off"))
        }
    }
}

impl Loaded {
    /// Where `section.key` got its value.
    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    fn invalid(&self, key: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError(format!("{key} ({}): {reason}", self.source(key)))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let config = &self.config;
        if !matches!(config.log.format.as_str(), "text" | "json") {
            return Err(self.invalid(
                "log.format",
                format!("{:?} is not text or json", config.log.format),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&config.log.level).map_err(|error| {
            self.invalid("log.level", format!("{:?}: {error}", config.log.level))
        })?;
        if config.server.worker_threads > WORKER_THREADS_MAX {
            return Err(self.invalid(
                "server.worker_threads",
                format!(
                    "{} is over {WORKER_THREADS_MAX}",
                    config.server.worker_threads
                ),
            ));
        }
        if config.auth.failed_logins_max > 0 && config.auth.failed_logins_window_ms == 0 {
            return Err(self.invalid(
                "auth.failed_logins_window_ms",
                "must be positive while auth.failed_logins_max is",
            ));
        }
        if config.auth.default_user.is_empty() {
            return Err(self.invalid("auth.default_user", "must not be empty"));
        }
        self.amqp_listen()?;
        self.http_listen()?;
        self.grpc_listen()?;
        self.tls()?;
        // AMQP 0-9-1 §4.2.3: a peer must accept frames of at least 4096 octets.
        if config.amqp.frame_max < 4096 {
            return Err(self.invalid(
                "amqp.frame_max",
                format!(
                    "{} is below 4096, AMQP's smallest frame-max",
                    config.amqp.frame_max
                ),
            ));
        }
        if config.amqp.channel_max == 0 {
            return Err(self.invalid("amqp.channel_max", "must be at least 1"));
        }
        if config.amqp.body_bytes_max == 0 {
            return Err(self.invalid("amqp.body_bytes_max", "must be at least 1"));
        }
        let log = self.log_config()?;
        log.validate().map_err(|error| match error {
            postino_storage::LogError::Config { key, reason } => {
                self.invalid(&format!("storage.{key}"), reason)
            }
            other => ConfigError(other.to_string()),
        })?;
        let watermark = config.flow.memory_high_watermark;
        if !(watermark > 0.0 && watermark <= 1.0) {
            return Err(self.invalid(
                "flow.memory_high_watermark",
                format!("{watermark} is outside (0, 1]"),
            ));
        }
        if config.flow.check_interval_ms == 0 {
            return Err(self.invalid("flow.check_interval_ms", "must be positive"));
        }
        if config.amqp.handshake_timeout_ms == 0 {
            return Err(self.invalid("amqp.handshake_timeout_ms", "must be positive"));
        }
        Ok(())
    }

    /// The AMQP listener.
    ///
    /// # Errors
    /// An address that is not `host:port` or `off`.
    pub fn amqp_listen(&self) -> Result<Listen, ConfigError> {
        self.listen("amqp.listen", &self.config.amqp.listen)
    }

    /// The management API's listener.
    ///
    /// # Errors
    /// An address that is not `host:port` or `off`.
    pub fn http_listen(&self) -> Result<Listen, ConfigError> {
        self.listen("http.listen", &self.config.http.listen)
    }

    /// The native gRPC API's listener.
    ///
    /// # Errors
    /// An address that is not `host:port` or `off`.
    pub fn grpc_listen(&self) -> Result<Listen, ConfigError> {
        self.listen("grpc.listen", &self.config.grpc.listen)
    }

    /// The native gRPC API's TLS listener.
    ///
    /// # Errors
    /// An address that is not `host:port` or `off`.
    pub fn grpc_tls_listen(&self) -> Result<Listen, ConfigError> {
        self.listen("grpc.tls_listen", &self.config.grpc.tls_listen)
    }

    /// AMQP's TLS listener.
    ///
    /// # Errors
    /// An address that is not `host:port` or `off`.
    pub fn amqp_tls_listen(&self) -> Result<Listen, ConfigError> {
        self.listen("amqp.tls_listen", &self.config.amqp.tls_listen)
    }

    /// The management API's TLS listener.
    ///
    /// # Errors
    /// An address that is not `host:port` or `off`.
    pub fn http_tls_listen(&self) -> Result<Listen, ConfigError> {
        self.listen("http.tls_listen", &self.config.http.tls_listen)
    }

    /// The TLS acceptors, when a TLS listener is on (the files are read now).
    ///
    /// # Errors
    /// A bad listener address or `tls.verify`; a TLS listener without `tls.cert_file` and
    /// `tls.key_file`, or with `verify` other than `none` and no `tls.ca_file`; a file that
    /// does not load.
    pub fn tls(&self) -> Result<Option<crate::tls::Acceptors>, ConfigError> {
        let tls = &self.config.tls;
        let verify: crate::tls::Verify = tls
            .verify
            .parse()
            .map_err(|reason: String| self.invalid("tls.verify", reason))?;
        let on = [
            self.amqp_tls_listen()?,
            self.http_tls_listen()?,
            self.grpc_tls_listen()?,
        ]
        .iter()
        .any(|listen| matches!(listen, Listen::At(_)));
        if !on {
            return Ok(None);
        }
        for (key, value) in [
            ("tls.cert_file", &tls.cert_file),
            ("tls.key_file", &tls.key_file),
        ] {
            if value.is_empty() {
                return Err(self.invalid(key, "a TLS listener is on: set the PEM file"));
            }
        }
        if verify != crate::tls::Verify::None && tls.ca_file.is_empty() {
            return Err(self.invalid(
                "tls.ca_file",
                format!(
                    "tls.verify = {} needs the CAs of client certificates",
                    tls.verify
                ),
            ));
        }
        crate::tls::acceptors(tls, verify)
            .map(Some)
            .map_err(|(key, reason)| self.invalid(key, reason))
    }

    fn listen(&self, key: &str, value: &str) -> Result<Listen, ConfigError> {
        value
            .parse()
            .map_err(|reason: String| self.invalid(key, reason))
    }

    /// The AMQP front-end's limits.
    pub fn amqp_limits(&self) -> Limits {
        let amqp = &self.config.amqp;
        Limits {
            frame_max: amqp.frame_max,
            channel_max: amqp.channel_max,
            heartbeat_s: amqp.heartbeat_s,
            body_bytes_max: amqp.body_bytes_max,
            handshake_timeout: Duration::from_millis(amqp.handshake_timeout_ms),
        }
    }

    /// The settings of every log the broker opens.
    ///
    /// # Errors
    /// A durability policy that does not parse.
    pub fn log_config(&self) -> Result<LogConfig, ConfigError> {
        let storage = &self.config.storage;
        let durability: Durability = storage.durability.parse().map_err(|_| {
            self.invalid(
                "storage.durability",
                format!(
                    "{:?} is not fsync, none or interval(MS)",
                    storage.durability
                ),
            )
        })?;
        Ok(LogConfig {
            durability,
            segment_bytes_max: storage.segment_bytes_max,
            index_interval_bytes: storage.index_interval_bytes,
            preallocate_bytes: storage.preallocate_bytes,
            // A message of `body_bytes_max` must fit one batch, and a batch one segment.
            batch_bytes_max: LogConfig::default()
                .batch_bytes_max
                .min(usize::try_from(storage.segment_bytes_max).unwrap_or(usize::MAX)),
            ..LogConfig::default()
        })
    }

    /// The user a new broker starts with.
    pub fn default_user(&self) -> DefaultUser {
        let auth = &self.config.auth;
        DefaultUser {
            name: auth.default_user.clone(),
            password: auth.default_password.clone(),
            loopback_only: auth.default_user_loopback_only,
        }
    }

    /// How many failed logins an address may have.
    pub fn login_limits(&self) -> LoginLimits {
        LoginLimits {
            failures_max: self.config.auth.failed_logins_max,
            window_ms: self.config.auth.failed_logins_window_ms,
        }
    }

    /// The flow-control limits.
    pub fn flow_limits(&self) -> FlowLimits {
        let flow = &self.config.flow;
        let total = postino_core::broker::total_memory_bytes().unwrap_or(4 << 30);
        FlowLimits {
            // The watermark was checked to lie in (0, 1].
            memory_bytes_max: (total as f64 * flow.memory_high_watermark) as u64,
            disk_free_bytes_min: flow.disk_free_bytes_min,
            check_every: Duration::from_millis(flow.check_interval_ms),
        }
    }

    /// The effective configuration as TOML, each key followed by where its value came from.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("# postino server: effective configuration\n");
        let Ok(table) = Table::try_from(&self.config) else {
            return out;
        };
        for (section, keys) in &table {
            let Some(keys) = keys.as_table() else {
                continue;
            };
            let _ = write!(out, "\n[{section}]\n");
            for (key, value) in keys {
                let source = self.source(&format!("{section}.{key}"));
                let _ = writeln!(out, "{key} = {value}  # {source}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
