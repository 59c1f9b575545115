//! Arbitrary bytes as AMQP frames: parsing never panics, and a parsed frame written back parses
//! and writes to the same bytes (bytes, not values, are compared: a NaN is not equal to itself).
#![no_main]

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fn write(frame: &AMQPFrame) -> Option<Vec<u8>> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .ok()
        .map(|context| context.into_inner().0)
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, frame)) = parse_frame(data)
        && let Some(bytes) = write(&frame)
    {
        let (_, again) = parse_frame(&bytes[..]).expect("a written frame parses");
        assert_eq!(write(&again), Some(bytes));
    }
});
