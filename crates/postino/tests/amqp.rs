//! The real `postino` binary with lapin: a confirmed persistent message survives a restart of
//! the server.

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_message_survives_a_server_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, address, _lines) = support::start(dir.path());
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
    support::stop(server);

    let (server, address, _lines) = support::start(dir.path());
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
    support::stop(server);
}
