//! The real `postino` binary with lapin: a confirmed persistent message survives a restart of
//! the server; the configured default user is the one that logs in.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_default_user_logs_in_and_guest_does_not() {
    let dir = tempfile::tempdir().expect("dir");
    let (server, address, _lines) = support::start_with(
        dir.path(),
        &[
            ("POSTINO_AUTH_DEFAULT_USER", "admin"),
            ("POSTINO_AUTH_DEFAULT_PASSWORD", "correct horse"),
        ],
    );
    let connection = Connection::connect(
        &format!("amqp://admin:correct%20horse@{address}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("the configured default user logs in");
    connection.close(200, "bye".into()).await.expect("close");
    let guest = Connection::connect(
        &format!("amqp://guest:guest@{address}/%2f"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(
        guest.is_err(),
        "guest exists only when it is the default user"
    );
    support::stop(server);
    let saved = std::fs::read_to_string(dir.path().join("users.json")).expect("users saved");
    assert!(
        saved.contains("\"admin\"") && !saved.contains("correct horse"),
        "{saved}"
    );
}

/// A client login's outcome as lapin reports it: the error text when refused.
async fn login(address: &str, password: &str) -> Result<(), String> {
    let uri = format!("amqp://guest:{password}@{address}/%2f");
    match Connection::connect(&uri, ConnectionProperties::default()).await {
        Ok(connection) => connection
            .close(200, "bye".into())
            .await
            .map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_fails_too_many_logins_is_refused_over_amqp_and_http() {
    let dir = tempfile::tempdir().expect("dir");
    let server = support::start_server(
        dir.path(),
        &[
            ("POSTINO_AUTH_FAILED_LOGINS_MAX", "2"),
            ("POSTINO_AUTH_FAILED_LOGINS_WINDOW_MS", "600000"),
        ],
    );
    login(&server.amqp, "guest")
        .await
        .expect("the right password logs in");
    for _ in 0..2 {
        let refused = login(&server.amqp, "wrong")
            .await
            .expect_err("a wrong password");
        assert!(refused.contains("login refused"), "{refused}");
    }
    let blocked = login(&server.amqp, "guest")
        .await
        .expect_err("the address is over its limit");
    assert!(blocked.contains("too many failed logins"), "{blocked}");

    let http = server.http.clone();
    let (status, retry_after) = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .get(format!("http://{http}/api/overview"))
            .header("authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .call()
            .expect("an answer");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        (response.status().as_u16(), retry_after)
    })
    .await
    .expect("the request ran");
    assert_eq!(status, 429, "the same address is refused over HTTP");
    assert!(retry_after.is_some_and(|seconds| seconds > 0 && seconds <= 600));
    support::stop(server.child);
}
