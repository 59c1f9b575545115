//! Kafka's RecordBatch v2 (magic 2): the unit postino writes to and reads from a log.
//!
//! Layout (big-endian, `docs/storage-format.md` has the byte table): a 61-byte header — base
//! offset, batch length, partition leader epoch, magic, CRC32C, attributes, last offset delta,
//! base and max timestamps, producer id / epoch / base sequence, record count — then the records.
//! The CRC covers everything from the attributes to the end, so the log can stamp the base offset
//! and the leader epoch without recomputing it.
//!
//! This module is a codec: no I/O, no knowledge of segments or of any protocol.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before the first record.
pub const HEADER_BYTES: usize = 61;
/// The only batch format postino stores.
pub const MAGIC: i8 = 2;
/// Bytes of the base offset and batch length fields, which the batch length does not count.
pub const LOG_OVERHEAD_BYTES: usize = 12;

const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

const COMPRESSION_MASK: i16 = 0b111;
const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header or the declared length needs.
    #[error("batch truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    /// A magic byte other than 2.
    #[error("unsupported batch magic {magic}")]
    BadMagic { magic: i8 },
    /// A batch length that cannot hold the header.
    #[error("invalid batch length {length}")]
    BadLength { length: i32 },
    /// The stored CRC32C does not match the bytes.
    #[error("batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// Record count or last offset delta out of range.
    #[error("invalid record count {count} for last offset delta {last_offset_delta}")]
    BadRecordCount { count: i32, last_offset_delta: i32 },
    /// A record inside the batch does not parse.
    #[error("invalid record: {reason}")]
    BadRecord { reason: &'static str },
    /// Records of a compressed batch cannot be listed without decompressing.
    #[error("batch is compressed (codec {codec}); records are not decoded here")]
    Compressed { codec: u8 },
}

/// The fixed header of a batch, parsed and checked for shape (not for CRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the batch length field; the whole batch is `length + 12` bytes.
    pub length: i32,
    pub leader_epoch: i32,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf` and checks its shape.
    ///
    /// # Errors
    /// [`BatchError`] when `buf` is shorter than the header, the magic is not 2, the length
    /// cannot hold a header, or the record count contradicts the last offset delta.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: buf.len(),
            });
        }
        let magic = i8::from_be_bytes([buf[MAGIC_AT]]);
        let length = be_i32(buf, BATCH_LENGTH_AT);
        if magic != MAGIC {
            return Err(BatchError::BadMagic { magic });
        }
        if length < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 {
            return Err(BatchError::BadLength { length });
        }
        let header = BatchHeader {
            base_offset: be_i64(buf, 0),
            length,
            leader_epoch: be_i32(buf, LEADER_EPOCH_AT),
            crc: u32::from_be_bytes(array(buf, CRC_AT)),
            attributes: i16::from_be_bytes(array(buf, ATTRIBUTES_AT)),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA_AT),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP_AT),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_AT),
            producer_id: be_i64(buf, PRODUCER_ID_AT),
            producer_epoch: i16::from_be_bytes(array(buf, PRODUCER_EPOCH_AT)),
            base_sequence: be_i32(buf, BASE_SEQUENCE_AT),
            record_count: be_i32(buf, RECORD_COUNT_AT),
        };
        let count = header.record_count;
        let delta = header.last_offset_delta;
        if delta < 0 || count < 0 || i64::from(count) > i64::from(delta) + 1 {
            return Err(BatchError::BadRecordCount {
                count,
                last_offset_delta: delta,
            });
        }
        Ok(header)
    }

    /// Bytes of the whole batch, header included.
    #[must_use]
    pub fn total_bytes(&self) -> usize {
        usize::try_from(self.length).unwrap_or(0) + LOG_OVERHEAD_BYTES
    }

    /// Offsets the batch spans: `last_offset_delta + 1`.
    #[must_use]
    pub fn offset_span(&self) -> u64 {
        u64::try_from(self.last_offset_delta).unwrap_or(0) + 1
    }

    /// Whether this is a control batch (transaction marker).
    #[must_use]
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    /// Whether the batch belongs to a transaction.
    #[must_use]
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    /// The compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd), preserved as given.
    #[must_use]
    pub fn compression(&self) -> u8 {
        (self.attributes & COMPRESSION_MASK) as u8
    }
}

/// CRC32C of the bytes the batch CRC covers.
fn batch_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES_AT..])
}

/// Checks that `buf` starts with a whole, CRC-valid batch and returns its header.
///
/// # Errors
/// [`BatchError`] for a bad header, a batch longer than `buf`, or a CRC mismatch.
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_bytes();
    if buf.len() < total {
        return Err(BatchError::Truncated {
            needed: total,
            available: buf.len(),
        });
    }
    let computed = batch_crc(&buf[..total]);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Writes `base_offset` into a batch's first field (outside the CRC).
pub fn stamp_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// One CRC-checked batch as stored in a log; cheap to clone (the bytes are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Takes exactly one whole batch, checking shape and CRC.
    ///
    /// # Errors
    /// [`BatchError`] when the bytes are not exactly one valid batch.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, BatchError> {
        let header = validate(&bytes)?;
        if header.total_bytes() != bytes.len() {
            return Err(BatchError::BadLength {
                length: header.length,
            });
        }
        Ok(Self { header, bytes })
    }

    /// A batch whose bytes were already validated into `header`.
    pub(crate) fn checked(header: BatchHeader, bytes: Bytes) -> Self {
        debug_assert_eq!(header.total_bytes(), bytes.len());
        Self { header, bytes }
    }

    /// The parsed header.
    #[must_use]
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as stored (what a Kafka fetch returns).
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Offset of the first record.
    #[must_use]
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset as u64
    }

    /// Offset of the last record (`base + last_offset_delta`).
    #[must_use]
    pub fn last_offset(&self) -> u64 {
        self.base_offset() + self.header.offset_span() - 1
    }

    /// The records of an uncompressed batch.
    ///
    /// # Errors
    /// [`BatchError::Compressed`] for a compressed batch, [`BatchError::BadRecord`] when a record
    /// does not parse.
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        let codec = self.header.compression();
        if codec != 0 {
            return Err(BatchError::Compressed { codec });
        }
        let mut cursor = Cursor {
            buf: self.bytes.slice(HEADER_BYTES..),
            at: 0,
        };
        let count = usize::try_from(self.header.record_count).unwrap_or(0);
        let mut records = Vec::with_capacity(count.min(cursor.buf.len()));
        for _ in 0..count {
            records.push(cursor.record(&self.header)?);
        }
        if cursor.at != cursor.buf.len() {
            return Err(BatchError::BadRecord {
                reason: "bytes left after the last record",
            });
        }
        Ok(records)
    }
}

impl Batch {
    /// The same batch without the records `keep` refuses, for compaction: the header keeps its
    /// base offset, last offset delta, timestamps and producer fields (so offsets stay where
    /// they were and the log's offset chain holds), the kept records keep their bytes; the
    /// record count, length and CRC are recomputed. `None` when every record is kept. A batch
    /// may end up with no record at all.
    ///
    /// # Errors
    /// [`BatchError::Compressed`] for a compressed batch (its records are not rewritten here),
    /// [`BatchError::BadRecord`] when a record does not parse.
    pub fn retain_records(
        &self,
        mut keep: impl FnMut(&Record) -> bool,
    ) -> Result<Option<BytesMut>, BatchError> {
        let codec = self.header.compression();
        if codec != 0 {
            return Err(BatchError::Compressed { codec });
        }
        let mut cursor = Cursor {
            buf: self.bytes.slice(HEADER_BYTES..),
            at: 0,
        };
        let mut kept = Vec::with_capacity(cursor.buf.len());
        let mut kept_count: i32 = 0;
        let count = usize::try_from(self.header.record_count).unwrap_or(0);
        for _ in 0..count {
            let start = cursor.at;
            let record = cursor.record(&self.header)?;
            if keep(&record) {
                kept.extend_from_slice(&cursor.buf[start..cursor.at]);
                kept_count += 1;
            }
        }
        if kept_count as usize == count {
            return Ok(None);
        }
        let total = HEADER_BYTES + kept.len();
        let mut buf = BytesMut::with_capacity(total);
        buf.extend_from_slice(&self.bytes[..HEADER_BYTES]);
        buf.extend_from_slice(&kept);
        buf[BATCH_LENGTH_AT..LEADER_EPOCH_AT]
            .copy_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        buf[RECORD_COUNT_AT..HEADER_BYTES].copy_from_slice(&kept_count.to_be_bytes());
        let crc = batch_crc(&buf);
        buf[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
        Ok(Some(buf))
    }
}

/// A segment's batches after compaction: control and compressed batches whole, the others
/// without the records `keep` refuses. Returns the batches' bytes, how many records went, and
/// whether anything changed.
pub(crate) fn compact_batches(
    batches: &[Batch],
    keep: &mut dyn FnMut(&Record) -> bool,
) -> Result<(Vec<Bytes>, u64, bool), BatchError> {
    let mut out = Vec::with_capacity(batches.len());
    let mut removed = 0u64;
    let mut changed = false;
    for batch in batches {
        if batch.header().is_control() || batch.header().compression() != 0 {
            out.push(batch.bytes().clone());
            continue;
        }
        let before = u64::try_from(batch.header().record_count).unwrap_or(0);
        match batch.retain_records(&mut *keep)? {
            Some(rewritten) => {
                let rewritten = Batch::from_bytes(rewritten.freeze())?;
                removed += before - u64::try_from(rewritten.header().record_count).unwrap_or(0);
                changed = true;
                out.push(rewritten.bytes().clone());
            }
            None => out.push(batch.bytes().clone()),
        }
    }
    Ok((out, removed, changed))
}

/// One record of an uncompressed batch, with offset and timestamp made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// A control record's meaning: the end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Abort = 0,
    Commit = 1,
}

/// Builds an uncompressed batch; the log assigns the base offset on append.
///
/// ```
/// use postino_storage::batch::{Batch, BatchBuilder};
/// let mut builder = BatchBuilder::new();
/// builder.push(1_700_000_000_000, Some(b"k"), Some(b"hello"), &[(b"h", Some(b"v"))]);
/// let batch = Batch::from_bytes(builder.build().freeze()).unwrap();
/// assert_eq!(batch.records().unwrap()[0].value.as_deref(), Some(&b"hello"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    attributes: i16,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
    count: i32,
    records: Vec<u8>,
    scratch: Vec<u8>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// An empty, non-transactional batch with no producer id.
    #[must_use]
    pub fn new() -> Self {
        Self {
            attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            base_timestamp: None,
            max_timestamp: -1,
            count: 0,
            records: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Marks the batch as written by an idempotent producer.
    #[must_use]
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as part of a transaction.
    #[must_use]
    pub fn transactional(mut self) -> Self {
        self.attributes |= TRANSACTIONAL_BIT;
        self
    }

    /// Marks timestamps as broker append time rather than producer create time.
    #[must_use]
    pub fn log_append_time(mut self) -> Self {
        self.attributes |= TIMESTAMP_TYPE_BIT;
        self
    }

    /// Records pushed so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record was pushed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a record. `None` key or value is Kafka's null (length -1).
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        let base = *self.base_timestamp.get_or_insert(timestamp_ms);
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let body = &mut self.scratch;
        body.clear();
        body.push(0);
        put_varlong(body, timestamp_ms - base);
        put_varlong(body, i64::from(self.count));
        put_bytes(body, key);
        put_bytes(body, value);
        put_varlong(body, headers.len() as i64);
        for (name, header_value) in headers {
            put_bytes(body, Some(name));
            put_bytes(body, *header_value);
        }
        put_varlong(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(body);
        self.count += 1;
    }

    /// The finished batch, base offset 0, CRC computed; mutable so that a log can stamp its
    /// base offset in place.
    #[must_use]
    pub fn build(self) -> BytesMut {
        let total = HEADER_BYTES + self.records.len();
        let mut buf = BytesMut::with_capacity(total);
        buf.put_i64(0);
        buf.put_i32((total - LOG_OVERHEAD_BYTES) as i32);
        buf.put_i32(-1);
        buf.put_i8(MAGIC);
        buf.put_u32(0);
        buf.put_i16(self.attributes);
        buf.put_i32((self.count - 1).max(0));
        buf.put_i64(self.base_timestamp.unwrap_or(-1));
        buf.put_i64(self.max_timestamp);
        buf.put_i64(self.producer_id);
        buf.put_i16(self.producer_epoch);
        buf.put_i32(self.base_sequence);
        buf.put_i32(self.count);
        buf.put_slice(&self.records);
        let crc = batch_crc(&buf);
        buf[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
        buf
    }
}

/// A control batch holding one transaction marker.
#[must_use]
pub fn control_batch(
    kind: ControlKind,
    producer_id: i64,
    producer_epoch: i16,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> BytesMut {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(kind as i16).to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let mut builder = BatchBuilder::new()
        .producer(producer_id, producer_epoch, -1)
        .transactional();
    builder.attributes |= CONTROL_BIT;
    builder.push(timestamp_ms, Some(&key), Some(&value), &[]);
    builder.build()
}

/// A control batch holding one record whose key is `version 0, kind` and whose value is
/// `value`: postino's own control records (queue settlements) use kinds from 100 up, apart from
/// Kafka's transaction markers (0 and 1).
#[must_use]
pub fn control_record(kind: i16, value: &[u8], timestamp_ms: i64) -> BytesMut {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&kind.to_be_bytes());
    let mut builder = BatchBuilder::new();
    builder.attributes |= CONTROL_BIT;
    builder.push(timestamp_ms, Some(&key), Some(value), &[]);
    builder.build()
}

/// The transaction marker of a control record's key, if it is one postino knows.
#[must_use]
pub fn control_kind(record: &Record) -> Option<ControlKind> {
    let key = record.key.as_ref()?;
    if key.len() != 4 {
        return None;
    }
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(ControlKind::Abort),
        1 => Some(ControlKind::Commit),
        _ => None,
    }
}

fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(array(buf, at))
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array(buf, at))
}

fn put_varlong(buf: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        buf.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    buf.push(zigzag as u8);
}

fn put_bytes(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            put_varlong(buf, bytes.len() as i64);
            buf.extend_from_slice(bytes);
        }
        None => put_varlong(buf, -1),
    }
}

/// Reads records out of a batch body; every length is checked against the bytes left.
struct Cursor {
    buf: Bytes,
    at: usize,
}

impl Cursor {
    fn byte(&mut self) -> Result<u8, BatchError> {
        let byte = *self.buf.get(self.at).ok_or(BatchError::BadRecord {
            reason: "record truncated",
        })?;
        self.at += 1;
        Ok(byte)
    }

    fn varlong(&mut self) -> Result<i64, BatchError> {
        let mut zigzag: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            zigzag |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64));
            }
        }
        Err(BatchError::BadRecord {
            reason: "varint longer than 10 bytes",
        })
    }

    fn bytes(&mut self) -> Result<Option<Bytes>, BatchError> {
        let length = self.varlong()?;
        if length == -1 {
            return Ok(None);
        }
        let length = usize::try_from(length).map_err(|_| BatchError::BadRecord {
            reason: "negative length",
        })?;
        if length > self.buf.len() - self.at {
            return Err(BatchError::BadRecord {
                reason: "length past the end of the batch",
            });
        }
        let bytes = self.buf.slice(self.at..self.at + length);
        self.at += length;
        Ok(Some(bytes))
    }

    fn record(&mut self, header: &BatchHeader) -> Result<Record, BatchError> {
        let length = self.varlong()?;
        let start = self.at;
        let length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= self.buf.len() - start)
            .ok_or(BatchError::BadRecord {
                reason: "record length out of range",
            })?;
        self.byte()?;
        let timestamp_delta = self.varlong()?;
        let offset_delta = self.varlong()?;
        if offset_delta < 0 || offset_delta > i64::from(header.last_offset_delta) {
            return Err(BatchError::BadRecord {
                reason: "offset delta out of range",
            });
        }
        let key = self.bytes()?;
        let value = self.bytes()?;
        let header_count = self.varlong()?;
        let header_count = usize::try_from(header_count).map_err(|_| BatchError::BadRecord {
            reason: "negative header count",
        })?;
        let mut headers = Vec::with_capacity(header_count.min(length));
        for _ in 0..header_count {
            let name = self.bytes()?.ok_or(BatchError::BadRecord {
                reason: "null header key",
            })?;
            headers.push((name, self.bytes()?));
        }
        if self.at - start != length {
            return Err(BatchError::BadRecord {
                reason: "record length does not match its fields",
            });
        }
        Ok(Record {
            offset: (header.base_offset as u64).wrapping_add(offset_delta as u64),
            timestamp_ms: header.base_timestamp.wrapping_add(timestamp_delta),
            key,
            value,
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retained_records_keep_their_offsets_and_the_batch_its_span() {
        let mut builder = BatchBuilder::new().producer(7, 1, 40);
        for (index, key) in ["a", "b", "a", "c"].into_iter().enumerate() {
            builder.push(1_000 + index as i64, Some(key.as_bytes()), Some(b"v"), &[]);
        }
        let mut bytes = builder.build();
        stamp_base_offset(&mut bytes, 100);
        let batch = Batch::from_bytes(bytes.freeze()).expect("a batch");
        let rewritten = batch
            .retain_records(|record| record.offset != 100)
            .expect("uncompressed")
            .expect("one record dropped");
        let compacted = Batch::from_bytes(rewritten.freeze()).expect("a valid batch");
        assert_eq!(compacted.base_offset(), 100);
        assert_eq!(compacted.last_offset(), 103, "the span is kept");
        assert_eq!(compacted.header().producer_id, 7);
        assert_eq!(compacted.header().base_sequence, 40);
        let offsets: Vec<u64> = compacted
            .records()
            .expect("records")
            .iter()
            .map(|record| record.offset)
            .collect();
        assert_eq!(offsets, [101, 102, 103]);
        assert!(batch.retain_records(|_| true).expect("ok").is_none());
        let empty = batch
            .retain_records(|_| false)
            .expect("ok")
            .expect("rewritten");
        let empty = Batch::from_bytes(empty.freeze()).expect("an empty batch is valid");
        assert!(empty.records().expect("records").is_empty());
        assert_eq!(empty.last_offset(), 103);
    }

    fn sample() -> Bytes {
        let mut builder = BatchBuilder::new().producer(7, 1, 100);
        builder.push(1_000, Some(b"key"), Some(b"value"), &[(b"h1", Some(b"v1"))]);
        builder.push(1_005, None, None, &[(b"h2", None)]);
        builder.build().freeze()
    }

    #[test]
    fn built_batch_round_trips_its_records() {
        let batch = Batch::from_bytes(sample()).expect("valid batch");
        let header = batch.header();
        assert_eq!(header.record_count, 2);
        assert_eq!(header.last_offset_delta, 1);
        assert_eq!(header.max_timestamp, 1_005);
        assert_eq!((header.producer_id, header.producer_epoch), (7, 1));
        assert_eq!(header.base_sequence, 100);
        let records = batch.records().expect("uncompressed records");
        assert_eq!(records[0].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(records[1].offset, 1);
        assert_eq!(records[1].timestamp_ms, 1_005);
        assert_eq!(records[1].headers[0].1, None);
    }

    #[test]
    fn stamping_the_base_offset_keeps_the_crc_valid() {
        let mut bytes = sample().to_vec();
        stamp_base_offset(&mut bytes, 42);
        let batch = Batch::from_bytes(Bytes::from(bytes)).expect("still valid");
        assert_eq!(batch.base_offset(), 42);
        assert_eq!(batch.last_offset(), 43);
        assert_eq!(batch.records().expect("records")[1].offset, 43);
    }

    #[test]
    fn a_flipped_bit_fails_the_crc() {
        let mut bytes = sample().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x10;
        assert!(matches!(validate(&bytes), Err(BatchError::BadCrc { .. })));
    }

    #[test]
    fn control_batches_carry_their_marker() {
        let batch = Batch::from_bytes(control_batch(ControlKind::Commit, 9, 2, 5, 77).freeze())
            .expect("valid control batch");
        assert!(batch.header().is_control());
        assert!(batch.header().is_transactional());
        let records = batch.records().expect("records");
        assert_eq!(control_kind(&records[0]), Some(ControlKind::Commit));
    }

    #[test]
    fn compressed_batches_are_kept_but_not_decoded() {
        let mut bytes = sample().to_vec();
        bytes[ATTRIBUTES_AT + 1] |= 3;
        let crc = batch_crc(&bytes);
        bytes[CRC_AT..ATTRIBUTES_AT].copy_from_slice(&crc.to_be_bytes());
        let batch = Batch::from_bytes(Bytes::from(bytes)).expect("valid");
        assert_eq!(batch.header().compression(), 3);
        assert_eq!(batch.records(), Err(BatchError::Compressed { codec: 3 }));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(batch) = Batch::from_bytes(Bytes::from(bytes)) {
                let _ = batch.records();
            }
        }

        #[test]
        fn records_round_trip(
            records in proptest::collection::vec(
                (0i64..1_000_000, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50))), 1..20)
        ) {
            let mut builder = BatchBuilder::new();
            for (ts, key, value) in &records {
                builder.push(*ts, key.as_deref(), value.as_deref(), &[]);
            }
            let batch = Batch::from_bytes(builder.build().freeze()).expect("valid");
            let decoded = batch.records().expect("records");
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (record, (ts, key, value))) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(record.offset, i as u64);
                prop_assert_eq!(record.timestamp_ms, *ts);
                prop_assert_eq!(record.key.as_deref(), key.as_deref());
                prop_assert_eq!(record.value.as_deref(), value.as_deref());
            }
        }
    }
}
