//! The allocator's entry points, shared by the Rust (`GlobalAlloc`) and C fronts.
//!
//! Invariants:
//! - Nothing reachable from here allocates through the global allocator, panics, or takes a
//!   lock other than the allocator's own spin locks.
//! - A pointer handed out for `(size, align)` with a small class `c = class_for(size, align)`
//!   is an object of class `c`; every other pointer is the start of a `Large` span. The sized
//!   free path relies on recomputing the same class from the same layout, so in-place `realloc`
//!   keeps a small block only when the new layout maps to the same class.
//! - `fork` takes every allocator lock first (reclaim pass, registry, hooks, transfer caches,
//!   central lists, page heap: the order in which they nest) and releases them in parent and
//!   child; the child keeps only the forking thread's cache registered.
//! - Global set-up is lazy and idempotent: the first slow-path call on any thread creates the
//!   pthread key for thread-exit clean-up and registers the fork handlers. It allocates nothing.

use crate::page_heap;
use crate::pagemap;
use crate::size_class::{class_for, SizeClass};
use crate::span::SpanState;
use crate::sync::SpinLock;
use crate::thread_cache;
use crate::types::{Length, PageId, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

static INITIALIZED: AtomicBool = AtomicBool::new(false);
static INIT_LOCK: SpinLock<()> = SpinLock::new(());
static THREAD_KEY: AtomicU32 = AtomicU32::new(0);

/// The pthread key whose destructor returns a thread's cache at exit.
#[inline]
pub fn thread_key() -> libc::pthread_key_t {
    THREAD_KEY.load(Ordering::Relaxed) as libc::pthread_key_t
}

/// Performs global set-up once. Returns false if it failed (then thread caches stay off and
/// every call goes to the central layers, which still work).
#[inline]
pub fn global_init() -> bool {
    if INITIALIZED.load(Ordering::Acquire) {
        return true;
    }
    global_init_slow()
}

#[cold]
fn global_init_slow() -> bool {
    let _g = INIT_LOCK.lock();
    if INITIALIZED.load(Ordering::Acquire) {
        return true;
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; the destructor is an `extern "C"` fn that never
    // unwinds.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_cache::thread_exit)) } != 0 {
        return false;
    }
    THREAD_KEY.store(key as u32, Ordering::Relaxed);
    crate::check::init();
    crate::config::load();
    crate::hooks::reset_large_alloc_threshold();
    // SAFETY: the handlers are `extern "C"` fns that only take and release our own locks.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
    INITIALIZED.store(true, Ordering::Release);
    true
}

/// Takes every allocator lock, in the order the code nests them (a reclaim pass holds `PASS`
/// and the registry while it drains caches into the layers below).
extern "C" fn fork_prepare() {
    let me = thread_cache::current();
    crate::reclaim::PASS.raw_lock();
    // Under PASS: a concurrent fork (where libc does not serialise them) cannot overwrite it.
    thread_cache::note_forking_thread(me);
    crate::stats::lock_registry();
    crate::hooks::lock_for_fork();
    crate::transfer_cache::lock_all();
    crate::central_free_list::lock_all();
    page_heap::PAGE_HEAP.raw_lock();
}

extern "C" fn fork_parent() {
    // SAFETY: this thread took every lock in fork_prepare.
    unsafe { unlock_after_fork() }
}

extern "C" fn fork_child() {
    // SAFETY: the child is a copy of the forking thread, which holds every lock since
    // fork_prepare; no other thread exists in the child to use them.
    unsafe {
        thread_cache::forget_other_threads();
        unlock_after_fork()
    }
}

unsafe fn unlock_after_fork() {
    // SAFETY: every lock was taken by fork_prepare on this thread.
    unsafe {
        page_heap::PAGE_HEAP.force_unlock();
        crate::central_free_list::unlock_all();
        crate::transfer_cache::unlock_all();
        crate::hooks::unlock_after_fork();
        crate::stats::unlock_registry();
        crate::reclaim::PASS.force_unlock();
    }
}

/// Allocates `size > 0` bytes aligned to `align` (a power of two). Null when out of memory or
/// when the request cannot be represented.
#[inline(always)]
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    let class = class_for(size, align);
    if !class.is_large() {
        return thread_cache::alloc(class, size);
    }
    alloc_large(size, align, false)
}

/// Like [`alloc`], with the memory zeroed.
#[inline]
pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let class = class_for(size, align);
    if !class.is_large() {
        let p = thread_cache::alloc(class, size);
        if !p.is_null() {
            // SAFETY: `p` is a fresh object of at least `size` bytes.
            unsafe { ptr::write_bytes(p, 0, size) };
        }
        return p;
    }
    alloc_large(size, align, true)
}

/// Allocates a large block as a page run. Fresh pages from the OS are not cleared again.
#[cold]
#[inline(never)]
pub fn alloc_large(size: usize, align: usize, zero: bool) -> *mut u8 {
    let Some(n) = Length::for_bytes(size) else {
        return ptr::null_mut();
    };
    if size > isize::MAX as usize {
        return ptr::null_mut();
    }
    global_init();
    let align = align.max(PAGE_SIZE);
    let mut s = page_heap::lock().alloc_large(n, align, size);
    if s.is_null() {
        // Give back everything cached and try once more before declaring failure.
        release_free_memory();
        s = page_heap::lock().alloc_large(n, align, size);
        if s.is_null() {
            crate::hooks::alloc_failed(size, align);
            return ptr::null_mut();
        }
    }
    // SAFETY: `s` is a fresh large span handed to us alone.
    let p = unsafe {
        let p = (*s).start_addr() as *mut u8;
        if zero && !(*s).zeroed {
            ptr::write_bytes(p, 0, size);
        }
        p
    };
    crate::hooks::note_large_alloc(size, p);
    p
}

/// Called by the thread cache when no object of `class` could be had: releases cached memory,
/// retries once, and reports the failure if it persists. Returns the retried chain.
#[cold]
#[inline(never)]
pub fn small_alloc_failed(
    class: SizeClass,
    size: usize,
    want: usize,
) -> crate::central_free_list::Chain {
    release_free_memory();
    let chain = crate::transfer_cache::remove(class, want);
    if chain.count == 0 {
        // The requested alignment is not known here; report the one every object of this size
        // is guaranteed.
        crate::hooks::alloc_failed(size, if size >= 16 { 16 } else { 8 });
    }
    chain
}

/// Sets the heap limit in bytes (0 removes it): allocations that would take the pages handed
/// out past it fail (after one release-and-retry) with a report instead of growing the heap.
pub fn set_heap_limit(bytes: usize) {
    crate::config::HEAP_LIMIT.store(bytes, Ordering::Relaxed);
}

/// The heap limit in bytes, 0 if none.
pub fn heap_limit() -> usize {
    global_init();
    crate::config::HEAP_LIMIT.load(Ordering::Relaxed)
}

/// Frees `p`, allocated with this `(size, align)`.
///
/// # Safety
/// `p` came from [`alloc`]/[`alloc_zeroed`]/[`realloc`] with the same size and alignment and is
/// no longer used.
#[inline(always)]
pub unsafe fn dealloc(p: *mut u8, size: usize, align: usize) {
    let class = class_for(size, align);
    if !class.is_large() {
        // SAFETY: per the contract, `p` is an object of `class`.
        unsafe { thread_cache::free(p, class) };
        return;
    }
    // SAFETY: per the contract, `p` starts a large span.
    unsafe { free_large(p) }
}

/// Frees `p` whatever it is, finding its class through the pagemap (the C `free`).
///
/// # Safety
/// `p` was handed out by oxmalloc and is no longer used.
#[inline(always)]
pub unsafe fn free_unsized(p: *mut u8) {
    let class = pagemap::class_of(p as usize);
    if !class.is_large() {
        // SAFETY: the pagemap says `p` lies in a small span of `class`.
        unsafe { thread_cache::free(p, class) };
        return;
    }
    // SAFETY: per the contract, `p` starts a large span.
    unsafe { free_large(p) }
}

/// Frees a large block.
///
/// # Safety
/// `p` starts a live `Large` span.
#[cold]
#[inline(never)]
pub unsafe fn free_large(p: *mut u8) {
    let s = pagemap::span_of(PageId::containing(p as usize));
    // SAFETY: the caller guarantees `p` is a live large block, so `s` is its span.
    unsafe {
        if s.is_null() || (*s).state != SpanState::Large || (*s).start_addr() != p as usize {
            crate::check::bad_pointer("dealloc", p);
            crate::hooks::invalid_free(p);
            return;
        }
        page_heap::lock().dealloc(s);
    }
    // Freeing a large block is often what starts the heap shrinking; this thread's cache
    // follows at once rather than at its next slow path, which may be far off.
    thread_cache::follow_shrink_current();
}

/// Usable size of the block at `p` (its class size, or the whole page run), 0 if unknown.
pub fn usable_size(p: *const u8) -> usize {
    let class = pagemap::class_of(p as usize);
    if !class.is_large() {
        return class.size();
    }
    let s = pagemap::span_of(PageId::containing(p as usize));
    // SAFETY: pagemap entries point at valid span records.
    unsafe {
        if s.is_null() || (*s).state != SpanState::Large {
            return 0;
        }
        (*s).end_addr() - p as usize
    }
}

/// Resizes the block at `p` (allocated as `(old_size, align)`) to `new_size > 0` bytes.
/// Returns the (possibly same) new pointer, or null with the old block untouched.
///
/// # Safety
/// `p` came from this allocator with `(old_size, align)` and is live.
pub unsafe fn realloc(p: *mut u8, old_size: usize, align: usize, new_size: usize) -> *mut u8 {
    let old_class = class_for(old_size, align);
    let new_class = class_for(new_size, align);
    if !old_class.is_large() && old_class == new_class {
        return p;
    }
    if old_class.is_large() && new_class.is_large() {
        // SAFETY: `p` starts a live large span (contract).
        if unsafe { resize_large_in_place(p, new_size) } {
            return p;
        }
    }
    let q = alloc(new_size, align);
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct; we copy what both can hold.
        unsafe {
            ptr::copy_nonoverlapping(p, q, old_size.min(new_size));
            dealloc(p, old_size, align);
        }
    }
    q
}

/// Tries to resize large block `p` to `new_size` bytes without moving it.
///
/// # Safety
/// `p` starts a live large span.
pub unsafe fn resize_large_in_place(p: *mut u8, new_size: usize) -> bool {
    let Some(n) = Length::for_bytes(new_size) else {
        return false;
    };
    let s = pagemap::span_of(PageId::containing(p as usize));
    // SAFETY: per the contract `s` is the live large span at `p`.
    unsafe {
        if s.is_null() || (*s).state != SpanState::Large {
            return false;
        }
        let mut heap = page_heap::lock();
        let old_requested = (*s).allocated;
        let ok = if n <= (*s).len {
            heap.shrink_large(s, n);
            true
        } else {
            heap.grow_large(s, n)
        };
        if ok {
            heap.set_large_requested(s, new_size);
        }
        drop(heap);
        if ok && n > Length::for_bytes(old_requested).unwrap_or(n) {
            crate::hooks::note_large_alloc(new_size, p);
        }
        ok
    }
}

/// Returns all free memory that can be returned: the calling thread's cache, the caches of
/// threads asleep in a system call (see [`crate::reclaim`]), the transfer caches, and every
/// free page run. Returns the bytes given back to the OS.
pub fn release_free_memory() -> usize {
    thread_cache::drain_current();
    crate::reclaim::run(crate::reclaim::Why::Release);
    crate::transfer_cache::drain_all();
    crate::central_free_list::release_kept_spans();
    page_heap::lock().release_all()
}

/// The class a small block at `p` belongs to, or `SizeClass::LARGE`.
#[inline]
pub fn class_of(p: *const u8) -> SizeClass {
    pagemap::class_of(p as usize)
}
