//! Arbitrary bytes as a RecordBatch v2: parsing, validation and record decoding must never
//! panic, and a batch that validates must decode consistently. Each input is tried as given and
//! with its CRC fixed, so that the fuzzer reaches the record decoder behind the checksum.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use postino_storage::batch::{self, Batch, BatchHeader};

/// Bytes covered by the CRC start here; the CRC itself sits just before them.
const CRC_COVERS_FROM: usize = 21;

fn check(data: &[u8]) {
    if let Ok(header) = BatchHeader::parse(data) {
        assert!(header.total_bytes() >= batch::HEADER_BYTES);
    }
    if let Ok(header) = batch::validate(data) {
        let whole = Bytes::copy_from_slice(&data[..header.total_bytes()]);
        let parsed = Batch::from_bytes(whole).expect("validated bytes form a batch");
        if let Ok(records) = parsed.records() {
            assert_eq!(records.len(), header.record_count as usize);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(header) = BatchHeader::parse(data) {
        let total = header.total_bytes();
        if total <= data.len() {
            let mut fixed = data[..total].to_vec();
            let crc = crc32c::crc32c(&fixed[CRC_COVERS_FROM..]);
            fixed[CRC_COVERS_FROM - 4..CRC_COVERS_FROM].copy_from_slice(&crc.to_be_bytes());
            check(&fixed);
        }
    }
});
