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
    pub lines: Lines<BufReader<ChildStderr>>,
}

/// Starts the server with AMQP and HTTP on temporary loopback ports.
pub fn start_server(data_dir: &Path, environment: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args([
            "server",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .envs(environment.iter().copied())
        .env_remove("POSTINO_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let (mut amqp, mut http) = (None, None);
    while amqp.is_none() || http.is_none() {
        let line = lines
            .next()
            .expect("the server announces its listeners")
            .expect("log line");
        let address = || {
            line.rsplit("addr=")
                .next()
                .expect("an address")
                .trim()
                .to_owned()
        };
        if line.contains("listening protocol=amqp") {
            amqp = Some(address());
        } else if line.contains("listening protocol=http") {
            http = Some(address());
        }
    }
    Server {
        child,
        amqp: amqp.unwrap_or_default(),
        http: http.unwrap_or_default(),
        lines,
    }
}

/// Stops the server with SIGTERM and checks it exits cleanly.
pub fn stop(mut server: Child) {
    let pid = rustix::process::Pid::from_raw(server.id() as i32).expect("a child pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert_eq!(server.wait().expect("exit").code(), Some(0));
}
