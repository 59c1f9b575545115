//! The connection storm: many connections opening and closing against the AMQP and native-API
//! ports — a third completing the protocol header and reading the server's greeting, a third
//! sending garbage, a third connecting and saying nothing (half-open until dropped) — in waves
//! of `WAVE`. Afterwards the broker must still serve (a confirmed publish and its delivery), and
//! its resident memory must come back near where it was.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::Addresses;

/// Connections open at once.
const WAVE: usize = 500;
/// How long a storm connection waits for the server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long a silent connection stays open.
const HALF_OPEN: Duration = Duration::from_secs(1);
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
        0 => socket.write_all(b"AMQP\x00\x00\x09\x01").await?,
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
