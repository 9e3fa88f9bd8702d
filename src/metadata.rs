//! The metadata arena: memory for span records, straight from the OS, given back when unused.
//!
//! Invariants (all under the page heap lock, which owns the arena):
//! - Records are carved from 1 MiB chunks aligned to 1 MiB, so a record's chunk is found by
//!   masking its address. Each chunk's header counts its live records (`live`), keeps a free
//!   list of records returned to it, and a bump offset below which records were handed out.
//! - A chunk whose last record is freed (other than the chunk currently allocated from) has its
//!   pages released to the OS and its free list and bump offset reset, so a heap that empties
//!   also sheds the records that described it.
//! - Nothing here touches the global allocator.

use crate::os;
use crate::span::Span;
use core::ptr;

const CHUNK: usize = 1 << 20;
const MAX_CHUNKS: usize = 1 << 14;
const OS_PAGE: usize = 4096;
const RECORD: usize = core::mem::size_of::<Span>().next_multiple_of(8);

#[repr(C)]
struct ChunkHeader {
    live: usize,
    free: *mut Span,
    bump: usize,
    released: bool,
}

/// Records start after the header, on the chunk's first cache line boundary past it.
const FIRST: usize = core::mem::size_of::<ChunkHeader>().next_multiple_of(64);

pub struct RecordArena {
    chunks: [*mut ChunkHeader; MAX_CHUNKS],
    count: usize,
    current: usize,
    /// Chunks whose pages are released (not resident).
    released: usize,
}

impl RecordArena {
    pub const fn new() -> Self {
        RecordArena {
            chunks: [ptr::null_mut(); MAX_CHUNKS],
            count: 0,
            current: 0,
            released: 0,
        }
    }

    /// Bytes mapped for records.
    pub fn mapped_bytes(&self) -> usize {
        self.count * CHUNK
    }

    /// Bytes of mapped chunks not released to the OS.
    pub fn resident_bytes(&self) -> usize {
        (self.count - self.released) * CHUNK
    }

    fn has_room(h: *mut ChunkHeader) -> bool {
        // SAFETY: chunk headers are valid while mapped, and chunks are never unmapped.
        unsafe { !(*h).free.is_null() || (*h).bump + RECORD <= CHUNK }
    }

    /// An uninitialised record, or null when the OS refuses memory.
    pub fn alloc(&mut self) -> *mut Span {
        if self.count == 0 || !Self::has_room(self.chunks[self.current]) {
            match (0..self.count).find(|&i| Self::has_room(self.chunks[i])) {
                Some(i) => self.current = i,
                None => {
                    if self.count == MAX_CHUNKS {
                        return ptr::null_mut();
                    }
                    let Some(mem) = os::map_aligned(CHUNK, CHUNK) else {
                        return ptr::null_mut();
                    };
                    let h = mem as *mut ChunkHeader;
                    // SAFETY: fresh memory of CHUNK bytes, ours alone.
                    unsafe {
                        h.write(ChunkHeader {
                            live: 0,
                            free: ptr::null_mut(),
                            bump: FIRST,
                            released: false,
                        })
                    };
                    self.chunks[self.count] = h;
                    self.current = self.count;
                    self.count += 1;
                }
            }
        }
        let h = self.chunks[self.current];
        // SAFETY: `h` is a mapped chunk header with room (checked above).
        unsafe {
            if (*h).released {
                (*h).released = false;
                self.released -= 1;
            }
            let r = if !(*h).free.is_null() {
                let r = (*h).free;
                (*h).free = (*r).next;
                r
            } else {
                let r = (h as usize + (*h).bump) as *mut Span;
                (*h).bump += RECORD;
                r
            };
            (*h).live += 1;
            r
        }
    }

    /// Returns a record; releases its chunk's pages when it was the chunk's last live record.
    ///
    /// # Safety
    /// `r` came from [`alloc`](Self::alloc) and nothing refers to it any more.
    pub unsafe fn free(&mut self, r: *mut Span) {
        let h = (r as usize & !(CHUNK - 1)) as *mut ChunkHeader;
        // SAFETY: every record lies in a chunk whose header starts at the chunk's base.
        unsafe {
            (*r).next = (*h).free;
            (*h).free = r;
            (*h).live -= 1;
            if (*h).live == 0 && h != self.chunks[self.current] {
                // Release everything past the header's page; records there are forgotten.
                os::release((h as usize + OS_PAGE) as *mut u8, CHUNK - OS_PAGE);
                (*h).free = ptr::null_mut();
                (*h).bump = FIRST;
                if !(*h).released {
                    (*h).released = true;
                    self.released += 1;
                }
            }
        }
    }
}

impl Default for RecordArena {
    fn default() -> Self {
        Self::new()
    }
}
