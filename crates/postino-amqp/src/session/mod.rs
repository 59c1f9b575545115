//! One AMQP connection: handshake, channels, and the translation of methods onto the core.
//!
//! A reader loop parses frames and handles them in order; a writer task owns the socket's
//! write half, batches queued frames into one write, and sends heartbeats. Consumers forward
//! deliveries from their queue to the writer, numbering them with their channel's delivery
//! tags.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel, confirm, connection};
use amq_protocol::types::ShortString;
use bytes::{Buf, BytesMut};
use postino_core::{
    Broker, ChannelInfo, ConsumerInfo, CoreError, Outcome, QueueHandle, Registered, VirtualHost,
};
use postino_types::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

mod confirms;
mod credit;
mod declare;
mod login;
mod messages;
mod reply_to;
mod streams;

pub(crate) use reply_to::ReplyConsumers;

use crate::Limits;
use crate::convert::properties_to_amqp;
use confirms::Confirms;
use credit::ChannelCredit;

const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
/// Bytes of a frame around its payload: type, channel, size, end.
const FRAME_OVERHEAD: usize = 8;

const CONTENT_TOO_LARGE: u16 = 311;
const CONNECTION_FORCED: u16 = 320;
const NO_ROUTE: u16 = 312;
const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const RESOURCE_LOCKED: u16 = 405;
const PRECONDITION_FAILED: u16 = 406;
const FRAME_ERROR: u16 = 501;
const SYNTAX_ERROR: u16 = 502;
const COMMAND_INVALID: u16 = 503;
const CHANNEL_ERROR: u16 = 504;
const UNEXPECTED_FRAME: u16 = 505;
const RESOURCE_ERROR: u16 = 506;
const NOT_ALLOWED: u16 = 530;
const NOT_IMPLEMENTED: u16 = 540;
const INTERNAL_ERROR: u16 = 541;

/// Where an error is reported: the channel closes, or the whole connection.
#[derive(Debug)]
enum Fault {
    Channel(u16, String),
    Connection(u16, String),
}

/// The one mapping of core errors to AMQP reply codes.
fn reply_for(error: &CoreError) -> Fault {
    let text = error.to_string();
    match error {
        CoreError::NotFound { .. }
        | CoreError::UnknownPartition { .. }
        | CoreError::PartitionStopped { .. } => Fault::Channel(NOT_FOUND, text),
        CoreError::PreconditionFailed { .. }
        | CoreError::InvalidArgument { .. }
        | CoreError::UnknownDelivery { .. }
        | CoreError::PublishRejected { .. }
        | CoreError::OffsetOutOfRange { .. }
        | CoreError::ProducerFenced { .. }
        | CoreError::OutOfOrderSequence { .. }
        | CoreError::Group { .. }
        | CoreError::Transaction { .. } => Fault::Channel(PRECONDITION_FAILED, text),
        CoreError::AccessRefused { .. } => Fault::Channel(ACCESS_REFUSED, text),
        CoreError::TooManyLogins { .. } => Fault::Connection(ACCESS_REFUSED, text),
        CoreError::ResourceLocked { .. } => Fault::Channel(RESOURCE_LOCKED, text),
        CoreError::QueueStopped { .. } => Fault::Channel(NOT_FOUND, text),
        CoreError::Storage(_) if error.is_no_space() => Fault::Channel(RESOURCE_ERROR, text),
        CoreError::Definitions { .. }
        | CoreError::CorruptMessage { .. }
        | CoreError::Storage(_) => Fault::Connection(INTERNAL_ERROR, text),
    }
}

/// Where a connection's frames go to its writer task. It counts the bytes queued and not yet
/// written (bodies and a fixed cost per frame), so that consumers' forwarders can wait while a client is not reading
/// ([`Out::room`]) instead of queueing without bound.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    frames: mpsc::UnboundedSender<AMQPFrame>,
    unwritten: Arc<Unwritten>,
}

/// Bytes queued and not yet written, and a wake-up for whoever waits for room.
#[derive(Debug, Default)]
struct Unwritten {
    bytes: std::sync::atomic::AtomicUsize,
    written: tokio::sync::Notify,
}

/// Bytes a connection may have queued before its consumers' forwarders wait.
const UNWRITTEN_BYTES_MAX: usize = 1 << 20;

impl Out {
    /// A sender, and the receiver its writer takes frames from.
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<AMQPFrame>) {
        let (frames, received) = mpsc::unbounded_channel();
        let out = Self {
            frames,
            unwritten: Arc::default(),
        };
        (out, received)
    }

    /// Queues `frame`; false when the writer is gone (the connection is closing).
    pub(crate) fn send(&self, frame: AMQPFrame) -> bool {
        self.unwritten
            .bytes
            .fetch_add(queued_bytes(&frame), Ordering::Relaxed);
        self.frames.send(frame).is_ok()
    }

    /// Waits while the client has [`UNWRITTEN_BYTES_MAX`] or more queued for it.
    pub(crate) async fn room(&self) {
        loop {
            let written = self.unwritten.written.notified();
            if self.unwritten.bytes.load(Ordering::Relaxed) < UNWRITTEN_BYTES_MAX
                || self.frames.is_closed()
            {
                return;
            }
            written.await;
        }
    }

    /// The writer wrote `frames`: they are no longer queued.
    fn wrote(unwritten: &Unwritten, frames: &[AMQPFrame]) {
        let bytes: usize = frames.iter().map(queued_bytes).sum();
        unwritten.bytes.fetch_sub(bytes, Ordering::Relaxed);
        unwritten.written.notify_waiters();
    }
}

/// What a queued frame is counted for: a body's bytes, and what any frame costs besides.
fn queued_bytes(frame: &AMQPFrame) -> usize {
    let body = match frame {
        AMQPFrame::Body(_, body) => body.len(),
        _ => 0,
    };
    body + QUEUED_FRAME_OVERHEAD_BYTES
}

/// The memory a queued frame takes besides its body (the enum, its strings and tables).
const QUEUED_FRAME_OVERHEAD_BYTES: usize = 128;

fn short(text: &str) -> ShortString {
    ShortString::from(text)
}

/// Queues the frames of one message: its method, content header, and body frames.
fn send_content(out: &Out, channel: u16, method: AMQPClass, message: &Message, frame_max: u32) {
    let _ = out.send(AMQPFrame::Method(channel, method));
    let _ = out.send(AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: message.body.len() as u64,
            properties: properties_to_amqp(message),
        },
    ));
    let chunk = (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1);
    for part in message.body.chunks(chunk) {
        let _ = out.send(AMQPFrame::Body(channel, part.to_vec()));
    }
}

/// Delivery tags of a channel: each maps to the queue and the core's delivery id, or (a
/// delivery from a stream) to its consumer's credit. Consumers' deliveries also hold a unit of
/// the channel's shared prefetch until they are settled.
#[derive(Debug, Default)]
struct Tags {
    next: u64,
    open: BTreeMap<u64, (QueueHandle, u64)>,
    credits: BTreeMap<u64, Arc<tokio::sync::Semaphore>>,
    /// The tags whose deliveries took a unit of `channel_credit`.
    credited: BTreeSet<u64>,
    channel_credit: Arc<ChannelCredit>,
}

impl Tags {
    /// A tag for a `basic.get` delivery, outside the channel's prefetch.
    fn assign(&mut self, queue: &QueueHandle, id: u64) -> u64 {
        self.next += 1;
        self.open.insert(self.next, (queue.clone(), id));
        self.next
    }

    /// A tag for a consumer's delivery, sent under a unit of the channel's prefetch.
    fn assign_credited(&mut self, queue: &QueueHandle, id: u64) -> u64 {
        let tag = self.assign(queue, id);
        self.credited.insert(tag);
        tag
    }

    /// A tag for a stream delivery; settling it gives `credit` one permit back.
    fn assign_stream(&mut self, credit: &Arc<tokio::sync::Semaphore>) -> u64 {
        self.next += 1;
        self.credits.insert(self.next, Arc::clone(credit));
        self.next
    }

    /// Takes the tags a settlement names (all up to `tag` with `multiple`; tag 0 with
    /// `multiple` means every one), grouped by queue. Stream deliveries among them give their
    /// consumers' credit back (a stream keeps its records whatever the outcome).
    fn take(&mut self, tag: u64, multiple: bool) -> Result<Vec<(QueueHandle, Vec<u64>)>, u64> {
        let tags: Vec<u64> = if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            let queued = self.open.range(..=upto).map(|(tag, _)| *tag);
            queued
                .chain(self.credits.range(..=upto).map(|(tag, _)| *tag))
                .collect()
        } else if self.open.contains_key(&tag) || self.credits.contains_key(&tag) {
            vec![tag]
        } else {
            return Err(tag);
        };
        let mut groups: Vec<(QueueHandle, Vec<u64>)> = Vec::new();
        let mut released = 0;
        for tag in tags {
            released += u64::from(self.credited.remove(&tag));
            if let Some(credit) = self.credits.remove(&tag) {
                credit.add_permits(1);
                continue;
            }
            let Some((queue, id)) = self.open.remove(&tag) else {
                continue;
            };
            match groups
                .iter_mut()
                .find(|(existing, _)| existing.name() == queue.name())
            {
                Some((_, ids)) => ids.push(id),
                None => groups.push((queue, vec![id])),
            }
        }
        self.channel_credit.release(released);
        Ok(groups)
    }
}

/// A `basic.publish` whose content is arriving.
#[derive(Debug)]
struct Incoming {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    header: Option<AMQPContentHeader>,
    body: Vec<u8>,
}

#[derive(Debug)]
struct Consumer {
    /// A queue consumer (its queue and core consumer id), or `None` for a stream reader.
    queue: Option<(QueueHandle, u64)>,
    /// Writes the consumer's deliveries to the connection until the queue's owner drops them
    /// (or, for a stream, reads the stream and writes its records).
    forwarder: tokio::task::JoinHandle<()>,
    auto_ack: bool,
    /// Set when the client or the channel ends the consumer: the forwarder then does not tell
    /// the client that the queue cancelled it.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Consumer {
    /// Ends the consumer so that none of its frames follows: the caller's next frame (a
    /// `cancel-ok` or `close-ok`) is the last word on it. With manual acks the forwarder stops
    /// first and the queue takes back every unsettled delivery, those not yet written
    /// included; with auto-ack (deliveries are settled when handed over) the queue stops
    /// first and the forwarder writes what it was handed, so nothing is lost.
    async fn end(self) -> Result<(), CoreError> {
        self.ended.store(true, std::sync::atomic::Ordering::Release);
        let Some((queue, id)) = self.queue else {
            // A stream reader: its records stay in the stream, nothing to give back.
            self.forwarder.abort();
            let _ = self.forwarder.await;
            return Ok(());
        };
        if !self.auto_ack {
            self.forwarder.abort();
            let _ = self.forwarder.await;
            return queue.cancel(id).await;
        }
        let outcome = queue.cancel(id).await;
        if !matches!(outcome, Ok(()) | Err(CoreError::QueueStopped { .. })) {
            // The queue may still hold the sink: do not wait for it to close.
            self.forwarder.abort();
        }
        let _ = self.forwarder.await;
        outcome
    }
}

#[derive(Debug, Default)]
struct Channel {
    /// In confirm mode (`confirm.select`): the channel's confirm task.
    confirms: Option<Confirms>,
    prefetch: u16,
    incoming: Option<Incoming>,
    tags: Arc<Mutex<Tags>>,
    consumers: HashMap<String, Consumer>,
    /// A channel.close was sent; frames are ignored until close-ok.
    closing: bool,
    /// In transaction mode (`tx.select`): what the current transaction holds.
    transaction: Option<Pending>,
    /// The channel's direct reply-to consumer: its tag and its token.
    reply_consumer: Option<(String, String)>,
    /// `channel.flow`: consumers' deliveries wait while it holds `false`.
    flow: Flow,
}

/// Whether a channel's consumers may deliver (`channel.flow`), watched by their forwarders.
#[derive(Debug)]
struct Flow(tokio::sync::watch::Sender<bool>);

impl Default for Flow {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(true))
    }
}

/// Waits while the channel's flow is paused; returns at once while it is active.
async fn flow_allows(flow: &mut tokio::sync::watch::Receiver<bool>) {
    if !*flow.borrow() {
        // A closed channel means the channel is gone: the forwarder ends soon anyway.
        let _ = flow.wait_for(|active| *active).await;
    }
}

/// Publishes and settlements of a channel's current transaction, applied on `tx.commit`.
#[derive(Debug, Default)]
struct Pending {
    publishes: Vec<(String, String, bool, Message)>,
    settles: Vec<(u64, bool, Outcome)>,
}

fn lock(tags: &Mutex<Tags>) -> std::sync::MutexGuard<'_, Tags> {
    tags.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Session {
    broker: Arc<Broker>,
    /// The listener's direct reply-to consumers.
    replies: Arc<ReplyConsumers>,
    connection: u64,
    limits: Limits,
    frame_max: u32,
    out: Out,
    host: Option<Arc<VirtualHost>>,
    channels: HashMap<u16, Channel>,
    next_consumer: u64,
    next_queue_name: u64,
    /// The peer's address (`None` inside the process): failed logins are counted per address,
    /// and a loopback-only user (the default `guest`) may log in only from a loopback one.
    peer: Option<std::net::IpAddr>,
    /// The connection as the management API lists it.
    listed: Arc<Registered>,
    /// The logged-in user (empty before `start-ok` succeeds).
    user: String,
    /// Permission checks already passed.
    allowed: login::Allowed,
    /// The client understands `connection.blocked` (its start-ok capabilities say so).
    wants_blocked: bool,
    /// Tells the client when the broker's flow-control alarm rises and clears.
    alarm_watcher: Option<tokio::task::JoinHandle<()>>,
    /// The server sent `connection.close`: the client's `close-ok` is awaited before the
    /// socket closes.
    sent_close: std::sync::atomic::AtomicBool,
    /// The negotiated heartbeat interval in seconds, shared with the writer.
    heartbeat: Arc<AtomicU16>,
    /// Until the connection is open, the peer must have finished the handshake by then
    /// (RabbitMQ's `handshake_timeout`): silent sockets do not hold the server forever.
    handshake_deadline: tokio::time::Instant,
}

/// Serves one connection over any byte stream until it closes or fails.
pub(crate) async fn run<S>(
    mut socket: S,
    broker: Arc<Broker>,
    replies: Arc<ReplyConsumers>,
    listed: Registered,
    limits: Limits,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listed = Arc::new(listed);
    let handshake_deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    // Small until the peer sends more: an idle connection holds little (see `read_loop`).
    let mut buffer = BytesMut::with_capacity(READ_IDLE_BYTES);
    while buffer.len() < PROTOCOL_HEADER.len() {
        let Ok(read) =
            tokio::time::timeout_at(handshake_deadline, socket.read_buf(&mut buffer)).await
        else {
            tracing::info!(
                connection = listed.id(),
                "no protocol header in time, closing"
            );
            return Ok(());
        };
        let read = read?;
        if read == 0 {
            return Ok(());
        }
        listed.traffic().received(read);
    }
    if &buffer[..PROTOCOL_HEADER.len()] != PROTOCOL_HEADER {
        // Spec 4.2.2: answer a wrong header with the one we speak, then close.
        socket.write_all(PROTOCOL_HEADER).await?;
        return Ok(());
    }
    buffer.advance(PROTOCOL_HEADER.len());
    let (mut reader, writer) = tokio::io::split(socket);
    let (out, frames) = Out::channel();
    let heartbeat = Arc::new(AtomicU16::new(limits.heartbeat_s));
    let writer = tokio::spawn(write_frames(
        writer,
        frames,
        Arc::clone(&out.unwritten),
        Arc::clone(&heartbeat),
        Arc::clone(&listed),
    ));
    let mut session = Session {
        broker,
        replies,
        connection: listed.id(),
        limits,
        frame_max: limits.frame_max,
        out,
        host: None,
        channels: HashMap::new(),
        next_consumer: 0,
        next_queue_name: 0,
        peer: listed.origin().peer.map(|peer| peer.ip()),
        listed,
        user: String::new(),
        allowed: login::Allowed::default(),
        wants_blocked: false,
        alarm_watcher: None,
        sent_close: std::sync::atomic::AtomicBool::new(false),
        heartbeat,
        handshake_deadline,
    };
    let external = session.listed.origin().certificate_user.is_some();
    session.send(0, login::start(external));
    let outcome = session.read_loop(&mut reader, &mut buffer).await;
    session.shutdown().await;
    if outcome.is_ok() && session.sent_close.load(Ordering::Relaxed) {
        await_close_ok(&mut reader, &mut buffer).await;
    }
    drop(session);
    let _ = writer.await;
    outcome
}

/// How long a client has to answer the server's `connection.close`.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(5);
/// The largest frame read while waiting for it: anything larger is not worth buffering.
const CLOSE_FRAME_MAX: usize = 1 << 20;

/// After the server's `connection.close`, reads and discards what the client sends until its
/// `close-ok` (or its own `close`), the end of the stream, or [`CLOSE_OK_WAIT`] (spec 4.2.2).
/// Closing a socket with unread bytes makes the kernel reset it, and the client would lose
/// the close and its reason.
async fn await_close_ok(reader: &mut (impl AsyncRead + Unpin), buffer: &mut BytesMut) {
    let answered = async {
        loop {
            while let Some(size) = frame_size(buffer) {
                if size > CLOSE_FRAME_MAX {
                    return;
                }
                if buffer.len() < size {
                    break;
                }
                let frame = parse_frame(&buffer[..size]).map(|(_, frame)| frame);
                buffer.advance(size);
                match frame {
                    Ok(AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(
                            connection::AMQPMethod::CloseOk(_) | connection::AMQPMethod::Close(_),
                        ),
                    ))
                    | Err(_) => return,
                    Ok(_) => {}
                }
            }
            buffer.reserve(READ_IDLE_BYTES);
            match reader.read_buf(buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_OK_WAIT, answered).await;
}

/// What a connection's reader asks for while frames are pending, and with nothing pending.
const READ_BUSY_BYTES: usize = 64 << 10;
const READ_IDLE_BYTES: usize = 4 << 10;
/// What a connection's writer keeps of its buffer between batches.
const WRITE_KEPT_BYTES: usize = 64 << 10;

/// Writes queued frames in batches; sends a heartbeat after half the negotiated heartbeat
/// interval without a write (`heartbeat` is updated by `tune-ok`; 0 turns heartbeats off).
async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames: mpsc::UnboundedReceiver<AMQPFrame>,
    unwritten: Arc<Unwritten>,
    heartbeat: Arc<AtomicU16>,
    listed: Arc<Registered>,
) {
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    loop {
        let heartbeat_s = heartbeat.load(Ordering::Relaxed);
        let every = Duration::from_millis(u64::from(heartbeat_s) * 500);
        let received = tokio::select! {
            received = frames.recv_many(&mut batch, 256) => received,
            () = tokio::time::sleep(every), if heartbeat_s > 0 => {
                // Counted as if sent through `Out`, since writing it is counted back.
                unwritten
                    .bytes
                    .fetch_add(queued_bytes(&AMQPFrame::Heartbeat), Ordering::Relaxed);
                batch.push(AMQPFrame::Heartbeat);
                1
            }
        };
        if received == 0 {
            let _ = writer.shutdown().await;
            return;
        }
        bytes.clear();
        let mut closing = false;
        let taken = std::mem::take(&mut batch);
        for frame in &taken {
            closing |= matches!(
                frame,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))
            );
            match gen_frame(frame)(WriteContext::from(std::mem::take(&mut bytes))) {
                Ok(context) => bytes = context.into_inner().0,
                Err(error) => {
                    tracing::error!(%error, "could not serialise an amqp frame");
                    return;
                }
            }
        }
        if writer.write_all(&bytes).await.is_err() || closing {
            let _ = writer.shutdown().await;
            return;
        }
        Out::wrote(&unwritten, &taken);
        batch = taken;
        batch.clear();
        listed.traffic().sent(bytes.len());
        // A burst's buffer is not kept for a connection that goes quiet.
        bytes.shrink_to(WRITE_KEPT_BYTES);
    }
}

/// What the reader loop does after a frame.
enum Next {
    Continue,
    Stop,
}

impl Session {
    fn send(&self, channel: u16, method: AMQPClass) {
        let _ = self.out.send(AMQPFrame::Method(channel, method));
    }

    /// Sends a method's reply unless the client asked for none (`nowait`).
    fn reply_unless_nowait(&self, nowait: bool, channel: u16, reply: AMQPClass) {
        if !nowait {
            self.send(channel, reply);
        }
    }

    /// Shows a new consumer of channel `id` in the connection's listing.
    fn list_consumer(&self, id: u16, tag: &str, consume: &amq_protocol::protocol::basic::Consume) {
        let info = ConsumerInfo {
            queue: consume.queue.as_str().to_owned(),
            ack_required: !consume.no_ack,
            exclusive: consume.exclusive,
            prefetch_count: u32::from(self.channel(id).prefetch),
            arguments: crate::convert::headers_from_table(&consume.arguments)
                .iter()
                .map(|(name, value)| (name.clone(), value.to_string()))
                .collect(),
        };
        self.listed.describe_channel(id, |channel| {
            channel.consumers.insert(tag.to_owned(), info);
        });
    }

    fn close_connection(&self, code: u16, text: &str) {
        self.sent_close.store(true, Ordering::Relaxed);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: short(&text.chars().take(250).collect::<String>()),
                class_id: 0,
                method_id: 0,
            })),
        );
    }

    async fn read_loop(
        &mut self,
        reader: &mut (impl AsyncRead + Unpin),
        buffer: &mut BytesMut,
    ) -> io::Result<()> {
        loop {
            while let Some(size) = frame_size(buffer) {
                if size > self.frame_max as usize {
                    self.close_connection(
                        FRAME_ERROR,
                        &format!("frame of {size} bytes exceeds frame_max"),
                    );
                    return Ok(());
                }
                if buffer.len() < size {
                    break;
                }
                let frame = match parse_frame(&buffer[..size]) {
                    Ok((_, frame)) => frame,
                    Err(error) => {
                        self.close_connection(SYNTAX_ERROR, &format!("malformed frame: {error}"));
                        return Ok(());
                    }
                };
                if let Some(prefetch_size) = self.prefetch_size_asked(&frame, &buffer[..size]) {
                    // amq-protocol drops the field, so it is read from the frame itself.
                    self.close_connection(
                        NOT_IMPLEMENTED,
                        &format!(
                            "prefetch_size!=0 ({prefetch_size}): prefetch is counted in \
                             messages only, as in RabbitMQ"
                        ),
                    );
                    return Ok(());
                }
                buffer.advance(size);
                if let Next::Stop = self.on_frame(frame).await {
                    return Ok(());
                }
            }
            // Read in large chunks while frames are arriving faster than they are handled;
            // with nothing pending, a small read is enough to learn what comes next.
            buffer.reserve(if buffer.is_empty() {
                READ_IDLE_BYTES
            } else {
                READ_BUSY_BYTES
            });
            // A peer silent for two heartbeat intervals is gone (spec 4.2.7); without
            // heartbeats the connection waits as long as the peer keeps it open.
            let heartbeat_s = self.heartbeat.load(Ordering::Relaxed);
            let mut silence = if heartbeat_s == 0 {
                Duration::MAX
            } else {
                Duration::from_secs(u64::from(heartbeat_s) * 2)
            };
            let opening = self.host.is_none();
            if opening {
                silence = silence.min(
                    self.handshake_deadline
                        .saturating_duration_since(tokio::time::Instant::now()),
                );
            }
            // `read_buf` is cancel-safe: a read that loses the race has taken no bytes.
            let listed = Arc::clone(&self.listed);
            let outcome = tokio::select! {
                read = tokio::time::timeout(silence, reader.read_buf(buffer)) => read,
                reason = listed.closed() => {
                    tracing::info!(connection = self.connection, %reason, "closed by an operator");
                    self.close_connection(CONNECTION_FORCED, &reason);
                    return Ok(());
                }
            };
            match outcome {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(read)) => self.listed.traffic().received(read),
                Ok(Err(error)) => return Err(error),
                Err(_) if opening => {
                    tracing::info!(
                        connection = self.connection,
                        "handshake not finished in time, closing"
                    );
                    return Ok(());
                }
                Err(_) => {
                    tracing::info!(connection = self.connection, "missed heartbeats, closing");
                    return Ok(());
                }
            }
        }
    }

    /// Cancels consumers and returns unsettled deliveries when the connection goes away.
    async fn shutdown(&mut self) {
        if let Some(watcher) = self.alarm_watcher.take() {
            watcher.abort();
        }
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.close_channel_state(id).await;
        }
        if let Some(host) = &self.host {
            let _ = host.connection_closed(self.connection).await;
        }
    }

    async fn close_channel_state(&mut self, id: u16) {
        let Some(channel) = self.channels.remove(&id) else {
            return;
        };
        self.listed.describe(|session| {
            session.channels.remove(&id);
        });
        if let Some((_, token)) = &channel.reply_consumer {
            self.replies.unregister(token);
        }
        for (_, consumer) in channel.consumers {
            let _ = consumer.end().await;
        }
        let unsettled: Vec<(QueueHandle, Vec<u64>)> =
            lock(&channel.tags).take(0, true).unwrap_or_default();
        for (queue, ids) in unsettled {
            let _ = queue.settle(ids, Outcome::Requeue).await;
        }
    }

    async fn on_frame(&mut self, frame: AMQPFrame) -> Next {
        match frame {
            AMQPFrame::Heartbeat
            | AMQPFrame::InvalidHeartbeat(_)
            | AMQPFrame::ProtocolHeader(_) => Next::Continue,
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => self.on_connection(method).await,
            AMQPFrame::Method(0, _) | AMQPFrame::Header(0, _) | AMQPFrame::Body(0, _) => {
                self.close_connection(COMMAND_INVALID, "only connection methods go on channel 0");
                Next::Stop
            }
            AMQPFrame::Method(id, method) => self.on_channel_method(id, method).await,
            AMQPFrame::Header(id, header) => self.on_header(id, header).await,
            AMQPFrame::Body(id, body) => self.on_body(id, body).await,
        }
    }

    fn close_channel(&mut self, id: u16, code: u16, text: &str, class_id: u16, method_id: u16) {
        if let Some(channel) = self.channels.get_mut(&id) {
            channel.closing = true;
            channel.incoming = None;
        }
        self.send(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: code,
                reply_text: short(&text.chars().take(250).collect::<String>()),
                class_id,
                method_id,
            })),
        );
    }

    fn fail(&mut self, id: u16, error: &CoreError, class_id: u16, method_id: u16) -> Next {
        match reply_for(error) {
            Fault::Channel(code, text) => {
                self.close_channel(id, code, &text, class_id, method_id);
                Next::Continue
            }
            Fault::Connection(code, text) => {
                self.close_connection(code, &text);
                Next::Stop
            }
        }
    }

    async fn on_channel_method(&mut self, id: u16, method: AMQPClass) -> Next {
        let (class_id, method_id) = (method.get_amqp_class_id(), method.get_amqp_method_id());
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = method {
            if self.channels.contains_key(&id) || id > self.limits.channel_max {
                self.close_connection(CHANNEL_ERROR, &format!("channel {id} cannot be opened"));
                return Next::Stop;
            }
            let channel = Channel::default();
            let tags = Arc::clone(&channel.tags);
            self.channels.insert(id, channel);
            self.listed.describe(|session| {
                let unacked: postino_core::connections::Probe =
                    Arc::new(move || lock(&tags).open.len() as u64);
                let info = ChannelInfo {
                    unacked: Some(unacked),
                    ..ChannelInfo::default()
                };
                session.channels.insert(id, info);
            });
            self.send(
                id,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Next::Continue;
        }
        let Some(channel) = self.channels.get(&id) else {
            self.close_connection(CHANNEL_ERROR, &format!("channel {id} is not open"));
            return Next::Stop;
        };
        if channel.closing {
            if let AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) = method {
                self.close_channel_state(id).await;
            }
            return Next::Continue;
        }
        if channel.incoming.is_some() {
            self.close_connection(
                UNEXPECTED_FRAME,
                "a method arrived before the previous message's content",
            );
            return Next::Stop;
        }
        let Some(host) = self.host.clone() else {
            self.close_connection(COMMAND_INVALID, "connection.open first");
            return Next::Stop;
        };
        match self.on_method(&host, id, method).await {
            Ok(next) => next,
            Err(error) => self.fail(id, &error, class_id, method_id),
        }
    }

    async fn on_method(
        &mut self,
        host: &Arc<VirtualHost>,
        id: u16,
        method: AMQPClass,
    ) -> Result<Next, CoreError> {
        match method {
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.close_channel_state(id).await;
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                self.channel(id).flow.0.send_replace(flow.active);
                self.send(
                    id,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: flow.active,
                    })),
                );
            }
            AMQPClass::Exchange(method) => self.on_exchange(host, id, method)?,
            AMQPClass::Queue(method) => self.on_queue(host, id, method).await?,
            AMQPClass::Basic(method) => return self.on_basic(host, id, method).await,
            AMQPClass::Tx(method) => self.on_tx(host, id, method).await?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.channel(id).transaction.is_some() {
                    return Err(CoreError::PreconditionFailed {
                        reason: "a transactional channel cannot be put into confirm mode"
                            .to_owned(),
                    });
                }
                if let Some(channel) = self.channels.get_mut(&id) {
                    let (out, broker) = (&self.out, &self.broker);
                    channel.confirms.get_or_insert_with(|| {
                        Confirms::start(id, out.clone(), Arc::clone(broker))
                    });
                }
                self.listed
                    .describe_channel(id, |channel| channel.confirm = true);
                self.reply_unless_nowait(
                    select.nowait,
                    id,
                    AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                );
            }
            other => {
                let (class_id, method_id) = (other.get_amqp_class_id(), other.get_amqp_method_id());
                self.close_channel(
                    id,
                    NOT_IMPLEMENTED,
                    "method not supported yet",
                    class_id,
                    method_id,
                );
            }
        }
        Ok(Next::Continue)
    }
}

/// The size of the frame at the start of `buffer`, once its 7-byte header has arrived.
fn frame_size(buffer: &[u8]) -> Option<usize> {
    if buffer.len() < 7 {
        return None;
    }
    let payload = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]) as usize;
    Some(payload + FRAME_OVERHEAD)
}

#[cfg(test)]
mod tests;
