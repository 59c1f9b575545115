//! Arbitrary bytes as a client certificate's DER: finding the user it names never panics, and a
//! name found is never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(user) = postino_core::user_of_certificate(data) {
        assert!(!user.is_empty());
    }
});
