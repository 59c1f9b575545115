//! A virtual host with owner tasks: routing to queues, confirms, pull with waiting, leases run by
//! the owner's timer, and durable definitions and messages across a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postino_core::{
    Binding, ConsumerSpec, CoreError, Destination, ExchangeKind, ExchangeSpec, GetSpec, Outcome,
    QueueSpec, VirtualHost,
};
use postino_storage::LogConfig;
use postino_types::{Headers, Message, SystemClock};

fn open(dir: Option<&Path>) -> Arc<VirtualHost> {
    VirtualHost::open(
        "/",
        dir.map(Path::to_path_buf),
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .expect("open virtual host")
}

fn bind(host: &VirtualHost, exchange: &str, queue: &str, key: &str) {
    host.bind(Binding {
        source: exchange.to_owned(),
        destination: Destination::Queue(queue.to_owned()),
        key: key.to_owned(),
        arguments: Headers::new(),
    })
    .expect("bind");
}

#[tokio::test]
async fn a_topic_publish_reaches_every_bound_queue_and_is_consumed() {
    let host = open(None);
    let (orders, _) = host
        .declare_queue("orders", QueueSpec::transient())
        .expect("declare");
    let (audit, _) = host
        .declare_queue("audit", QueueSpec::transient())
        .expect("declare");
    bind(&host, "amq.topic", "orders", "order.*");
    bind(&host, "amq.topic", "audit", "#");
    let routed = host
        .publish("amq.topic", "order.created", Message::new(&b"o1"[..]))
        .await
        .expect("publish");
    assert_eq!(routed.queues, 2);
    let unroutable = host
        .publish("amq.direct", "nobody", Message::new(&b"lost"[..]))
        .await
        .expect("publish");
    assert_eq!(unroutable.queues, 0);

    let mut deliveries = orders
        .consume(1, ConsumerSpec::default())
        .await
        .expect("consume");
    let delivery = deliveries.recv().await.expect("a delivery");
    assert_eq!(&delivery.message.body[..], b"o1");
    assert_eq!(delivery.message.annotations.exchange, "amq.topic");
    assert_eq!(delivery.message.annotations.routing_key, "order.created");
    orders
        .settle(vec![delivery.id], Outcome::Accept)
        .await
        .expect("ack");
    assert_eq!(orders.stats().await.expect("stats").unacked, 0);
    let pulled = audit
        .get(GetSpec::default(), None)
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(&pulled.message.body[..], b"o1");
    assert!(matches!(
        orders.settle(vec![delivery.id], Outcome::Accept).await,
        Err(CoreError::UnknownDelivery { .. })
    ));
}

#[tokio::test]
async fn a_blocking_get_waits_for_the_next_message_and_a_poll_does_not() {
    let host = open(None);
    let (queue, _) = host
        .declare_queue("jobs", QueueSpec::transient())
        .expect("declare");
    assert!(
        queue
            .get(GetSpec::default(), None)
            .await
            .expect("poll")
            .is_none()
    );
    assert!(
        queue
            .get(GetSpec::default(), Some(Duration::from_millis(20)))
            .await
            .expect("get")
            .is_none(),
        "a wait that ends with nothing answers None"
    );
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move {
            queue
                .get(GetSpec::default(), Some(Duration::from_secs(30)))
                .await
        }
    });
    tokio::task::yield_now().await;
    host.publish("", "jobs", Message::new(&b"job"[..]))
        .await
        .expect("publish");
    let delivery = waiting
        .await
        .expect("task")
        .expect("get")
        .expect("a message");
    assert_eq!(&delivery.message.body[..], b"job");
}

#[tokio::test]
async fn a_receipt_resolves_when_a_get_or_a_consumer_takes_the_message() {
    let host = open(None);
    let (queue, _) = host
        .declare_queue("jobs", QueueSpec::transient())
        .expect("declare");
    let (confirm, receipt) = host
        .put_with_receipt("jobs", Message::new(&b"first"[..]))
        .await
        .expect("put");
    confirm.wait().await.expect("stored");
    let waiting = tokio::spawn(receipt.delivered());
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "nobody has taken it yet");
    let taken = queue
        .get(GetSpec::default(), None)
        .await
        .expect("get")
        .expect("a message");
    assert_eq!(&taken.message.body[..], b"first");
    waiting.await.expect("task").expect("delivered to the get");

    let mut deliveries = queue
        .consume(7, ConsumerSpec::default())
        .await
        .expect("consume");
    let (_, receipt) = host
        .put_with_receipt("jobs", Message::new(&b"second"[..]))
        .await
        .expect("put");
    receipt
        .delivered()
        .await
        .expect("delivered to the consumer");
    let pushed = deliveries.recv().await.expect("a delivery");
    assert_eq!(&pushed.message.body[..], b"second");
    assert_eq!(pushed.message.annotations.routing_key, "jobs");

    let missing = host
        .put_with_receipt("nowhere", Message::new(&b"x"[..]))
        .await
        .expect_err("no such queue");
    assert!(matches!(missing, CoreError::NotFound { .. }), "{missing}");
    queue.cancel(7).await.expect("cancel");
    let (_, lost) = host
        .put_with_receipt("jobs", Message::new(&b"third"[..]))
        .await
        .expect("put");
    host.delete_queue("jobs").await.expect("delete");
    let stopped = lost.delivered().await;
    assert!(
        matches!(stopped, Err(CoreError::QueueStopped { .. })),
        "a deleted queue delivers nothing: {stopped:?}"
    );
}

#[tokio::test]
async fn the_owner_returns_a_message_whose_lease_ended() {
    let host = open(None);
    let (queue, _) = host
        .declare_queue("work", QueueSpec::transient())
        .expect("declare");
    host.publish("", "work", Message::new(&b"task"[..]))
        .await
        .expect("publish");
    let spec = ConsumerSpec {
        lease_ms: Some(30),
        ..ConsumerSpec::default()
    };
    let mut deliveries = queue.consume(1, spec).await.expect("consume");
    let first = deliveries.recv().await.expect("delivery");
    assert_eq!(first.message.annotations.delivery_count, 0);
    let second = deliveries.recv().await.expect("redelivery after the lease");
    assert_eq!(second.id, first.id);
    assert!(second.message.annotations.redelivered);
    assert_eq!(second.message.annotations.delivery_count, 1);
    queue.change_lease(second.id, 60_000).await.expect("extend");
    queue
        .settle(vec![second.id], Outcome::Accept)
        .await
        .expect("ack");
}

#[tokio::test]
async fn declarations_are_checked_for_equivalence() {
    let host = open(None);
    host.declare_queue("q", QueueSpec::transient())
        .expect("declare");
    let (_, created) = host
        .declare_queue("q", QueueSpec::transient())
        .expect("same again");
    assert!(!created);
    assert!(matches!(
        host.declare_queue("q", QueueSpec::durable()),
        Err(CoreError::PreconditionFailed { .. })
    ));
    host.delete_queue("q").await.expect("delete");
    assert!(host.queue("q").is_none());
    assert!(matches!(
        host.delete_queue("q").await,
        Err(CoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn durable_definitions_and_confirmed_messages_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let host = open(Some(dir.path()));
        host.declare_exchange("events", ExchangeSpec::new(ExchangeKind::Fanout))
            .expect("declare");
        let mut transient_exchange = ExchangeSpec::new(ExchangeKind::Fanout);
        transient_exchange.durable = false;
        host.declare_exchange("scratch", transient_exchange)
            .expect("declare");
        host.declare_queue("kept", QueueSpec::durable())
            .expect("declare");
        host.declare_queue("gone", QueueSpec::transient())
            .expect("declare");
        bind(&host, "events", "kept", "");
        bind(&host, "events", "gone", "");
        for index in 0..5 {
            let message = Message::new(format!("p{index}").into_bytes()).persistent();
            let routed = host
                .publish("events", "", message)
                .await
                .expect("confirmed");
            assert_eq!(routed.queues, 2);
        }
        host.publish("events", "", Message::new(&b"transient"[..]))
            .await
            .expect("publish");
        let kept = host.queue("kept").expect("queue");
        let delivery = kept
            .get(GetSpec::default(), None)
            .await
            .expect("get")
            .expect("p0");
        kept.settle(vec![delivery.id], Outcome::Accept)
            .await
            .expect("ack");
        assert_eq!(
            kept.stats().await.expect("stats").ready,
            5,
            "p1..p4 and the transient one"
        );
        host.close().await.expect("close");
        assert!(matches!(
            kept.stats().await,
            Err(CoreError::QueueStopped { .. })
        ));
    }
    let host = open(Some(dir.path()));
    assert!(
        host.queue("gone").is_none(),
        "a transient queue does not survive"
    );
    let kept = host.queue("kept").expect("a durable queue survives");
    assert_eq!(
        kept.stats().await.expect("stats").ready,
        4,
        "p1..p4; not the acked p0 nor the transient"
    );
    let routed = host
        .publish("events", "", Message::new(&b"again"[..]).persistent())
        .await
        .expect("publish");
    assert_eq!(
        routed.queues, 1,
        "the durable binding survived; the one to the transient queue did not"
    );
    assert!(matches!(
        host.publish("scratch", "", Message::new(&b"x"[..])).await,
        Err(CoreError::NotFound { .. })
    ));
    let first = kept
        .get(GetSpec::default(), None)
        .await
        .expect("get")
        .expect("p1");
    assert_eq!(&first.message.body[..], b"p1");
}

#[tokio::test]
async fn dead_letters_travel_through_the_dead_letter_exchange() {
    let host = open(None);
    host.declare_exchange("dlx", ExchangeSpec::new(ExchangeKind::Fanout))
        .expect("declare");
    let (dead, _) = host
        .declare_queue("dead", QueueSpec::transient())
        .expect("declare");
    bind(&host, "dlx", "dead", "");
    let mut arguments = Headers::new();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        postino_types::HeaderValue::Text("dlx".into()),
    );
    let spec = QueueSpec {
        arguments,
        ..QueueSpec::transient()
    };
    let (work, _) = host.declare_queue("work", spec).expect("declare");
    host.publish("", "work", Message::new(&b"poison"[..]))
        .await
        .expect("publish");
    let delivery = work
        .get(GetSpec::default(), None)
        .await
        .expect("get")
        .expect("message");
    work.settle(vec![delivery.id], Outcome::Discard)
        .await
        .expect("reject");
    let letter = dead
        .get(GetSpec::default(), Some(Duration::from_secs(30)))
        .await
        .expect("get")
        .expect("the dead letter arrives");
    assert_eq!(&letter.message.body[..], b"poison");
    let death = &letter.message.annotations.deaths[0];
    assert_eq!(
        (death.queue.as_str(), death.reason),
        ("work", postino_types::DeathReason::Rejected)
    );
    assert_eq!(letter.message.annotations.exchange, "dlx");
    let mut bad = Headers::new();
    bad.insert(
        "x-max-length".into(),
        postino_types::HeaderValue::Text("ten".into()),
    );
    assert!(matches!(
        host.declare_queue(
            "bad",
            QueueSpec {
                arguments: bad,
                ..QueueSpec::transient()
            }
        ),
        Err(CoreError::InvalidArgument { .. })
    ));
}

/// Waits (bounded) until the queue is gone; false if it is still there after 10 s.
async fn gone(host: &VirtualHost, name: &str) -> bool {
    for _ in 0..1_000 {
        if host.queue(name).is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn an_exclusive_queue_belongs_to_its_connection_and_goes_with_it() {
    let host = open(None);
    let spec = QueueSpec {
        exclusive: true,
        ..QueueSpec::transient()
    };
    host.declare_queue_for("mine", spec.clone(), Some(1))
        .expect("declare");
    assert!(matches!(
        host.declare_queue_for("mine", spec.clone(), Some(2)),
        Err(CoreError::ResourceLocked { .. })
    ));
    assert!(matches!(
        host.queue_for("mine", Some(2)),
        Err(CoreError::ResourceLocked { .. })
    ));
    host.queue_for("mine", Some(1))
        .expect("the owner may use it");
    assert!(matches!(
        host.declare_queue("other", spec),
        Err(CoreError::InvalidArgument { .. })
    ));
    host.connection_closed(1).await.expect("close");
    assert!(host.queue("mine").is_none());
}

#[tokio::test]
async fn an_auto_delete_queue_goes_when_its_last_consumer_leaves() {
    let host = open(None);
    let spec = QueueSpec {
        auto_delete: true,
        ..QueueSpec::transient()
    };
    let (queue, _) = host.declare_queue("fleeting", spec).expect("declare");
    let _first = queue
        .consume(1, ConsumerSpec::default())
        .await
        .expect("consume");
    let _second = queue
        .consume(2, ConsumerSpec::default())
        .await
        .expect("consume");
    queue.cancel(1).await.expect("cancel");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(host.queue("fleeting").is_some(), "one consumer is left");
    queue.cancel(2).await.expect("cancel");
    assert!(gone(&host, "fleeting").await);
}

#[tokio::test]
async fn a_queue_unused_for_its_expiry_is_deleted() {
    let host = open(None);
    let mut arguments = Headers::new();
    arguments.insert("x-expires".into(), postino_types::HeaderValue::Int(30));
    let spec = QueueSpec {
        arguments,
        ..QueueSpec::transient()
    };
    let (used, _) = host.declare_queue("used", spec.clone()).expect("declare");
    host.declare_queue("idle", spec).expect("declare");
    let _deliveries = used
        .consume(1, ConsumerSpec::default())
        .await
        .expect("consume");
    assert!(gone(&host, "idle").await);
    assert!(
        host.queue("used").is_some(),
        "a queue with a consumer is in use"
    );
}

#[tokio::test]
async fn notify_calls_back_on_arrival_and_recover_redelivers() {
    let host = open(None);
    let (queue, _) = host
        .declare_queue("events", QueueSpec::transient())
        .expect("declare");
    let (seen, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let task = queue
        .notify(1, ConsumerSpec::default(), move |delivery| {
            let _ = seen.send((delivery.id, delivery.message.annotations.redelivered));
        })
        .await
        .expect("notify");
    host.publish("", "events", Message::new(&b"e"[..]))
        .await
        .expect("publish");
    let (id, redelivered) = arrivals.recv().await.expect("called back");
    assert!(!redelivered);
    queue.recover(1).await.expect("recover");
    let again = arrivals.recv().await.expect("called back again");
    assert_eq!(again, (id, true));
    queue.cancel(1).await.expect("cancel");
    task.await
        .expect("the callback task ends with the consumer");
}

#[tokio::test]
async fn deleting_a_queue_in_use_or_not_empty_is_refused_when_asked() {
    let host = open(None);
    let (queue, _) = host
        .declare_queue("busy", QueueSpec::transient())
        .expect("declare");
    host.publish("", "busy", Message::new(&b"m"[..]))
        .await
        .expect("publish");
    assert!(matches!(
        host.delete_queue_if("busy", false, true).await,
        Err(CoreError::PreconditionFailed { .. })
    ));
    let mut deliveries = queue
        .consume(1, ConsumerSpec::default())
        .await
        .expect("consume");
    let delivery = deliveries.recv().await.expect("delivery");
    queue
        .settle(vec![delivery.id], Outcome::Accept)
        .await
        .expect("ack");
    assert!(matches!(
        host.delete_queue_if("busy", true, false).await,
        Err(CoreError::PreconditionFailed { .. })
    ));
    queue.cancel(1).await.expect("cancel");
    host.delete_queue_if("busy", true, true)
        .await
        .expect("unused and empty now");
    assert!(host.queue("busy").is_none());
}

#[tokio::test]
async fn pipelined_acks_are_applied_in_order_and_survive_an_immediate_close() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let host = open(Some(dir.path()));
        let (queue, _) = host
            .declare_queue("acks", QueueSpec::durable())
            .expect("declare");
        for index in 0..3 {
            queue
                .publish(Message::new(format!("m{index}").into_bytes()).persistent())
                .await
                .expect("publish")
                .wait()
                .expect("durable");
        }
        let first = queue
            .get(GetSpec::default(), None)
            .await
            .expect("get")
            .expect("m0");
        let second = queue
            .get(GetSpec::default(), None)
            .await
            .expect("get")
            .expect("m1");
        queue
            .settle_pipelined(vec![first.id], Outcome::Accept)
            .await
            .expect("queued");
        queue
            .settle_pipelined(vec![first.id], Outcome::Accept)
            .await
            .expect("a second ack of the same id is queued, refused by the owner, and logged");
        queue
            .settle_pipelined(vec![second.id], Outcome::Accept)
            .await
            .expect("queued");
        let stats = queue.stats().await.expect("the owner is still running");
        assert_eq!(
            (stats.ready, stats.unacked),
            (1, 0),
            "both acks were applied before the later command"
        );
        host.close().await.expect("close");
    }
    let host = open(Some(dir.path()));
    let queue = host.queue("acks").expect("durable");
    assert_eq!(
        queue.stats().await.expect("stats").ready,
        1,
        "only m2 is left"
    );
}
