//! The AMQP listener driven by hand-written frames, for what client libraries do not do:
//! a wrong protocol header, a silent peer, a frame over frame-max.

#[expect(
    dead_code,
    reason = "raw frames need the listener, not the lapin helpers"
)]
mod support;

use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> std::net::SocketAddr {
    support::listen(None).await.0
}

fn frames(frames: &[AMQPFrame]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for frame in frames {
        bytes = gen_frame(frame)(WriteContext::from(bytes))
            .expect("serialise")
            .into_inner()
            .0;
    }
    bytes
}

fn handshake(heartbeat: u16) -> Vec<u8> {
    let mut bytes = b"AMQP\x00\x00\x09\x01".to_vec();
    bytes.extend(frames(&[
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
                heartbeat,
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: ShortString::from("/"),
            })),
        ),
    ]));
    bytes
}

/// Reads until the server closes the connection; the bytes it sent.
async fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .expect("read");
    received
}

#[tokio::test]
async fn a_wrong_protocol_header_is_answered_with_ours() {
    let mut socket = TcpStream::connect(start().await).await.expect("connect");
    socket
        .write_all(b"AMQP\x01\x01\x00\x0a")
        .await
        .expect("write");
    assert_eq!(
        read_until_closed(&mut socket).await,
        b"AMQP\x00\x00\x09\x01"
    );
}

#[tokio::test]
async fn a_peer_silent_for_two_heartbeats_is_disconnected() {
    let mut socket = TcpStream::connect(start().await).await.expect("connect");
    socket.write_all(&handshake(1)).await.expect("handshake");
    let received = read_until_closed(&mut socket).await;
    let heartbeat = [8u8, 0, 0, 0, 0, 0, 0, 0xCE];
    assert!(
        received
            .windows(heartbeat.len())
            .any(|window| window == heartbeat),
        "the server sent heartbeats before giving up"
    );
}

#[tokio::test]
async fn a_frame_over_frame_max_closes_the_connection_with_501() {
    let mut socket = TcpStream::connect(start().await).await.expect("connect");
    socket.write_all(&handshake(0)).await.expect("handshake");
    // A body frame on channel 1 declaring 1 MiB, far over the negotiated 128 KiB.
    socket
        .write_all(&[3, 0, 1, 0, 0x10, 0, 0])
        .await
        .expect("write");
    let received = read_until_closed(&mut socket).await;
    let close = frames(&[AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 501,
            reply_text: ShortString::from("frame of 1048584 bytes exceeds frame_max"),
            class_id: 0,
            method_id: 0,
        })),
    )]);
    assert!(
        received.windows(close.len()).any(|window| window == close),
        "connection.close 501 was sent"
    );
}
