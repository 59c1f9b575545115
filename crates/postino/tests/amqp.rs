//! The real `postino` binary with lapin: a confirmed persistent message survives a restart of
//! the server.

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

/// Starts the server on a temporary port; returns it, its AMQP address and its log lines.
fn start(data_dir: &Path) -> (Child, String, Lines<BufReader<ChildStderr>>) {
    let mut server = Command::new(env!("CARGO_BIN_EXE_postino"))
        .args(["server", "--amqp-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
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
    let address = line
        .rsplit("addr=")
        .next()
        .expect("an address")
        .trim()
        .to_owned();
    (server, address, lines)
}

fn stop(mut server: Child) {
    let pid = rustix::process::Pid::from_raw(server.id() as i32).expect("a child pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert_eq!(server.wait().expect("exit").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_message_survives_a_server_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, address, _lines) = start(dir.path());
    let uri = format!("amqp://guest:guest@{address}/%2f");
    {
        let connection = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare("orders".into(), durable, FieldTable::default())
            .await
            .expect("declare");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirmation = channel
            .basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                b"order 1",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(matches!(confirmation, Confirmation::Ack(None)));
        connection.close(200, "bye".into()).await.expect("close");
    }
    stop(server);

    let (server, address, _lines) = start(dir.path());
    let uri = format!("amqp://guest:guest@{address}/%2f");
    let connection = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut consumer = channel
        .basic_consume(
            "orders".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the durable queue is back");
    let delivery = consumer.next().await.expect("a delivery").expect("ok");
    assert_eq!(delivery.data, b"order 1");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    connection.close(200, "bye".into()).await.expect("close");
    stop(server);
}
