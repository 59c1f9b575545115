//! `postino bench server`: what running the broker costs, for postino and RabbitMQ in the same
//! run.
//!
//! - `start`: from spawning `postino server` on an empty data directory until every listener
//!   is announced, and its resident memory once idle (RabbitMQ's is read as it runs).
//! - `idle_connections`: AMQP connections opened over real sockets by a minimal hand-written
//!   handshake (PLAIN login, heartbeats off, one channel each: lapin costs the client megabytes
//!   a connection) and left idle; the broker's resident memory growth per connection.
//! - `queues`: transient queues declared over one AMQP channel (`nowait`, one round trip at
//!   the end); declarations per second and resident memory growth per queue.
//! - `list_page`: the management API's `GET /api/queues/%2F?page=N&page_size=100` over those
//!   queues, at random pages; latency percentiles.
//!
//! Memory is `VmRSS` of `/proc/<pid>/status`: postino's server process, RabbitMQ's
//! `beam.smp`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel, connection};
use anyhow::{Context, Result, bail};
use base64::Engine;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::amqp::find_process;
use crate::storage::Size;
use crate::{Printer, Row, latency_histogram};

/// The columns of the table view.
#[must_use]
pub fn columns() -> Vec<&'static str> {
    vec![
        "scenario", "broker", "count", "ms", "per_s", "rss_mb", "kb_each", "p50_us", "p99_us",
        "ratio",
    ]
}

/// A started `postino server` and where it listens.
#[derive(Debug)]
pub(crate) struct Started {
    pub child: Child,
    pub amqp: String,
    pub http: Option<String>,
    pub grpc: Option<String>,
    /// From spawning to the last listener announced.
    pub ready_after: Duration,
}

impl Drop for Started {
    fn drop(&mut self) {
        // The server may already have exited; either way it is reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary server` on free loopback ports with its data in `dir`, with the management
/// API when `http` and the native API when `grpc`; returns once every listener is announced. Its log keeps being drained so
/// that it never blocks on a full pipe.
pub(crate) fn start(binary: &Path, dir: &Path, http: bool, grpc: bool) -> Result<Started> {
    let began = Instant::now();
    let mut child = Command::new(binary)
        .args(["server", "--amqp-listen", "127.0.0.1:0"])
        .arg("--grpc-listen")
        .arg(if grpc { "127.0.0.1:0" } else { "off" })
        .arg("--http-listen")
        .arg(if http { "127.0.0.1:0" } else { "off" })
        .arg("--data-dir")
        .arg(dir)
        .env_remove("POSTINO_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let stderr = child.stderr.take().context("the server's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let (mut amqp, mut web, mut native) = (None, None, None);
    while amqp.is_none() || (http && web.is_none()) || (grpc && native.is_none()) {
        let line = match lines.next() {
            Some(line) => line.context("read the server's log")?,
            None => bail!("the server exited before listening"),
        };
        let address = || {
            line.rsplit("addr=")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        if line.contains("listening protocol=amqp") {
            amqp = Some(address());
        } else if line.contains("listening protocol=http") {
            web = Some(address());
        } else if line.contains("listening protocol=grpc") {
            native = Some(address());
        }
    }
    let ready_after = began.elapsed();
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Started {
        child,
        amqp: amqp.unwrap_or_default(),
        http: web,
        grpc: native,
        ready_after,
    })
}

/// Resident memory of `pid`, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident memory after the broker settles (a second without asking it anything).
fn settled_rss(pid: u32) -> Result<u64> {
    std::thread::sleep(Duration::from_secs(1));
    rss_bytes(pid).with_context(|| format!("read the memory of process {pid}"))
}

/// One broker under test.
struct Target {
    name: &'static str,
    amqp_uri: String,
    /// The management API and its basic-auth header.
    http: Option<(String, String)>,
    pid: u32,
}

fn sizes(size: Size) -> (usize, usize, usize) {
    match size {
        // connections, queues, page requests (RabbitMQ takes seconds a page over 100,000)
        Size::Quick => (500, 2_000, 50),
        Size::Full => (10_000, 100_000, 100),
    }
}

/// Runs the scenarios whose name contains `filter` and prints a row each.
///
/// # Errors
/// When the server does not start or a client operation fails.
pub fn run(
    binary: &Path,
    parent: &Path,
    peer_uri: &str,
    peer_http: &str,
    size: Size,
    filter: &str,
    printer: &mut Printer,
) -> Result<Vec<Row>> {
    let runtime = crate::runtime()?;
    let scratch = crate::scratch_dir(parent, "postino-bench-server-")?;
    let started = start(binary, &scratch.path().join("data"), true, false)?;
    let credentials = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    );
    let postino = Target {
        name: "postino",
        amqp_uri: format!("amqp://guest:guest@{}/%2f", started.amqp),
        http: started
            .http
            .clone()
            .map(|http| (format!("http://{http}"), credentials.clone())),
        pid: started.child.id(),
    };
    let mut rows = Vec::new();
    let mut emit = |row: Row, rows: &mut Vec<Row>| {
        printer.print(&row);
        rows.push(row);
    };
    if "start".contains(filter) || filter.is_empty() {
        let rss = settled_rss(postino.pid)?;
        let row = Row::new("start")
            .with("broker", "postino")
            .with("ms", started.ready_after.as_millis() as u64)
            .with_rounded("rss_mb", rss as f64 / 1e6, 1);
        emit(row, &mut rows);
    }
    let peer = find_process("beam.smp").and_then(|pid| {
        runtime
            .block_on(Connection::connect(
                peer_uri,
                ConnectionProperties::default(),
            ))
            .ok()
            .map(|_| Target {
                name: "rabbitmq",
                amqp_uri: peer_uri.to_owned(),
                http: Some((
                    peer_http.trim_end_matches('/').to_owned(),
                    credentials.clone(),
                )),
                pid,
            })
    });
    if peer.is_none() {
        eprintln!(
            "RabbitMQ is not reachable at {peer_uri}: its rows are left out (start it with \
             shared/tools/start-peers.sh)"
        );
    }
    let (connections, queues, pages) = sizes(size);
    let wants = |scenario: &str| filter.is_empty() || scenario.contains(filter);
    let targets: Vec<&Target> = peer.iter().chain(std::iter::once(&postino)).collect();
    if wants("idle_connections") {
        let measured = targets
            .iter()
            .map(|target| runtime.block_on(idle_connections(target, connections)))
            .collect::<Result<Vec<_>>>()?;
        for row in compared(measured, "kb_each") {
            emit(row, &mut rows);
        }
    }
    if wants("queues") || wants("list_page") {
        let measured = targets
            .iter()
            .map(|target| runtime.block_on(declare_queues(target, queues)))
            .collect::<Result<Vec<_>>>()?;
        if wants("queues") {
            for row in compared(measured, "kb_each") {
                emit(row, &mut rows);
            }
        }
        if wants("list_page") {
            let measured = targets
                .iter()
                .map(|target| list_pages(target, queues, pages))
                .collect::<Result<Vec<_>>>()?;
            for row in compared(measured, "p50_us") {
                emit(row, &mut rows);
            }
        }
        if let Some(target) = &peer {
            runtime.block_on(delete_queues(target, queues))?;
        }
    }
    drop(started);
    Ok(rows)
}

/// The rows of one scenario, postino's with `ratio`: RabbitMQ's `key` over postino's (above 1
/// where postino needs less).
fn compared(rows: Vec<Row>, key: &str) -> Vec<Row> {
    let figure = |row: &Row| row.cell(key).parse::<f64>().ok();
    let reference = rows
        .iter()
        .find(|row| row.cell("broker") == "rabbitmq")
        .and_then(figure);
    rows.into_iter()
        .map(
            |row| match (row.cell("broker").as_str(), reference, figure(&row)) {
                ("postino", Some(peer), Some(ours)) if ours > 0.0 => {
                    row.with_rounded("ratio", peer / ours, 2)
                }
                _ => row,
            },
        )
        .collect()
}

/// How long one connection's handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `host:port` and the PLAIN response (`\0user\0password`) of an `amqp://user:password@host:port/…`
/// URI.
fn endpoint(uri: &str) -> Result<(String, Vec<u8>)> {
    let rest = uri
        .strip_prefix("amqp://")
        .with_context(|| format!("{uri} is not an amqp:// URI"))?;
    let (credentials, rest) = rest.split_once('@').unwrap_or(("guest:guest", rest));
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let address = rest.split('/').next().unwrap_or(rest).to_owned();
    Ok((address, format!("\0{user}\0{password}").into_bytes()))
}

/// An idle AMQP connection opened by hand over a real socket: the handshake (PLAIN, heartbeats
/// off, as an idle pooled client may ask) and one open channel. A lapin connection costs the
/// client megabytes, too much for 10,000 of them in one process.
async fn open_idle(address: &str, response: &[u8]) -> Result<TcpStream> {
    let mut socket = TcpStream::connect(address).await?;
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    let frames = [
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: amq_protocol::types::FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
    ];
    for frame in &frames {
        bytes = gen_frame(frame)(WriteContext::from(bytes))
            .map_err(|error| anyhow::anyhow!("serialise {frame:?}: {error:?}"))?
            .into_inner()
            .0;
    }
    socket.write_all(&bytes).await?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            bail!("the broker closed the connection during the handshake");
        }
        received.extend_from_slice(&chunk[..read]);
        while let Ok((rest, frame)) = parse_frame(received.as_slice()) {
            let consumed = received.len() - rest.len();
            match frame {
                AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) => {
                    return Ok(socket);
                }
                AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                ) => {
                    bail!("the broker refused the connection: {}", close.reply_text);
                }
                _ => {}
            }
            received.drain(..consumed);
        }
    }
}

/// Opens `count` idle connections with a channel each, measures the broker's growth, closes
/// them.
async fn idle_connections(target: &Target, count: usize) -> Result<Row> {
    let before = settled_rss(target.pid)?;
    let (address, response) = endpoint(&target.amqp_uri)?;
    let began = Instant::now();
    let mut open = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    for index in 0..count {
        let (address, response, name) = (address.clone(), response.clone(), target.name);
        pending.spawn(async move {
            // A broker out of file descriptors (RabbitMQ's alarm) stops answering handshakes:
            // fail the run rather than wait for ever.
            tokio::time::timeout(HANDSHAKE_TIMEOUT, open_idle(&address, &response))
                .await
                .with_context(|| {
                    format!(
                        "{name} did not open connection {index} of {count} within \
                         {HANDSHAKE_TIMEOUT:?} (is its open-file limit below {count}?)"
                    )
                })?
        });
        // A bounded number of handshakes at once, as a pool of clients would.
        while pending.len() >= 64 {
            if let Some(opened) = pending.join_next().await {
                open.push(opened??);
            }
        }
    }
    while let Some(opened) = pending.join_next().await {
        open.push(opened??);
    }
    let elapsed = began.elapsed();
    let after = settled_rss(target.pid)?;
    drop(open);
    Ok(Row::new("idle_connections")
        .with("broker", target.name)
        .with("count", count)
        .with("ms", elapsed.as_millis() as u64)
        .with_rounded("per_s", count as f64 / elapsed.as_secs_f64(), 0)
        .with_rounded("rss_mb", after as f64 / 1e6, 1)
        .with_rounded(
            "kb_each",
            after.saturating_sub(before) as f64 / 1e3 / count as f64,
            1,
        ))
}

fn queue_name(index: usize) -> String {
    format!("bench.q.{index:06}")
}

/// Declares `count` transient queues, pipelined on one channel.
async fn declare_queues(target: &Target, count: usize) -> Result<Row> {
    let before = settled_rss(target.pid)?;
    let connection = Connection::connect(&target.amqp_uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connect to {}", target.amqp_uri))?;
    let channel = connection.create_channel().await?;
    // Confirm mode makes the broker answer in order; nowait declarations need no answer.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let began = Instant::now();
    let nowait = QueueDeclareOptions {
        nowait: true,
        ..QueueDeclareOptions::default()
    };
    for index in 0..count {
        channel
            .queue_declare(
                queue_name(index).as_str().into(),
                nowait,
                FieldTable::default(),
            )
            .await?;
    }
    // A passive declaration answers only after every earlier one was applied.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            queue_name(count - 1).as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await?;
    let elapsed = began.elapsed();
    connection.close(200, "bye".into()).await?;
    let after = settled_rss(target.pid)?;
    Ok(Row::new("queues")
        .with("broker", target.name)
        .with("count", count)
        .with("ms", elapsed.as_millis() as u64)
        .with_rounded("per_s", count as f64 / elapsed.as_secs_f64(), 0)
        .with_rounded("rss_mb", after as f64 / 1e6, 1)
        .with_rounded(
            "kb_each",
            after.saturating_sub(before) as f64 / 1e3 / count as f64,
            2,
        ))
}

async fn delete_queues(target: &Target, count: usize) -> Result<()> {
    // Heartbeats off: RabbitMQ takes minutes over 100,000 deletions and reads the socket so
    // slowly that lapin's heartbeats wait behind them, and it drops the connection.
    let uri = format!("{}?heartbeat=0", target.amqp_uri);
    let connection = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let nowait = lapin::options::QueueDeleteOptions {
        nowait: true,
        ..lapin::options::QueueDeleteOptions::default()
    };
    for index in 0..count {
        channel
            .queue_delete(queue_name(index).as_str().into(), nowait)
            .await?;
    }
    connection.close(200, "bye".into()).await?;
    Ok(())
}

/// Requests `requests` random pages of 100 queues from the management API.
fn list_pages(target: &Target, queues: usize, requests: usize) -> Result<Row> {
    let Some((base, authorization)) = &target.http else {
        bail!("{} has no management API", target.name);
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let pages = queues.div_ceil(100).max(1);
    let mut latencies = latency_histogram()?;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..requests {
        // xorshift: a spread of pages without a dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let page = (state % pages as u64) + 1;
        let url = format!("{base}/api/queues/%2F?page={page}&page_size=100");
        let began = Instant::now();
        let mut response = agent
            .get(&url)
            .header("authorization", authorization)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let body = response.body_mut().read_to_string()?;
        latencies.record(began.elapsed().as_micros() as u64)?;
        if !body.contains("\"items\"") {
            bail!("GET {url} answered without items: {body:.200}");
        }
    }
    Ok(Row::new("list_page")
        .with("broker", target.name)
        .with("count", requests)
        .with("p50_us", latencies.value_at_quantile(0.5))
        .with("p99_us", latencies.value_at_quantile(0.99)))
}
