//! Direct reply-to with lapin: an RPC client consumes `amq.rabbitmq.reply-to` and gets a
//! server's reply through no queue; a request without a reply consumer is refused.

mod support;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use support::{connect, start, with_queue};

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

async fn request(channel: &Channel, body: &str, correlation: &str) {
    channel
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id(correlation.into()),
        )
        .await
        .expect("publish a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_reaches_the_client_through_no_queue() {
    let (uri, _broker) = start(None).await;
    let (server, server_channel) = with_queue(&uri, "rpc").await;
    let mut requests = server_channel
        .basic_consume(
            "rpc".into(),
            "server".into(),
            no_ack(),
            FieldTable::default(),
        )
        .await
        .expect("consume requests");
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let reply_to = delivery
                .properties
                .reply_to()
                .clone()
                .expect("requests carry reply_to");
            let correlation = delivery
                .properties
                .correlation_id()
                .clone()
                .expect("correlation");
            let answer = format!("{} squared", String::from_utf8_lossy(&delivery.data));
            server_channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    answer.as_bytes(),
                    BasicProperties::default().with_correlation_id(correlation),
                )
                .await
                .expect("publish the reply");
        }
    });

    let client = connect(&uri).await;
    let channel = client.create_channel().await.expect("channel");
    let mut replies = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            no_ack(),
            FieldTable::default(),
        )
        .await
        .expect("consume direct replies");
    for (index, body) in ["3", "4"].into_iter().enumerate() {
        let correlation = format!("call-{index}");
        request(&channel, body, &correlation).await;
        let reply = replies.next().await.expect("a reply").expect("ok");
        assert_eq!(reply.data, format!("{body} squared").as_bytes());
        assert_eq!(
            reply.properties.correlation_id().clone(),
            Some(ShortString::from(correlation))
        );
    }
    client.close(200, "bye".into()).await.expect("close");
    server.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_a_reply_consumer_and_it_must_be_no_ack() {
    let (uri, _broker) = start(None).await;
    let (connection, channel) = with_queue(&uri, "rpc").await;
    request(&channel, "1", "lonely").await;
    // The channel error arrives asynchronously: the next synchronous call sees it.
    let after = channel
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(
        after.is_err(),
        "no reply consumer: the channel is closed with 406"
    );

    let channel = connection.create_channel().await.expect("channel");
    let acked = channel
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(acked.is_err(), "reply consumers are no-ack");
    connection.close(200, "bye".into()).await.expect("close");
}
