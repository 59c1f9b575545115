//! `basic.qos` with lapin: a channel-wide prefetch (`global`) shared by consumers of two
//! queues, beside the per-consumer one.

mod support;

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use support::{start, with_queue};

async fn publish(channel: &Channel, queue: &str, count: usize) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for index in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("{queue} {index}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
}

/// Queues `left` and `right` with 5 messages each; returns the connections and a channel to
/// consume on.
async fn filled(uri: &str) -> (lapin::Connection, lapin::Connection, Channel) {
    let (publisher, publishing) = with_queue(uri, "left").await;
    let (consumer, channel) = with_queue(uri, "right").await;
    publish(&publishing, "left", 5).await;
    publish(&publishing, "right", 5).await;
    (publisher, consumer, channel)
}

/// Starts consumers of `queues` on `channel`; their deliveries arrive on one receiver.
async fn consume_all(
    channel: &Channel,
    queues: &[&str],
) -> tokio::sync::mpsc::UnboundedReceiver<Delivery> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    for queue in queues {
        let mut consumer = channel
            .basic_consume(
                (*queue).into(),
                format!("on-{queue}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let sender = sender.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if sender.send(delivery).is_err() {
                    return;
                }
            }
        });
    }
    receiver
}

/// Whether another delivery arrives within a moment (it must not while the limit is reached).
async fn another_arrives(deliveries: &mut tokio::sync::mpsc::UnboundedReceiver<Delivery>) -> bool {
    tokio::time::timeout(Duration::from_millis(300), deliveries.recv())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_prefetch_is_shared_by_the_channels_consumers() {
    let (uri, _broker) = start(None).await;
    let (_publisher, _consumer, channel) = filled(&uri).await;
    channel
        .basic_qos(2, BasicQosOptions { global: true })
        .await
        .expect("qos");
    let mut deliveries = consume_all(&channel, &["left", "right"]).await;
    let first = deliveries.recv().await.expect("a delivery");
    let _second = deliveries.recv().await.expect("a delivery");
    assert!(
        !another_arrives(&mut deliveries).await,
        "two consumers share a channel prefetch of 2"
    );
    first.ack(BasicAckOptions::default()).await.expect("ack");
    let third = deliveries
        .recv()
        .await
        .expect("an ack makes room for one more");
    assert!(!another_arrives(&mut deliveries).await, "still 2 unsettled");
    third
        .ack(BasicAckOptions { multiple: true })
        .await
        .expect("ack");
    let mut bodies = std::collections::BTreeSet::new();
    while bodies.len() < 7 {
        let delivery = deliveries.recv().await.expect("a delivery");
        bodies.insert(String::from_utf8(delivery.data.clone()).expect("utf-8"));
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(bodies.iter().any(|body| body.starts_with("left")));
    assert!(bodies.iter().any(|body| body.starts_with("right")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_consumer_and_global_limits_apply_together() {
    let (uri, _broker) = start(None).await;
    let (_publisher, _consumer, channel) = filled(&uri).await;
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("per-consumer qos");
    channel
        .basic_qos(3, BasicQosOptions { global: true })
        .await
        .expect("global qos");
    let mut deliveries = consume_all(&channel, &["left", "right"]).await;
    let first = deliveries.recv().await.expect("a delivery");
    let second = deliveries.recv().await.expect("a delivery");
    assert_ne!(
        first.routing_key, second.routing_key,
        "one delivery from each queue"
    );
    assert!(
        !another_arrives(&mut deliveries).await,
        "each consumer holds 1 under its own prefetch, below the channel's 3"
    );
    first.ack(BasicAckOptions::default()).await.expect("ack");
    let third = deliveries
        .recv()
        .await
        .expect("room for the first consumer");
    assert_eq!(third.routing_key, first.routing_key);
}
