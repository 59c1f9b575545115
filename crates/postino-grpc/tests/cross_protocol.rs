//! Messages cross between the native API and AMQP 0-9-1 (lapin) on one broker, with their
//! properties and headers.

mod support;

use std::sync::Arc;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use postino_grpc::QueuesClient;
use postino_grpc::proto::{self, GetRequest, PutRequest, value::Kind};

/// One broker behind an AMQP listener and a gRPC listener; their URLs.
async fn start() -> (String, String) {
    let broker = support::broker();
    let amqp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let amqp_url = format!(
        "amqp://guest:guest@{}/%2f",
        amqp.local_addr().expect("address")
    );
    tokio::spawn(postino_amqp::serve(
        amqp,
        Arc::clone(&broker),
        postino_amqp::Limits::default(),
    ));
    (amqp_url, support::serve_grpc(&broker).await)
}

/// An AMQP connection and channel, with the queue `name` declared.
async fn channel_with_queue(amqp: &str, name: &str) -> (Connection, lapin::Channel) {
    let connection = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    (connection, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_over_grpc_is_read_over_amqp_and_back() {
    let (amqp, grpc) = start().await;
    let (_connection, channel) = channel_with_queue(&amqp, "bridge").await;
    let mut queues = QueuesClient::connect(grpc).await.expect("connect");

    let message = proto::Message {
        body: b"from grpc".to_vec(),
        headers: [
            ("tenant", Kind::Text("acme".into())),
            ("attempt", Kind::Int(3)),
        ]
        .into_iter()
        .map(|(name, kind)| (name.to_owned(), proto::Value { kind: Some(kind) }))
        .collect(),
        properties: Some(proto::Properties {
            content_type: Some("text/plain".into()),
            correlation_id: Some("c-1".into()),
            message_id: Some("m-1".into()),
            priority: Some(4),
            persistent: true,
            ..proto::Properties::default()
        }),
    };
    queues
        .put(PutRequest {
            queue: "bridge".into(),
            message: Some(message),
            ..PutRequest::default()
        })
        .await
        .expect("put");
    let got = channel
        .basic_get("bridge".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the message");
    assert_eq!(got.delivery.data, b"from grpc");
    let properties = &got.delivery.properties;
    assert_eq!(
        properties.content_type().as_ref().map(|text| text.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        properties
            .correlation_id()
            .as_ref()
            .map(|text| text.as_str()),
        Some("c-1")
    );
    assert_eq!(
        properties.message_id().as_ref().map(|text| text.as_str()),
        Some("m-1")
    );
    assert_eq!(*properties.priority(), Some(4));
    assert_eq!(*properties.delivery_mode(), Some(2));
    let headers = properties.headers().clone().expect("headers");
    let headers = headers.inner();
    assert_eq!(
        headers.get("tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    assert_eq!(headers.get("attempt"), Some(&AMQPValue::LongLongInt(3)));

    let mut table = FieldTable::default();
    table.insert("region".into(), AMQPValue::LongString("eu".into()));
    channel
        .basic_publish(
            "".into(),
            "bridge".into(),
            BasicPublishOptions::default(),
            b"from amqp",
            BasicProperties::default()
                .with_headers(table)
                .with_reply_to("replies".into())
                .with_app_id("lapin".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("routed");
    let delivery = queues
        .get(GetRequest {
            queue: "bridge".into(),
            wait_ms: 10_000,
            auto_ack: true,
            ..GetRequest::default()
        })
        .await
        .expect("get")
        .into_inner()
        .delivery
        .expect("the AMQP message");
    let message = delivery.message.expect("a message");
    assert_eq!(message.body, b"from amqp");
    assert_eq!(
        message
            .headers
            .get("region")
            .and_then(|value| value.kind.clone()),
        Some(Kind::Text("eu".into()))
    );
    let properties = message.properties.expect("properties");
    assert_eq!(properties.reply_to.as_deref(), Some("replies"));
    assert_eq!(properties.app_id.as_deref(), Some("lapin"));
    assert_eq!(delivery.exchange, "");
    assert_eq!(delivery.routing_key, "bridge");
}

/// The notes' response-based synchronous put over gRPC, answered by an AMQP RPC server as
/// RabbitMQ's tutorial 6 writes one: publish the answer to the default exchange with the
/// request's `reply_to` as routing key and its correlation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_is_answered_by_an_amqp_rpc_server() {
    let (amqp, grpc) = start().await;
    let (_connection, channel) = channel_with_queue(&amqp, "rpc").await;
    let mut queues = QueuesClient::connect(grpc).await.expect("connect");
    let asking = tokio::spawn(async move {
        queues
            .put(PutRequest {
                queue: "rpc".into(),
                message: Some(proto::Message {
                    body: b"21".to_vec(),
                    ..proto::Message::default()
                }),
                sync: proto::Sync::Replied.into(),
                reply_timeout_ms: Some(10_000),
                ..PutRequest::default()
            })
            .await
    });
    let request = loop {
        if let Some(got) = channel
            .basic_get("rpc".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let properties = request.delivery.properties;
    let reply_to = properties.reply_to().clone().expect("reply_to");
    let correlation = properties
        .correlation_id()
        .clone()
        .expect("a correlation id");
    channel
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions::default(),
            b"42",
            BasicProperties::default().with_correlation_id(correlation),
        )
        .await
        .expect("publish the answer");
    let answer = asking
        .await
        .expect("task")
        .expect("answered")
        .into_inner()
        .reply
        .expect("the answer");
    assert_eq!(answer.message.expect("a message").body, b"42");
}
