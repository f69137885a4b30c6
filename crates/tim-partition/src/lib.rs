//! Kafka's default partitioner: where a keyed record lands.
//!
//! The bridge never partitions records itself (librdkafka's `murmur2_random` does, the same as a Java
//! client), but two readers need to know where a key lands: a consumer's snapshot sweep (which groups
//! a `snapshot_completed` on partition p speaks for) and the forwarder (whether a record it waits for
//! was overtaken on its own partition, which a healthy idempotent producer never lets happen).
//!
//! Why a crate of its own: those two readers are in two crates, the bridge (`tim-kafka-bridge`, which
//! re-exports this one as `partition`) and its reference consumer (`tim-group-directory`), and the
//! bridge's package depends on the consumer's for the `tim-group-directory` binary. Kept in the bridge,
//! it would make the consumer depend on the bridge: a cycle. Kept in the consumer, it would make the
//! bridge's library carry the consumer's database drivers. Alone, it has no dependency, and both depend
//! on it.

/// Kafka's default partitioner (Java's, and librdkafka's `murmur2_random` for a keyed record): the
/// partition of `key` among `partitions`. Hand-written: it is Kafka's own 30-line variant of MurmurHash2
/// (its seed, its sign handling), which no general-purpose crate promises to match; the test suite
/// checks it against the partitions the bridge's records land on.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    partition_of_hash(murmur2(key), partitions)
}

/// The partition of a key whose [`murmur2`] is `hash`, among `partitions`.
pub fn partition_of_hash(hash: i32, partitions: i32) -> i32 {
    ((hash as u32 & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's MurmurHash2 of `key` (Java's `Utils.murmur2`), as a signed 32-bit value like Java's.
pub fn murmur2(key: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafkas_murmur2_gives_the_values_of_kafkas_own_tests() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }
}
