//! The broker: virtual hosts that persist, and flow control that makes publishers wait.

use std::sync::Arc;
use std::time::Duration;

use postino_core::{Alarm, Broker, CoreError, DEFAULT_VHOST, FlowLimits, QueueSpec};
use postino_storage::LogConfig;
use postino_types::{Message, SystemClock};

fn limits(disk_free_bytes_min: u64) -> FlowLimits {
    FlowLimits {
        disk_free_bytes_min,
        check_every: Duration::from_millis(10),
        ..FlowLimits::default()
    }
}

fn open(dir: &std::path::Path, limits: FlowLimits) -> Arc<Broker> {
    Broker::open(
        Some(dir.to_path_buf()),
        LogConfig::default(),
        Arc::new(SystemClock),
        limits,
    )
    .expect("open broker")
}

#[tokio::test]
async fn virtual_hosts_are_kept_apart_and_persist() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let broker = open(dir.path(), limits(0));
        assert_eq!(broker.vhost_names(), [DEFAULT_VHOST]);
        let shop = broker.create_vhost("shop/eu").expect("create");
        shop.declare_queue("orders", QueueSpec::durable())
            .expect("declare");
        let default = broker.vhost(DEFAULT_VHOST).expect("default");
        assert!(
            default.queue("orders").is_none(),
            "hosts do not share queues"
        );
        broker.create_vhost("scratch").expect("create");
        broker.delete_vhost("scratch").await.expect("delete");
        assert!(matches!(
            broker.delete_vhost(DEFAULT_VHOST).await,
            Err(CoreError::AccessRefused { .. })
        ));
        broker.close().await.expect("close");
    }
    let broker = open(dir.path(), limits(0));
    assert_eq!(broker.vhost_names(), ["/", "shop/eu"]);
    let shop = broker.vhost("shop/eu").expect("the host came back");
    assert!(shop.queue("orders").is_some());
    broker.close().await.expect("close");
}

#[tokio::test]
async fn publishers_wait_while_the_disk_alarm_is_raised_and_consumers_are_served() {
    let dir = tempfile::tempdir().expect("dir");
    let broker = open(dir.path(), limits(0));
    let host = broker.vhost(DEFAULT_VHOST).expect("default");
    host.declare_queue("q", QueueSpec::durable())
        .expect("declare");
    host.publish("", "q", Message::new(&b"before"[..]))
        .await
        .expect("published before the alarm");
    broker.set_limits(limits(u64::MAX));
    let mut alarm = broker.alarm();
    alarm
        .wait_for(|state| *state == Alarm::Disk)
        .await
        .expect("the impossible disk limit raises the alarm");
    let queue = host.queue("q").expect("the queue");
    let delivered = queue
        .get(
            postino_core::GetSpec {
                auto_ack: true,
                lease_ms: None,
            },
            None,
        )
        .await
        .expect("a get during the alarm")
        .expect("the stored message is still there");
    assert_eq!(
        &delivered.message.body[..],
        b"before",
        "existing data is intact"
    );
    let publish = {
        let host = Arc::clone(&host);
        tokio::spawn(async move { host.publish("", "q", Message::new(&b"m"[..])).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !publish.is_finished(),
        "the publisher waits while the alarm holds"
    );
    broker.set_limits(limits(0));
    let routed = publish
        .await
        .expect("task")
        .expect("published once the alarm cleared");
    assert_eq!(routed.queues, 1);
    assert_eq!(*broker.alarm().borrow(), Alarm::Clear);
    broker.close().await.expect("close");
}
