//! What the gRPC tests share: an in-memory broker and listeners on free loopback ports.

use std::sync::Arc;

use postino_core::{Broker, FlowLimits};
use postino_storage::LogConfig;
use postino_types::SystemClock;

/// An in-memory broker.
pub fn broker() -> Arc<Broker> {
    Broker::open(
        None,
        LogConfig::default(),
        Arc::new(SystemClock),
        FlowLimits::default(),
    )
    .expect("broker")
}

/// Serves the native API of `broker` on a free port; its URL.
pub async fn serve_grpc(broker: &Arc<Broker>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(postino_grpc::serve(listener, Arc::clone(broker)));
    format!("http://{address}")
}
