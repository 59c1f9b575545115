//! The AMQP listener driven by hand-written frames, for what client libraries do not do:
//! a wrong protocol header, a silent peer, a frame over frame-max, a prefetch size, a client
//! that vanishes in the middle of a publish, a burst of confirmed publishes.

#[expect(
    dead_code,
    reason = "raw frames need the listener, not the lapin helpers"
)]
mod support;

use std::time::Duration;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, queue,
};
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
async fn a_client_that_does_not_finish_the_handshake_in_time_is_dropped() {
    let limits = postino_amqp::Limits {
        handshake_timeout: Duration::from_millis(200),
        ..postino_amqp::Limits::default()
    };
    let address = support::listen_with(None, limits).await.0;
    let mut silent = TcpStream::connect(address).await.expect("connect");
    assert!(
        read_until_closed(&mut silent).await.is_empty(),
        "a socket that never sends the protocol header is closed without a word"
    );
    let mut stalled = TcpStream::connect(address).await.expect("connect");
    stalled
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("header");
    let received = read_until_closed(&mut stalled).await;
    assert!(
        !received.is_empty(),
        "connection.start was sent before the peer stalled"
    );
    let mut opened = TcpStream::connect(address).await.expect("connect");
    opened.write_all(&handshake(0)).await.expect("handshake");
    let mut greeting = vec![0u8; 4096];
    let read = opened.read(&mut greeting).await.expect("read");
    assert!(read > 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut byte = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(100), opened.read(&mut byte)).await;
    assert!(
        still_open.is_err() || still_open.is_ok_and(|read| read.is_ok_and(|read| read > 0)),
        "an opened connection without heartbeats is not dropped by the handshake timeout"
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

#[tokio::test]
async fn a_prefetch_size_is_refused_with_540_as_rabbitmq_does() {
    let mut socket = TcpStream::connect(start().await).await.expect("connect");
    let mut bytes = handshake(0);
    bytes.extend(frames(&[AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )]));
    // basic.qos by hand, since amq-protocol cannot write a prefetch size: class 60, method
    // 10, prefetch-size 4096, prefetch-count 10, global off.
    bytes.extend([
        1, 0, 1, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0x10, 0, 0, 10, 0, 0xCE,
    ]);
    socket.write_all(&bytes).await.expect("write");
    let close = frames(&[AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 540,
            reply_text: ShortString::from(
                "prefetch_size!=0 (4096): prefetch is counted in messages only, as in RabbitMQ",
            ),
            class_id: 0,
            method_id: 0,
        })),
    )]);
    let mut received = Vec::new();
    let closed = async {
        while !received.windows(close.len()).any(|window| window == close) {
            let mut chunk = [0u8; 4096];
            let read = socket.read(&mut chunk).await.expect("read");
            assert!(
                read > 0,
                "the connection ended without connection.close 540"
            );
            received.extend_from_slice(&chunk[..read]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("connection.close 540 is sent");
    // Answered, the server closes at once instead of waiting for the close-ok.
    let close_ok = frames(&[AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )]);
    socket.write_all(&close_ok).await.expect("close-ok");
    read_until_closed(&mut socket).await;
}

#[tokio::test]
async fn a_client_vanishing_mid_publish_leaves_no_partial_message_and_gets_its_deliveries_requeued()
{
    let dir = tempfile::tempdir().expect("dir");
    let (address, broker) = support::listen(Some(dir.path())).await;
    let uri = format!("amqp://guest:guest@{address}/%2f");
    let connection = support::connect(&uri).await;
    let publisher = connection.create_channel().await.expect("channel");
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    publisher
        .queue_declare(
            "vanish".into(),
            durable,
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare");
    publisher
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for index in 0..3 {
        let confirmation = publisher
            .basic_publish(
                "".into(),
                "vanish".into(),
                lapin::options::BasicPublishOptions::default(),
                format!("whole {index}").as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirmation.is_ack());
    }
    let queue = broker
        .vhost("/")
        .and_then(|host| host.queue("vanish"))
        .expect("the queue");

    // A raw client takes the three messages without acking them, then starts a publish of
    // 1,000 bytes, sends half the body, and vanishes.
    let mut socket = TcpStream::connect(address).await.expect("connect");
    let mut bytes = handshake(0);
    bytes.extend(frames(&[
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: ShortString::from("vanish"),
                consumer_tag: ShortString::from("raw"),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
    ]));
    socket.write_all(&bytes).await.expect("consume");
    let mut unacked = 0;
    for _ in 0..500 {
        unacked = queue.stats().await.expect("stats").unacked;
        if unacked == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(unacked, 3, "the raw consumer holds the three messages");
    let mut partial = frames(&[
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ShortString::from(""),
                routing_key: ShortString::from("vanish"),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 1_000,
                properties: BasicProperties::default().with_delivery_mode(2),
            },
        ),
        AMQPFrame::Body(1, vec![b'x'; 500]),
    ]);
    // And the first bytes of another body frame, cut off.
    partial.extend([3, 0, 1, 0, 0, 1, 0xf4, b'y', b'y']);
    socket.write_all(&partial).await.expect("partial publish");
    drop(socket);

    let mut stats = queue.stats().await.expect("stats");
    for _ in 0..500 {
        if stats.unacked == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        stats = queue.stats().await.expect("stats");
    }
    assert_eq!(
        (stats.ready, stats.unacked, stats.published),
        (3, 0, 3),
        "the deliveries are back and nothing of the partial publish was stored"
    );
    let consumer = connection.create_channel().await.expect("channel");
    let mut bodies = Vec::new();
    while let Some(got) = consumer
        .basic_get(
            "vanish".into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("get")
    {
        assert!(
            got.delivery.redelivered,
            "a requeued message is redelivered"
        );
        bodies.push(String::from_utf8(got.delivery.data).expect("utf-8"));
    }
    assert_eq!(bodies, ["whole 0", "whole 1", "whole 2"]);
}

#[tokio::test]
async fn deliveries_go_on_after_the_server_sent_heartbeats_on_an_idle_connection() {
    let limits = postino_amqp::Limits {
        heartbeat_s: 1,
        ..postino_amqp::Limits::default()
    };
    let address = support::listen_with(None, limits).await.0;
    let connection =
        support::connect(&format!("amqp://guest:guest@{address}/%2f?heartbeat=1")).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            "idle".into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut deliveries = channel
        .basic_consume(
            "idle".into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume");
    // The server sends a heartbeat every half second while the connection is idle.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    channel
        .basic_publish(
            "".into(),
            "idle".into(),
            lapin::options::BasicPublishOptions::default(),
            b"after the heartbeats",
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(
        Duration::from_secs(10),
        futures_lite::StreamExt::next(&mut deliveries),
    )
    .await
    .expect("the message is delivered after the heartbeats")
    .expect("a delivery")
    .expect("no error");
    assert_eq!(delivery.data, b"after the heartbeats");
}

#[tokio::test]
async fn a_burst_of_confirmed_publishes_is_acked_once_each_in_order() {
    const PUBLISHES: u64 = 200;
    let dir = tempfile::tempdir().expect("dir");
    let (address, _broker) = support::listen(Some(dir.path())).await;
    let mut socket = TcpStream::connect(address).await.expect("connect");
    let mut opening = vec![
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: ShortString::from("burst"),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        ),
    ];
    // Every publish in the same write, so that many become durable together.
    for index in 0..PUBLISHES {
        opening.extend([
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: ShortString::from(""),
                    routing_key: ShortString::from("burst"),
                    mandatory: false,
                    immediate: false,
                })),
            ),
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 8,
                    properties: BasicProperties::default().with_delivery_mode(2),
                },
            ),
            AMQPFrame::Body(1, index.to_be_bytes().to_vec()),
        ]);
    }
    let mut bytes = handshake(0);
    bytes.extend(frames(&opening));
    socket.write_all(&bytes).await.expect("publish");

    let mut acks = Vec::new();
    let mut buffer = Vec::new();
    let confirmed = async {
        while acks.last().is_none_or(|(tag, _)| *tag < PUBLISHES) {
            let mut chunk = [0u8; 4096];
            let read = socket.read(&mut chunk).await.expect("read");
            assert!(read > 0, "the server closed the connection");
            buffer.extend_from_slice(&chunk[..read]);
            while let Ok((rest, frame)) = parse_frame(buffer.as_slice()) {
                let consumed = buffer.len() - rest.len();
                match frame {
                    AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                        acks.push((ack.delivery_tag, ack.multiple));
                    }
                    AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(nack))) => {
                        panic!("publish {} was nacked", nack.delivery_tag);
                    }
                    _ => {}
                }
                buffer.drain(..consumed);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), confirmed)
        .await
        .expect("every publish is confirmed");
    let mut covered = 0;
    for (tag, multiple) in &acks {
        assert!(*tag > covered, "acks go forward: {acks:?}");
        assert!(
            *multiple || *tag == covered + 1,
            "a single ack names the next publish: {acks:?}"
        );
        covered = *tag;
    }
    assert_eq!(covered, PUBLISHES, "every publish is acked, none twice");
    eprintln!("{PUBLISHES} publishes confirmed by {} acks", acks.len());
}
