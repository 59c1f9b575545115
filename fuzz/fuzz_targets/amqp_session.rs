//! The AMQP connection state machine fed arbitrary frame sequences after a valid handshake:
//! it never panics and always ends (the client's end of the stream closing ends the session).
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;
use postino_core::{Broker, FlowLimits};
use postino_storage::LogConfig;
use postino_types::SystemClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn handshake() -> Vec<u8> {
    let frames = [
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: ShortString::from("PLAIN"),
                response: LongString::from(&b"\0guest\0guest"[..]),
                locale: ShortString::from("en_US"),
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 131_072,
                heartbeat: 0,
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: ShortString::from("/"),
            })),
        ),
    ];
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    for frame in &frames {
        bytes = gen_frame(frame)(WriteContext::from(bytes)).expect("handshake frames serialise").into_inner().0;
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let broker = Broker::open(None, LogConfig::default(), Arc::new(SystemClock), FlowLimits::default())
            .expect("broker");
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let session = tokio::spawn(postino_amqp::serve_connection(
            server,
            broker,
            postino_amqp::Limits { heartbeat_s: 0, ..postino_amqp::Limits::default() },
        ));
        let mut input = handshake();
        input.extend_from_slice(data);
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut output = Vec::new();
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            let _ = client.read_to_end(&mut output).await;
            session.await
        })
        .await;
        assert!(drained.is_ok(), "the session did not end after its client closed");
    });
});
