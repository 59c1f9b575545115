//! Arbitrary text as a content filter: parsing never panics or recurses without bound; a filter
//! that parses writes out to text that parses back to the same tree, and evaluates against a
//! message without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postino_core::Filter;
use postino_types::{HeaderValue, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(filter) = Filter::parse(text) else {
        return;
    };
    let written = filter.expr().to_string();
    // The written form has a pair of parentheses per node, so it may nest past the limit.
    if let Ok(again) = Filter::parse(&written) {
        assert_eq!(again.expr(), filter.expr(), "{written}");
    }
    let message = Message::new(&b"body"[..])
        .with_header("a", HeaderValue::Int(3))
        .with_header("b", HeaderValue::Text("x".into()))
        .with_header("c", HeaderValue::Float(0.5));
    let _ = filter.matches(&message, "ex", "key");
});
