//! Share groups: more consumers than partitions compete for a stream's records with leases,
//! accept / release / reject, a delivery limit, and progress that survives a restart.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use postino_core::stream::{Acquired, SHARE_DELIVERY_LIMIT, ShareGroup, Spread};
use postino_core::{Outcome, Partitioner, ProducerRecord, StreamSpec, VirtualHost};
use postino_storage::{Durability, LogConfig};
use postino_types::SystemClock;

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

fn open(dir: &Path) -> Arc<VirtualHost> {
    let config = LogConfig {
        durability: Durability::None,
        ..LogConfig::default()
    };
    VirtualHost::open("/", Some(dir.to_path_buf()), config, Arc::new(SystemClock))
        .expect("open virtual host")
}

/// A host in `dir` with a stream `jobs` of `partitions` partitions and share group `workers`.
async fn share_stream(dir: &Path, partitions: u32) -> (Arc<VirtualHost>, ShareGroup) {
    let host = open(dir);
    host.declare_stream("jobs", StreamSpec::with_partitions(partitions))
        .expect("declare");
    let group = host
        .share_group("workers", "jobs")
        .await
        .expect("share group");
    (host, group)
}

async fn produce(host: &VirtualHost, values: &[String]) {
    let records: Vec<ProducerRecord> = values
        .iter()
        .map(|value| ProducerRecord {
            value: Some(Bytes::from(value.clone())),
            ..ProducerRecord::default()
        })
        .collect();
    host.stream("jobs")
        .expect("stream")
        .produce_records(&mut Partitioner::new(Spread::RoundRobin), &records)
        .await
        .expect("produce");
}

fn text(acquired: &Acquired) -> String {
    String::from_utf8(acquired.record.value.clone().expect("a value").to_vec()).expect("utf-8")
}

/// Acquires and accepts until `count` records came, each waiting for the feeder.
async fn take_all(group: &ShareGroup, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let batch = group
            .acquire((count - seen.len()).min(4), LEASE, Some(WAIT))
            .await
            .expect("acquire");
        assert!(
            !batch.is_empty(),
            "records {} of {count} never came",
            seen.len()
        );
        for acquired in &batch {
            seen.push(text(acquired));
            group
                .acknowledge(acquired.partition, vec![acquired.delivery], Outcome::Accept)
                .await
                .expect("accept");
        }
    }
    seen
}

#[tokio::test]
async fn more_consumers_than_partitions_share_every_record_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let host = open(dir.path());
    host.declare_stream("jobs", StreamSpec::with_partitions(2))
        .expect("declare");
    produce(&host, &["before".to_owned()]).await;
    let group = Arc::new(
        host.share_group("workers", "jobs")
            .await
            .expect("share group"),
    );
    let values: Vec<String> = (0..30).map(|index| format!("job {index}")).collect();
    produce(&host, &values).await;
    let taken = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let (group, taken) = (Arc::clone(&group), Arc::clone(&taken));
            tokio::spawn(async move {
                let mut mine = Vec::new();
                // Bounded, so that a lost record fails the test instead of hanging it.
                for _ in 0..1_000 {
                    if taken.load(Ordering::Acquire) >= 30 {
                        break;
                    }
                    let batch = group
                        .acquire(3, LEASE, Some(Duration::from_millis(100)))
                        .await
                        .expect("acquire");
                    for acquired in batch {
                        mine.push(text(&acquired));
                        group
                            .acknowledge(
                                acquired.partition,
                                vec![acquired.delivery],
                                Outcome::Accept,
                            )
                            .await
                            .expect("accept");
                        taken.fetch_add(1, Ordering::AcqRel);
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for consumer in consumers {
        all.extend(consumer.await.expect("consumer"));
    }
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 30, "each record once: {all:?}");
    assert_eq!(
        distinct,
        values.iter().collect(),
        "a new group starts at the latest offset"
    );
}

#[tokio::test]
async fn released_and_expired_records_come_back_until_the_delivery_limit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (host, group) = share_stream(dir.path(), 1).await;
    produce(&host, &["flaky".to_owned(), "fine".to_owned()]).await;

    let first = group.acquire(1, LEASE, Some(WAIT)).await.expect("acquire");
    assert_eq!(
        (text(&first[0]), first[0].delivery_count),
        ("flaky".to_owned(), 1)
    );
    group
        .acknowledge(0, vec![first[0].delivery], Outcome::Requeue)
        .await
        .expect("release");
    let again = group
        .acquire(1, Duration::from_millis(50), Some(WAIT))
        .await
        .expect("acquire");
    assert_eq!(
        (text(&again[0]), again[0].delivery_count),
        ("flaky".to_owned(), 2)
    );
    // Not acknowledged: its lease runs out and it comes back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut count = 2;
    while count < SHARE_DELIVERY_LIMIT as u32 {
        let batch = group.acquire(1, LEASE, Some(WAIT)).await.expect("acquire");
        assert_eq!(text(&batch[0]), "flaky");
        count = batch[0].delivery_count;
        group
            .acknowledge(0, vec![batch[0].delivery], Outcome::Requeue)
            .await
            .expect("release");
    }
    let rest = take_all(&group, 1).await;
    assert_eq!(
        rest,
        ["fine"],
        "past the delivery limit the record is archived"
    );
}

#[tokio::test]
async fn accepted_records_stay_accepted_across_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (host, group) = share_stream(dir.path(), 1).await;
    let values: Vec<String> = (0..6).map(|index| format!("job {index}")).collect();
    produce(&host, &values).await;
    let done = take_all(&group, 2).await;
    assert_eq!(done, values[..2]);
    drop(group);
    host.close().await.expect("close");
    drop(host);

    let host = open(dir.path());
    let group = host
        .share_group("workers", "jobs")
        .await
        .expect("share group");
    produce(&host, &["after".to_owned()]).await;
    let rest = take_all(&group, 5).await;
    assert_eq!(rest, ["job 2", "job 3", "job 4", "job 5", "after"]);
}
