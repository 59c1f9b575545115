//! The connection storm: many connections opening and closing against the AMQP and native-API
//! ports — a third completing the protocol header and reading the server's greeting, a third
//! sending garbage, a third connecting and saying nothing (half-open until dropped) — in waves
//! of `WAVE`. Afterwards the broker must still serve (a confirmed publish and its delivery), and
//! its resident memory must come back near where it was.
//!
//! The held storm keeps thousands open at once: a third open AMQP connections (the whole
//! handshake, no heartbeats), a third silent sockets on the AMQP port, a third HTTP/2
//! connections to the native API (the preface and an empty SETTINGS frame). While they are
//! all open the broker must still serve; the silent ones must be dropped by the server once
//! its handshake timeout passes; and once they all close, memory must come back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw;
use crate::server::Addresses;

/// Connections a held storm opens at once (the rest of it stays open meanwhile).
const HOLD_WAVE: usize = 100;
/// Connections open at once.
const WAVE: usize = 500;
/// How long a storm connection waits for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long a silent connection stays open.
const HALF_OPEN: Duration = Duration::from_secs(1);
/// How long a silent socket may stay open: the server's handshake timeout (10 s) and slack.
const SILENT_DROP_WAIT: Duration = Duration::from_secs(20);
/// How long memory has to come back after the storm.
const SETTLE_WAIT: Duration = Duration::from_secs(30);
/// How far above the baseline resident memory may stay once the storm is over.
const RSS_SLACK_BYTES: u64 = 32 << 20;

/// What a storm measured.
#[derive(Debug)]
pub struct Storm {
    pub connections: usize,
    pub baseline_rss: u64,
    pub peak_rss: u64,
    pub settled_rss: u64,
    pub seconds: f64,
}

impl Storm {
    /// Whether memory came back within the slack.
    pub fn settled(&self) -> bool {
        self.settled_rss <= self.baseline_rss + RSS_SLACK_BYTES
    }
}

/// The resident memory of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read the status of process {pid}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .context("VmRSS in /proc/<pid>/status")?;
    Ok(kib << 10)
}

/// One storm connection of kind `kind` (0: greeting, 1: garbage, 2: silent).
async fn connection(address: String, kind: usize) -> Result<()> {
    let mut socket = TcpStream::connect(&address).await?;
    match kind {
        0 => socket.write_all(raw::HEADER).await?,
        1 => {
            socket
                .write_all(b"GET / HTTP/1.1\r\n\r\n\xff\xfe garbage")
                .await?
        }
        _ => {
            // Half-open: connected, silent, then gone without a word.
            tokio::time::sleep(HALF_OPEN).await;
            return Ok(());
        }
    }
    let mut answer = [0u8; 512];
    // Any answer, or the server closing: both are fine; only the broker's health is judged.
    let _ = tokio::time::timeout(ANSWER_WAIT, socket.read(&mut answer)).await;
    Ok(())
}

/// Runs a storm of `count` connections against `addresses`, watching the server `pid`.
pub async fn run(addresses: &Addresses, pid: u32, count: usize) -> Result<Storm> {
    let baseline_rss = rss_of(pid)?;
    let mut peak_rss = baseline_rss;
    let began = Instant::now();
    let targets = [addresses.amqp.clone(), addresses.grpc.clone()];
    let mut opened = 0;
    while opened < count {
        let wave = WAVE.min(count - opened);
        let mut tasks = Vec::with_capacity(wave);
        for index in opened..opened + wave {
            let address = targets[index % 2].clone();
            tasks.push(tokio::spawn(connection(address, index % 3)));
        }
        // Half-open ones stay open while the wave's others are answered.
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_rss = peak_rss.max(rss_of(pid)?);
        for task in tasks {
            task.await.context("a storm connection")??;
        }
        peak_rss = peak_rss.max(rss_of(pid)?);
        opened += wave;
    }
    let seconds = began.elapsed().as_secs_f64();
    let settle_began = Instant::now();
    let mut settled_rss = rss_of(pid)?;
    while settled_rss > baseline_rss + RSS_SLACK_BYTES && settle_began.elapsed() < SETTLE_WAIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        settled_rss = rss_of(pid)?;
    }
    if rss_of(pid).is_err() {
        bail!("the server died during the storm");
    }
    Ok(Storm {
        connections: count,
        baseline_rss,
        peak_rss,
        settled_rss,
        seconds,
    })
}

/// The client preface of HTTP/2 and an empty SETTINGS frame.
const HTTP2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What a held storm measured.
#[derive(Debug)]
pub struct Held {
    pub connections: usize,
    /// AMQP connections that reached `connection.open-ok`, of those that tried.
    pub amqp_opened: usize,
    pub amqp_tried: usize,
    /// Silent sockets the server dropped after its handshake timeout, of those held.
    pub silent_dropped: usize,
    pub silent: usize,
    pub baseline_rss: u64,
    pub peak_rss: u64,
    pub settled_rss: u64,
    /// Whether a confirmed publish and its delivery went through while all were open.
    pub served_while_held: bool,
}

impl Held {
    pub fn violations(&self) -> u64 {
        u64::from(self.amqp_opened < self.amqp_tried)
            + u64::from(self.silent_dropped < self.silent)
            + u64::from(self.settled_rss > self.baseline_rss + held_slack(self.connections))
            + u64::from(!self.served_while_held)
    }
}

/// How far above the baseline resident memory may stay after `connections` were held at
/// once: glibc's allocator keeps much of what they freed in its per-thread arenas
/// (`malloc_trim` would give it back: `docs/reliability.md`), so the bound grows with them.
fn held_slack(connections: usize) -> u64 {
    RSS_SLACK_BYTES + connections as u64 * HELD_RETAINED_BYTES
}

/// Per held connection, what the allocator may keep once it is gone.
const HELD_RETAINED_BYTES: u64 = 16 << 10;

/// Whether `bytes` hold an AMQP `connection.open-ok` (class 10, method 41).
fn has_open_ok(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|window| window == [0, 10, 0, 41])
}

/// Opens one held connection of kind `kind` (0: AMQP opened, 1: silent, 2: HTTP/2) and answers
/// it with whether an AMQP one reached `open-ok`.
async fn open_held(addresses: &Addresses, kind: usize) -> Result<(TcpStream, bool)> {
    let address = if kind == 2 {
        &addresses.grpc
    } else {
        &addresses.amqp
    };
    let mut socket = TcpStream::connect(address).await?;
    match kind {
        0 => {
            socket.write_all(&raw::handshake(0)).await?;
            let mut received = Vec::new();
            let mut chunk = [0u8; 1024];
            let opened = tokio::time::timeout(ANSWER_WAIT, async {
                while !has_open_ok(&received) {
                    let read = socket.read(&mut chunk).await?;
                    if read == 0 {
                        return anyhow::Ok(false);
                    }
                    received.extend_from_slice(&chunk[..read]);
                }
                anyhow::Ok(true)
            })
            .await
            .unwrap_or(Ok(false))?;
            return Ok((socket, opened));
        }
        2 => socket.write_all(HTTP2_PREFACE).await?,
        _ => {}
    }
    Ok((socket, false))
}

/// Holds `count` connections open at once against `addresses`, watching the server `pid`;
/// `serve` is the round trip that must go through meanwhile.
pub async fn hold<F>(addresses: &Addresses, pid: u32, count: usize, serve: F) -> Result<Held>
where
    F: std::future::Future<Output = Result<()>>,
{
    let baseline_rss = rss_of(pid)?;
    let mut held = Vec::with_capacity(count);
    let (mut amqp_tried, mut amqp_opened) = (0, 0);
    for start in (0..count).step_by(HOLD_WAVE) {
        let opening: Vec<_> = (start..count.min(start + HOLD_WAVE))
            .map(|index| {
                let addresses = addresses.clone();
                tokio::spawn(async move { (index % 3, open_held(&addresses, index % 3).await) })
            })
            .collect();
        for task in opening {
            let (kind, opened) = task.await.context("a held connection")?;
            let (socket, opened) = opened.context("open a held connection")?;
            if kind == 0 {
                amqp_tried += 1;
                amqp_opened += usize::from(opened);
            }
            held.push((kind, socket));
        }
    }
    let peak_rss = rss_of(pid)?;
    let served_while_held = serve.await.is_ok();
    // The silent ones: the server drops them once its handshake timeout has passed. They are
    // watched all at once, so the wait is one timeout, not one per socket.
    let (silent_sockets, held): (Vec<_>, Vec<_>) =
        held.into_iter().partition(|(kind, _)| *kind == 1);
    let silent = silent_sockets.len();
    let deadline = tokio::time::Instant::now() + SILENT_DROP_WAIT;
    let watching: Vec<_> = silent_sockets
        .into_iter()
        .map(|(_, mut socket)| {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                let closed = tokio::time::timeout_at(deadline, socket.read(&mut byte)).await;
                matches!(closed, Ok(Ok(0) | Err(_)))
            })
        })
        .collect();
    let mut silent_dropped = 0;
    for watch in watching {
        silent_dropped += usize::from(watch.await.context("a silent socket's watch")?);
    }
    let peak_rss = peak_rss.max(rss_of(pid)?);
    drop(held);
    let settle_began = Instant::now();
    let mut settled_rss = rss_of(pid)?;
    while settled_rss > baseline_rss + held_slack(count) && settle_began.elapsed() < SETTLE_WAIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
        settled_rss = rss_of(pid)?;
    }
    Ok(Held {
        connections: count,
        amqp_opened,
        amqp_tried,
        silent_dropped,
        silent,
        baseline_rss,
        peak_rss,
        settled_rss,
        served_while_held,
    })
}
