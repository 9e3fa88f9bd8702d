//! The metadata arena: memory for the allocator's own records (spans), straight from the OS.
//!
//! Invariants: records are carved from 1 MiB chunks mapped by the OS layer and are never
//! returned to the OS (span records are recycled by the page heap's pool instead). Nothing here
//! touches the global allocator, so it is safe when oxmalloc *is* the global allocator.

use crate::os;
use crate::sync::SpinLock;
use core::sync::atomic::{AtomicUsize, Ordering};

const CHUNK: usize = 1 << 20;

struct Arena {
    next: usize,
    end: usize,
}

static ARENA: SpinLock<Arena> = SpinLock::new(Arena { next: 0, end: 0 });
static MAPPED: AtomicUsize = AtomicUsize::new(0);
static USED: AtomicUsize = AtomicUsize::new(0);

/// Bytes mapped for the arena.
pub fn mapped_bytes() -> usize {
    MAPPED.load(Ordering::Relaxed)
}

/// Bytes of the arena handed out as records.
pub fn used_bytes() -> usize {
    USED.load(Ordering::Relaxed)
}

/// Returns zeroed memory for `size` bytes aligned to `align` (a power of two <= 4096), or null.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two() && align <= 4096 && size <= CHUNK);
    let mut a = ARENA.lock();
    let mut start = (a.next + align - 1) & !(align - 1);
    if a.next == 0 || start + size > a.end {
        let Some(mem) = os::map(CHUNK) else {
            return core::ptr::null_mut();
        };
        MAPPED.fetch_add(CHUNK, Ordering::Relaxed);
        a.next = mem as usize;
        a.end = a.next + CHUNK;
        start = a.next;
    }
    a.next = start + size;
    USED.fetch_add(size, Ordering::Relaxed);
    start as *mut u8
}
