//! The Rust client (`postino-client`) against the real `postino` binary: the seed calls over
//! a server's socket, and a client riding out a server killed with SIGKILL and restarted on
//! the same address — its put waits (retrying with backoff) and lands, and what was
//! confirmed before the kill is still there.

mod support;

use std::time::Duration;

use postino_client::{Client, Message, Start};

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

fn kill(server: &mut std::process::Child) {
    server.kill().expect("SIGKILL");
    server.wait().expect("exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_waits_out_a_killed_server_and_loses_nothing_confirmed() {
    let dir = tempfile::tempdir().expect("dir");
    let address = free_address();
    let protocols = ["amqp", "http", "grpc"];
    let mut server = support::start_with_grpc_at(dir.path(), &[], &protocols, &address);
    let lines = server.lines;
    std::thread::spawn(move || lines.for_each(drop));
    let client = Client::connect(&format!("http://{address}"))
        .await
        .expect("connect");
    let jobs = client.queue("jobs");
    jobs.declare().await.expect("declare");
    jobs.put(Message::new("before").header("n", 1))
        .await
        .expect("put");
    let clicks = client.stream("clicks");
    clicks.declare(1).await.expect("declare a stream");
    let (_, offset) = clicks.produce(Some(b"k"), "click").await.expect("produce");

    kill(&mut server.child);
    let during = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.put("during").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!during.is_finished(), "the put waits for the server");
    let restarted = support::start_with_grpc_at(dir.path(), &[], &protocols, &address);
    let lines = restarted.lines;
    std::thread::spawn(move || lines.for_each(drop));
    during
        .await
        .expect("task")
        .expect("the put lands after the restart");

    let mut bodies = Vec::new();
    while let Some(job) = jobs.poll().await.expect("poll") {
        bodies.push(job.message().text().unwrap_or_default().to_owned());
        job.ack().await.expect("ack");
    }
    assert_eq!(bodies, ["before", "during"]);
    let records = clicks
        .fetch(0, Start::Offset(offset), 10)
        .await
        .expect("fetch");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
    support::stop(restarted.child);
}
