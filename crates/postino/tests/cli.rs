//! The `postino` binary as a user runs it: server start and stop, exit codes, the
//! benchmarks' output.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn postino() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postino"))
}

/// Runs `postino bench <target> --quick --json --dir <dir> <extra>`, checks it succeeded, and
/// returns its rows and its stderr.
fn bench_json(target: &str, dir: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, String) {
    let output = postino()
        .args(["bench", target, "--quick", "--json", "--dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("run the benchmark");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let rows = String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    (rows, stderr)
}

#[test]
fn server_opens_its_data_directory_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let data_dir = dir.path().join("data");
    let mut server = postino()
        .args([
            "server",
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--grpc-listen",
            "off",
            "--data-dir",
        ])
        .arg(&data_dir)
        .env_remove("POSTINO_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let ready = lines
        .by_ref()
        .map(|line| line.expect("log line"))
        .find(|line| line.contains("data directory ready"))
        .expect("the server logs where its data is");
    let canonical = std::fs::canonicalize(&data_dir).expect("data directory exists");
    assert!(
        ready.contains(&format!("path={}", canonical.display())),
        "{ready}"
    );

    let second = postino()
        .args([
            "server",
            "--amqp-listen",
            "off",
            "--http-listen",
            "off",
            "--grpc-listen",
            "off",
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .expect("run a second server");
    assert_eq!(
        second.status.code(),
        Some(1),
        "a second server on the same directory fails"
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another postino"));

    let pid = rustix::process::Pid::from_raw(server.id() as i32).expect("a child pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
    let rest: Vec<String> = lines.map(|line| line.expect("log line")).collect();
    assert!(
        rest.iter().any(|line| line.contains("signal=\"SIGTERM\"")),
        "{rest:?}"
    );
    assert_eq!(server.wait().expect("exit").code(), Some(0));
}

#[test]
fn bad_usage_exits_with_code_two() {
    let unknown = postino()
        .args(["server", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(unknown.status.code(), Some(2));
    let format = postino()
        .args(["server", "--log-format", "xml"])
        .output()
        .expect("run");
    assert_eq!(format.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&format.stderr).contains("--log-format"));
    let listen = postino()
        .args(["server", "--amqp-listen", "nowhere"])
        .output()
        .expect("run");
    assert_eq!(listen.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&listen.stderr).contains("--amqp-listen"));
}

#[test]
fn print_config_shows_each_layer_and_bad_settings_exit_with_code_two() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("postino.toml");
    std::fs::write(&file, "[amqp]\nheartbeat_s = 10\nframe_max = 65536\n").expect("write");
    let printed = postino()
        .args([
            "server",
            "--print-config",
            "--data-dir",
            "/srv/flag",
            "--config",
        ])
        .arg(&file)
        .env("POSTINO_AMQP_FRAME_MAX", "32768")
        .output()
        .expect("run");
    assert!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8(printed.stdout).expect("utf-8");
    assert!(
        text.contains("data_dir = \"/srv/flag\"  # flag --data-dir"),
        "{text}"
    );
    assert!(
        text.contains("frame_max = 32768  # environment POSTINO_AMQP_FRAME_MAX"),
        "{text}"
    );
    assert!(
        text.contains(&format!("heartbeat_s = 10  # file {}", file.display())),
        "{text}"
    );
    assert!(
        text.contains("listen = \"0.0.0.0:5672\"  # default"),
        "{text}"
    );

    std::fs::write(&file, "[storage]\ndurabilty = \"none\"\n").expect("write");
    let unknown = postino()
        .args(["server", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("unknown key storage.durabilty"), "{stderr}");

    let range = postino()
        .args(["server", "--amqp-listen", "off"])
        .env("POSTINO_AMQP_CHANNEL_MAX", "70000")
        .output()
        .expect("run");
    assert_eq!(range.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&range.stderr);
    assert!(
        stderr.contains("amqp.channel_max (environment POSTINO_AMQP_CHANNEL_MAX)"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let output = postino()
        .args([
            "server",
            "--amqp-listen",
            &address.to_string(),
            "--http-listen",
            "off",
            "--grpc-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("port {} is already in use", address.port())),
        "{stderr}"
    );
}

#[test]
fn sim_rumor_prints_the_same_rows_for_the_same_seed_and_names_bad_parameters() {
    let sim = |seed: &str| {
        let output = postino()
            .args([
                "sim", "rumor", "--k", "1..3", "--nodes", "2000", "--runs", "2", "--json",
            ])
            .args(["--seed", seed])
            .output()
            .expect("run the simulator");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let first = sim("5");
    assert_eq!(first, sim("5"), "a seed repeats a run");
    let rows: Vec<serde_json::Value> = first
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 3);
    for (row, k) in rows.iter().zip(1..) {
        assert_eq!(row["k"], k);
        for field in ["residue", "residue_analytic", "traffic", "t_ave", "t_last"] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
    }
    let anti_entropy = postino()
        .args([
            "sim",
            "anti-entropy",
            "--nodes",
            "500",
            "--runs",
            "2",
            "--json",
        ])
        .output()
        .expect("run the simulator");
    let modes: Vec<serde_json::Value> = String::from_utf8(anti_entropy.stdout)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let names: Vec<&str> = modes
        .iter()
        .filter_map(|row| row["mode"].as_str())
        .collect();
    assert_eq!(names, ["push", "pull", "push-pull"]);
    let bad = postino()
        .args(["sim", "rumor", "--variant", "shouting"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("variant"));
}

#[test]
fn sim_runs_any_scenario_over_any_network_model_and_names_bad_ones() {
    let rough = [
        "--graph",
        "barabasi-albert",
        "--degree",
        "4",
        "--loss",
        "0.1",
        "--crash",
        "0.05",
        "--delivery",
        "events",
    ];
    for scenario in [
        "rumor",
        "anti-entropy",
        "broadcast",
        "aggregate",
        "death-certificates",
        "pbcast",
        "sampling",
    ] {
        let output = postino()
            .args(["sim", scenario, "--nodes", "300", "--runs", "1", "--json"])
            .args(rough)
            .output()
            .expect("run the simulator");
        assert!(
            output.status.success(),
            "{scenario}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let row: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("a row")).expect("JSON");
        assert_eq!(
            row["network"], "barabasi-albert(4) loss 0.1 crash 0.05 events",
            "{scenario}: {row}"
        );
    }
    for (flag, value) in [
        ("--loss", "1.5"),
        ("--crash", "1"),
        ("--degree", "3"),
        ("--graph", "ring"),
        ("--delivery", "carrier-pigeon"),
    ] {
        let mut args = vec!["sim", "broadcast", "--nodes", "100", flag, value];
        if flag == "--degree" {
            args.extend(["--graph", "barabasi-albert"]);
        }
        let output = postino().args(&args).output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        let name = flag.trim_start_matches("--");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(name),
            "{flag}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn sim_bench_measures_every_table_in_its_own_process() {
    let dir = tempfile::tempdir().expect("dir");
    let (rows, _) = bench_json("sim", dir.path(), &[]);
    assert_eq!(rows.len(), 16, "eight tables at 1,000 and 10,000 nodes");
    for row in &rows {
        for field in ["seconds", "node_rounds_per_s", "peak_bytes_per_node"] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
        assert!(
            row["node_rounds_per_s"]
                .as_f64()
                .is_some_and(|rate| rate > 0.0)
        );
    }
}

#[test]
fn grpc_bench_measures_every_scenario_over_a_server_it_starts() {
    let dir = tempfile::tempdir().expect("dir");
    let (rows, _) = bench_json("grpc", dir.path(), &[]);
    let scenarios: Vec<&str> = rows
        .iter()
        .filter_map(|row| row["scenario"].as_str())
        .collect();
    assert_eq!(
        scenarios,
        [
            "filter",
            "filter",
            "embedded-put",
            "embedded-put",
            "embedded-notify",
            "embedded-notify",
            "put",
            "put",
            "put-pipelined",
            "put-pipelined",
            "notify",
            "notify",
            "pubsub",
            "pubsub"
        ]
    );
    for row in &rows {
        assert!(
            row["msgs_per_s"].as_f64().is_some_and(|rate| rate > 0.0),
            "{row}"
        );
        let messages = row["messages"].as_u64().expect("messages");
        assert!(messages > 0, "{row}");
        if row["scenario"] != "filter" {
            assert!(row["broker_cpu_s_per_m"].is_number(), "{row}");
        }
    }
    let notify: u64 = rows
        .iter()
        .filter(|row| row["scenario"] == "notify")
        .map(|row| row["messages"].as_u64().expect("messages"))
        .sum();
    let put: u64 = rows
        .iter()
        .filter(|row| {
            row["scenario"]
                .as_str()
                .is_some_and(|name| name.starts_with("put"))
        })
        .map(|row| row["messages"].as_u64().expect("messages"))
        .sum();
    assert_eq!(notify, put, "notify drains what the puts stored");
    let embedded = |scenario: &str| -> u64 {
        rows.iter()
            .filter(|row| row["scenario"] == scenario)
            .map(|row| row["messages"].as_u64().expect("messages"))
            .sum()
    };
    assert_eq!(
        embedded("embedded-notify"),
        embedded("embedded-put"),
        "the embedded notify drains what the embedded puts stored"
    );
}

#[test]
fn storage_bench_prints_one_json_object_per_scenario() {
    let dir = tempfile::tempdir().expect("dir");
    let (rows, _) = bench_json("storage", dir.path(), &[]);
    let appends: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|row| row["scenario"] == "append")
        .collect();
    assert_eq!(appends.len(), 27, "3 policies x 3 sizes x 3 batch sizes");
    for row in &appends {
        for field in [
            "msg_size",
            "msgs_per_s",
            "mb_per_s",
            "p50_us",
            "p99_us",
            "p999_us",
            "ceiling_mb_per_s",
            "ratio",
        ] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
        assert!(row["msgs_per_s"].as_f64().expect("number") > 0.0);
    }
    for scenario in ["read_cold", "recover_cold"] {
        let row = rows
            .iter()
            .find(|row| row["scenario"] == scenario)
            .expect(scenario);
        assert!(row["ratio"].as_f64().expect("ratio") > 0.0, "{row}");
    }
    let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
    assert_eq!(leftovers, 0, "the benchmark cleans up its scratch data");
}

#[test]
fn core_bench_prints_every_scenario() {
    let dir = tempfile::tempdir().expect("dir");
    let (rows, _) = bench_json("core", dir.path(), &[]);
    let pipelines: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|row| row["scenario"] == "pipeline")
        .collect();
    assert_eq!(
        pipelines.len(),
        8,
        "durable and transient x 16 B and 1 KB x 1 and 4 consumers"
    );
    for row in &pipelines {
        for field in [
            "msgs_per_s",
            "p50_us",
            "p99_us",
            "cpu_us_per_msg",
            "ceiling_msgs_per_s",
            "ratio",
        ] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
    }
    for scenario in ["fanout", "backlog", "backlog_delayed"] {
        assert!(
            rows.iter().any(|row| row["scenario"] == scenario),
            "{scenario} missing"
        );
    }
    let delayed = rows
        .iter()
        .find(|row| row["scenario"] == "backlog_delayed")
        .expect("delayed");
    assert_eq!(
        delayed["delayed"], 20_000,
        "every message waits in the delay index"
    );
}

#[test]
fn stream_bench_prints_every_scenario_with_its_ceiling() {
    let dir = tempfile::tempdir().expect("dir");
    let (rows, _) = bench_json("stream", dir.path(), &[]);
    let count = |scenario: &str| {
        rows.iter()
            .filter(|row| row["scenario"] == scenario)
            .count()
    };
    assert_eq!(
        count("produce/fsync"),
        4,
        "100 B and 1 KB x 1 and 8 partitions"
    );
    assert_eq!(count("produce/none"), 4);
    assert_eq!(count("consume"), 4);
    assert_eq!(count("idempotent"), 2);
    assert_eq!(count("transactional"), 2);
    assert_eq!(
        count("group"),
        2,
        "4 members on 8 partitions, 100 B and 1 KB"
    );
    for row in &rows {
        for field in [
            "msgs_per_s",
            "mb_per_s",
            "cpu_us_per_msg",
            "ceiling_msgs_per_s",
            "ratio",
        ] {
            assert!(
                row[field].as_f64().is_some_and(|value| value > 0.0),
                "{field} missing in {row}"
            );
        }
    }
}

#[test]
fn amqp_bench_runs_every_scenario_against_the_server_it_starts() {
    let dir = tempfile::tempdir().expect("dir");
    let (rows, stderr) = bench_json(
        "amqp",
        dir.path(),
        &["--peer-uri", "amqp://guest:guest@127.0.0.1:1/%2f"],
    );
    assert!(
        stderr.contains("RabbitMQ is not reachable"),
        "a missing reference is said, not hidden"
    );
    let mut seen = Vec::new();
    for row in &rows {
        assert_eq!(row["broker"], "postino", "{row}");
        for field in [
            "msgs_per_s",
            "p50_us",
            "p99_us",
            "p999_us",
            "broker_cpu_s_per_m",
        ] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
        assert_eq!(
            row["latency_at_msgs_per_s"].is_number(),
            row["scenario"] != "rpc",
            "latencies of a fixed-rate run, except rpc's round trips: {row}"
        );
        let messages = row["messages"].as_u64().expect("messages");
        let expected = if row["scenario"] == "rpc" { 200 } else { 2_000 };
        assert_eq!(messages, expected, "every message arrived: {row}");
        seen.push(format!(
            "{}/{}",
            row["scenario"].as_str().expect("name"),
            row["msg_size"]
        ));
    }
    assert_eq!(
        seen,
        [
            "confirms/16",
            "confirms/1024",
            "transient/16",
            "transient/1024",
            "fanout/16",
            "fanout/1024",
            "rpc/16",
            "rpc/1024"
        ]
    );
    let leftovers = std::fs::read_dir(dir.path()).expect("list").count();
    assert_eq!(leftovers, 0, "the benchmark cleans up its scratch data");
}
