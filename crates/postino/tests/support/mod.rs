//! The real `postino` binary as tests start and stop it.

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// Starts the server on a temporary port; returns it, its AMQP address and its log lines.
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub fn start(data_dir: &Path) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    start_with(data_dir, &[])
}

/// [`start`] with environment variables set for the server.
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub fn start_with(
    data_dir: &Path,
    environment: &[(&str, &str)],
) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let server = start_server(data_dir, environment);
    (server.child, server.amqp, server.lines)
}

/// A running server and where it listens.
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub struct Server {
    pub child: Child,
    pub amqp: String,
    pub http: String,
    /// Every listener's address by protocol (`amqp`, `amqps`, `http`, `https`).
    pub addresses: std::collections::BTreeMap<String, String>,
    pub lines: Lines<BufReader<ChildStderr>>,
}

/// Starts the server with AMQP and HTTP on temporary loopback ports.
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub fn start_server(data_dir: &Path, environment: &[(&str, &str)]) -> Server {
    start_listening(data_dir, environment, &["amqp", "http"])
}

#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
/// Starts the server with AMQP and HTTP on temporary loopback ports, and waits until the
/// listeners of every protocol in `protocols` are announced.
pub fn start_listening(
    data_dir: &Path,
    environment: &[(&str, &str)],
    protocols: &[&str],
) -> Server {
    start_with_grpc_at(data_dir, environment, protocols, "127.0.0.1:0")
}

/// [`start_listening`] with the native API on `grpc` (to restart a server where clients
/// connected).
#[allow(dead_code, reason = "each test binary uses the helpers it needs")]
pub fn start_with_grpc_at(
    data_dir: &Path,
    environment: &[(&str, &str)],
    protocols: &[&str],
    grpc: &str,
) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args([
            "server",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            grpc,
            "--data-dir",
        ])
        .arg(data_dir)
        .envs(environment.iter().copied())
        .env_remove("POSTINO_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut addresses = std::collections::BTreeMap::new();
    while !protocols
        .iter()
        .all(|protocol| addresses.contains_key(*protocol))
    {
        let line = lines
            .next()
            .expect("the server announces its listeners")
            .expect("log line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .map(str::to_owned)
        };
        if line.contains("listening")
            && let (Some(protocol), Some(address)) = (field("protocol="), field("addr="))
        {
            addresses.insert(protocol, address);
        }
    }
    Server {
        child,
        amqp: addresses.get("amqp").cloned().unwrap_or_default(),
        http: addresses.get("http").cloned().unwrap_or_default(),
        addresses,
        lines,
    }
}

/// Stops the server with SIGTERM and checks it exits cleanly.
pub fn stop(mut server: Child) {
    let pid = rustix::process::Pid::from_raw(server.id() as i32).expect("a child pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert_eq!(server.wait().expect("exit").code(), Some(0));
}
