//! What the AMQP interop tests share: an in-process server on a free port and a lapin
//! connection to it.

use std::sync::Arc;

use lapin::{Connection, ConnectionProperties};
use postino_core::{Broker, FlowLimits};
use postino_storage::LogConfig;
use postino_types::SystemClock;

/// Opens a broker (in `dir`, or in memory) and serves AMQP on a free port; returns the URI.
pub async fn start(dir: Option<&std::path::Path>) -> (String, Arc<Broker>) {
    let (address, broker) = listen(dir).await;
    (format!("amqp://guest:guest@{address}/%2f"), broker)
}

/// Opens a broker (in `dir`, or in memory) and serves AMQP on a free port; returns its address.
pub async fn listen(dir: Option<&std::path::Path>) -> (std::net::SocketAddr, Arc<Broker>) {
    listen_with(dir, postino_amqp::Limits::default()).await
}

/// As [`listen`], with the given limits.
pub async fn listen_with(
    dir: Option<&std::path::Path>,
    limits: postino_amqp::Limits,
) -> (std::net::SocketAddr, Arc<Broker>) {
    let broker = Broker::open(
        dir.map(std::path::Path::to_path_buf),
        LogConfig::default(),
        Arc::new(SystemClock),
        FlowLimits::default(),
    )
    .expect("broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(postino_amqp::serve(listener, Arc::clone(&broker), limits));
    (address, broker)
}

/// Connects with lapin.
pub async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect")
}

/// A connection to `uri` and a channel on which the transient queue `queue` is declared.
pub async fn with_queue(uri: &str, queue: &str) -> (Connection, lapin::Channel) {
    let connection = connect(uri).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare");
    (connection, channel)
}
