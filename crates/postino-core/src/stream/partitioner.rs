//! Which partition a record goes to: by key with Kafka's murmur2 (so a Kafka client's default
//! partitioner and postino put a key in the same partition), and without a key round-robin or
//! sticky (one partition for a run of records, then the next, as Kafka's producer batches).

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
#[must_use]
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut hash = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M);
        hash ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if let Some(first) = tail.first() {
        hash ^= u32::from(*first);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^= hash >> 15;
    hash as i32
}

/// The partition Kafka's default partitioner gives `key` among `partitions`
/// (`toPositive(murmur2(key)) % partitions`).
///
/// ```
/// assert_eq!(postino_core::stream::partition_for_key(b"foobar", 50), 16);
/// ```
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a stream has at least one partition");
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions
}

/// How records without a key are spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Each record to the next partition.
    RoundRobin,
    /// Runs of this many records to one partition, then the next (Kafka's sticky
    /// partitioner, which fills one batch at a time).
    Sticky { run_records: u32 },
}

/// Chooses partitions for one producer; keeps the round-robin or sticky position.
#[derive(Debug, Clone)]
pub struct Partitioner {
    spread: Spread,
    next: u32,
    in_run: u32,
}

impl Partitioner {
    /// A partitioner spreading keyless records by `spread`, starting at partition 0.
    #[must_use]
    pub fn new(spread: Spread) -> Self {
        Self {
            spread,
            next: 0,
            in_run: 0,
        }
    }

    /// The partition for a record with `key` among `partitions`.
    pub fn choose(&mut self, key: Option<&[u8]>, partitions: u32) -> u32 {
        assert!(partitions > 0, "a stream has at least one partition");
        if let Some(key) = key {
            return partition_for_key(key, partitions);
        }
        let chosen = self.next % partitions;
        match self.spread {
            Spread::RoundRobin => self.next = self.next.wrapping_add(1),
            Spread::Sticky { run_records } => {
                self.in_run += 1;
                if self.in_run >= run_records.max(1) {
                    self.in_run = 0;
                    self.next = self.next.wrapping_add(1);
                }
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn a_key_always_goes_to_the_same_partition() {
        let mut partitioner = Partitioner::new(Spread::RoundRobin);
        let first = partitioner.choose(Some(b"order-17"), 8);
        for _ in 0..10 {
            assert_eq!(partitioner.choose(Some(b"order-17"), 8), first);
        }
        assert_eq!(first, partition_for_key(b"order-17", 8));
    }

    #[test]
    fn round_robin_visits_every_partition_in_turn() {
        let mut partitioner = Partitioner::new(Spread::RoundRobin);
        let chosen: Vec<u32> = (0..6).map(|_| partitioner.choose(None, 3)).collect();
        assert_eq!(chosen, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn sticky_keeps_a_partition_for_a_run() {
        let mut partitioner = Partitioner::new(Spread::Sticky { run_records: 2 });
        let chosen: Vec<u32> = (0..6).map(|_| partitioner.choose(None, 2)).collect();
        assert_eq!(chosen, [0, 0, 1, 1, 0, 0]);
    }
}
