//! The metadata arena: memory for span records, straight from the OS, given back page by page
//! when unused.
//!
//! Invariants (all under the page heap lock, which owns the arena):
//! - Records are carved from 1 MiB chunks aligned to 1 MiB, so a record's chunk is found by
//!   masking its address. A chunk's first OS page holds its header; records fill the rest, in
//!   slots of [`RECORD`] bytes (a record may straddle two OS pages). Chunks are never unmapped.
//! - A header's `free_bits` has bit `i` set exactly when slot `i` holds no live record; `live`
//!   counts the clear bits; every set bit lies at or after word `hint`.
//! - `page_live[p]` counts the live records that overlap OS page `p` of the chunk. A page with
//!   no live record is either resident (counted in the arena's `empty_pages`) or released (its
//!   bit set in `released`, counted in `released_pages`; it reads as zero). A page with a live
//!   record is resident and not marked released. Pages of a fresh chunk start as released.
//! - A new record takes the lowest free slot of the lowest-numbered chunk with one, so live
//!   records gather at the start of the arena and the pages past them empty out. Whenever more
//!   than [`SWEEP_AT`] resident pages hold no record, the arena releases such pages, from the
//!   end of the arena backwards, until [`KEEP_EMPTY`] are left: a heap that shrinks sheds the
//!   records that described it even while a few records survive in every chunk.
//! - Nothing here touches the global allocator.

use crate::os;
use crate::span::Span;
use core::ptr;

const CHUNK: usize = 1 << 20;
const MAX_CHUNKS: usize = 1 << 14;
const OS_PAGE: usize = 4096;
/// OS pages in a chunk.
const PAGES: usize = CHUNK / OS_PAGE;
/// Bytes of one record slot.
pub const RECORD: usize = core::mem::size_of::<Span>().next_multiple_of(8);
/// Records start on the chunk's second OS page; the first belongs to the header.
const FIRST: usize = OS_PAGE;
/// Record slots in a chunk.
const SLOTS: usize = (CHUNK - FIRST) / RECORD;
const WORDS: usize = SLOTS.div_ceil(64);
/// Resident pages without a live record that trigger a sweep ...
const SWEEP_AT: usize = 64;
/// ... and how many of them the sweep leaves, for records needed again soon.
const KEEP_EMPTY: usize = 16;
/// Ranges released by one system call during a sweep.
const SWEEP_BATCH: usize = 32;

#[repr(C)]
struct ChunkHeader {
    /// This chunk's index in the arena.
    index: usize,
    live: usize,
    /// Lowest word of `free_bits` that may have a bit set.
    hint: usize,
    /// Bit `i` set: slot `i` is free.
    free_bits: [u64; WORDS],
    /// Live records overlapping each OS page (entry 0, the header's page, stays 0).
    page_live: [u16; PAGES],
    /// Bit `p` set: OS page `p` holds no record and is released (or was never touched).
    released: [u64; PAGES / 64],
}

const _: () = assert!(core::mem::size_of::<ChunkHeader>() <= FIRST);

impl ChunkHeader {
    /// The header of the chunk holding record `r`, and `r`'s slot in it (every record lies in
    /// a chunk whose header starts at the chunk's base).
    fn locate(r: *const Span) -> (*mut ChunkHeader, usize) {
        let h = r as usize & !(CHUNK - 1);
        (h as *mut ChunkHeader, (r as usize - h - FIRST) / RECORD)
    }

    /// The OS pages slot `slot` overlaps, first and last.
    fn pages_of(slot: usize) -> (usize, usize) {
        let off = FIRST + slot * RECORD;
        (off / OS_PAGE, (off + RECORD - 1) / OS_PAGE)
    }

    fn is_released(&self, p: usize) -> bool {
        self.released[p / 64] & (1 << (p % 64)) != 0
    }
}

pub struct RecordArena {
    chunks: [*mut ChunkHeader; MAX_CHUNKS],
    count: usize,
    /// Lowest chunk index that may have a free slot.
    hint: usize,
    /// OS pages of records that are resident and hold no live record.
    empty_pages: usize,
    /// OS pages of records that are released or were never touched.
    released_pages: usize,
}

impl RecordArena {
    pub const fn new() -> Self {
        RecordArena {
            chunks: [ptr::null_mut(); MAX_CHUNKS],
            count: 0,
            hint: 0,
            empty_pages: 0,
            released_pages: 0,
        }
    }

    /// Bytes mapped for records.
    pub fn mapped_bytes(&self) -> usize {
        self.count * CHUNK
    }

    /// Bytes of mapped chunks not released to the OS (headers included).
    pub fn resident_bytes(&self) -> usize {
        self.count * CHUNK - self.released_pages * OS_PAGE
    }

    /// Maps and initialises a new chunk; false when the OS refuses or the arena is full.
    fn add_chunk(&mut self) -> bool {
        if self.count == MAX_CHUNKS {
            return false;
        }
        let Some(mem) = os::map_aligned(CHUNK, CHUNK) else {
            return false;
        };
        let h = mem as *mut ChunkHeader;
        // SAFETY: fresh zeroed memory of CHUNK bytes, ours alone; the header fits in it.
        unsafe {
            (*h).index = self.count;
            for (w, word) in (*h).free_bits.iter_mut().enumerate() {
                let slots = (SLOTS - w * 64).min(64);
                *word = if slots == 64 { !0 } else { (1 << slots) - 1 };
            }
            (*h).released = [!0; PAGES / 64];
            (*h).released[0] &= !1;
        }
        self.released_pages += PAGES - 1;
        self.chunks[self.count] = h;
        self.count += 1;
        true
    }

    /// The lowest free slot of the arena, as (chunk index, slot), or `None` when every chunk
    /// is full.
    fn lowest_free(&mut self) -> Option<(usize, usize)> {
        let mut i = self.hint;
        // SAFETY: chunk headers are valid while mapped, and chunks are never unmapped.
        while i < self.count && unsafe { (*self.chunks[i]).live } == SLOTS {
            i += 1;
        }
        self.hint = i;
        if i == self.count {
            return None;
        }
        let h = self.chunks[i];
        // SAFETY: `h` is a mapped chunk header with a free slot (`live < SLOTS`), so some bit
        // at or after `hint` is set and the scan stops inside `free_bits`.
        unsafe {
            let mut w = (*h).hint;
            while (*h).free_bits[w] == 0 {
                w += 1;
            }
            (*h).hint = w;
            Some((i, w * 64 + (*h).free_bits[w].trailing_zeros() as usize))
        }
    }

    /// Takes free slot `slot` of chunk `i`.
    fn take(&mut self, i: usize, slot: usize) -> *mut Span {
        let h = self.chunks[i];
        // SAFETY: `h` is a mapped chunk header and `slot` one of its free slots.
        unsafe {
            (*h).free_bits[slot / 64] &= !(1 << (slot % 64));
            (*h).live += 1;
            let (first, last) = ChunkHeader::pages_of(slot);
            for p in first..=last {
                if (*h).page_live[p] == 0 {
                    if (*h).is_released(p) {
                        (*h).released[p / 64] &= !(1 << (p % 64));
                        self.released_pages -= 1;
                    } else {
                        self.empty_pages -= 1;
                    }
                }
                (*h).page_live[p] += 1;
            }
            (h as usize + FIRST + slot * RECORD) as *mut Span
        }
    }

    /// An uninitialised record, or null when the OS refuses memory.
    pub fn alloc(&mut self) -> *mut Span {
        let (i, slot) = match self.lowest_free() {
            Some(found) => found,
            None => {
                if !self.add_chunk() {
                    return ptr::null_mut();
                }
                (self.count - 1, 0)
            }
        };
        self.take(i, slot)
    }

    /// An uninitialised record placed before record `r` in the arena (an earlier chunk, or
    /// a lower slot of the same one), or null when there is none. Moving long-lived records
    /// there lets the pages past them empty out.
    ///
    /// # Safety
    /// `r` came from [`alloc`](Self::alloc) and is live.
    pub unsafe fn alloc_before(&mut self, r: *const Span) -> *mut Span {
        let (h, slot) = ChunkHeader::locate(r);
        // SAFETY: `h` is the mapped header of `r`'s chunk.
        let at = (unsafe { (*h).index }, slot);
        match self.lowest_free() {
            Some(found) if found < at => self.take(found.0, found.1),
            _ => ptr::null_mut(),
        }
    }

    /// Returns a record; releases record pages nobody uses once there are enough of them.
    ///
    /// # Safety
    /// `r` came from [`alloc`](Self::alloc) and nothing refers to it any more.
    pub unsafe fn free(&mut self, r: *mut Span) {
        let (h, slot) = ChunkHeader::locate(r);
        // SAFETY: `h` is the mapped header of `r`'s chunk, `slot` its live slot.
        unsafe {
            let w = slot / 64;
            debug_assert!((*h).free_bits[w] & (1 << (slot % 64)) == 0);
            (*h).free_bits[w] |= 1 << (slot % 64);
            (*h).hint = (*h).hint.min(w);
            (*h).live -= 1;
            self.hint = self.hint.min((*h).index);
            let (first, last) = ChunkHeader::pages_of(slot);
            for p in first..=last {
                (*h).page_live[p] -= 1;
                if (*h).page_live[p] == 0 {
                    self.empty_pages += 1;
                }
            }
        }
        if self.empty_pages > SWEEP_AT {
            self.sweep();
        }
    }

    /// Releases resident pages without a live record, from the end of the arena backwards,
    /// until [`KEEP_EMPTY`] are left.
    fn sweep(&mut self) {
        let mut ranges = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; SWEEP_BATCH];
        let mut n = 0;
        let mut c = self.count;
        while c > 0 && self.empty_pages > KEEP_EMPTY {
            c -= 1;
            let h = self.chunks[c];
            // SAFETY: `h` is a mapped chunk header; only pages 1.. (past the header) are read.
            let empty = move |p: usize| unsafe { (*h).page_live[p] == 0 && !(*h).is_released(p) };
            // Runs of empty resident pages, found backwards; `p` is the end of the next one.
            let mut p = PAGES;
            while p > 1 && self.empty_pages > KEEP_EMPTY {
                if !empty(p - 1) {
                    p -= 1;
                    continue;
                }
                let end = p;
                while p > 1 && self.empty_pages > KEEP_EMPTY && empty(p - 1) {
                    p -= 1;
                    // SAFETY: as above.
                    unsafe { (*h).released[p / 64] |= 1 << (p % 64) };
                    self.empty_pages -= 1;
                    self.released_pages += 1;
                }
                ranges[n] = libc::iovec {
                    iov_base: (h as usize + p * OS_PAGE) as *mut libc::c_void,
                    iov_len: (end - p) * OS_PAGE,
                };
                n += 1;
                if n == SWEEP_BATCH {
                    os::release_ranges(&ranges);
                    n = 0;
                }
            }
        }
        os::release_ranges(&ranges[..n]);
    }
}

impl Default for RecordArena {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident OS pages of the chunk holding `r`, as the kernel sees them.
    fn resident_pages(r: *mut Span) -> usize {
        let base = (r as usize & !(CHUNK - 1)) as *mut libc::c_void;
        let mut vec = [0u8; PAGES];
        // SAFETY: the chunk is a mapping of CHUNK bytes; `vec` has one byte per OS page.
        assert_eq!(unsafe { libc::mincore(base, CHUNK, vec.as_mut_ptr()) }, 0);
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn records_fill_lowest_first_and_empty_pages_are_released() {
        let mut arena = Box::new(RecordArena::new());
        let n = SLOTS + SLOTS / 2;
        let mut recs: Vec<*mut Span> = Vec::with_capacity(n);
        for i in 0..n {
            let r = arena.alloc();
            assert!(!r.is_null());
            // SAFETY: a fresh record slot; touch it as the page heap does.
            unsafe { r.write(Span::empty()) };
            if i > 0 && i != SLOTS {
                assert_eq!(r as usize, recs[i - 1] as usize + RECORD, "slot {i}");
            }
            recs.push(r);
        }
        assert_eq!(arena.mapped_bytes(), 2 * CHUNK);
        assert_eq!(resident_pages(recs[0]), PAGES);
        // Keep every 1000th record: a few survivors spread over the whole first chunk.
        for (i, &r) in recs.iter().enumerate() {
            if i % 1000 != 0 {
                // SAFETY: allocated above, referred to by nothing.
                unsafe { arena.free(r) };
            }
        }
        let kept = n.div_ceil(1000);
        // Each survivor keeps one or two pages, plus the headers and a few kept empty pages.
        let bound = (2 * kept + 2 + KEEP_EMPTY) * OS_PAGE;
        assert!(
            arena.resident_bytes() <= bound,
            "{} resident bytes, bound {bound}",
            arena.resident_bytes()
        );
        assert!(resident_pages(recs[0]) + resident_pages(recs[SLOTS]) <= bound / OS_PAGE);
        // New records go to the lowest free slots again: the first chunk's second slot first.
        let r = arena.alloc();
        assert_eq!(r, recs[1]);
        // A record can move before a later one, never after it.
        // SAFETY: `recs[SLOTS]` is live (kept above); `r` is live.
        unsafe {
            let moved = arena.alloc_before(recs[SLOTS]);
            assert_eq!(moved, recs[2]);
            assert!(arena.alloc_before(r).is_null());
            arena.free(moved);
            arena.free(r);
        }
    }
}
