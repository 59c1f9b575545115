//! The error mapping and frame helpers of a session.

use super::*;

#[test]
fn every_core_error_has_a_reply_code() {
    let cases: Vec<(CoreError, u16)> = vec![
        (
            CoreError::NotFound {
                kind: "queue",
                name: "q".into(),
            },
            NOT_FOUND,
        ),
        (
            CoreError::PreconditionFailed { reason: "x".into() },
            PRECONDITION_FAILED,
        ),
        (
            CoreError::AccessRefused { reason: "x".into() },
            ACCESS_REFUSED,
        ),
        (
            CoreError::ResourceLocked { queue: "q".into() },
            RESOURCE_LOCKED,
        ),
        (
            CoreError::UnknownDelivery { delivery: 1 },
            PRECONDITION_FAILED,
        ),
        (
            CoreError::UnknownPartition {
                stream: "s".into(),
                partition: 3,
                partitions: 1,
            },
            NOT_FOUND,
        ),
        (
            CoreError::OffsetOutOfRange {
                stream: "s".into(),
                partition: 0,
                requested: 9,
                earliest: 0,
                latest: 1,
            },
            PRECONDITION_FAILED,
        ),
        (
            CoreError::ProducerFenced {
                producer_id: 1,
                epoch: 0,
                current_epoch: 1,
            },
            PRECONDITION_FAILED,
        ),
    ];
    for (error, code) in cases {
        match reply_for(&error) {
            Fault::Channel(found, _) => assert_eq!(found, code, "{error}"),
            Fault::Connection(..) => panic!("{error} closes only its channel"),
        }
    }
    let corrupt = CoreError::CorruptMessage { reason: "x" };
    assert!(matches!(
        reply_for(&corrupt),
        Fault::Connection(INTERNAL_ERROR, _)
    ));
}

#[test]
fn frame_sizes_are_read_from_the_header() {
    assert_eq!(frame_size(&[1, 0, 1, 0, 0, 0, 4]), Some(12));
    assert_eq!(frame_size(&[1, 0]), None);
}
