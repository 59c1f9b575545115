//! lapin, RabbitMQ's Rust client, against postino over a real socket.

mod support;

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use support::{connect, start, with_queue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_confirms_consume_and_ack() {
    let dir = tempfile::tempdir().expect("dir");
    let (uri, _broker) = start(Some(dir.path())).await;
    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            "work".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    assert_eq!(queue.message_count(), 0);
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for index in 0..10 {
        let confirm = channel
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                format!("job {index}").as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(format!("m{index}").into()),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
    }
    channel
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            "work".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = consumer.next().await.expect("a delivery").expect("ok");
    assert_eq!(first.data, b"job 0");
    let message_id = first
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    assert_eq!(message_id, Some("m0".to_owned()));
    assert_eq!(*first.properties.delivery_mode(), Some(2));
    assert!(!first.redelivered);
    first
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 10 {
        let delivery = consumer.next().await.expect("a delivery").expect("ok");
        let body = String::from_utf8(delivery.data.clone()).expect("utf-8");
        assert_eq!(
            delivery.redelivered,
            body == "job 0",
            "only the nacked message is redelivered"
        );
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        assert!(seen.insert(body), "each message comes once more at most");
    }
    let empty = channel
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .expect("get");
    assert!(empty.is_none(), "every message was acked");
    connection.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_mandatory_returns_and_get() {
    let (uri, _broker) = start(None).await;
    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            "logs".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("server-named queue");
    assert!(queue.name().as_str().starts_with("amq.gen-"));
    channel
        .queue_bind(
            queue.name().clone(),
            "logs".into(),
            "kern.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let routed = channel
        .basic_publish(
            "logs".into(),
            "kern.error".into(),
            BasicPublishOptions::default(),
            b"disk full",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(routed, Confirmation::Ack(None)));
    let unroutable = channel
        .basic_publish(
            "logs".into(),
            "app.info".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"nobody",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    match unroutable {
        Confirmation::Ack(Some(returned)) => assert_eq!(returned.data, b"nobody"),
        other => panic!("expected a returned message, got {other:?}"),
    }
    let message = channel
        .basic_get(queue.name().clone(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(message.delivery.data, b"disk full");
    assert_eq!(message.delivery.routing_key.as_str(), "kern.error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_reply_codes() {
    let (uri, _broker) = start(None).await;
    let bad_vhost = Connection::connect(
        &uri.replace("%2f", "nowhere"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(bad_vhost.is_err(), "an unknown vhost is refused");
    let bad_login = Connection::connect(
        &uri.replace("guest:guest", "guest:wrong"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(bad_login.is_err(), "a wrong password is refused");

    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongString("ten".into()));
    let error = channel
        .queue_declare("bad".into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect_err("a bad argument closes the channel");
    assert!(
        format!("{error:?}").contains("PRECONDITIONFAILED"),
        "{error:?}"
    );
    let channel = connection
        .create_channel()
        .await
        .expect("a new channel works");
    let error = channel
        .basic_get("missing".into(), BasicGetOptions::default())
        .await
        .expect_err("a missing queue");
    assert!(format!("{error:?}").contains("NOTFOUND"), "{error:?}");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let error = channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("an inequivalent redeclaration");
    assert!(
        format!("{error:?}").contains("PRECONDITIONFAILED"),
        "{error:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), connection.close(200, "bye".into()))
        .await
        .expect("close in time")
        .expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_apply_on_commit_only_and_purge_empties_a_queue() {
    use lapin::options::{BasicAckOptions, QueuePurgeOptions};
    let (uri, _broker) = start(None).await;
    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "tx".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel.tx_select().await.expect("tx.select");
    for body in [&b"one"[..], b"two"] {
        channel
            .basic_publish(
                "".into(),
                "tx".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    let peek = connection.create_channel().await.expect("channel");
    let nothing = peek
        .basic_get("tx".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(nothing.is_none(), "uncommitted publishes are invisible");
    channel.tx_commit().await.expect("tx.commit");
    let first = channel
        .basic_get("tx".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("committed");
    assert_eq!(first.delivery.data, b"one");
    first
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack in the transaction");
    channel.tx_rollback().await.expect("tx.rollback");
    channel
        .basic_recover(lapin::options::BasicRecoverOptions { requeue: true })
        .await
        .expect("recover");
    let again = peek
        .basic_get("tx".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the rolled-back ack left 'one' unsettled, and recover returned it");
    assert_eq!(again.delivery.data, b"one");
    let purged = peek
        .queue_purge("tx".into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    assert_eq!(purged, 1, "'two' was still ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_arguments_dead_letters_priorities_exclusivity_and_a_64_mb_message() {
    use lapin::options::{BasicAckOptions, BasicRejectOptions, ExchangeDeclareOptions};
    let (uri, _broker) = start(None).await;
    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");

    // Dead-lettering with x-death.
    channel
        .exchange_declare(
            "dlx".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            "dead".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .queue_bind(
            "dead".into(),
            "dlx".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    arguments.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    channel
        .queue_declare("work".into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("declare");
    for (body, priority) in [(&b"low"[..], 1), (b"high", 9)] {
        channel
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_priority(priority),
            )
            .await
            .expect("publish");
    }
    let first = channel
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(
        first.delivery.data, b"high",
        "the higher priority goes first"
    );
    first
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let mut dead = None;
    for _ in 0..100 {
        dead = channel
            .basic_get("dead".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead = dead.expect("the rejected message was dead-lettered");
    assert_eq!(dead.delivery.data, b"high");
    let headers = dead.delivery.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death is an array: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("x-death holds tables: {deaths:?}");
    };
    let text = |name: &str| match death.inner().get(name) {
        Some(AMQPValue::LongString(text)) => text.as_bytes().to_vec(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("reason"), b"rejected");
    assert_eq!(text("queue"), b"work");

    // Exclusive queues and passive declares.
    channel
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let other = connect(&uri).await;
    let other_channel = other.create_channel().await.expect("channel");
    let error = other_channel
        .basic_get("mine".into(), BasicGetOptions::default())
        .await
        .expect_err("another connection may not use an exclusive queue");
    assert!(format!("{error:?}").contains("RESOURCELOCKED"), "{error:?}");
    let other_channel = other.create_channel().await.expect("channel");
    let error = other_channel
        .queue_declare(
            "absent".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a passive declare of a missing queue");
    assert!(format!("{error:?}").contains("NOTFOUND"), "{error:?}");

    // A 64 MB message travels whole.
    let big: Vec<u8> = (0..64 << 20)
        .map(|index: u32| (index % 251) as u8)
        .collect();
    channel
        .queue_declare(
            "big".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirmation = channel
        .basic_publish(
            "".into(),
            "big".into(),
            BasicPublishOptions::default(),
            &big,
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(matches!(confirmation, Confirmation::Ack(None)));
    let received = channel
        .basic_get("big".into(), BasicGetOptions::default())
        .await
        .expect("get")
        .expect("the big message");
    assert!(received.delivery.data == big, "64 MB came back intact");
    received
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers_takes_their_acks_and_deleting_twice_succeeds() {
    use lapin::options::QueueDeleteOptions;
    let (uri, _broker) = start(None).await;
    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "doomed".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut consumer = channel
        .basic_consume(
            "doomed".into(),
            "watcher".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let admin = connection.create_channel().await.expect("channel");
    admin
        .basic_publish(
            "".into(),
            "doomed".into(),
            BasicPublishOptions::default(),
            b"last words",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery")
        .expect("not cancelled yet")
        .expect("a message");
    admin
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    let ended = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the consumer hears about it");
    assert!(
        ended.is_none(),
        "the server cancelled the consumer: {ended:?}"
    );
    assert!(channel.status().connected(), "the channel stays open");
    delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("an ack of a deleted queue's delivery");
    channel
        .basic_qos(5, lapin::options::BasicQosOptions::default())
        .await
        .expect("the ack did not close the channel, as in RabbitMQ");
    let again = admin
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .expect("deleting a missing queue succeeds, as in RabbitMQ");
    assert_eq!(again, 0, "no messages were in it");
    admin
        .exchange_delete(
            "never-declared".into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .expect("deleting a missing exchange succeeds, as in RabbitMQ");
    assert!(admin.status().connected(), "the admin channel stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_told_when_the_broker_blocks_and_unblocks_publishers() {
    use postino_core::FlowLimits;
    let (uri, broker) = start(None).await;
    let connection = connect(&uri).await;
    let limits = |disk_free_bytes_min| FlowLimits {
        disk_free_bytes_min,
        check_every: Duration::from_millis(10),
        ..FlowLimits::default()
    };
    // With no data directory the disk check cannot run; memory then is the alarm to raise.
    broker.set_limits(FlowLimits {
        memory_bytes_max: 1,
        ..limits(0)
    });
    let mut blocked = false;
    for _ in 0..500 {
        blocked = connection.status().blocked();
        if blocked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(blocked, "connection.blocked arrived");
    broker.set_limits(limits(0));
    let mut unblocked = false;
    for _ in 0..500 {
        unblocked = !connection.status().blocked();
        if unblocked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(unblocked, "connection.unblocked arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_logins_work_like_plain_ones() {
    let (uri, _broker) = start(None).await;
    let (connection, channel) = with_queue(&format!("{uri}?auth_mechanism=amqplain"), "q").await;
    assert!(channel.status().connected());
    connection.close(200, "bye".into()).await.expect("close");
    let wrong = uri.replace("guest:guest", "guest:wrong");
    let refused = Connection::connect(
        &format!("{wrong}?auth_mechanism=amqplain"),
        ConnectionProperties::default(),
    )
    .await;
    assert!(refused.is_err(), "a wrong AMQPLAIN password is refused");
}
