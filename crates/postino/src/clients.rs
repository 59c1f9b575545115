//! `postino publish` and `postino consume`: console clients of the native API (gRPC), like
//! `kafka-console-producer/consumer` and `rabbitmqadmin publish/get`. They log in with the
//! global `--user`/`--password` (as HTTP basic metadata; without `--user`, as `guest`).
//!
//! Exit codes: 0 done, 1 the server refused or failed, 2 bad usage.

mod stream;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use postino_grpc::proto::{self, value::Kind};
use postino_grpc::{PubSubClient, QueuesClient};
use serde_json::{Map, Value, json};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Where the clients connect, and as whom.
#[derive(Debug, clap::Args)]
pub struct Server {
    /// The native API (gRPC) of the server, HOST:PORT (also `POSTINO_SERVER`).
    #[arg(long, env = "POSTINO_SERVER", default_value = "127.0.0.1:5680")]
    server: String,
    /// The virtual host.
    #[arg(long, default_value = "/")]
    vhost: String,
}

/// Arguments of `postino publish`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["queue", "exchange", "stream"])))]
pub struct PublishArgs {
    #[command(flatten)]
    server: Server,
    /// Put the messages on this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Publish the messages to this exchange.
    #[arg(long)]
    exchange: Option<String>,
    /// The routing key of `--exchange`.
    #[arg(long, default_value = "", requires = "exchange")]
    routing_key: String,
    /// Produce to this stream.
    #[arg(long)]
    stream: Option<String>,
    /// The record key of `--stream` (it chooses the partition); without it and without
    /// `--partition`, records go round-robin.
    #[arg(long, requires = "stream")]
    key: Option<String>,
    /// The partition of `--stream` to produce to.
    #[arg(long, requires = "stream")]
    partition: Option<u32>,
    /// A header NAME=VALUE (repeatable); a VALUE that is an integer or true/false is sent as
    /// one, others as text.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// A property NAME=VALUE (repeatable): content_type, content_encoding, priority,
    /// correlation_id, reply_to, expiration_ms, message_id, type, user_id, app_id.
    #[arg(long = "property", value_name = "NAME=VALUE")]
    properties: Vec<String>,
    /// Persistent messages: written to durable queues' logs.
    #[arg(long)]
    persistent: bool,
    /// Wait for each message to be stored (durable, for persistent messages) before the next.
    #[arg(long)]
    confirm: bool,
    /// Send the messages this many times over.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// At most this many messages a second.
    #[arg(long)]
    rate: Option<f64>,
    /// Read the messages from this file, one a line.
    #[arg(long, conflicts_with = "messages")]
    file: Option<std::path::PathBuf>,
    /// The messages; without them (and without `--file`), lines from stdin.
    messages: Vec<String>,
}

/// How `postino consume` settles what it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ack {
    /// Acknowledged once printed: at-least-once.
    Auto,
    /// Never acknowledged: back in the queue when the command ends (a look).
    Manual,
    /// Settled by the server when it sends it: at-most-once.
    None,
}

/// Arguments of `postino consume`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["queue", "subscribe", "stream"])))]
pub struct ConsumeArgs {
    #[command(flatten)]
    server: Server,
    /// Consume this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Subscribe with this filter expression (`docs/filters.md`; `TRUE` takes everything) to
    /// `--exchange`.
    #[arg(long, value_name = "FILTER")]
    subscribe: Option<String>,
    /// The exchange of `--subscribe`.
    #[arg(long, default_value = "amq.topic")]
    exchange: String,
    /// The binding key of `--subscribe`.
    #[arg(long, default_value = "#")]
    binding_key: String,
    /// With `--queue`: only the messages this filter expression accepts.
    #[arg(long, requires = "queue")]
    filter: Option<String>,
    /// Follow this stream.
    #[arg(long)]
    stream: Option<String>,
    /// Read `--stream` as a member of this consumer group (its partitions shared with the
    /// other members, from the group's committed offsets; offsets of printed records are
    /// committed unless `--ack manual`).
    #[arg(long, requires = "stream")]
    group: Option<String>,
    /// The partitions of `--stream` to read (repeatable; default every one).
    #[arg(long = "partition", requires = "stream", conflicts_with = "group")]
    partitions: Vec<u32>,
    /// Where `--stream` starts (with `--group`: where the group committed nothing):
    /// `earliest`, `latest` (default), an offset, `@MS` (the first record stamped at or after
    /// that many ms since the epoch) or `-AGE` (`-30s`, `-10m`, `-2h`, `-1d`: that long ago).
    #[arg(long, requires = "stream", allow_hyphen_values = true)]
    from: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message came for this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// auto (acknowledge once printed), manual (never: back to the queue at the end), none
    /// (the server settles on sending).
    #[arg(long, value_enum, default_value = "auto")]
    ack: Ack,
}

/// Why a client command failed.
enum Failure {
    Usage(String),
    Server(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        let (code, text) = match self {
            Failure::Usage(text) => (2, text),
            Failure::Server(text) => (1, text),
        };
        eprintln!("postino: {text}");
        ExitCode::from(code)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Server(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// Who the calls log in as.
struct Login(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Login {
    fn new(user: Option<&str>, password: &str) -> Result<Self, Failure> {
        let Some(user) = user else {
            return Ok(Self(None));
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let value = format!("Basic {token}")
            .parse()
            .map_err(|_| Failure::Usage("the user or password is not valid metadata".into()))?;
        Ok(Self(Some(value)))
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}

async fn connect(server: &Server) -> Result<Channel, Failure> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.server))
        .map_err(|error| Failure::Usage(format!("--server {}: {error}", server.server)))?;
    endpoint
        .connect()
        .await
        .map_err(|error| Failure::Server(format!("cannot reach {}: {error}", server.server)))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::Server(format!("cannot start the runtime: {error}")))
}

/// A header's value: an integer or boolean when it reads as one, else text.
fn header_value(text: &str) -> Kind {
    if let Ok(int) = text.parse::<i64>() {
        Kind::Int(int)
    } else if let Ok(flag) = text.parse::<bool>() {
        Kind::Bool(flag)
    } else {
        Kind::Text(text.to_owned())
    }
}

fn pair(text: &str) -> Result<(&str, &str), Failure> {
    text.split_once('=')
        .ok_or_else(|| Failure::Usage(format!("{text:?} is not NAME=VALUE")))
}

/// The message every line becomes: headers and properties from the arguments.
fn template(args: &PublishArgs) -> Result<proto::Message, Failure> {
    let mut headers = HashMap::new();
    for header in &args.headers {
        let (name, value) = pair(header)?;
        headers.insert(
            name.to_owned(),
            proto::Value {
                kind: Some(header_value(value)),
            },
        );
    }
    let mut properties = proto::Properties {
        persistent: args.persistent,
        ..proto::Properties::default()
    };
    for property in &args.properties {
        let (name, value) = pair(property)?;
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| Failure::Usage(format!("property {name}: {value:?} is not a number")))
        };
        let text = Some(value.to_owned());
        match name {
            "content_type" => properties.content_type = text,
            "content_encoding" => properties.content_encoding = text,
            "correlation_id" => properties.correlation_id = text,
            "reply_to" => properties.reply_to = text,
            "message_id" => properties.message_id = text,
            "type" => properties.r#type = text,
            "user_id" => properties.user_id = text,
            "app_id" => properties.app_id = text,
            "expiration_ms" => properties.expiration_ms = Some(number(value)?),
            "priority" => {
                let priority = u32::try_from(number(value)?)
                    .ok()
                    .filter(|priority| *priority <= 255)
                    .ok_or_else(|| Failure::Usage(format!("priority {value} is over 255")))?;
                properties.priority = Some(priority);
            }
            other => return Err(Failure::Usage(format!("no message property {other:?}"))),
        }
    }
    Ok(proto::Message {
        body: Vec::new(),
        headers,
        properties: Some(properties),
    })
}

/// The bodies to send: the arguments, the file's lines or stdin's.
fn bodies(args: &PublishArgs) -> Result<Vec<String>, Failure> {
    if !args.messages.is_empty() {
        return Ok(args.messages.clone());
    }
    let lines: Result<Vec<String>, std::io::Error> = match &args.file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|error| Failure::Usage(format!("{}: {error}", path.display())))?;
            std::io::BufReader::new(file).lines().collect()
        }
        None => std::io::stdin().lock().lines().collect(),
    };
    lines.map_err(|error| Failure::Usage(format!("cannot read the messages: {error}")))
}

/// Runs `postino publish`.
pub fn publish(args: &PublishArgs, user: Option<&str>, password: &str) -> ExitCode {
    match try_publish(args, user, password) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}

fn try_publish(args: &PublishArgs, user: Option<&str>, password: &str) -> Result<(), Failure> {
    if args.rate.is_some_and(|rate| rate.is_nan() || rate <= 0.0) {
        return Err(Failure::Usage("--rate must be above 0".into()));
    }
    let template = template(args)?;
    let bodies = bodies(args)?;
    let login = Login::new(user, password)?;
    let sync = if args.confirm {
        proto::Sync::Stored
    } else {
        proto::Sync::None
    };
    let interval = args
        .rate
        .map(|rate| Duration::try_from_secs_f64(1.0 / rate))
        .transpose()
        .map_err(|_| Failure::Usage("--rate is too small".into()))?;
    runtime()?.block_on(async {
        let channel = connect(&args.server).await?;
        if let Some(name) = &args.stream {
            let producer = stream::Producer {
                vhost: args.server.vhost.clone(),
                stream: name.clone(),
                key: args.key.clone(),
                partition: args.partition,
                sync,
                interval,
            };
            let messages = (0..args.count).flat_map(|_| {
                bodies.iter().map(|body| proto::Message {
                    body: body.as_bytes().to_vec(),
                    ..template.clone()
                })
            });
            return producer.run(channel, &login, messages).await;
        }
        let mut queues = QueuesClient::new(channel.clone());
        let mut pubsub = PubSubClient::new(channel);
        let mut ticker = interval.map(tokio::time::interval);
        for _ in 0..args.count {
            for body in &bodies {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let message = proto::Message {
                    body: body.as_bytes().to_vec(),
                    ..template.clone()
                };
                if let Some(queue) = &args.queue {
                    let put = proto::PutRequest {
                        vhost: args.server.vhost.clone(),
                        queue: queue.clone(),
                        message: Some(message),
                        sync: sync.into(),
                        ..proto::PutRequest::default()
                    };
                    queues.put(login.request(put)).await?;
                } else if let Some(exchange) = &args.exchange {
                    let publish = proto::PublishRequest {
                        vhost: args.server.vhost.clone(),
                        exchange: exchange.clone(),
                        routing_key: args.routing_key.clone(),
                        message: Some(message),
                        sync: sync.into(),
                        ..proto::PublishRequest::default()
                    };
                    pubsub.publish(login.request(publish)).await?;
                }
            }
        }
        Ok(())
    })
}

/// `bytes` as `name` when they are UTF-8 text, else base64 as `name_base64`.
fn insert_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_owned(), Value::from(text)),
        Err(_) => object.insert(
            format!("{name}_base64"),
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// A delivery as one JSON object: the message and where it came from.
fn json_of(delivery: &proto::Delivery) -> Value {
    let mut object = message_json(delivery.message.clone().unwrap_or_default());
    object.insert("exchange".into(), json!(delivery.exchange));
    object.insert("routing_key".into(), json!(delivery.routing_key));
    object.insert("redelivered".into(), json!(delivery.redelivered));
    if !delivery.queue.is_empty() {
        object.insert("queue".into(), json!(delivery.queue));
        object.insert("delivery_id".into(), json!(delivery.delivery_id));
    }
    Value::Object(object)
}

/// A message's fields as JSON: the body as text (or base64), headers, properties.
fn message_json(message: proto::Message) -> Map<String, Value> {
    let mut object = Map::new();
    insert_bytes(&mut object, "body", &message.body);
    let headers: Map<String, Value> = message
        .headers
        .iter()
        .map(|(name, value)| {
            let value = match &value.kind {
                Some(Kind::Text(text)) => json!(text),
                Some(Kind::Int(int)) => json!(int),
                Some(Kind::Float(float)) => json!(float),
                Some(Kind::Bool(flag)) => json!(flag),
                Some(Kind::Bytes(bytes)) => {
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                Some(Kind::TimestampMs(ms)) => json!(ms),
                None => Value::Null,
            };
            (name.clone(), value)
        })
        .collect();
    object.insert("headers".into(), Value::Object(headers));
    let properties = message.properties.unwrap_or_default();
    let mut props = Map::new();
    let mut text = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            props.insert(name.to_owned(), json!(value));
        }
    };
    text("content_type", &properties.content_type);
    text("content_encoding", &properties.content_encoding);
    text("correlation_id", &properties.correlation_id);
    text("reply_to", &properties.reply_to);
    text("message_id", &properties.message_id);
    text("type", &properties.r#type);
    text("user_id", &properties.user_id);
    text("app_id", &properties.app_id);
    props.insert("persistent".into(), json!(properties.persistent));
    if let Some(priority) = properties.priority {
        props.insert("priority".into(), json!(priority));
    }
    if let Some(expiration) = properties.expiration_ms {
        props.insert("expiration_ms".into(), json!(expiration));
    }
    if let Some(timestamp) = properties.timestamp_ms {
        props.insert("timestamp_ms".into(), json!(timestamp));
    }
    object.insert("properties".into(), Value::Object(props));
    object
}

fn print(delivery: &proto::Delivery, json: bool) -> Result<(), Failure> {
    print_line(delivery.message.as_ref(), json.then(|| json_of(delivery)))
}

/// Writes one line: `json` when given, else the message's body.
fn print_line(message: Option<&proto::Message>, json: Option<Value>) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let written = match json {
        Some(json) => writeln!(out, "{json}"),
        None => {
            let body = message
                .map(|message| String::from_utf8_lossy(&message.body).into_owned())
                .unwrap_or_default();
            writeln!(out, "{body}")
        }
    };
    written
        .and_then(|()| out.flush())
        .map_err(|error| Failure::Server(format!("cannot write: {error}")))
}

/// Runs `postino consume`.
pub fn consume(args: &ConsumeArgs, user: Option<&str>, password: &str, json: bool) -> ExitCode {
    match try_consume(args, user, password, json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}

/// The next item of a stream, or `None` at its end or after `timeout` without one.
async fn next<T>(
    stream: &mut tonic::Streaming<T>,
    timeout: Option<Duration>,
) -> Result<Option<T>, Failure> {
    let item = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, stream.message()).await {
            Ok(item) => item,
            Err(_) => return Ok(None),
        },
        None => stream.message().await,
    };
    Ok(item?)
}

fn try_consume(
    args: &ConsumeArgs,
    user: Option<&str>,
    password: &str,
    json: bool,
) -> Result<(), Failure> {
    let timeout = match args.timeout {
        Some(seconds) if seconds.is_nan() || seconds <= 0.0 => {
            return Err(Failure::Usage("--timeout must be above 0".into()));
        }
        Some(seconds) => Some(
            Duration::try_from_secs_f64(seconds)
                .map_err(|_| Failure::Usage("--timeout is too large".into()))?,
        ),
        None => None,
    };
    let login = Login::new(user, password)?;
    let limit = args.count.unwrap_or(u64::MAX);
    let start = args.from.as_deref().map(stream::position).transpose()?;
    runtime()?.block_on(async {
        let channel = connect(&args.server).await?;
        let mut received = 0u64;
        if let Some(name) = &args.stream {
            let follow = proto::FollowRequest {
                vhost: args.server.vhost.clone(),
                stream: name.clone(),
                partitions: args.partitions.clone(),
                start,
                group: args.group.clone().unwrap_or_default(),
                ..proto::FollowRequest::default()
            };
            let consumer = stream::Consumer {
                commits: args.ack != Ack::Manual,
                limit,
                timeout,
                json,
            };
            consumer.run(channel, &login, follow).await?;
        } else if let Some(queue) = &args.queue {
            let mut queues = QueuesClient::new(channel);
            let notify = proto::NotifyRequest {
                vhost: args.server.vhost.clone(),
                queue: queue.clone(),
                prefetch: u32::try_from(limit.min(100)).unwrap_or(100),
                auto_ack: args.ack == Ack::None,
                filter: args.filter.clone().unwrap_or_default(),
            };
            let mut stream = queues.notify(login.request(notify)).await?.into_inner();
            while received < limit {
                let Some(delivery) = next(&mut stream, timeout).await? else {
                    break;
                };
                print(&delivery, json)?;
                received += 1;
                if args.ack == Ack::Auto {
                    let ack = proto::SettleRequest {
                        vhost: args.server.vhost.clone(),
                        queue: queue.clone(),
                        delivery_ids: vec![delivery.delivery_id],
                        ..proto::SettleRequest::default()
                    };
                    queues.ack(login.request(ack)).await?;
                }
            }
        } else if let Some(filter) = &args.subscribe {
            let mut pubsub = PubSubClient::new(channel);
            let subscribe = proto::SubscribeRequest {
                vhost: args.server.vhost.clone(),
                exchange: args.exchange.clone(),
                binding_key: args.binding_key.clone(),
                filter: filter.clone(),
                ..proto::SubscribeRequest::default()
            };
            let mut stream = pubsub
                .subscribe(login.request(subscribe))
                .await?
                .into_inner();
            while received < limit {
                let Some(item) = next(&mut stream, timeout).await? else {
                    break;
                };
                match item.item {
                    Some(proto::subscription_event::Item::Event(delivery)) => {
                        print(&delivery, json)?;
                        received += 1;
                    }
                    // On stderr, so that a script knows when publishing reaches it.
                    Some(proto::subscription_event::Item::Subscribed(handle)) => {
                        eprintln!("postino: subscribed, handle {handle}");
                    }
                    None => {}
                }
            }
        }
        Ok(())
    })
}
