//! Transactions: invisible until committed, nothing on rollback or abort, all-or-nothing across
//! a restart (a prepared part is committed at recovery only when its host decided so).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use postino_core::{
    Binding, ConsumerSpec, CoreError, Destination, ExchangeKind, ExchangeSpec, GetOutcome, GetSpec,
    Outcome, Push, QueueEngine, QueueOptions, QueueSpec, QueueStore, VirtualHost,
};
use postino_storage::{FileLog, Log, LogConfig};
use postino_types::{Headers, Message, SystemClock};

fn open_queue(dir: &Path, committed: &[u64]) -> QueueEngine<FileLog> {
    let store = QueueStore {
        delay_dir: None,
        committed_transactions: committed.iter().copied().collect::<HashSet<u64>>(),
    };
    QueueEngine::open(
        "q",
        FileLog::open(dir, LogConfig::default()).expect("log"),
        QueueOptions::default(),
        store,
    )
    .expect("queue")
}

fn text(body: &str) -> Message {
    Message::new(body.as_bytes().to_vec()).persistent()
}

fn drain(queue: &mut QueueEngine<impl Log>) -> Vec<String> {
    let mut bodies = Vec::new();
    while let GetOutcome::Delivered(delivery) = queue
        .get(
            0,
            GetSpec {
                auto_ack: true,
                lease_ms: None,
            },
            None,
        )
        .expect("get")
    {
        bodies.push(String::from_utf8(delivery.message.body.to_vec()).expect("utf-8"));
    }
    bodies
}

#[test]
fn a_prepared_part_is_invisible_until_committed_and_gone_when_aborted() {
    let dir = tempfile::tempdir().expect("dir");
    let mut queue = open_queue(dir.path(), &[]);
    queue.publish(0, text("before")).expect("publish");
    let pushes = queue
        .consume(0, 1, ConsumerSpec::default())
        .expect("consume");
    let Push::Consumer { delivery, .. } = &pushes[0] else {
        panic!("consumer delivery")
    };
    let held = delivery.id;
    queue.cancel(0, 1).expect("cancel");
    let pushes = queue
        .consume(0, 2, ConsumerSpec::default())
        .expect("consume");
    assert_eq!(pushes.len(), 1);
    queue.cancel(0, 2).expect("cancel");
    let GetOutcome::Delivered(delivery) = queue.get(0, GetSpec::default(), None).expect("get")
    else {
        panic!("the message is back");
    };
    assert_eq!(delivery.id, held);

    queue
        .prepare(
            0,
            7,
            vec![text("in tx 7")],
            vec![(vec![held], Outcome::Accept)],
        )
        .expect("prepare")
        .wait()
        .expect("durable");
    assert_eq!(queue.stats().ready, 0, "prepared messages are not ready");
    assert_eq!(
        queue.stats().unacked,
        1,
        "prepared settlements are not applied"
    );
    queue
        .prepare(0, 8, vec![text("in tx 8")], Vec::new())
        .expect("prepare");
    assert!(matches!(
        queue.prepare(0, 9, Vec::new(), vec![(vec![999], Outcome::Accept)]),
        Err(CoreError::UnknownDelivery { delivery: 999 })
    ));
    queue.commit_transaction(0, 7).expect("commit");
    queue.abort_transaction(0, 8).expect("abort");
    assert_eq!(queue.stats().unacked, 0, "the settlement applied at commit");
    assert_eq!(drain(&mut queue), ["in tx 7"]);
    queue.into_log().close().expect("close");
    let mut queue = open_queue(dir.path(), &[]);
    assert!(
        drain(&mut queue).is_empty(),
        "the committed tx was consumed, the aborted one never shows"
    );
}

#[test]
fn recovery_commits_a_decided_transaction_and_aborts_an_undecided_one() {
    let dir = tempfile::tempdir().expect("dir");
    let mut queue = open_queue(dir.path(), &[]);
    queue.publish(0, text("plain")).expect("publish");
    queue
        .prepare(0, 41, vec![text("decided")], Vec::new())
        .expect("prepare");
    queue
        .prepare(0, 42, vec![text("undecided")], Vec::new())
        .expect("prepare");
    queue.into_log().close().expect("close");

    let mut queue = open_queue(dir.path(), &[41]);
    assert_eq!(drain(&mut queue), ["plain", "decided"]);
    queue.into_log().close().expect("close");
    let mut queue = open_queue(dir.path(), &[]);
    assert!(
        drain(&mut queue).is_empty(),
        "the markers written at the first recovery keep the outcome without the host's word"
    );
}

fn host(dir: &Path) -> Arc<VirtualHost> {
    VirtualHost::open(
        "/",
        Some(dir.to_path_buf()),
        LogConfig::default(),
        Arc::new(SystemClock),
    )
    .expect("host")
}

#[tokio::test]
async fn a_transaction_spans_queues_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let host = host(dir.path());
        host.declare_exchange("fan", ExchangeSpec::new(ExchangeKind::Fanout))
            .expect("declare");
        for queue in ["a", "b", "work"] {
            host.declare_queue(queue, QueueSpec::durable())
                .expect("declare");
        }
        for queue in ["a", "b"] {
            host.bind(Binding {
                source: "fan".into(),
                destination: Destination::Queue(queue.into()),
                key: String::new(),
                arguments: Headers::new(),
            })
            .expect("bind");
        }
        host.publish("", "work", text("job"))
            .await
            .expect("publish");
        let work = host.queue("work").expect("queue");
        let job = work
            .get(GetSpec::default(), None)
            .await
            .expect("get")
            .expect("job");

        let mut rolled_back = host.begin();
        rolled_back.publish("fan", "", text("never"));
        rolled_back.rollback();

        let mut tx = host.begin();
        tx.publish("fan", "", text("result"));
        tx.publish("amq.direct", "nowhere", text("unroutable"));
        tx.settle("work", vec![job.id], Outcome::Accept);
        let committed = tx.commit().await.expect("commit");
        assert_eq!(committed.routed, [2, 0]);
        assert_eq!(work.stats().await.expect("stats").unacked, 0);

        let mut failing = host.begin();
        failing.publish("fan", "", text("not with a bad ack"));
        failing.settle("work", vec![12_345], Outcome::Accept);
        assert!(matches!(
            failing.commit().await,
            Err(CoreError::UnknownDelivery { .. })
        ));
        host.close().await.expect("close");
    }
    let host = host(dir.path());
    for queue in ["a", "b"] {
        let handle = host.queue(queue).expect("queue");
        let message = handle
            .get(GetSpec::default(), None)
            .await
            .expect("get")
            .expect("result");
        assert_eq!(&message.message.body[..], b"result");
        assert!(
            handle
                .get(GetSpec::default(), None)
                .await
                .expect("get")
                .is_none(),
            "nothing else"
        );
    }
    let work = host.queue("work").expect("queue");
    assert!(
        work.get(GetSpec::default(), None)
            .await
            .expect("get")
            .is_none(),
        "the job's ack was committed"
    );
    host.close().await.expect("close");
}
