//! Helpers shared by the fuzz targets: size and alignment choices decoded from fuzzer input,
//! and a position-dependent fill pattern written into every live block and checked before the
//! block is freed, resized or handed to another thread.
//!
//! Only part of a large block is written and checked (its head, its tail and one byte in every
//! 4 KiB), so that multi-MiB blocks stay cheap while every OS page of the block is still probed.

use arbitrary::Arbitrary;

/// Bytes at the start of a block that are always covered by the pattern.
pub const HEAD: usize = 16 << 10;
/// Bytes at the end of a block that are always covered by the pattern.
pub const TAIL: usize = 4 << 10;
/// Between head and tail, one byte in every `STRIDE` is covered.
pub const STRIDE: usize = 4 << 10;

/// A requested size, drawn from bands that exercise the size-class table, page runs and large
/// spans.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size {
    /// 1..=256 bytes.
    Tiny(u8),
    /// 1..=65536 bytes.
    Small(u16),
    /// Up to 4 MiB: the largest small classes and the first large spans.
    Medium(u32),
    /// A whole number of 8 KiB pages, up to 4 MiB.
    Pages(u16),
    /// `2^exp + delta`: the edges of power-of-two-sized classes.
    NearPow2 { exp: u8, delta: i8 },
    /// Up to 48 MiB (occasional large blocks).
    Large(u32),
}

impl Size {
    /// The size in bytes, always at least 1.
    pub fn bytes(self) -> usize {
        let n = match self {
            Size::Tiny(n) => n as usize + 1,
            Size::Small(n) => n as usize + 1,
            Size::Medium(n) => n as usize % (4 << 20) + 1,
            Size::Pages(n) => (n as usize % 512 + 1) * 8192,
            Size::NearPow2 { exp, delta } => {
                let base = 1usize << (exp % 23);
                base.saturating_add_signed(delta as isize)
            }
            Size::Large(n) => n as usize % (48 << 20) + 1,
        };
        n.max(1)
    }

    /// The size in bytes, limited to `max`.
    pub fn bytes_at_most(self, max: usize) -> usize {
        let n = self.bytes();
        if n > max {
            n % max + 1
        } else {
            n
        }
    }
}

/// A power-of-two alignment from 1 byte to 2 MiB, biased towards small ones.
pub fn align_from(a: u8) -> usize {
    // Half of the values give an alignment of at most 16 bytes.
    if a < 128 {
        1 << (a % 5)
    } else {
        1 << (a % 22)
    }
}

/// The pattern byte at offset `i` of a block tagged `tag`. Differs between neighbouring
/// offsets, between pages and between tags, so that shifted copies and overlaps show up.
#[inline]
pub fn pattern(tag: u32, i: usize) -> u8 {
    let x = (i as u32) ^ ((i >> 8) as u32).wrapping_mul(0x9E37) ^ ((i >> 16) as u32) << 3;
    (x ^ tag.wrapping_mul(0x045D_9F3B)) as u8 ^ (tag >> 24) as u8
}

/// Calls `f(start, end)` for each covered byte range of a block of `size` bytes.
pub fn for_each_range(size: usize, mut f: impl FnMut(usize, usize)) {
    let head_end = size.min(HEAD);
    f(0, head_end);
    if size <= HEAD {
        return;
    }
    let tail_start = size.saturating_sub(TAIL).max(HEAD);
    let mut i = HEAD.next_multiple_of(STRIDE);
    while i < tail_start {
        f(i, i + 1);
        i += STRIDE;
    }
    f(tail_start, size);
}

/// Whether offset `i` of a block filled as `size` bytes carries the pattern.
#[inline]
pub fn covered(size: usize, i: usize) -> bool {
    i < size && (i < HEAD || i.is_multiple_of(STRIDE) || i >= size.saturating_sub(TAIL))
}

/// Writes the pattern of `tag` into the covered ranges of the block.
///
/// # Safety
/// `p` is valid for writes of `size` bytes.
pub unsafe fn fill(p: *mut u8, size: usize, tag: u32) {
    for_each_range(size, |a, b| {
        for i in a..b {
            // SAFETY: `i < size`, and the caller guarantees `size` writable bytes at `p`.
            unsafe { p.add(i).write(pattern(tag, i)) };
        }
    });
}

/// Checks the first `len` bytes of a block that was filled as `filled` bytes with `tag`: every
/// offset below `len` that the fill covered must still hold the pattern. Panics with the first
/// mismatch.
///
/// # Safety
/// `p` is valid for reads of `len` bytes.
pub unsafe fn check(p: *const u8, len: usize, filled: usize, tag: u32, what: &str) {
    for_each_range(len, |a, b| {
        for i in a..b {
            if !covered(filled, i) {
                continue;
            }
            // SAFETY: `i < len`, and the caller guarantees `len` readable bytes at `p`.
            let got = unsafe { p.add(i).read() };
            let want = pattern(tag, i);
            assert_eq!(
                got, want,
                "{what}: block {p:p} (filled {filled} bytes, tag {tag}) holds {got:#x} at offset {i}, expected {want:#x}"
            );
        }
    });
}

/// Checks that the covered ranges of a `size`-byte block read as zero.
///
/// # Safety
/// `p` is valid for reads of `size` bytes.
pub unsafe fn check_zero(p: *const u8, size: usize, what: &str) {
    for_each_range(size, |a, b| {
        for i in a..b {
            // SAFETY: `i < size`, and the caller guarantees `size` readable bytes at `p`.
            let got = unsafe { p.add(i).read() };
            assert_eq!(
                got, 0,
                "{what}: zeroed block {p:p} of {size} bytes holds {got:#x} at offset {i}"
            );
        }
    });
}
