//! Connections, channels and consumers of the real `postino` binary as the management API,
//! `/metrics` and the CLI show them, with lapin clients; closing a connection from the API.

#[path = "support/api.rs"]
mod api;
mod support;

use api::{Api, succeeds};
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, Event};
use serde_json::Value;

/// A lapin connection that names itself, with one channel in confirm mode consuming the durable
/// `queue`
/// with a prefetch of 7 (the consumer is cancelled when dropped), after one confirmed
/// publish.
async fn client(
    address: &str,
    user: &str,
    name: &str,
    queue: &str,
) -> (Connection, lapin::Channel, lapin::Consumer) {
    let uri = format!("amqp://{user}@{address}/%2f");
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connection = Connection::connect(&uri, properties)
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
        .basic_qos(7, BasicQosOptions::default())
        .await
        .expect("qos");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("{name}-consumer").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (connection, channel, consumer)
}

fn named<'a>(list: &'a Value, field: &str, value: impl Into<Value>) -> &'a Value {
    let value = value.into();
    list.as_array()
        .and_then(|items| items.iter().find(|item| item[field] == value))
        .unwrap_or_else(|| panic!("no item with {field} = {value} in {list}"))
}

/// What `path` answers once `ready` holds of it (or after 10 s, for the caller's assertions
/// to explain).
fn until(api: &Api, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1000 {
        let value = api.get(path);
        if ready(&value) {
            return value;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    api.get(path)
}

/// A sample's value in Prometheus text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

#[test]
fn connections_channels_and_consumers_are_listed_and_a_connection_can_be_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let started = support::start_server(dir.path(), &[]);
    let lines = started.lines;
    std::thread::spawn(move || lines.for_each(drop));
    let (amqp, http) = (started.amqp, started.http);
    let admin = Api::new(&http, Some(("guest", "guest")));
    assert_eq!(
        admin.status(
            "PUT",
            "/api/users/ann",
            Some(r#"{"password": "pw", "tags": "management"}"#)
        ),
        201
    );
    let everything = r#"{"configure": ".*", "write": ".*", "read": ".*"}"#;
    assert_eq!(
        admin.status("PUT", "/api/permissions/%2F/ann", Some(everything)),
        201
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (guest, _guest_channel, _guest_consumer) =
        runtime.block_on(client(&amqp, "guest:guest", "billing", "bills"));
    let (_ann, ann_channel, _ann_consumer) =
        runtime.block_on(client(&amqp, "ann:pw", "shipping", "parcels"));

    let connections = admin.get("/api/connections");
    assert_eq!(
        connections.as_array().map(Vec::len),
        Some(2),
        "{connections}"
    );
    let billing = named(&connections, "user_provided_name", "billing");
    assert_eq!(billing["user"], "guest");
    assert_eq!(billing["vhost"], "/");
    assert_eq!(billing["protocol"], "AMQP 0-9-1");
    assert_eq!(billing["ssl"], false);
    assert_eq!(billing["channels"], 1);
    assert_eq!(billing["auth_mechanism"], "PLAIN");
    assert_eq!(billing["peer_host"], "127.0.0.1");
    assert!(billing["recv_oct"].as_u64().is_some_and(|bytes| bytes > 0));
    assert!(billing["send_oct"].as_u64().is_some_and(|bytes| bytes > 0));
    let name = billing["name"].as_str().expect("a name").to_owned();
    assert!(name.ends_with(&format!("-> {amqp}")), "{name}");
    let path = format!(
        "/api/connections/{}",
        name.replace(' ', "%20").replace('>', "%3E")
    );
    assert_eq!(admin.get(&path)["user_provided_name"], "billing");
    assert_eq!(
        admin
            .get("/api/vhosts/%2F/connections")
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(admin.status("GET", "/api/connections/nobody", None), 404);

    // The delivery reaches the client after consume-ok: wait until it is handed over.
    let channels = until(&admin, &format!("{path}/channels"), |channels| {
        channels[0]["messages_unacknowledged"] == 1
    });
    let channel = named(&channels, "number", 1);
    assert_eq!(channel["confirm"], true);
    assert_eq!(channel["prefetch_count"], 7);
    assert_eq!(channel["consumer_count"], 1);
    assert_eq!(
        channel["messages_unacknowledged"], 1,
        "the published message is delivered"
    );
    assert_eq!(admin.get("/api/channels").as_array().map(Vec::len), Some(2));

    let consumers = admin.get("/api/consumers/%2F");
    let consumer = named(&consumers, "consumer_tag", "billing-consumer");
    assert_eq!(consumer["queue"]["name"], "bills");
    assert_eq!(consumer["ack_required"], true);
    assert_eq!(
        consumer["channel_details"]["connection_name"],
        name.as_str()
    );

    let ann = Api::new(&http, Some(("ann", "pw")));
    let own = ann.get("/api/connections");
    assert_eq!(
        own.as_array().map(Vec::len),
        Some(1),
        "a management user sees its own: {own}"
    );
    assert_eq!(own[0]["user"], "ann");
    assert_eq!(
        ann.status("GET", &path, None),
        404,
        "nor another user's by name"
    );
    assert_eq!(ann.status("DELETE", &path, None), 404);

    let (status, metrics, _) = admin.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("text").to_owned();
    assert_eq!(
        sample(&metrics, "postino_connections{protocol=\"AMQP 0-9-1\"}"),
        2.0
    );
    assert_eq!(sample(&metrics, "postino_channels"), 2.0);
    assert!(sample(&metrics, "postino_connection_received_bytes_total") > 0.0);
    assert!(sample(&metrics, "postino_confirm_duration_seconds_count") >= 2.0);
    assert!(
        sample(&metrics, "postino_fsync_duration_seconds_count") >= 1.0,
        "the persistent publishes were synced"
    );

    let listed = succeeds(
        &http,
        &[
            "--user",
            "guest",
            "--password",
            "guest",
            "connections",
            "list",
        ],
    );
    assert!(listed.contains(&name) && listed.contains("ann"), "{listed}");
    let mut events = guest.events_listener();
    let reported = runtime.spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::Error(error) = event {
                return error.to_string();
            }
        }
        String::new()
    });
    let closed = succeeds(
        &http,
        &[
            "--user",
            "guest",
            "--password",
            "guest",
            "connections",
            "close",
            &name,
            "--reason",
            "maintenance",
        ],
    );
    assert!(closed.contains("closed"), "{closed}");
    let reason = runtime
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(30), reported).await
        })
        .expect("lapin reports the server's close")
        .expect("the listener ran");
    assert!(
        reason.contains("maintenance"),
        "the client is told the reason: {reason}"
    );
    let remaining = until(&admin, "/api/connections", |listed| {
        listed.as_array().map(Vec::len) == Some(1)
    });
    assert_eq!(remaining.as_array().map(Vec::len), Some(1), "{remaining}");
    assert_eq!(remaining[0]["user"], "ann");
    assert!(
        runtime
            .block_on(ann_channel.basic_qos(1, BasicQosOptions::default()))
            .is_ok(),
        "the other connection is untouched"
    );
    let metrics = admin.call("GET", "/metrics", None).1;
    assert_eq!(
        sample(
            metrics.as_str().expect("text"),
            "postino_connections_closed_total"
        ),
        1.0
    );
    support::stop(started.child);
}
