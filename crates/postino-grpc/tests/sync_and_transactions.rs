//! The synchronisation modes of a put beyond storage — until delivered, until replied
//! (request/reply with a correlation id) — transactions, and a notify stream nobody reads,
//! over the native API with tonic's generated clients against an in-process server on a real
//! socket.

mod support;

use std::sync::Arc;
use std::time::Duration;

use postino_core::{Broker, QueueSpec};
use postino_grpc::proto::{
    self, BeginRequest, GetRequest, PollRequest, PublishRequest, PutRequest, SettleRequest, Sync,
    TransactionRequest,
};
use postino_grpc::{PubSubClient, QueuesClient, TransactionsClient};
use tonic::Code;
use tonic::transport::Channel;

async fn start(queues: &[&str]) -> (String, Arc<Broker>) {
    let broker = support::broker();
    let host = broker.vhost("/").expect("default vhost");
    for queue in queues {
        host.declare_queue(queue, QueueSpec::durable())
            .expect("declare");
    }
    (support::serve_grpc(&broker).await, broker)
}

fn message(body: &str) -> proto::Message {
    proto::Message {
        body: body.as_bytes().to_vec(),
        ..proto::Message::default()
    }
}

fn body(delivery: &proto::Delivery) -> String {
    let message = delivery.message.as_ref().expect("a message");
    String::from_utf8(message.body.clone()).expect("utf-8")
}

fn put_request(queue: &str, body: &str, sync: Sync) -> PutRequest {
    PutRequest {
        queue: queue.to_owned(),
        message: Some(message(body)),
        sync: sync.into(),
        ..PutRequest::default()
    }
}

async fn poll(queues: &mut QueuesClient<Channel>, queue: &str) -> Option<proto::Delivery> {
    queues
        .poll(PollRequest {
            queue: queue.to_owned(),
            auto_ack: true,
            ..PollRequest::default()
        })
        .await
        .expect("poll")
        .into_inner()
        .delivery
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_until_delivered_returns_once_a_consumer_took_the_message() {
    let (url, _broker) = start(&["jobs"]).await;
    let mut queues = QueuesClient::connect(url.clone()).await.expect("connect");
    let waiting = tokio::spawn({
        let mut queues = queues.clone();
        async move {
            queues
                .put(put_request("jobs", "wake up", Sync::Delivered))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "nobody has taken the message yet");
    let taken = poll(&mut queues, "jobs").await.expect("the message");
    assert_eq!(body(&taken), "wake up");
    waiting.await.expect("task").expect("delivered");

    let missing = queues
        .put(put_request("nowhere", "x", Sync::Delivered))
        .await
        .expect_err("no such queue");
    assert_eq!(missing.code(), Code::NotFound);
    let mut pubsub = PubSubClient::connect(url).await.expect("connect");
    let refused = pubsub
        .publish(PublishRequest {
            routing_key: "jobs".into(),
            message: Some(message("x")),
            sync: Sync::Delivered.into(),
            ..PublishRequest::default()
        })
        .await
        .expect_err("a publish does not wait for delivery");
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_until_replied_returns_the_answer_with_its_correlation_id() {
    let (url, broker) = start(&["rpc"]).await;
    let mut queues = QueuesClient::connect(url).await.expect("connect");
    let asking = tokio::spawn({
        let mut queues = queues.clone();
        async move { queues.put(put_request("rpc", "21", Sync::Replied)).await }
    });
    // The server: take the request, answer on its reply_to — first with a stray correlation
    // id (dropped), then with the request's.
    let request = queues
        .get(GetRequest {
            queue: "rpc".into(),
            wait_ms: 10_000,
            auto_ack: true,
            ..GetRequest::default()
        })
        .await
        .expect("get")
        .into_inner()
        .delivery
        .expect("the request");
    let properties = request
        .message
        .as_ref()
        .and_then(|message| message.properties.clone())
        .expect("properties");
    let reply_to = properties.reply_to.expect("reply_to set by the server");
    let correlation = properties.correlation_id.expect("a correlation id");
    assert!(reply_to.starts_with("postino.reply."), "{reply_to}");
    for (correlation, answer) in [("someone else", "0"), (correlation.as_str(), "42")] {
        let mut reply = message(answer);
        reply.properties = Some(proto::Properties {
            correlation_id: Some(correlation.to_owned()),
            ..proto::Properties::default()
        });
        queues
            .put(PutRequest {
                queue: reply_to.clone(),
                message: Some(reply),
                ..PutRequest::default()
            })
            .await
            .expect("answer");
    }
    let answer = asking
        .await
        .expect("task")
        .expect("replied")
        .into_inner()
        .reply
        .expect("the answer");
    assert_eq!(body(&answer), "42");

    let mut unanswered = put_request("rpc", "nobody listens", Sync::Replied);
    unanswered.reply_timeout_ms = Some(200);
    let timed_out = queues.put(unanswered).await.expect_err("no answer");
    assert_eq!(timed_out.code(), Code::DeadlineExceeded);
    // Both reply queues go once their puts end.
    let host = broker.vhost("/").expect("default vhost");
    for _ in 0..100 {
        if !host
            .queue_names()
            .iter()
            .any(|name| name.starts_with("postino.reply."))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("reply queues left behind: {:?}", host.queue_names());
}

async fn begin(transactions: &mut TransactionsClient<Channel>, timeout_ms: Option<u64>) -> String {
    transactions
        .begin(BeginRequest {
            timeout_ms,
            ..BeginRequest::default()
        })
        .await
        .expect("begin")
        .into_inner()
        .transaction
}

fn named(transaction: &str) -> TransactionRequest {
    TransactionRequest {
        transaction: transaction.to_owned(),
        ..TransactionRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_apply_puts_publishes_and_acks_at_commit_or_not_at_all() {
    let (url, _broker) = start(&["orders", "audit"]).await;
    let mut queues = QueuesClient::connect(url.clone()).await.expect("connect");
    let mut pubsub = PubSubClient::connect(url.clone()).await.expect("connect");
    let mut transactions = TransactionsClient::connect(url).await.expect("connect");

    let tx = begin(&mut transactions, None).await;
    let mut put = put_request("orders", "o1", Sync::Stored);
    put.transaction.clone_from(&tx);
    queues.put(put).await.expect("put in the transaction");
    pubsub
        .publish(PublishRequest {
            exchange: "amq.direct".into(),
            routing_key: "audit".into(),
            message: Some(message("a1")),
            transaction: tx.clone(),
            ..PublishRequest::default()
        })
        .await
        .expect("publish in the transaction");
    assert!(
        poll(&mut queues, "orders").await.is_none(),
        "not before commit"
    );
    let committed = transactions.commit(named(&tx)).await.expect("commit");
    // amq.direct has no binding for "audit": the publish reached nothing.
    assert_eq!(committed.into_inner().routed, vec![1, 0]);
    let again = transactions
        .commit(named(&tx))
        .await
        .expect_err("a transaction commits once");
    assert_eq!(again.code(), Code::NotFound);

    // An ack in a rolled-back transaction leaves the delivery in flight; a committed one
    // settles it.
    let delivery = queues
        .poll(PollRequest {
            queue: "orders".into(),
            lease_ms: Some(60_000),
            ..PollRequest::default()
        })
        .await
        .expect("poll")
        .into_inner()
        .delivery
        .expect("o1 after the commit");
    assert_eq!(body(&delivery), "o1");
    let ack = |transaction: &str| SettleRequest {
        queue: "orders".into(),
        delivery_ids: vec![delivery.delivery_id],
        transaction: transaction.to_owned(),
        ..SettleRequest::default()
    };
    let tx = begin(&mut transactions, None).await;
    queues.ack(ack(&tx)).await.expect("ack in the transaction");
    let mut put = put_request("orders", "o2", Sync::Stored);
    put.transaction.clone_from(&tx);
    queues.put(put).await.expect("put in the transaction");
    transactions.rollback(named(&tx)).await.expect("rollback");
    assert!(
        poll(&mut queues, "orders").await.is_none(),
        "o2 was rolled back"
    );
    let tx = begin(&mut transactions, None).await;
    queues.ack(ack(&tx)).await.expect("ack in the transaction");
    transactions.commit(named(&tx)).await.expect("commit");
    let settled = queues
        .ack(ack(""))
        .await
        .expect_err("settled by the commit");
    assert_eq!(settled.code(), Code::FailedPrecondition);

    // A part the queue refuses fails the commit, and nothing of it applies.
    let tx = begin(&mut transactions, None).await;
    let mut put = put_request("orders", "o3", Sync::Stored);
    put.transaction.clone_from(&tx);
    queues.put(put).await.expect("put in the transaction");
    queues
        .ack(SettleRequest {
            delivery_ids: vec![9_999],
            ..ack(&tx)
        })
        .await
        .expect("an ack is checked at commit");
    let refused = transactions
        .commit(named(&tx))
        .await
        .expect_err("an unknown delivery");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        poll(&mut queues, "orders").await.is_none(),
        "o3 was not applied"
    );

    // Unknown, timed-out and misused transactions.
    let mut unknown = put_request("orders", "x", Sync::Stored);
    unknown.transaction = "tx-unknown".into();
    assert_eq!(
        queues.put(unknown).await.expect_err("unknown").code(),
        Code::NotFound
    );
    let tx = begin(&mut transactions, Some(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let mut late = put_request("orders", "x", Sync::Stored);
    late.transaction.clone_from(&tx);
    assert_eq!(
        queues.put(late).await.expect_err("timed out").code(),
        Code::NotFound
    );
    let tx = begin(&mut transactions, None).await;
    let mut waits = put_request("orders", "x", Sync::Delivered);
    waits.transaction = tx;
    assert_eq!(
        queues.put(waits).await.expect_err("cannot wait").code(),
        Code::InvalidArgument
    );
}

/// A client that opens a notify stream and stops reading holds the server to a bounded
/// amount: the stream's buffer and the consumer's credit; the rest stays ready in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_stream_nobody_reads_holds_a_bounded_number_of_messages() {
    let (url, broker) = start(&["backlog"]).await;
    let mut queues = QueuesClient::connect(url).await.expect("connect");
    let body = "x".repeat(64 << 10);
    for _ in 0..300 {
        queues
            .put(put_request("backlog", &body, Sync::None))
            .await
            .expect("put");
    }
    let stalled = queues
        .notify(proto::NotifyRequest {
            queue: "backlog".into(),
            prefetch: 10,
            auto_ack: true,
            ..proto::NotifyRequest::default()
        })
        .await
        .expect("notify")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queue = broker
        .vhost("/")
        .and_then(|host| host.queue("backlog"))
        .expect("the queue");
    let stats = queue.stats().await.expect("stats");
    // Taken: what HTTP/2 flow control let through to the client (its stream window), 16 in
    // the stream's buffer, 10 of credit and one in the forwarder's hands.
    let taken = 300 - stats.ready;
    assert!(taken >= 10, "the stream took its credit: {stats:?}");
    assert!(
        stats.unacked <= 10,
        "no more than the credit in flight: {stats:?}"
    );
    assert!(
        stats.ready >= 150,
        "the backlog stays in the queue: {stats:?}"
    );
    drop(stalled);
}
