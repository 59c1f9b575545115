//! Users and permissions as a RabbitMQ client meets them, with lapin over a real socket: logins
//! against the broker's users, `connection.open` refused on a host without permissions, and
//! every resource operation checked against the user's configure / write / read patterns.

mod support;

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use support::{connect, start, with_queue};

fn refused(error: &lapin::Error) -> bool {
    format!("{error:?}").contains("ACCESSREFUSED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_checked_against_the_broker_users() {
    let (uri, broker) = start(None).await;
    broker
        .access()
        .put_user("app", Some("s3cret"), vec![])
        .expect("user");
    let app = uri.replace("guest:guest", "app:s3cret");
    let no_host = Connection::connect(&app, ConnectionProperties::default())
        .await
        .expect_err("a user without permissions on / cannot open it");
    assert!(format!("{no_host:?}").contains("NOTALLOWED"), "{no_host:?}");

    broker
        .access()
        .set_permissions("app", "/", ".*", ".*", ".*")
        .expect("permissions");
    let connection = connect(&app).await;
    connection.close(200, "bye".into()).await.expect("close");

    for wrong in ["app:guess", "nobody:s3cret"] {
        let error = Connection::connect(
            &uri.replace("guest:guest", wrong),
            ConnectionProperties::default(),
        )
        .await
        .expect_err("a wrong login is refused");
        assert!(
            format!("{error:?}").contains("ACCESSREFUSED")
                || format!("{error:?}").contains("authentication"),
            "{wrong}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_checked_against_the_users_patterns() {
    let (uri, broker) = start(None).await;
    let access = broker.access();
    access.put_user("app", Some("pw"), vec![]).expect("user");
    access
        .set_permissions("app", "/", "^app-", "^(app-.*|amq\\.default)$", "^app-")
        .expect("permissions");
    // guest declares anything.
    let (guest, _admin) = with_queue(&uri, "other").await;

    let connection = connect(&uri.replace("guest:guest", "app:pw")).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "app-jobs".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("configure matches app-");
    channel
        .exchange_declare(
            "app-events".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("configure matches app-");
    channel
        .queue_bind(
            "app-jobs".into(),
            "app-events".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("write on the queue, read on the exchange");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
        .basic_publish(
            "".into(),
            "app-jobs".into(),
            BasicPublishOptions::default(),
            b"job",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("the default exchange is writable as amq.default");
    let got = channel
        .basic_get("app-jobs".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("read matches app-");
    assert_eq!(got.expect("a message").delivery.data, b"job");
    channel
        .queue_purge("app-jobs".into(), QueuePurgeOptions::default())
        .await
        .expect("purge is a read");

    type Attempt<'a> = (
        &'a str,
        Box<dyn Fn(lapin::Channel) -> futures_lite::future::Boxed<lapin::Result<()>>>,
    );
    let attempts: Vec<Attempt> = vec![
        (
            "declare a queue outside configure",
            Box::new(|channel| {
                Box::pin(async move {
                    channel
                        .queue_declare(
                            "jobs".into(),
                            QueueDeclareOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map(drop)
                })
            }),
        ),
        (
            "delete a queue outside configure",
            Box::new(|channel| {
                Box::pin(async move {
                    channel
                        .queue_delete("other".into(), QueueDeleteOptions::default())
                        .await
                        .map(drop)
                })
            }),
        ),
        (
            "get from a queue outside read",
            Box::new(|channel| {
                Box::pin(async move {
                    channel
                        .basic_get("other".into(), BasicGetOptions::default())
                        .await
                        .map(drop)
                })
            }),
        ),
        (
            "consume from a queue outside read",
            Box::new(|channel| {
                Box::pin(async move {
                    channel
                        .basic_consume(
                            "other".into(),
                            "".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map(drop)
                })
            }),
        ),
        (
            "bind from an exchange outside read",
            Box::new(|channel| {
                Box::pin(async move {
                    channel
                        .queue_bind(
                            "app-jobs".into(),
                            "amq.topic".into(),
                            "#".into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                })
            }),
        ),
        (
            "publish to an exchange outside write",
            Box::new(|channel| {
                Box::pin(async move {
                    channel
                        .confirm_select(ConfirmSelectOptions::default())
                        .await?;
                    channel
                        .basic_publish(
                            "amq.fanout".into(),
                            "".into(),
                            BasicPublishOptions::default(),
                            b"x",
                            BasicProperties::default(),
                        )
                        .await?
                        .await
                        .map(drop)
                })
            }),
        ),
    ];
    for (what, attempt) in attempts {
        let channel = connection.create_channel().await.expect("channel");
        let outcome = tokio::time::timeout(Duration::from_secs(10), attempt(channel.clone()))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"));
        let error = outcome.expect_err(what);
        assert!(refused(&error), "{what}: {error:?}");
        assert!(
            !channel.status().connected(),
            "{what}: the channel is closed"
        );
    }
    assert!(
        connection.status().connected(),
        "a refusal closes only the channel"
    );

    // A change applies to connections already open.
    access
        .set_permissions("app", "/", "^app-", "^app-", "^$")
        .expect("permissions");
    let channel = connection.create_channel().await.expect("channel");
    let error = channel
        .basic_get("app-jobs".into(), BasicGetOptions::default())
        .await
        .expect_err("read was taken away");
    assert!(refused(&error), "{error:?}");
    connection.close(200, "bye".into()).await.expect("close");
    guest.close(200, "bye".into()).await.expect("close");
}
