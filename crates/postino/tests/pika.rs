//! The six RabbitMQ tutorials with pika (Python, installed by `.ci/run`) against the real
//! `postino` binary: a second client library besides lapin.

mod support;

use std::process::Command;

#[test]
fn the_rabbitmq_tutorials_run_with_pika() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, address, lines) = support::start(dir.path());
    let port = address.rsplit(':').next().expect("a port").to_owned();
    let drain = std::thread::spawn(move || lines.for_each(drop));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_tutorials.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(&port)
        .output()
        .expect("run python3 (installed with pika by .ci/run)");
    support::stop(server);
    drain.join().expect("log reader");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("6 tutorials passed"), "{stdout}");
}
