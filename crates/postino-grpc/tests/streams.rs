//! Streams and queue administration over the native API, with tonic's generated clients
//! against an in-process server on a real socket: declare, produce with keys, fetch from an
//! offset or a time, follow, consumer groups sharing partitions with committed offsets, and
//! the status codes of bad requests.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use postino_core::{Broker, GroupLimits};
use postino_grpc::proto::{
    self, CommitRequest, CommittedRequest, DeclareQueueRequest, DeclareStreamRequest,
    DeleteQueueRequest, DeleteStreamRequest, FetchRequest, FollowRequest, Position, ProduceRecord,
    ProduceRequest, StreamPartition, follow_event::Item, position::At,
};
use postino_grpc::{PubSubClient, QueuesClient, StreamsClient};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

async fn start() -> (StreamsClient<Channel>, Arc<Broker>, String) {
    let broker = support::broker();
    let url = support::serve_grpc(&broker).await;
    let client = StreamsClient::connect(url.clone()).await.expect("connect");
    (client, broker, url)
}

fn message(body: &str) -> proto::Message {
    proto::Message {
        body: body.as_bytes().to_vec(),
        headers: [(
            "tenant".to_owned(),
            proto::Value {
                kind: Some(proto::value::Kind::Text("acme".into())),
            },
        )]
        .into(),
        properties: Some(proto::Properties {
            content_type: Some("text/plain".into()),
            correlation_id: Some(format!("c-{body}")),
            ..proto::Properties::default()
        }),
    }
}

fn body(record: &proto::Record) -> String {
    String::from_utf8(record.message.as_ref().expect("message").body.clone()).expect("utf-8")
}

/// Publishes `message` to `amq.topic` as `invoice.new`; how many queues took it.
async fn publish_invoice(pubsub: &mut PubSubClient<Channel>, message: proto::Message) -> u32 {
    pubsub
        .publish(proto::PublishRequest {
            exchange: "amq.topic".into(),
            routing_key: "invoice.new".into(),
            message: Some(message),
            ..proto::PublishRequest::default()
        })
        .await
        .expect("publish")
        .into_inner()
        .routed
}

/// The binding of `invoices` to `amq.topic` by `invoice.#` with `filter`.
fn invoices_binding(filter: &str) -> proto::BindRequest {
    proto::BindRequest {
        exchange: "amq.topic".into(),
        queue: "invoices".into(),
        binding_key: "invoice.#".into(),
        filter: filter.into(),
        ..proto::BindRequest::default()
    }
}

async fn declare(streams: &mut StreamsClient<Channel>, name: &str, partitions: u32) {
    let reply = streams
        .declare(DeclareStreamRequest {
            stream: name.into(),
            partitions,
            ..DeclareStreamRequest::default()
        })
        .await
        .expect("declare")
        .into_inner();
    assert_eq!(reply.partitions, partitions);
}

/// Produces `bodies` with `key`, each record a call's worth; their positions.
async fn produce(
    streams: &mut StreamsClient<Channel>,
    stream: &str,
    key: Option<&str>,
    bodies: &[&str],
) -> Vec<proto::RecordPosition> {
    streams
        .produce(ProduceRequest {
            stream: stream.into(),
            records: bodies
                .iter()
                .map(|body| ProduceRecord {
                    key: key.map(|key| key.as_bytes().to_vec()),
                    message: Some(message(body)),
                    partition: None,
                })
                .collect(),
            ..ProduceRequest::default()
        })
        .await
        .expect("produce")
        .into_inner()
        .records
}

async fn fetch(
    streams: &mut StreamsClient<Channel>,
    stream: &str,
    partition: u32,
    at: Option<At>,
) -> Result<proto::FetchReply, tonic::Status> {
    streams
        .fetch(FetchRequest {
            stream: stream.into(),
            partition,
            start: at.map(|at| Position { at: Some(at) }),
            ..FetchRequest::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn next_item(events: &mut Streaming<proto::FollowEvent>) -> Item {
    tokio::time::timeout(Duration::from_secs(30), events.message())
        .await
        .expect("an event in time")
        .expect("no error")
        .expect("the stream goes on")
        .item
        .expect("an item")
}

async fn next_record(events: &mut Streaming<proto::FollowEvent>) -> proto::Record {
    match next_item(events).await {
        Item::Record(record) => record,
        Item::Assigned(assigned) => panic!("a record, not {assigned:?}"),
    }
}

async fn assignment(events: &mut Streaming<proto::FollowEvent>) -> proto::Assignment {
    match next_item(events).await {
        Item::Assigned(assigned) => assigned,
        Item::Record(record) => panic!("an assignment, not {record:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_with_keys_then_fetch_from_an_offset_or_a_time() {
    let (mut streams, _broker, _) = start().await;
    declare(&mut streams, "events", 3).await;

    // One key, one partition, offsets in order.
    let first = produce(&mut streams, "events", Some("user-7"), &["a", "b", "c"]).await;
    let partition = first[0].partition;
    assert!(first.iter().all(|at| at.partition == partition));
    assert_eq!(
        first.iter().map(|at| at.offset).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // Without keys, records go round-robin over every partition.
    let spread = produce(&mut streams, "events", None, &["x", "y", "z"]).await;
    let used: BTreeSet<u32> = spread.iter().map(|at| at.partition).collect();
    assert_eq!(used, BTreeSet::from([0, 1, 2]));

    let all = fetch(&mut streams, "events", partition, None)
        .await
        .expect("fetch");
    let keyed: Vec<_> = all
        .records
        .iter()
        .filter(|record| record.key.as_deref() == Some(b"user-7".as_slice()))
        .collect();
    assert_eq!(
        keyed.iter().map(|record| body(record)).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let properties = keyed[1]
        .message
        .as_ref()
        .and_then(|message| message.properties.clone())
        .expect("properties");
    assert_eq!(properties.correlation_id.as_deref(), Some("c-b"));
    assert_eq!(properties.content_type.as_deref(), Some("text/plain"));
    let headers = &keyed[1].message.as_ref().expect("message").headers;
    assert_eq!(
        headers["tenant"].kind,
        Some(proto::value::Kind::Text("acme".into()))
    );
    assert_eq!(all.high_watermark, all.next_offset);
    assert_eq!(all.log_start, 0);

    // From an offset; and from a time: every record is stamped at or before now.
    let from_one = fetch(&mut streams, "events", partition, Some(At::Offset(1)))
        .await
        .expect("fetch");
    assert_eq!(body(&from_one.records[0]), "b");
    let stamp = all.records[0].timestamp_ms;
    let by_time = fetch(
        &mut streams,
        "events",
        partition,
        Some(At::TimestampMs(stamp)),
    )
    .await
    .expect("fetch");
    assert_eq!(by_time.records[0].offset, 0);
    let later = fetch(
        &mut streams,
        "events",
        partition,
        Some(At::TimestampMs(stamp + 3_600_000)),
    )
    .await
    .expect("fetch");
    assert!(later.records.is_empty(), "nothing is stamped an hour ahead");

    // At most max_records, and where to go on.
    let two = streams
        .fetch(FetchRequest {
            stream: "events".into(),
            partition,
            max_records: 2,
            ..FetchRequest::default()
        })
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(two.records.len(), 2);
    assert_eq!(two.next_offset, 2);

    // Bad requests.
    let past = fetch(&mut streams, "events", partition, Some(At::Offset(99))).await;
    assert_eq!(past.expect_err("out of range").code(), Code::OutOfRange);
    let nowhere = fetch(&mut streams, "events", 7, None).await;
    assert_eq!(nowhere.expect_err("no partition").code(), Code::NotFound);
    let unknown = fetch(&mut streams, "missing", 0, None).await;
    assert_eq!(unknown.expect_err("no stream").code(), Code::NotFound);
    let misplaced = streams
        .produce(ProduceRequest {
            stream: "events".into(),
            records: vec![ProduceRecord {
                key: None,
                message: Some(message("lost")),
                partition: Some(3),
            }],
            ..ProduceRequest::default()
        })
        .await;
    assert_eq!(misplaced.expect_err("no partition").code(), Code::NotFound);
    let after = fetch(&mut streams, "events", partition, None)
        .await
        .expect("fetch");
    assert_eq!(
        after.records.len(),
        all.records.len(),
        "nothing was written"
    );

    streams
        .delete(DeleteStreamRequest {
            stream: "events".into(),
            ..DeleteStreamRequest::default()
        })
        .await
        .expect("delete");
    let gone = fetch(&mut streams, "events", 0, None).await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_announces_its_partitions_then_streams_new_records() {
    let (mut streams, _broker, _) = start().await;
    declare(&mut streams, "ticks", 2).await;
    produce(&mut streams, "ticks", Some("old"), &["before"]).await;

    // Default start: the latest offset, only new records.
    let mut fresh = streams
        .follow(FollowRequest {
            stream: "ticks".into(),
            ..FollowRequest::default()
        })
        .await
        .expect("follow")
        .into_inner();
    let assigned = assignment(&mut fresh).await;
    assert_eq!(assigned.partitions.len(), 2);
    let mut from_start = streams
        .follow(FollowRequest {
            stream: "ticks".into(),
            start: Some(Position {
                at: Some(At::Edge(proto::Edge::Earliest.into())),
            }),
            ..FollowRequest::default()
        })
        .await
        .expect("follow")
        .into_inner();
    assignment(&mut from_start).await;
    assert_eq!(body(&next_record(&mut from_start).await), "before");

    let bodies = ["1", "2", "3", "4"];
    produce(&mut streams, "ticks", Some("new"), &bodies).await;
    for expected in bodies {
        assert_eq!(body(&next_record(&mut fresh).await), expected);
        assert_eq!(body(&next_record(&mut from_start).await), expected);
    }

    // Deleting the stream ends its followers with NOT_FOUND.
    streams
        .delete(DeleteStreamRequest {
            stream: "ticks".into(),
            ..DeleteStreamRequest::default()
        })
        .await
        .expect("delete");
    let ended = tokio::time::timeout(Duration::from_secs(30), fresh.message())
        .await
        .expect("the stream ends in time");
    assert_eq!(ended.expect_err("an error").code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_shares_partitions_and_resumes_from_committed_offsets() {
    let (mut streams, broker, _) = start().await;
    let host = broker.vhost("/").expect("default vhost");
    host.groups()
        .set_limits(GroupLimits {
            initial_rebalance_delay_ms: 0,
            ..GroupLimits::default()
        })
        .await
        .expect("limits");
    declare(&mut streams, "orders", 4).await;
    let follow = FollowRequest {
        stream: "orders".into(),
        group: "billing".into(),
        start: Some(Position {
            at: Some(At::Edge(proto::Edge::Earliest.into())),
        }),
        ..FollowRequest::default()
    };

    let mut one = streams
        .follow(follow.clone())
        .await
        .expect("follow")
        .into_inner();
    let alone = assignment(&mut one).await;
    assert_eq!(
        alone.partitions.len(),
        4,
        "the only member holds every partition"
    );

    // A second member: the group rebalances and each holds two.
    let mut two = streams
        .follow(follow.clone())
        .await
        .expect("follow")
        .into_inner();
    let second = assignment(&mut two).await;
    let first = loop {
        let assigned = assignment(&mut one).await;
        if assigned.generation == second.generation {
            break assigned;
        }
    };
    let held = |assigned: &proto::Assignment| -> BTreeSet<u32> {
        assigned.partitions.iter().map(|at| at.partition).collect()
    };
    assert_eq!(held(&first).len(), 2);
    assert_eq!(held(&second).len(), 2);
    assert!(held(&first).is_disjoint(&held(&second)));

    // One record a partition; each member reads its own.
    for partition in 0..4 {
        streams
            .produce(ProduceRequest {
                stream: "orders".into(),
                records: vec![ProduceRecord {
                    key: None,
                    message: Some(message(&format!("p{partition}"))),
                    partition: Some(partition),
                }],
                ..ProduceRequest::default()
            })
            .await
            .expect("produce");
    }
    let mut read = BTreeMap::new();
    for (events, assigned) in [(&mut one, &first), (&mut two, &second)] {
        for _ in 0..2 {
            let record = next_record(events).await;
            assert!(held(assigned).contains(&record.partition));
            read.insert(record.partition, body(&record));
        }
    }
    assert_eq!(read.len(), 4);

    // The first member commits its partitions past what it read.
    let commits: Vec<StreamPartition> = first
        .partitions
        .iter()
        .map(|at| StreamPartition {
            stream: "orders".into(),
            partition: at.partition,
            offset: 1,
        })
        .collect();
    streams
        .commit(CommitRequest {
            group: "billing".into(),
            member_id: first.member_id.clone(),
            generation: first.generation,
            offsets: commits.clone(),
            ..CommitRequest::default()
        })
        .await
        .expect("commit");
    let stale = streams
        .commit(CommitRequest {
            group: "billing".into(),
            member_id: first.member_id.clone(),
            generation: alone.generation,
            offsets: commits,
            ..CommitRequest::default()
        })
        .await;
    assert_eq!(
        stale.expect_err("a stale generation").code(),
        Code::FailedPrecondition
    );
    let committed = streams
        .committed(CommittedRequest {
            group: "billing".into(),
            ..CommittedRequest::default()
        })
        .await
        .expect("committed")
        .into_inner()
        .offsets;
    assert_eq!(
        committed
            .iter()
            .map(|at| at.partition)
            .collect::<BTreeSet<_>>(),
        held(&first)
    );

    // Both leave; a new member starts from the committed offsets where there are some and
    // from the earliest elsewhere: it reads again only what the second member held.
    drop(one);
    drop(two);
    let mut three = streams.follow(follow).await.expect("follow").into_inner();
    let resumed = loop {
        let assigned = assignment(&mut three).await;
        if assigned.partitions.len() == 4 {
            break assigned;
        }
    };
    for at in &resumed.partitions {
        let expected = u64::from(held(&first).contains(&at.partition));
        assert_eq!(at.offset, expected, "partition {}", at.partition);
    }
    let mut again = BTreeSet::new();
    for _ in 0..2 {
        again.insert(next_record(&mut three).await.partition);
    }
    assert_eq!(again, held(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_declared_bound_and_deleted_over_the_api() {
    let (_, _broker, url) = start().await;
    let mut queues = QueuesClient::connect(url.clone()).await.expect("connect");
    let mut pubsub = PubSubClient::connect(url).await.expect("connect");
    let declared = queues
        .declare(DeclareQueueRequest {
            queue: "invoices".into(),
            durable: true,
            arguments: [(
                "x-max-length".to_owned(),
                proto::Value {
                    kind: Some(proto::value::Kind::Int(10)),
                },
            )]
            .into(),
            ..DeclareQueueRequest::default()
        })
        .await
        .expect("declare")
        .into_inner();
    assert!(declared.created);
    let again = queues
        .declare(DeclareQueueRequest {
            queue: "invoices".into(),
            durable: true,
            arguments: [(
                "x-max-length".to_owned(),
                proto::Value {
                    kind: Some(proto::value::Kind::Int(10)),
                },
            )]
            .into(),
            ..DeclareQueueRequest::default()
        })
        .await
        .expect("declare again")
        .into_inner();
    assert!(!again.created);
    let different = queues
        .declare(DeclareQueueRequest {
            queue: "invoices".into(),
            durable: false,
            ..DeclareQueueRequest::default()
        })
        .await;
    assert_eq!(
        different.expect_err("other properties").code(),
        Code::FailedPrecondition
    );
    let bad_filter = queues.bind(invoices_binding("amount >")).await;
    assert_eq!(
        bad_filter.expect_err("a filter that does not parse").code(),
        Code::InvalidArgument
    );
    queues
        .bind(invoices_binding("tenant = 'acme'"))
        .await
        .expect("bind");
    let routed = publish_invoice(&mut pubsub, message("inv-1")).await;
    assert_eq!(routed, 1);
    let other_tenant = publish_invoice(
        &mut pubsub,
        proto::Message {
            body: b"inv-2".to_vec(),
            ..proto::Message::default()
        },
    )
    .await;
    assert_eq!(other_tenant, 0, "the binding's filter refuses it");

    let busy = queues
        .delete(DeleteQueueRequest {
            queue: "invoices".into(),
            if_empty: true,
            ..DeleteQueueRequest::default()
        })
        .await;
    assert_eq!(
        busy.expect_err("not empty").code(),
        Code::FailedPrecondition
    );
    queues
        .unbind(invoices_binding("tenant = 'acme'"))
        .await
        .expect("unbind");
    let unbound = publish_invoice(&mut pubsub, message("inv-3")).await;
    assert_eq!(unbound, 0);
    queues
        .delete(DeleteQueueRequest {
            queue: "invoices".into(),
            ..DeleteQueueRequest::default()
        })
        .await
        .expect("delete");
    let gone = queues
        .poll(proto::PollRequest {
            queue: "invoices".into(),
            ..proto::PollRequest::default()
        })
        .await;
    assert_eq!(gone.expect_err("deleted").code(), Code::NotFound);
    let nameless = queues.declare(DeclareQueueRequest::default()).await;
    assert_eq!(nameless.expect_err("no name").code(), Code::InvalidArgument);
}
