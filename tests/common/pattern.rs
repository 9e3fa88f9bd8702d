//! Fill patterns for blocks under test: every block gets bytes derived from its own id, so a
//! block overwritten by another, moved by realloc to the wrong place, or handed out twice shows
//! up as a mismatch.

/// Length of the repeating unit of a block's fill pattern. Prime, so that data moved by a
/// page-sized or power-of-two offset does not line up with the pattern again.
pub const PERIOD: usize = 4093;

pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The repeating unit of the pattern for `id`; only the first `len` bytes are computed.
pub fn pattern_unit(id: u64, len: usize) -> [u8; PERIOD] {
    let mut unit = [0u8; PERIOD];
    let len = len.min(PERIOD);
    for (word_index, chunk) in unit[..len].chunks_mut(8).enumerate() {
        let word = splitmix64(
            id.wrapping_mul(0x1_0000_0001)
                .wrapping_add(word_index as u64),
        );
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    unit
}

/// Fills `bytes` with block `id`'s pattern.
pub fn fill_pattern(bytes: &mut [u8], id: u64) {
    let unit = pattern_unit(id, bytes.len());
    for chunk in bytes.chunks_mut(PERIOD) {
        chunk.copy_from_slice(&unit[..chunk.len()]);
    }
}

/// Offset of the first byte of `bytes` that differs from block `id`'s pattern.
pub fn pattern_mismatch(bytes: &[u8], id: u64) -> Option<usize> {
    let unit = pattern_unit(id, bytes.len());
    for (chunk_index, chunk) in bytes.chunks(PERIOD).enumerate() {
        if chunk != &unit[..chunk.len()] {
            let within = chunk
                .iter()
                .zip(unit.iter())
                .position(|(a, b)| a != b)
                .expect("chunks differ");
            return Some(chunk_index * PERIOD + within);
        }
    }
    None
}
