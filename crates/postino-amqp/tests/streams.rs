//! RabbitMQ stream queues with lapin: `x-queue-type: stream`, confirmed publishes, consumers
//! that replay from `x-stream-offset` without removing anything, and the refusals RabbitMQ
//! gives stream queues.

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use support::{connect, start, with_queue};

fn stream_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert("x-max-age".into(), AMQPValue::LongString("7D".into()));
    arguments
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Consumes `count` messages from `offset` and returns their bodies and `x-stream-offset`s.
async fn replay(
    channel: &Channel,
    tag: &str,
    offset: AMQPValue,
    count: usize,
) -> Vec<(String, i64)> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), offset);
    let mut consumer = channel
        .basic_consume(
            "events".into(),
            tag.into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .expect("consume");
    let mut seen = Vec::new();
    while seen.len() < count {
        let delivery = consumer.next().await.expect("a delivery").expect("ok");
        let headers = delivery.properties.headers().clone().expect("headers");
        let offset = match headers.inner().get(&ShortString::from("x-stream-offset")) {
            Some(AMQPValue::LongLongInt(offset)) => *offset,
            Some(AMQPValue::LongInt(offset)) => i64::from(*offset),
            other => panic!("x-stream-offset missing: {other:?}"),
        };
        seen.push((
            String::from_utf8(delivery.data.clone()).expect("utf-8"),
            offset,
        ));
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    channel
        .basic_cancel(tag.into(), Default::default())
        .await
        .expect("cancel");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_queue_keeps_its_messages_for_every_consumer() {
    let dir = tempfile::tempdir().expect("dir");
    let (uri, broker) = start(Some(dir.path())).await;
    let connection = connect(&uri).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare("events".into(), durable(), stream_arguments())
        .await
        .expect("declare a stream");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for index in 0..5 {
        let confirmation = channel
            .basic_publish(
                "".into(),
                "events".into(),
                BasicPublishOptions::default(),
                format!("event {index}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(matches!(confirmation, Confirmation::Ack(None)));
    }
    let stream = broker
        .vhost("/")
        .expect("vhost")
        .stream("events")
        .expect("the queue is a postino stream");
    assert_eq!(stream.partition_count(), 1);

    channel
        .basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let first = replay(&channel, "a", AMQPValue::LongString("first".into()), 5).await;
    let expected: Vec<(String, i64)> = (0..5)
        .map(|index| (format!("event {index}"), index))
        .collect();
    assert_eq!(first, expected, "all five, in order, with their offsets");
    let again = replay(&channel, "b", AMQPValue::LongLongInt(3), 2).await;
    assert_eq!(again, expected[3..], "reading removed nothing");

    let declared = channel
        .queue_declare(
            "events".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 5);
    connection.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queues_refuse_what_rabbitmq_refuses() {
    let (uri, _broker) = start(None).await;
    let connection = connect(&uri).await;

    let channel = connection.create_channel().await.expect("channel");
    let transient = channel
        .queue_declare(
            "events".into(),
            QueueDeclareOptions::default(),
            stream_arguments(),
        )
        .await;
    assert!(transient.is_err(), "a stream must be durable");

    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare("events".into(), durable(), stream_arguments())
        .await
        .expect("declare");
    let without_prefetch = channel
        .basic_consume(
            "events".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(without_prefetch.is_err(), "stream consumers need basic.qos");

    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut bad_offset = FieldTable::default();
    bad_offset.insert("x-stream-offset".into(), AMQPValue::Boolean(true));
    let refused = channel
        .basic_consume(
            "events".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            bad_offset,
        )
        .await;
    assert!(refused.is_err(), "a boolean is no offset");

    let (_classic, channel) = with_queue(&uri, "classic").await;
    let over_a_queue = channel
        .queue_declare("classic".into(), durable(), stream_arguments())
        .await;
    assert!(
        over_a_queue.is_err(),
        "a classic queue cannot become a stream"
    );

    let channel = connection.create_channel().await.expect("channel");
    let deleted = channel
        .queue_delete("events".into(), QueueDeleteOptions::default())
        .await
        .expect("delete the stream");
    assert_eq!(deleted, 0);
    connection.close(200, "bye".into()).await.expect("close");
}
