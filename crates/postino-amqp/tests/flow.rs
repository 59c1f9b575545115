//! `channel.flow` with lapin: while a channel's flow is off its consumers receive nothing;
//! turned on again, every held delivery arrives, in order.

mod support;

use futures_lite::StreamExt;
use futures_lite::future::poll_once;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ChannelFlowOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use support::{start, with_queue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_channel_holds_its_deliveries_until_flow_resumes() {
    let (uri, _broker) = start(None).await;
    let (connection, channel) = with_queue(&uri, "q").await;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume("q".into(), "c".into(), no_ack, FieldTable::default())
        .await
        .expect("consume");
    let paused = channel
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .expect("flow off");
    assert!(!paused);

    let publisher = connection.create_channel().await.expect("channel");
    for index in 0..3 {
        publisher
            .basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                format!("m{index}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    // A round trip on the paused channel after the publishes: had a delivery been sent, it
    // would be waiting in the consumer by now.
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert!(
        poll_once(consumer.next()).await.is_none(),
        "nothing is delivered while the flow is off"
    );

    channel
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .expect("flow on");
    for index in 0..3 {
        let delivery = consumer.next().await.expect("a delivery").expect("ok");
        assert_eq!(delivery.data, format!("m{index}").as_bytes());
    }
    connection.close(200, "bye".into()).await.expect("close");
}
