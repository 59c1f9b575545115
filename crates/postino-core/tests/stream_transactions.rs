//! Transactional producers on streams: atomic visibility across partitions with offsets,
//! aborts that readers skip, fencing by epoch, timeouts, and random histories with restarts
//! checked against a model of what `read_committed` readers may see.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use postino_core::stream::records_of;
use postino_core::{CoreError, FetchSpec, OffsetCommit, StreamSpec, TransactionError, VirtualHost};
use postino_storage::batch::BatchBuilder;
use postino_storage::{Durability, LogConfig};
use postino_types::{Clock, ManualClock, SystemClock};
use proptest::prelude::*;

fn open_with(dir: &Path, clock: Arc<dyn Clock>) -> Arc<VirtualHost> {
    let config = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    VirtualHost::open("/", Some(dir.to_path_buf()), config, clock).expect("open virtual host")
}

fn open(dir: &Path) -> Arc<VirtualHost> {
    open_with(dir, Arc::new(SystemClock))
}

fn batch(producer: (i64, i16), sequence: i32, values: &[String]) -> BytesMut {
    let mut builder = BatchBuilder::new()
        .producer(producer.0, producer.1, sequence)
        .transactional();
    for value in values {
        builder.push(1, None, Some(value.as_bytes()), &[]);
    }
    builder.build()
}

/// Every value a reader sees in `partition`, committed only or everything.
async fn read(host: &VirtualHost, partition: u32, committed: bool) -> Vec<String> {
    let stream = host.stream("s").expect("stream");
    let mut at = 0;
    let mut values = Vec::new();
    loop {
        let spec = if committed {
            FetchSpec::at(at).committed()
        } else {
            FetchSpec::at(at)
        };
        let fetched = stream.fetch(partition, spec).await.expect("fetch");
        let Some(last) = fetched.batches.last() else {
            return values;
        };
        at = last.last_offset() + 1;
        values.extend(
            records_of(&fetched)
                .expect("records")
                .into_iter()
                .map(|record| {
                    String::from_utf8(record.value.expect("a value").to_vec()).expect("utf-8")
                }),
        );
    }
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index}"))
        .collect()
}

#[tokio::test]
async fn a_committed_transaction_appears_at_once_in_every_partition_with_its_offsets() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(dir.path());
    host.declare_stream("s", StreamSpec::with_partitions(2))
        .expect("declare");
    let (producer_id, epoch) = host.init_transactions("tx", 60_000).await.expect("init");
    let producer = (producer_id, epoch);
    host.add_partitions_to_transaction(
        "tx",
        producer_id,
        epoch,
        &[("s".into(), 0), ("s".into(), 1)],
    )
    .await
    .expect("add partitions");
    let stream = host.stream("s").expect("stream");
    stream
        .produce(0, batch(producer, 0, &values("a", 2)))
        .await
        .expect("produce");
    stream
        .produce(1, batch(producer, 0, &values("b", 3)))
        .await
        .expect("produce");
    host.commit_offsets_in_transaction(
        "tx",
        producer_id,
        epoch,
        "g",
        vec![OffsetCommit {
            stream: "in".into(),
            partition: 0,
            offset: 17,
            metadata: String::new(),
        }],
    )
    .await
    .expect("offsets");
    assert!(
        read(&host, 0, true).await.is_empty(),
        "nothing before the commit"
    );
    assert_eq!(read(&host, 0, false).await, values("a", 2));
    assert!(
        host.groups()
            .offsets("g")
            .await
            .expect("offsets")
            .is_empty()
    );

    host.end_transaction("tx", producer_id, epoch, true)
        .await
        .expect("commit");
    assert_eq!(read(&host, 0, true).await, values("a", 2));
    assert_eq!(read(&host, 1, true).await, values("b", 3));
    let offsets = host.groups().offsets("g").await.expect("offsets");
    assert_eq!(offsets[0].1.offset, 17);
    host.end_transaction("tx", producer_id, epoch, true)
        .await
        .expect("a retried commit succeeds");
    assert!(matches!(
        host.end_transaction("tx", producer_id, epoch, false).await,
        Err(CoreError::Transaction {
            error: TransactionError::InvalidState,
            ..
        })
    ));
}

#[tokio::test]
async fn aborted_records_are_skipped_and_later_ones_read() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(dir.path());
    host.declare_stream("s", StreamSpec::with_partitions(1))
        .expect("declare");
    let (id, epoch) = host.init_transactions("tx", 60_000).await.expect("init");
    let stream = host.stream("s").expect("stream");
    let partitions = [("s".to_owned(), 0)];
    host.add_partitions_to_transaction("tx", id, epoch, &partitions)
        .await
        .expect("add");
    stream
        .produce(0, batch((id, epoch), 0, &values("gone", 2)))
        .await
        .expect("produce");
    host.end_transaction("tx", id, epoch, false)
        .await
        .expect("abort");
    host.add_partitions_to_transaction("tx", id, epoch, &partitions)
        .await
        .expect("add");
    stream
        .produce(0, batch((id, epoch), 2, &values("kept", 1)))
        .await
        .expect("produce");
    host.end_transaction("tx", id, epoch, true)
        .await
        .expect("commit");
    assert_eq!(read(&host, 0, true).await, values("kept", 1));
    assert_eq!(
        read(&host, 0, false).await.len(),
        3,
        "uncommitted readers see all"
    );
    assert!(matches!(
        stream
            .produce(0, batch((id, epoch), 3, &values("late", 1)))
            .await,
        Err(CoreError::Transaction {
            error: TransactionError::NotInTransaction,
            ..
        })
    ));
}

#[tokio::test]
async fn a_new_instance_fences_the_old_one_and_aborts_what_it_left_open() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(dir.path());
    host.declare_stream("s", StreamSpec::with_partitions(1))
        .expect("declare");
    let (id, old) = host.init_transactions("tx", 60_000).await.expect("init");
    host.add_partitions_to_transaction("tx", id, old, &[("s".to_owned(), 0)])
        .await
        .expect("add");
    let stream = host.stream("s").expect("stream");
    stream
        .produce(0, batch((id, old), 0, &values("zombie", 1)))
        .await
        .expect("produce");
    let (same, new) = host
        .init_transactions("tx", 60_000)
        .await
        .expect("init again");
    assert_eq!(same, id);
    assert!(new > old);
    assert!(matches!(
        stream
            .produce(0, batch((id, old), 1, &values("zombie", 1)))
            .await,
        Err(CoreError::ProducerFenced { .. })
    ));
    assert!(matches!(
        host.end_transaction("tx", id, old, true).await,
        Err(CoreError::ProducerFenced { .. })
    ));
    assert!(
        read(&host, 0, true).await.is_empty(),
        "the zombie's records were aborted"
    );
    let partition = stream.partition(0).expect("partition");
    let stats = partition.stats().await.expect("stats");
    assert_eq!(stats.last_stable_offset, stats.high_watermark);
}

#[tokio::test]
async fn a_transaction_open_past_its_timeout_is_aborted() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let clock = ManualClock::new(1_000_000);
    let host = open_with(dir.path(), Arc::new(clock.clone()));
    host.declare_stream("s", StreamSpec::with_partitions(1))
        .expect("declare");
    let (id, epoch) = host.init_transactions("slow", 5_000).await.expect("init");
    host.add_partitions_to_transaction("slow", id, epoch, &[("s".to_owned(), 0)])
        .await
        .expect("add");
    host.stream("s")
        .expect("stream")
        .produce(0, batch((id, epoch), 0, &values("late", 2)))
        .await
        .expect("produce");
    host.abort_expired_transactions().await.expect("check");
    assert_eq!(
        read(&host, 0, false).await.len(),
        2,
        "still open before the timeout"
    );
    clock.advance_ms(5_001);
    host.abort_expired_transactions().await.expect("abort");
    assert!(matches!(
        host.end_transaction("slow", id, epoch, true).await,
        Err(CoreError::ProducerFenced { .. })
    ));
    assert!(read(&host, 0, true).await.is_empty());
    assert!(matches!(
        host.init_transactions("slow", 0).await,
        Err(CoreError::Transaction {
            error: TransactionError::InvalidTimeout,
            ..
        })
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Produce {
        producer: usize,
        partition: u32,
        count: usize,
    },
    End {
        producer: usize,
        commit: bool,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2, 0u32..2, 1usize..3)
            .prop_map(|(producer, partition, count)| Op::Produce { producer, partition, count }),
        2 => (0usize..2, any::<bool>()).prop_map(|(producer, commit)| Op::End { producer, commit }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open(usize),
    Committed,
    Aborted,
}

/// A producer as the test drives it.
#[derive(Debug, Clone, Default)]
struct Producer {
    identity: Option<(i64, i16)>,
    next_sequence: BTreeMap<u32, i32>,
    open: bool,
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut host = open(dir.path());
    host.declare_stream("s", StreamSpec::with_partitions(2))
        .expect("declare");
    let mut records: Vec<Vec<(String, Fate)>> = vec![Vec::new(), Vec::new()];
    let mut producers = vec![Producer::default(), Producer::default()];
    let mut written = 0;
    for op in ops {
        match op {
            Op::Produce {
                producer,
                partition,
                count,
            } => {
                let ids = ["tx-0", "tx-1"];
                if producers[producer].identity.is_none() {
                    let identity = host
                        .init_transactions(ids[producer], 60_000)
                        .await
                        .expect("init");
                    producers[producer] = Producer {
                        identity: Some(identity),
                        ..Producer::default()
                    };
                }
                let state = &mut producers[producer];
                let (id, epoch) = state.identity.expect("initialised");
                host.add_partitions_to_transaction(
                    ids[producer],
                    id,
                    epoch,
                    &[("s".to_owned(), partition)],
                )
                .await
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
                state.open = true;
                let sequence = state.next_sequence.entry(partition).or_insert(0);
                let batch_values: Vec<String> = (0..count)
                    .map(|_| {
                        written += 1;
                        format!("v{written}")
                    })
                    .collect();
                host.stream("s")
                    .expect("stream")
                    .produce(partition, batch((id, epoch), *sequence, &batch_values))
                    .await
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                *sequence += count as i32;
                records[partition as usize].extend(
                    batch_values
                        .into_iter()
                        .map(|value| (value, Fate::Open(producer))),
                );
            }
            Op::End { producer, commit } => {
                let state = &mut producers[producer];
                let (Some((id, epoch)), true) = (state.identity, state.open) else {
                    continue;
                };
                host.end_transaction(["tx-0", "tx-1"][producer], id, epoch, commit)
                    .await
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                state.open = false;
                let fate = if commit {
                    Fate::Committed
                } else {
                    Fate::Aborted
                };
                for (_, record_fate) in records.iter_mut().flatten() {
                    if *record_fate == Fate::Open(producer) {
                        *record_fate = fate;
                    }
                }
            }
            Op::Restart => {
                host.close().await.expect("close");
                drop(host);
                host = open(dir.path());
                // Open transactions are aborted after a restart; their producers must start again.
                for (_, fate) in records.iter_mut().flatten() {
                    if matches!(fate, Fate::Open(_)) {
                        *fate = Fate::Aborted;
                    }
                }
                for producer in &mut producers {
                    *producer = Producer::default();
                }
                host.abort_expired_transactions()
                    .await
                    .expect("recovery done");
            }
        }
        for partition in 0..2u32 {
            let expected: Vec<String> = records[partition as usize]
                .iter()
                .take_while(|(_, fate)| !matches!(fate, Fate::Open(_)))
                .filter(|(_, fate)| *fate == Fate::Committed)
                .map(|(value, _)| value.clone())
                .collect();
            prop_assert_eq!(read(&host, partition, true).await, expected);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn committed_readers_see_exactly_the_committed_prefix(ops in proptest::collection::vec(op(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(ops))?;
    }
}
