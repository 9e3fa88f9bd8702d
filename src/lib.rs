//! oxmalloc: a memory allocator in the tcmalloc family that is fast, gives memory back to the
//! OS, and explains where memory went.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: oxmalloc::OxMalloc = oxmalloc::OxMalloc;
//! ```
//!
//! Layers, top to bottom on `alloc` (see `docs/design.md`):
//! [`thread_cache`] -> [`transfer_cache`] -> [`central_free_list`] -> [`page_heap`] -> [`os`],
//! with the [`pagemap`] beside them mapping every page to its [`span`].
//!
//! Invariant of the crate as a whole: nothing reachable from an allocation call allocates
//! through the global allocator, panics, or blocks on a lock that could allocate.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod allocator;
pub mod central_free_list;
pub mod check;
pub mod config;
pub mod hooks;
pub mod metadata;
pub mod os;
pub mod page_heap;
pub mod pagemap;
pub mod reclaim;
pub mod size_class;
pub mod span;
pub mod stats;
pub mod sync;
pub mod thread_cache;
pub mod transfer_cache;
pub mod types;

use core::alloc::{GlobalAlloc, Layout};

/// The allocator, for `#[global_allocator]`.
///
/// Zero-size layouts and layouts the allocator cannot serve get a null pointer (Rust then calls
/// its allocation-error handler); nothing here panics.
#[derive(Clone, Copy, Default, Debug)]
pub struct OxMalloc;

// SAFETY: `allocator` returns blocks of at least the layout's size and alignment, distinct
// while live, and accepts back exactly what it handed out with the same layout.
unsafe impl GlobalAlloc for OxMalloc {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() == 0 {
            return core::ptr::null_mut();
        }
        allocator::alloc(layout.size(), layout.align())
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the GlobalAlloc contract: `ptr` came from us with this layout.
        unsafe { allocator::dealloc(ptr, layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() == 0 {
            return core::ptr::null_mut();
        }
        allocator::alloc_zeroed(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size == 0 || Layout::from_size_align(new_size, layout.align()).is_err() {
            return core::ptr::null_mut();
        }
        // SAFETY: the GlobalAlloc contract: `ptr` is live with `layout`.
        unsafe { allocator::realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

pub use stats::Stats;

/// A snapshot of the allocator's statistics (see `docs/stats.md`). Does not allocate.
pub fn stats() -> Stats {
    stats::snapshot()
}

/// Sets the heap limit in bytes (0 removes it). Past it, allocations fail cleanly (null, with a
/// report) instead of growing the heap; Rust then calls its allocation-error handler.
pub fn set_heap_limit(bytes: usize) {
    allocator::set_heap_limit(bytes)
}

/// The heap limit in bytes, 0 if none (`OXMALLOC_HEAP_LIMIT` sets it at start-up).
pub fn heap_limit() -> usize {
    allocator::heap_limit()
}

/// Returns all free memory it can to the OS (including the calling thread's cache and the
/// caches of threads asleep in a system call); returns the number of bytes released.
pub fn release_free_memory() -> usize {
    allocator::release_free_memory()
}
