//! The six RabbitMQ tutorials with pika (Python, installed by `.ci/run`) against the real
//! `postino` binary: a second client library besides lapin.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn the_rabbitmq_tutorials_run_with_pika() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args(["server", "--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("POSTINO_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let line = lines
        .by_ref()
        .map(|line| line.expect("log line"))
        .find(|line| line.contains("listening protocol=amqp"))
        .expect("the server announces its AMQP listener");
    let port = line.rsplit(':').next().expect("a port").trim().to_owned();
    let drain = std::thread::spawn(move || lines.for_each(drop));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_tutorials.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&port)
        .output()
        .expect("run python3 (installed with pika by .ci/run)");
    let pid = rustix::process::Pid::from_raw(server.id() as i32).expect("a child pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert_eq!(server.wait().expect("exit").code(), Some(0));
    drain.join().expect("log reader");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("6 tutorials passed"), "{stdout}");
}
