//! `postino publish` and `postino consume` against the real server over its native API:
//! messages from arguments and stdin, headers and properties carried, JSON lines, a filtered
//! consumer, a subscription, acknowledgement modes, exit codes for bad input, and streams
//! (keyed records, reading from an offset, a consumer group resuming at its commit).

mod support;

use std::io::{BufRead, Write};
use std::process::{Command, Output, Stdio};

fn postino(grpc: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postino"));
    command
        .env("POSTINO_SERVER", grpc)
        .env_remove("POSTINO_USER");
    command
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8")
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect()
}

/// Starts the server with its native API; it, the API's address and the management URL.
fn start(dir: &std::path::Path) -> (std::process::Child, String, String) {
    let server = support::start_listening(dir, &[], &["amqp", "http", "grpc"]);
    let grpc = server.addresses["grpc"].clone();
    let lines = server.lines;
    std::thread::spawn(move || lines.for_each(drop));
    (server.child, grpc, format!("http://{}", server.http))
}

#[test]
fn publish_then_consume_a_queue_with_headers_properties_and_filters() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, grpc, api) = start(dir.path());
    let declared = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args(["--url", &api, "queues", "declare", "orders"])
        .output()
        .expect("declare");
    succeeded(&declared);

    let published = postino(&grpc)
        .args(["publish", "--queue", "orders", "--confirm", "--persistent"])
        .args(["--header", "country=IT", "--header", "amount=50"])
        .args([
            "--property",
            "priority=3",
            "--property",
            "content_type=text/plain",
        ])
        .args(["first", "second"])
        .output()
        .expect("publish");
    succeeded(&published);
    let mut from_stdin = postino(&grpc)
        .args(["publish", "--queue", "orders", "--header", "country=FR"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("publish from stdin");
    from_stdin
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"third\nfourth\n")
        .expect("write");
    succeeded(&from_stdin.wait_with_output().expect("publish"));

    // A filtered consumer takes the French ones, past the Italian head, and acknowledges them.
    let french = postino(&grpc)
        .args([
            "--json",
            "consume",
            "--queue",
            "orders",
            "--filter",
            "country = 'FR'",
        ])
        .args(["--count", "2", "--timeout", "5"])
        .output()
        .expect("consume");
    let rows = json_lines(&succeeded(&french));
    let bodies: Vec<&str> = rows.iter().filter_map(|row| row["body"].as_str()).collect();
    assert_eq!(bodies, ["third", "fourth"]);

    // manual: printed, never acknowledged, so still there afterwards.
    let look = postino(&grpc)
        .args(["--json", "consume", "--queue", "orders", "--ack", "manual"])
        .args(["--count", "1", "--timeout", "5"])
        .output()
        .expect("consume");
    let row = &json_lines(&succeeded(&look))[0];
    assert_eq!(row["body"], "first");
    assert_eq!(row["headers"]["country"], "IT");
    assert_eq!(row["headers"]["amount"], 50, "an integer header stays one");
    assert_eq!(row["properties"]["priority"], 3);
    assert_eq!(row["properties"]["content_type"], "text/plain");
    assert_eq!(row["properties"]["persistent"], true);
    assert_eq!(row["queue"], "orders");

    // auto: both Italian ones, the first marked redelivered; then the queue is empty and the
    // timeout ends the command.
    let rest = postino(&grpc)
        .args(["--json", "consume", "--queue", "orders", "--timeout", "1"])
        .output()
        .expect("consume");
    let rows = json_lines(&succeeded(&rest));
    let bodies: Vec<&str> = rows.iter().filter_map(|row| row["body"].as_str()).collect();
    assert_eq!(bodies, ["first", "second"]);
    assert_eq!(rows[0]["redelivered"], true);
    let empty = postino(&grpc)
        .args(["consume", "--queue", "orders", "--timeout", "0.5"])
        .output()
        .expect("consume");
    assert_eq!(succeeded(&empty), "", "nothing left");

    // A subscription with a filter sees what is published to its exchange after it began.
    let mut subscriber = postino(&grpc)
        .args([
            "consume",
            "--subscribe",
            "amount > 10",
            "--count",
            "1",
            "--timeout",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("subscribe");
    let mut announced = String::new();
    std::io::BufReader::new(subscriber.stderr.take().expect("stderr"))
        .read_line(&mut announced)
        .expect("the subscriber announces itself");
    assert!(announced.contains("subscribed, handle"), "{announced}");
    for amount in ["5", "20"] {
        let published = postino(&grpc)
            .args([
                "publish",
                "--exchange",
                "amq.topic",
                "--routing-key",
                "orders.new",
            ])
            .args([
                "--header",
                &format!("amount={amount}"),
                &format!("amount {amount}"),
            ])
            .output()
            .expect("publish");
        succeeded(&published);
    }
    let got = subscriber.wait_with_output().expect("the subscriber ends");
    assert_eq!(succeeded(&got), "amount 20\n");

    // Bad input: usage errors exit 2, a refusal by the server 1.
    let bad_filter = postino(&grpc)
        .args(["consume", "--queue", "orders", "--filter", "country ="])
        .args(["--timeout", "1"])
        .output()
        .expect("consume");
    assert_eq!(bad_filter.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_filter.stderr).contains("position"));
    let missing = postino(&grpc)
        .args(["publish", "--queue", "nowhere", "x"])
        .output()
        .expect("publish");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    for args in [
        vec!["publish", "x"],
        vec![
            "publish",
            "--queue",
            "orders",
            "--property",
            "colour=red",
            "x",
        ],
        vec!["publish", "--queue", "orders", "--header", "nothing", "x"],
        vec!["consume", "--queue", "orders", "--timeout", "-1"],
    ] {
        let output = postino(&grpc).args(&args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
    let unreachable = postino("127.0.0.1:1")
        .args(["publish", "--queue", "orders", "x"])
        .output()
        .expect("publish");
    assert_eq!(unreachable.status.code(), Some(1));
    support::stop(server);
}

#[test]
fn publish_to_a_stream_then_follow_it_from_offsets_and_in_a_group() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, grpc, api) = start(dir.path());
    let declared = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args(["--url", &api, "queues", "declare", "clicks"])
        .args(["--argument", "x-queue-type=stream"])
        .output()
        .expect("declare");
    succeeded(&declared);
    let published = postino(&grpc)
        .args([
            "publish",
            "--stream",
            "clicks",
            "--key",
            "user-1",
            "--confirm",
        ])
        .args(["home", "cart", "pay"])
        .output()
        .expect("publish");
    succeeded(&published);

    let consume = |arguments: &[&str]| {
        let output = postino(&grpc)
            .args(["--json", "consume", "--stream", "clicks"])
            .args(arguments)
            .args(["--timeout", "10"])
            .output()
            .expect("consume");
        json_lines(&succeeded(&output))
    };
    let all = consume(&["--from", "earliest", "--count", "3"]);
    let offsets: Vec<u64> = all
        .iter()
        .filter_map(|row| row["offset"].as_u64())
        .collect();
    let bodies: Vec<&str> = all.iter().filter_map(|row| row["body"].as_str()).collect();
    assert_eq!(offsets, [0, 1, 2]);
    assert_eq!(bodies, ["home", "cart", "pay"]);
    assert_eq!(all[0]["key"], "user-1");
    assert_eq!(all[0]["stream"], "clicks");
    let from_one = consume(&["--from", "1", "--count", "1"]);
    assert_eq!(from_one[0]["body"], "cart");

    // A group reads two and commits them; its next run goes on at the third.
    let first = consume(&["--group", "billing", "--from", "earliest", "--count", "2"]);
    let bodies: Vec<&str> = first
        .iter()
        .filter_map(|row| row["body"].as_str())
        .collect();
    assert_eq!(bodies, ["home", "cart"]);
    let resumed = consume(&["--group", "billing", "--from", "earliest", "--count", "1"]);
    assert_eq!(resumed[0]["offset"], 2);
    assert_eq!(resumed[0]["body"], "pay");
    support::stop(server);
}
