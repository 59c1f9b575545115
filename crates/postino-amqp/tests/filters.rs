//! Content filters as an AMQP binding argument and consumer argument (`x-filter`), with lapin:
//! only matching messages reach a filtered binding's queue or a filtered consumer; a filter that
//! does not parse closes the channel with 406 naming the position.

mod support;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueBindOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use support::{start, with_queue};

async fn bind(channel: &Channel, queue: &str, filter: Option<&str>) -> lapin::Result<()> {
    let mut arguments = FieldTable::default();
    if let Some(filter) = filter {
        arguments.insert("x-filter".into(), AMQPValue::LongString(filter.into()));
    }
    channel
        .queue_bind(
            queue.into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            arguments,
        )
        .await
}

async fn drain(channel: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        bodies.push(String::from_utf8(message.delivery.data.clone()).expect("utf-8"));
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_binding_gets_only_the_matching_messages() {
    let (uri, _broker) = start(None).await;
    let (_connection, channel) = with_queue(&uri, "italy").await;
    channel
        .queue_declare(
            "everything".into(),
            lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    bind(
        &channel,
        "italy",
        Some("country = 'IT' AND amount BETWEEN 10 AND 100 AND properties.priority IS NULL"),
    )
    .await
    .expect("bind with a filter");
    bind(&channel, "everything", None).await.expect("bind");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let orders: [(&str, &str, i64, Option<u8>); 5] = [
        ("a", "IT", 50, None),
        ("b", "FR", 50, None),
        ("c", "IT", 500, None),
        ("d", "IT", 10, None),
        ("e", "IT", 20, Some(3)),
    ];
    for (body, country, amount, priority) in orders {
        let mut headers = FieldTable::default();
        headers.insert("country".into(), AMQPValue::LongString(country.into()));
        headers.insert("amount".into(), AMQPValue::LongLongInt(amount));
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(priority) = priority {
            properties = properties.with_priority(priority);
        }
        channel
            .basic_publish(
                "amq.fanout".into(),
                "".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    assert_eq!(drain(&channel, "italy").await, ["a", "d"]);
    assert_eq!(
        drain(&channel, "everything").await,
        ["a", "b", "c", "d", "e"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_does_not_parse_is_refused_with_406() {
    let (uri, _broker) = start(None).await;
    let (connection, channel) = with_queue(&uri, "q").await;
    let error = bind(&channel, "q", Some("country = 'IT' AND"))
        .await
        .expect_err("a bad filter");
    let text = format!("{error:?}");
    assert!(text.contains("PRECONDITIONFAILED"), "{text}");
    assert!(text.contains("position 19"), "{text}");
    let channel = connection.create_channel().await.expect("a new channel");
    bind(&channel, "q", Some("country = 'IT'"))
        .await
        .expect("a good filter binds");
}

async fn consume(channel: &Channel, queue: &str, filter: &str) -> lapin::Result<lapin::Consumer> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-filter".into(), AMQPValue::LongString(filter.into()));
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_consumer_gets_only_what_it_accepts_and_the_rest_stays_queued() {
    let (uri, _broker) = start(None).await;
    let (_connection, channel) = with_queue(&uri, "orders").await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for (body, country) in [("a", "FR"), ("b", "IT"), ("c", "FR"), ("d", "IT")] {
        let mut headers = FieldTable::default();
        headers.insert("country".into(), AMQPValue::LongString(country.into()));
        channel
            .basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let mut italian = consume(&channel, "orders", "country = 'IT'")
        .await
        .expect("a filtered consumer");
    for expected in ["b", "d"] {
        let delivery = italian.next().await.expect("a delivery").expect("ok");
        assert_eq!(delivery.data, expected.as_bytes(), "past the French head");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // What the filter refused is still there, in order, for anyone else.
    assert_eq!(drain(&channel, "orders").await, ["a", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_filter_that_does_not_parse_is_refused_with_406() {
    let (uri, _broker) = start(None).await;
    let (connection, channel) = with_queue(&uri, "q").await;
    let error = consume(&channel, "q", "country IN ('IT'")
        .await
        .expect_err("a bad filter");
    let text = format!("{error:?}");
    assert!(text.contains("PRECONDITIONFAILED"), "{text}");
    assert!(text.contains("x-filter"), "{text}");
    let channel = connection.create_channel().await.expect("a new channel");
    consume(&channel, "q", "country = 'IT'")
        .await
        .expect("a good filter consumes");
}
