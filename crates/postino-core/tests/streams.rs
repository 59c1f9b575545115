//! Streams on a virtual host with owner tasks: keyed partitioning, reading by offset, waiting
//! fetches, retention, idempotent producers and durable specs and records across a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postino_core::stream::{partition_for_key, records_of};
use postino_core::{
    Binding, CoreError, Destination, FetchSpec, OnOutOfRange, Partitioner, ProducerRecord,
    QueueSpec, StartAt, StreamSpec, VirtualHost,
};
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, LogConfig};
use postino_types::{Headers, Message, SystemClock};

fn open(dir: Option<&Path>) -> Arc<VirtualHost> {
    let config = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    VirtualHost::open(
        "/",
        dir.map(Path::to_path_buf),
        config,
        Arc::new(SystemClock),
    )
    .expect("open virtual host")
}

fn keyed(key: &str, value: &str) -> ProducerRecord {
    ProducerRecord {
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        ..ProducerRecord::default()
    }
}

async fn values(host: &VirtualHost, stream: &str, partition: u32, from: u64) -> Vec<String> {
    let stream = host.stream(stream).expect("stream exists");
    let mut at = from;
    let mut values = Vec::new();
    loop {
        let fetched = stream
            .fetch(partition, FetchSpec::at(at))
            .await
            .expect("fetch");
        let records = records_of(&fetched).expect("records decode");
        let Some(last) = records.last() else {
            return values;
        };
        at = last.offset + 1;
        values.extend(records.iter().map(|record| {
            String::from_utf8(record.value.clone().expect("a value").to_vec()).expect("utf-8")
        }));
    }
}

#[tokio::test]
async fn keyed_records_keep_their_partition_and_order_across_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    let (stream, created) = host
        .declare_stream("orders", StreamSpec::with_partitions(4))
        .expect("declare");
    assert!(created);
    let mut partitioner = Partitioner::new(postino_core::stream::Spread::RoundRobin);
    let records: Vec<ProducerRecord> = (0..40)
        .map(|index| {
            keyed(
                &format!("customer-{}", index % 5),
                &format!("order-{index}"),
            )
        })
        .collect();
    let produced = stream
        .produce_records(&mut partitioner, &records)
        .await
        .expect("produce");
    for (_, outcome) in &produced {
        outcome.durable.clone().await.expect("durable");
    }
    host.close().await.expect("close");
    drop(host);

    let host = open(Some(dir.path()));
    let stream = host.stream("orders").expect("the stream came back");
    assert_eq!(stream.partition_count(), 4);
    for partition in 0..4 {
        let expected: Vec<String> = (0..40)
            .filter(|index| {
                partition_for_key(format!("customer-{}", index % 5).as_bytes(), 4) == partition
            })
            .map(|index| format!("order-{index}"))
            .collect();
        assert_eq!(values(&host, "orders", partition, 0).await, expected);
    }
    let more = stream
        .produce_records(&mut partitioner, &[keyed("customer-0", "late")])
        .await
        .expect("produce");
    let (partition, outcome) = &more[0];
    assert_eq!(*partition, partition_for_key(b"customer-0", 4));
    assert_eq!(outcome.base_offset, 8, "offsets continue after the restart");
}

#[tokio::test]
async fn a_waiting_fetch_is_answered_when_a_record_arrives() {
    let host = open(None);
    let (stream, _) = host
        .declare_stream("events", StreamSpec::with_partitions(1))
        .expect("declare");
    let reader = {
        let stream = Arc::clone(&stream);
        tokio::spawn(async move {
            stream
                .fetch(0, FetchSpec::at(0).waiting(Duration::from_secs(30)))
                .await
        })
    };
    tokio::task::yield_now().await;
    let mut partitioner = Partitioner::new(postino_core::stream::Spread::RoundRobin);
    stream
        .produce_records(&mut partitioner, &[keyed("k", "hello")])
        .await
        .expect("produce");
    let fetched = reader.await.expect("reader task").expect("fetch");
    let records = records_of(&fetched).expect("records");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"hello"[..]));

    let empty = stream
        .fetch(0, FetchSpec::at(1).waiting(Duration::from_millis(20)))
        .await
        .expect("fetch");
    assert!(empty.batches.is_empty());
    assert_eq!(empty.high_watermark, 1);
}

#[tokio::test]
async fn retention_removes_old_segments_and_readers_reset_as_they_ask() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    let spec = StreamSpec {
        segment_bytes_max: Some(4096),
        retention_bytes: Some(8192),
        ..StreamSpec::with_partitions(1)
    };
    let (stream, _) = host.declare_stream("logs", spec).expect("declare");
    let mut partitioner = Partitioner::new(postino_core::stream::Spread::RoundRobin);
    let body = "x".repeat(500);
    for _ in 0..100 {
        stream
            .produce_records(
                &mut partitioner,
                &[ProducerRecord {
                    value: Some(Bytes::from(body.clone())),
                    ..ProducerRecord::default()
                }],
            )
            .await
            .expect("produce");
    }
    let partition = stream.partition(0).expect("partition 0");
    let stats = partition.stats().await.expect("stats");
    assert!(
        stats.earliest > 0,
        "retention applied as the segments rolled"
    );
    let deleted = partition.enforce_retention().await.expect("retention");
    assert_eq!(deleted, 0, "nothing was left past the limit for the timer");
    assert!(stats.size_bytes >= 8192);
    let refused = stream.fetch(0, FetchSpec::at(0)).await;
    assert!(matches!(
        refused,
        Err(CoreError::OffsetOutOfRange { requested: 0, earliest, .. }) if earliest == stats.earliest
    ));
    let reset = stream
        .fetch(
            0,
            FetchSpec {
                on_out_of_range: OnOutOfRange::Earliest,
                ..FetchSpec::at(0)
            },
        )
        .await
        .expect("reset to earliest");
    assert_eq!(reset.from, stats.earliest);
    assert!(!reset.batches.is_empty());
    assert_eq!(
        partition.resolve(StartAt::Earliest).await.expect("resolve"),
        stats.earliest
    );
}

#[tokio::test]
async fn an_idempotent_retry_after_a_restart_is_not_written_again() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    let producer_id = host.init_producer_id().expect("producer id");
    let (stream, _) = host
        .declare_stream("payments", StreamSpec::with_partitions(2))
        .expect("declare");
    let batch = |sequence: i32, values: &[&str]| {
        let mut builder = BatchBuilder::new().producer(producer_id, 0, sequence);
        for value in values {
            builder.push(1, None, Some(value.as_bytes()), &[]);
        }
        builder.build()
    };
    let first = stream
        .produce(1, batch(0, &["a", "b"]))
        .await
        .expect("produce");
    assert!(!first.duplicate);
    host.close().await.expect("close");
    drop(host);

    let host = open(Some(dir.path()));
    assert_ne!(host.init_producer_id().expect("producer id"), producer_id);
    let stream = host.stream("payments").expect("stream");
    let retry = stream
        .produce(1, batch(0, &["a", "b"]))
        .await
        .expect("answered");
    assert!(retry.duplicate);
    assert_eq!((retry.base_offset, retry.last_offset), (0, 1));
    let next = stream.produce(1, batch(2, &["c"])).await.expect("produce");
    assert_eq!(next.base_offset, 2);
    assert!(matches!(
        stream.produce(1, batch(7, &["d"])).await,
        Err(CoreError::OutOfOrderSequence {
            expected: 3,
            received: 7,
            ..
        })
    ));
    assert_eq!(values(&host, "payments", 1, 0).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn an_oversize_batch_is_refused_and_the_partition_keeps_working() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    let spec = StreamSpec {
        segment_bytes_max: Some(64 << 10),
        ..StreamSpec::with_partitions(1)
    };
    let (stream, _) = host.declare_stream("big", spec).expect("declare");
    let mut builder = BatchBuilder::new();
    builder.push(1, None, Some(&vec![b'x'; 100 << 10]), &[]);
    let refused = stream.produce(0, builder.build()).await;
    assert!(
        matches!(
            refused,
            Err(CoreError::Storage(
                postino_storage::LogError::BatchTooLarge { .. }
            ))
        ),
        "{refused:?}"
    );
    let mut small = BatchBuilder::new();
    small.push(1, None, Some(b"fits"), &[]);
    let produced = stream.produce(0, small.build()).await.expect("produce");
    assert_eq!(produced.base_offset, 0, "the refused batch took no offset");
}

#[tokio::test]
async fn partitions_grow_durably_and_never_shrink() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    let (stream, _) = host
        .declare_stream("clicks", StreamSpec::with_partitions(2))
        .expect("declare");
    assert!(matches!(
        stream.fetch(5, FetchSpec::at(0)).await,
        Err(CoreError::UnknownPartition {
            partition: 5,
            partitions: 2,
            ..
        })
    ));
    stream.add_partitions(6).expect("grow");
    assert!(matches!(
        stream.add_partitions(3),
        Err(CoreError::InvalidArgument { .. })
    ));
    assert!(matches!(
        host.declare_stream("clicks", StreamSpec::with_partitions(2)),
        Err(CoreError::PreconditionFailed { .. })
    ));
    host.close().await.expect("close");
    drop(host);
    let host = open(Some(dir.path()));
    let stream = host.stream("clicks").expect("stream");
    assert_eq!(stream.partition_count(), 6);
    stream
        .fetch(5, FetchSpec::at(0))
        .await
        .expect("partition 5 exists");
}

#[tokio::test]
async fn queues_and_streams_share_one_namespace_and_deleted_streams_leave_no_data() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    host.declare_queue("jobs", QueueSpec::durable())
        .expect("declare queue");
    assert!(matches!(
        host.declare_stream("jobs", StreamSpec::with_partitions(1)),
        Err(CoreError::PreconditionFailed { .. })
    ));
    host.declare_stream("audit", StreamSpec::with_partitions(1))
        .expect("declare stream");
    assert!(matches!(
        host.declare_queue("audit", QueueSpec::durable()),
        Err(CoreError::PreconditionFailed { .. })
    ));
    assert!(matches!(
        host.declare_stream("zero", StreamSpec::with_partitions(0)),
        Err(CoreError::InvalidArgument { .. })
    ));
    assert_eq!(host.stream_names(), ["audit"]);
    host.delete_stream("audit").await.expect("delete");
    assert!(host.stream("audit").is_none());
    assert!(!dir.path().join("streams").join("audit").exists());
    assert!(matches!(
        host.delete_stream("audit").await,
        Err(CoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn an_exchange_feeds_a_stream_and_the_binding_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    host.declare_stream("trades", StreamSpec::with_partitions(3))
        .expect("declare");
    host.bind(Binding {
        source: "amq.topic".to_owned(),
        destination: Destination::Queue("trades".to_owned()),
        key: "trade.#".to_owned(),
        arguments: Headers::new(),
    })
    .expect("bind");
    let routed = host
        .publish(
            "amq.topic",
            "trade.eu.acme",
            Message::new(&b"100 @ 12.5"[..]).persistent(),
        )
        .await
        .expect("publish");
    assert_eq!(routed.queues, 1);
    let by_name = host
        .publish("", "trades", Message::new(&b"direct"[..]))
        .await
        .expect("the default exchange reaches a stream by name");
    assert_eq!(by_name.queues, 1);
    let mut transaction = host.begin();
    transaction.publish("amq.topic", "trade.us", Message::new(&b"in a tx"[..]));
    assert!(matches!(
        transaction.commit().await,
        Err(CoreError::PreconditionFailed { .. })
    ));
    host.close().await.expect("close");
    drop(host);

    let host = open(Some(dir.path()));
    let partition = partition_for_key(b"trade.eu.acme", 3);
    let stream = host.stream("trades").expect("stream");
    let fetched = stream
        .fetch(partition, FetchSpec::at(0))
        .await
        .expect("fetch");
    let records = records_of(&fetched).expect("records");
    assert_eq!(records[0].key.as_deref(), Some(&b"trade.eu.acme"[..]));
    let message = postino_core::record::decode(&records[0]).expect("a message");
    assert_eq!(&message.body[..], b"100 @ 12.5");
    assert_eq!(message.annotations.routing_key, "trade.eu.acme");
    let again = host
        .publish("amq.topic", "trade.eu.acme", Message::new(&b"after"[..]))
        .await
        .expect("publish");
    assert_eq!(again.queues, 1, "the binding to the stream was saved");
    host.delete_stream("trades").await.expect("delete");
    let gone = host
        .publish("amq.topic", "trade.eu.acme", Message::new(&b"nowhere"[..]))
        .await
        .expect("publish");
    assert_eq!(gone.queues, 0, "deleting a stream removes its bindings");
}

#[tokio::test]
async fn a_compacted_stream_keeps_the_latest_record_of_each_key() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(Some(dir.path()));
    let spec = StreamSpec {
        segment_bytes_max: Some(2048),
        compaction: Some(Duration::from_secs(3_600)),
        ..StreamSpec::with_partitions(1)
    };
    let (stream, _) = host.declare_stream("state", spec.clone()).expect("declare");
    let now = postino_types::Clock::now_ms(&SystemClock);
    let record = |key: &str, value: Option<String>, timestamp_ms: i64| ProducerRecord {
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: value.map(Bytes::from),
        timestamp_ms: Some(timestamp_ms),
        partition: Some(0),
        ..ProducerRecord::default()
    };
    let mut partitioner = Partitioner::new(postino_core::stream::Spread::RoundRobin);
    for round in 0..10 {
        for key in ["k0", "k1", "k2", "k3", "k4"] {
            let value = format!("{key}-r{round}-{}", "x".repeat(60));
            stream
                .produce_records(&mut partitioner, &[record(key, Some(value), now)])
                .await
                .expect("produce");
        }
    }
    let deletes = [record("k3", None, now), record("k4", None, now - 7_200_000)];
    stream
        .produce_records(&mut partitioner, &deletes)
        .await
        .expect("produce tombstones");
    for filler in 0..40 {
        let value = format!("filler {filler} {}", "x".repeat(60));
        stream
            .produce_records(&mut partitioner, &[record("filler", Some(value), now)])
            .await
            .expect("produce");
    }
    let before = stream
        .partition(0)
        .expect("partition")
        .stats()
        .await
        .expect("stats");
    let removed = stream
        .partition(0)
        .expect("partition")
        .compact()
        .await
        .expect("compact");
    assert!(removed >= 48, "{removed} records removed");

    let survivors = |host: Arc<VirtualHost>| async move {
        let stream = host.stream("state").expect("stream");
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let fetched = stream.fetch(0, FetchSpec::at(at)).await.expect("fetch");
            let Some(last) = fetched.batches.last() else {
                return seen;
            };
            at = last.last_offset() + 1;
            for record in records_of(&fetched).expect("records") {
                let key = String::from_utf8(record.key.expect("a key").to_vec()).expect("utf-8");
                let value = record
                    .value
                    .map(|value| String::from_utf8_lossy(&value[..5]).into_owned());
                seen.push((record.offset, key, value));
            }
        }
    };
    let seen = survivors(Arc::clone(&host)).await;
    let of = |key: &str| -> Vec<Option<String>> {
        seen.iter()
            .filter(|(_, name, _)| name == key)
            .map(|(_, _, value)| value.clone())
            .collect()
    };
    assert_eq!(of("k0"), [Some("k0-r9".to_owned())]);
    assert_eq!(of("k2"), [Some("k2-r9".to_owned())]);
    assert_eq!(of("k3"), [None], "a recent tombstone stays");
    assert!(of("k4").is_empty(), "an old tombstone goes with its key");
    assert!(!of("filler").is_empty());
    assert!(
        seen.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "offsets keep their order"
    );
    let after = stream
        .partition(0)
        .expect("partition")
        .stats()
        .await
        .expect("stats");
    assert_eq!(after.next, before.next, "compaction moves no offset");
    assert!(after.size_bytes < before.size_bytes);

    host.close().await.expect("close");
    drop(host);
    let host = open(Some(dir.path()));
    assert_eq!(host.stream("state").expect("stream").spec(), spec);
    assert_eq!(survivors(host).await, seen, "compaction is on disk");
}
