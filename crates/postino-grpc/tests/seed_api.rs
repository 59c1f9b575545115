//! The lecture notes' seed calls over the native API, with tonic's generated clients against an
//! in-process server on a real socket: the message queue (`put`, blocking `get`, `get` with a
//! pattern, `poll`, `notify` with credit, ack / nack / visibility) and publish/subscribe
//! (`publish`, `subscribe` with a filter, events, `unsubscribe`, expiry), and the status codes
//! of bad requests.

use std::sync::Arc;
use std::time::Duration;

mod support;

use postino_core::{Broker, QueueSpec};
use postino_grpc::proto::{
    self, GetRequest, NackRequest, NotifyRequest, PollRequest, PublishRequest, PutRequest,
    SettleRequest, SubscribeRequest, UnsubscribeRequest, subscription_event::Item,
};
use postino_grpc::{PubSubClient, QueuesClient};
use tonic::Code;
use tonic::transport::Channel;

async fn start() -> (String, Arc<Broker>) {
    let broker = support::broker();
    (support::serve_grpc(&broker).await, broker)
}

fn text_message(body: &str, headers: &[(&str, proto::value::Kind)]) -> proto::Message {
    proto::Message {
        body: body.as_bytes().to_vec(),
        headers: headers
            .iter()
            .map(|(name, kind)| {
                (
                    (*name).to_owned(),
                    proto::Value {
                        kind: Some(kind.clone()),
                    },
                )
            })
            .collect(),
        properties: None,
    }
}

fn body(delivery: &proto::Delivery) -> String {
    let message = delivery.message.as_ref().expect("a message");
    String::from_utf8(message.body.clone()).expect("utf-8")
}

async fn put(queues: &mut QueuesClient<Channel>, queue: &str, message: proto::Message) {
    queues
        .put(PutRequest {
            queue: queue.to_owned(),
            message: Some(message),
            ..PutRequest::default()
        })
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_queue_calls_put_get_poll_and_notify() {
    let (url, broker) = start().await;
    let host = broker.vhost("/").expect("default vhost");
    host.declare_queue("jobs", QueueSpec::durable())
        .expect("declare");
    let mut queues = QueuesClient::connect(url).await.expect("connect");

    // poll never blocks: an empty queue answers at once with nothing.
    let empty = queues
        .poll(PollRequest {
            queue: "jobs".into(),
            ..PollRequest::default()
        })
        .await
        .expect("poll")
        .into_inner();
    assert!(empty.delivery.is_none());

    // get blocks until a message arrives.
    let mut waiting = queues.clone();
    let blocked = tokio::spawn(async move {
        waiting
            .get(GetRequest {
                queue: "jobs".into(),
                wait_ms: 30_000,
                auto_ack: true,
                ..GetRequest::default()
            })
            .await
            .expect("get")
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    put(&mut queues, "jobs", text_message("first", &[])).await;
    let got = blocked.await.expect("the get returns");
    assert_eq!(body(&got.delivery.expect("the put message")), "first");

    // get with a pattern takes the first message the filter holds for.
    for (name, colour) in [("a", "red"), ("b", "blue"), ("c", "red")] {
        put(
            &mut queues,
            "jobs",
            text_message(name, &[("colour", proto::value::Kind::Text(colour.into()))]),
        )
        .await;
    }
    let blue = queues
        .get(GetRequest {
            queue: "jobs".into(),
            filter: "colour = 'blue'".into(),
            ..GetRequest::default()
        })
        .await
        .expect("get with a filter")
        .into_inner()
        .delivery
        .expect("the blue one");
    assert_eq!(body(&blue), "b");
    queues
        .nack(NackRequest {
            queue: "jobs".into(),
            delivery_ids: vec![blue.delivery_id],
            requeue: true,
            ..NackRequest::default()
        })
        .await
        .expect("nack");

    // notify: a stream with credit 2 holds two unsettled deliveries, an ack makes room.
    let mut stream = queues
        .notify(NotifyRequest {
            queue: "jobs".into(),
            prefetch: 2,
            ..NotifyRequest::default()
        })
        .await
        .expect("notify")
        .into_inner();
    let first = stream.message().await.expect("stream").expect("a delivery");
    let second = stream.message().await.expect("stream").expect("a delivery");
    // A requeued message goes back to its place in the queue, as in RabbitMQ.
    assert_eq!([body(&first), body(&second)], ["a", "b"]);
    assert!(second.redelivered, "the nacked message comes again, marked");
    let third = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(third.is_err(), "no third delivery while two are unsettled");
    queues
        .ack(SettleRequest {
            queue: "jobs".into(),
            delivery_ids: vec![first.delivery_id],
            ..SettleRequest::default()
        })
        .await
        .expect("ack");
    let third = stream.message().await.expect("stream").expect("a delivery");
    assert_eq!(body(&third), "c");
    assert!(!third.redelivered);
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_with_a_filter_and_unsubscribe() {
    let (url, _broker) = start().await;
    let mut pubsub = PubSubClient::connect(url).await.expect("connect");
    let mut events = pubsub
        .subscribe(SubscribeRequest {
            binding_key: "orders.#".into(),
            filter: "amount > 10 AND country IN ('IT', 'FR')".into(),
            ..SubscribeRequest::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let Some(Item::Subscribed(handle)) = events
        .message()
        .await
        .expect("stream")
        .and_then(|event| event.item)
    else {
        panic!("the handle comes first");
    };
    let orders = [
        ("orders.new", "big-it", 50, "IT"),
        ("orders.new", "small-it", 5, "IT"),
        ("orders.new", "big-us", 50, "US"),
        ("invoices.new", "other-key", 50, "FR"),
        ("orders.paid", "big-fr", 70, "FR"),
    ];
    for (key, name, amount, country) in orders {
        let message = text_message(
            name,
            &[
                ("amount", proto::value::Kind::Int(amount)),
                ("country", proto::value::Kind::Text(country.into())),
            ],
        );
        let routed = pubsub
            .publish(PublishRequest {
                routing_key: key.into(),
                message: Some(message),
                ..PublishRequest::default()
            })
            .await
            .expect("publish")
            .into_inner()
            .routed;
        let expected = u32::from(matches!(name, "big-it" | "big-fr"));
        assert_eq!(routed, expected, "{name}");
    }
    let mut received = Vec::new();
    for _ in 0..2 {
        match events
            .message()
            .await
            .expect("stream")
            .and_then(|event| event.item)
        {
            Some(Item::Event(delivery)) => received.push(body(&delivery)),
            other => panic!("an event, not {other:?}"),
        }
    }
    assert_eq!(received, ["big-it", "big-fr"]);
    pubsub
        .unsubscribe(UnsubscribeRequest {
            handle: handle.clone(),
            ..UnsubscribeRequest::default()
        })
        .await
        .expect("unsubscribe");
    assert!(
        events
            .message()
            .await
            .expect("the stream ends cleanly")
            .is_none(),
        "unsubscribing ends the stream"
    );
    let again = pubsub
        .unsubscribe(UnsubscribeRequest {
            handle,
            ..UnsubscribeRequest::default()
        })
        .await
        .expect_err("the handle is gone");
    assert_eq!(again.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_at_its_expiry() {
    let (url, _broker) = start().await;
    let mut pubsub = PubSubClient::connect(url).await.expect("connect");
    let mut events = pubsub
        .subscribe(SubscribeRequest {
            expiry_ms: 200,
            ..SubscribeRequest::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    assert!(matches!(
        events
            .message()
            .await
            .expect("stream")
            .and_then(|event| event.item),
        Some(Item::Subscribed(_))
    ));
    // The stream ends once the registration expires (however long the timer takes).
    assert!(events.message().await.expect("a clean end").is_none());
    let routed = pubsub
        .publish(PublishRequest {
            routing_key: "any".into(),
            message: Some(text_message("late", &[])),
            ..PublishRequest::default()
        })
        .await
        .expect("publish")
        .into_inner()
        .routed;
    assert_eq!(routed, 0, "nobody is subscribed any more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_with_a_filter_takes_only_what_it_matches() {
    let (url, broker) = start().await;
    let host = broker.vhost("/").expect("default vhost");
    host.declare_queue("jobs", QueueSpec::durable())
        .expect("declare");
    let mut queues = QueuesClient::connect(url).await.expect("connect");
    for (name, colour) in [("a", "red"), ("b", "blue"), ("c", "red"), ("d", "blue")] {
        put(
            &mut queues,
            "jobs",
            text_message(name, &[("colour", proto::value::Kind::Text(colour.into()))]),
        )
        .await;
    }
    let mut blue = queues
        .notify(NotifyRequest {
            queue: "jobs".into(),
            filter: "colour = 'blue'".into(),
            auto_ack: true,
            ..NotifyRequest::default()
        })
        .await
        .expect("notify")
        .into_inner();
    for expected in ["b", "d"] {
        let delivery = blue.message().await.expect("stream").expect("a delivery");
        assert_eq!(body(&delivery), expected);
    }
    put(
        &mut queues,
        "jobs",
        text_message("e", &[("colour", proto::value::Kind::Text("blue".into()))]),
    )
    .await;
    let late = blue.message().await.expect("stream").expect("a delivery");
    assert_eq!(body(&late), "e", "a later match arrives on the stream");
    drop(blue);
    let mut rest = Vec::new();
    while let Some(delivery) = queues
        .poll(PollRequest {
            queue: "jobs".into(),
            auto_ack: true,
            ..PollRequest::default()
        })
        .await
        .expect("poll")
        .into_inner()
        .delivery
    {
        rest.push(body(&delivery));
    }
    assert_eq!(rest, ["a", "c"], "the red ones stayed, in order");
    let bad = queues
        .notify(NotifyRequest {
            queue: "jobs".into(),
            filter: "colour IN (".into(),
            ..NotifyRequest::default()
        })
        .await
        .expect_err("a filter that does not parse");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_status_codes() {
    let (url, broker) = start().await;
    broker
        .vhost("/")
        .expect("vhost")
        .declare_queue("q", QueueSpec::transient())
        .expect("declare");
    let mut queues = QueuesClient::connect(url.clone()).await.expect("connect");
    let missing = queues
        .put(PutRequest {
            queue: "nowhere".into(),
            message: Some(text_message("x", &[])),
            ..PutRequest::default()
        })
        .await
        .expect_err("no such queue");
    assert_eq!(missing.code(), Code::NotFound);
    let oversize = queues
        .put(PutRequest {
            queue: "q".into(),
            message: Some(proto::Message {
                body: vec![0; postino_grpc::MAX_MESSAGE_BYTES + 1],
                ..proto::Message::default()
            }),
            ..PutRequest::default()
        })
        .await
        .expect_err("a message over the limit");
    assert_eq!(oversize.code(), Code::OutOfRange, "{oversize:?}");
    let bad_filter = queues
        .get(GetRequest {
            queue: "q".into(),
            filter: "colour = ".into(),
            ..GetRequest::default()
        })
        .await
        .expect_err("a filter that does not parse");
    assert_eq!(bad_filter.code(), Code::InvalidArgument);
    assert!(
        bad_filter.message().contains("position 10"),
        "{bad_filter:?}"
    );
    let unknown = queues
        .ack(SettleRequest {
            queue: "q".into(),
            delivery_ids: vec![42],
            ..SettleRequest::default()
        })
        .await
        .expect_err("an unknown delivery");
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    let no_vhost = queues
        .poll(PollRequest {
            vhost: "nowhere".into(),
            queue: "q".into(),
            ..PollRequest::default()
        })
        .await
        .expect_err("an unknown vhost");
    assert!(
        matches!(no_vhost.code(), Code::PermissionDenied | Code::NotFound),
        "{no_vhost:?}"
    );

    let mut wrong = tonic::Request::new(PollRequest {
        queue: "q".into(),
        ..PollRequest::default()
    });
    wrong.metadata_mut().insert(
        "authorization",
        "Basic Z3Vlc3Q6d3Jvbmc=".parse().expect("metadata"),
    );
    let refused = queues.poll(wrong).await.expect_err("guest:wrong");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let mut pubsub = PubSubClient::connect(url).await.expect("connect");
    let bad = pubsub
        .subscribe(SubscribeRequest {
            filter: "a = 'open".into(),
            ..SubscribeRequest::default()
        })
        .await
        .expect_err("an unterminated string");
    assert_eq!(bad.code(), Code::InvalidArgument);
}
