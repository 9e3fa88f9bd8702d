//! Size classes: the fixed set of object sizes that small requests are rounded up to.
//!
//! Invariants (checked by the unit tests below):
//! - Class 0 is not a size class: it means "large" (served as a page run by the page heap).
//! - Classes `1..NUM_CLASSES` have strictly increasing sizes; the last is [`MAX_SMALL_SIZE`].
//! - Every class size of 16 bytes or more is a multiple of 16, so objects of those classes are
//!   16-byte aligned (spans start on page boundaries). The 8-byte class is 8-aligned.
//! - Rounding waste: for requests of 128 bytes and up, `class_size - request < request / 8`
//!   (at most 12.5%); below 128 bytes the waste is under the 16-byte alignment quantum.
//! - Each class's span (`pages` pages) wastes at most 1/8 of its bytes in the tail that cannot
//!   hold a whole object, and is at least `MIN_SPAN_BYTES` (32 KiB) long.
//! - `class_for_size(n)` is the smallest class whose size is `>= n`, found by table lookup.
//!
//! The tables are computed by `const fn`s at compile time; nothing runs at start-up.

use crate::types::PAGE_SIZE;

/// Largest request served from a size class; larger ones are page runs.
pub const MAX_SMALL_SIZE: usize = 256 * 1024;

/// A size class index. `SizeClass(0)` means "not a small object".
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
#[repr(transparent)]
pub struct SizeClass(pub u8);

impl SizeClass {
    pub const LARGE: SizeClass = SizeClass(0);

    #[inline(always)]
    pub fn index(self) -> usize {
        self.0 as usize
    }

    #[inline(always)]
    pub fn is_large(self) -> bool {
        self.0 == 0
    }

    /// Object size of this class in bytes.
    #[inline(always)]
    pub fn size(self) -> usize {
        self.info().size as usize
    }

    #[inline(always)]
    pub fn info(self) -> &'static ClassInfo {
        debug_assert!(self.index() < NUM_CLASSES);
        // SAFETY: a SizeClass only ever holds an index below NUM_CLASSES: they are made by the
        // lookup tables, which hold such indices, or by loops bounded by NUM_CLASSES.
        unsafe { CLASS_INFO.get_unchecked(self.index()) }
    }
}

/// Static description of one size class.
#[derive(Clone, Copy, Debug)]
pub struct ClassInfo {
    /// Object size in bytes.
    pub size: u32,
    /// Pages per span carved into objects of this class.
    pub pages: u32,
    /// Objects moved at once between a thread cache and the transfer cache.
    pub batch: u32,
    /// Objects a span holds.
    pub objects_per_span: u32,
    /// `ceil(2^64 / size)`: `n` (below 2^32) is a multiple of `size` exactly when
    /// `n.wrapping_mul(multiple_magic) < multiple_magic` (a divisibility test without a
    /// division, used to recognise object starts on `free`). See [`ClassInfo::is_multiple`].
    pub multiple_magic: u64,
    /// `ceil(2^32 / objects_per_span)`: `(n * bucket_magic) >> 32 == n / objects_per_span`
    /// for `n * objects_per_span < 2^32` (fullness buckets without a division).
    pub bucket_magic: u64,
}

impl ClassInfo {
    /// Whether `n < 2^32` is a multiple of the class size.
    #[inline(always)]
    pub fn is_multiple(&self, n: usize) -> bool {
        (n as u64).wrapping_mul(self.multiple_magic) < self.multiple_magic
    }
}

const fn build_sizes() -> ([u32; 128], usize) {
    let mut sizes = [0u32; 128];
    let mut n = 1; // class 0 is "large"
    sizes[n] = 8;
    n += 1;
    let mut s = 16;
    while s <= 128 {
        sizes[n] = s as u32;
        n += 1;
        s += 16;
    }
    // From 128 up, eight classes per power of two: step = 2^k / 8, waste < 12.5%.
    let mut base = 128;
    while base < MAX_SMALL_SIZE {
        let step = base / 8;
        let mut k = 1;
        while k <= 8 {
            sizes[n] = (base + k * step) as u32;
            n += 1;
            k += 1;
        }
        base *= 2;
    }
    (sizes, n)
}

const SIZES: ([u32; 128], usize) = build_sizes();

/// Number of class indices including the reserved class 0.
pub const NUM_CLASSES: usize = SIZES.1;

/// Every span is at least this big.
const MIN_SPAN_BYTES: usize = 32 * 1024;

const fn pages_for(size: usize) -> usize {
    // Spans of at least 32 KiB; past 4 KiB objects, about 8 objects a span up to 256 KiB
    // (fewer objects above 32 KiB, one where an object is bigger); then grown until the tail
    // waste is at most 1/8 of the span. A span costs page-heap
    // work when it is carved and when it goes back, and a range of its own when it is
    // released; pages of a span that objects were never carved from stay untouched (not
    // resident), so a class with few objects does not pay for the whole span.
    let target = if size * 8 <= MIN_SPAN_BYTES {
        MIN_SPAN_BYTES
    } else if size * 8 < 256 * 1024 {
        size * 8
    } else if size < 256 * 1024 {
        256 * 1024
    } else {
        size
    };
    let mut pages = target.div_ceil(PAGE_SIZE);
    loop {
        let bytes = pages * PAGE_SIZE;
        let waste = bytes % size;
        if bytes >= size && waste * 8 <= bytes {
            return pages;
        }
        pages += 1;
    }
}

const fn batch_for(size: usize) -> usize {
    let b = 64 * 1024 / size;
    if b < 2 {
        2
    } else if b > 64 {
        64
    } else {
        b
    }
}

const fn build_info() -> [ClassInfo; NUM_CLASSES] {
    let mut info = [ClassInfo {
        size: 0,
        pages: 0,
        batch: 0,
        objects_per_span: 0,
        multiple_magic: 0,
        bucket_magic: 0,
    }; NUM_CLASSES];
    let mut c = 1;
    while c < NUM_CLASSES {
        let size = SIZES.0[c] as usize;
        let pages = pages_for(size);
        info[c] = ClassInfo {
            size: size as u32,
            pages: pages as u32,
            batch: batch_for(size) as u32,
            objects_per_span: (pages * PAGE_SIZE / size) as u32,
            multiple_magic: u64::MAX / size as u64 + 1,
            bucket_magic: (1u64 << 32).div_ceil((pages * PAGE_SIZE / size) as u64),
        };
        c += 1;
    }
    info
}

/// Per-class description, indexed by `SizeClass::index()`.
pub static CLASS_INFO: [ClassInfo; NUM_CLASSES] = build_info();

// Two lookup tables, as tcmalloc does: 8-byte granularity up to 1024 bytes, 128-byte
// granularity above. Index computations are shifts, never divisions.
const SMALL_LIMIT: usize = 1024;
const SMALL_TABLE_LEN: usize = SMALL_LIMIT / 8 + 1;
const BIG_TABLE_LEN: usize = (MAX_SMALL_SIZE - SMALL_LIMIT) / 128 + 2;

const fn smallest_class_at_least(n: usize) -> u8 {
    let mut c = 1;
    while c < NUM_CLASSES {
        if SIZES.0[c] as usize >= n {
            return c as u8;
        }
        c += 1;
    }
    0
}

const fn build_small_table() -> [u8; SMALL_TABLE_LEN] {
    let mut t = [0u8; SMALL_TABLE_LEN];
    let mut i = 0;
    while i < SMALL_TABLE_LEN {
        t[i] = smallest_class_at_least(if i == 0 { 1 } else { i * 8 });
        i += 1;
    }
    t
}

const fn build_big_table() -> [u8; BIG_TABLE_LEN] {
    let mut t = [0u8; BIG_TABLE_LEN];
    let mut i = 0;
    while i < BIG_TABLE_LEN {
        let n = SMALL_LIMIT + i * 128;
        t[i] = if n > MAX_SMALL_SIZE {
            0
        } else {
            smallest_class_at_least(n)
        };
        i += 1;
    }
    t
}

static SMALL_TABLE: [u8; SMALL_TABLE_LEN] = build_small_table();
/// As `SMALL_TABLE`, for the C API, whose blocks are at least 16 bytes.
static SMALL_TABLE_C: [u8; SMALL_TABLE_LEN] = {
    let mut t = build_small_table();
    t[0] = smallest_class_at_least(16);
    t[1] = smallest_class_at_least(16);
    t
};
static BIG_TABLE: [u8; BIG_TABLE_LEN] = build_big_table();

/// The class for a request of `size` bytes with alignment <= 16 (<= 8 for sizes below 16),
/// or `SizeClass::LARGE` when `size > MAX_SMALL_SIZE`.
#[inline(always)]
pub fn class_for_size(size: usize) -> SizeClass {
    if size <= SMALL_LIMIT {
        // SAFETY: size <= 1024 so (size + 7) >> 3 <= 128 < SMALL_TABLE_LEN.
        SizeClass(unsafe { *SMALL_TABLE.get_unchecked((size + 7) >> 3) })
    } else if size <= MAX_SMALL_SIZE {
        // SAFETY: 1024 < size <= MAX_SMALL_SIZE, so the index is at most
        // (MAX_SMALL_SIZE - 1024 + 127) >> 7 < BIG_TABLE_LEN.
        SizeClass(unsafe { *BIG_TABLE.get_unchecked((size - SMALL_LIMIT + 127) >> 7) })
    } else {
        SizeClass::LARGE
    }
}

/// The class for a C `malloc` of `size` bytes: as [`class_for_size`], but never below 16
/// bytes (C blocks are 16-byte aligned and have room for the free tag, see `check`).
#[inline(always)]
pub fn class_for_c(size: usize) -> SizeClass {
    match class_for_c_small(size) {
        Some(c) => c,
        None => class_for_size(size),
    }
}

/// [`class_for_c`] for requests of up to 1 KiB, the common case; `None` above.
#[inline(always)]
pub fn class_for_c_small(size: usize) -> Option<SizeClass> {
    if size <= SMALL_LIMIT {
        // SAFETY: size <= 1024 so (size + 7) >> 3 <= 128 < SMALL_TABLE_LEN.
        Some(SizeClass(unsafe {
            *SMALL_TABLE_C.get_unchecked((size + 7) >> 3)
        }))
    } else {
        None
    }
}

/// The class for a request of `size` bytes aligned to `align` (a power of two), or
/// `SizeClass::LARGE` when no class fits (too big, or alignment above a page).
///
/// Objects start at `span_start + i * class_size` with page-aligned spans, so a class serves
/// alignment `align <= PAGE_SIZE` exactly when its size is a multiple of `align`.
#[inline(always)]
pub fn class_for(size: usize, align: usize) -> SizeClass {
    let c = class_for_size(size);
    if align <= 8 || (align <= 16 && size > 8) {
        return c;
    }
    class_for_aligned(c, align)
}

#[cold]
fn class_for_aligned(mut c: SizeClass, align: usize) -> SizeClass {
    if align > PAGE_SIZE || c.is_large() {
        return SizeClass::LARGE;
    }
    while c.index() < NUM_CLASSES {
        if c.size() & (align - 1) == 0 {
            return c;
        }
        c = SizeClass(c.0 + 1);
    }
    SizeClass::LARGE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_increase_and_end_at_max() {
        const { assert!(NUM_CLASSES <= 255) };
        for c in 2..NUM_CLASSES {
            assert!(CLASS_INFO[c].size > CLASS_INFO[c - 1].size);
        }
        assert_eq!(CLASS_INFO[NUM_CLASSES - 1].size as usize, MAX_SMALL_SIZE);
    }

    #[test]
    fn c_classes_are_at_least_16_bytes() {
        for n in 0..=MAX_SMALL_SIZE + 1 {
            let c = class_for_c(n);
            assert_eq!(c, class_for_size(n.max(16)), "{n}");
        }
    }

    #[test]
    fn bucket_division_is_exact() {
        for info in &CLASS_INFO[1..] {
            let per = info.objects_per_span as u64;
            for n in 0..=per * 8 {
                assert_eq!((n * info.bucket_magic) >> 32, n / per, "{per} {n}");
            }
        }
    }

    #[test]
    fn multiple_test_is_exact() {
        for info in &CLASS_INFO[1..] {
            let size = info.size as usize;
            // Every offset a pagemap phase can produce, and well beyond.
            let limit = (size + PAGE_SIZE) * 2;
            for n in 0..limit {
                assert_eq!(info.is_multiple(n), n % size == 0, "size {size}, n {n}");
            }
        }
    }

    #[test]
    fn alignment_of_classes() {
        for info in &CLASS_INFO[1..] {
            if info.size >= 16 {
                assert_eq!(info.size % 16, 0, "class {} not 16-aligned", info.size);
            } else {
                assert_eq!(info.size % 8, 0);
            }
        }
    }

    #[test]
    fn lookup_is_smallest_fitting_class_for_every_size() {
        for n in 1..=MAX_SMALL_SIZE {
            let c = class_for_size(n);
            assert!(!c.is_large(), "size {n}");
            assert!(c.size() >= n, "size {n} got {}", c.size());
            if c.index() > 1 {
                assert!(SizeClass(c.0 - 1).size() < n, "size {n} not smallest");
            }
        }
        assert!(class_for_size(MAX_SMALL_SIZE + 1).is_large());
        assert!(class_for_size(usize::MAX).is_large());
    }

    #[test]
    fn rounding_waste_bounded() {
        for n in 1..=MAX_SMALL_SIZE {
            let waste = class_for_size(n).size() - n;
            if n >= 128 {
                assert!(waste * 8 < n, "size {n}: waste {waste} over 12.5%");
            } else {
                assert!(waste < 16, "size {n}: waste {waste}");
            }
        }
    }

    #[test]
    fn span_tail_waste_bounded() {
        for info in &CLASS_INFO[1..] {
            let bytes = info.pages as usize * PAGE_SIZE;
            assert!(bytes >= MIN_SPAN_BYTES, "class {}", info.size);
            assert!(info.objects_per_span >= 1);
            assert!(info.batch >= 2 && info.batch <= 64);
            assert!(
                (bytes % info.size as usize) * 8 <= bytes,
                "class {}",
                info.size
            );
        }
    }

    #[test]
    fn aligned_lookup_gives_aligned_classes() {
        let mut align = 16;
        while align <= PAGE_SIZE {
            for n in [1, 7, 17, 100, 1000, 5000, 70_000, MAX_SMALL_SIZE] {
                let c = class_for(n, align);
                if !c.is_large() {
                    assert_eq!(c.size() % align, 0);
                    assert!(c.size() >= n);
                }
            }
            align *= 2;
        }
        assert!(class_for(8, 2 * PAGE_SIZE).is_large());
        assert_eq!(class_for(8, 8).size(), 8);
        assert_eq!(class_for(8, 16).size(), 16);
    }
}
