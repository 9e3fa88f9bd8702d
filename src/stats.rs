//! Statistics: counters kept where the work happens, gathered into a snapshot on demand.
//!
//! Invariants:
//! - Fast-path counters live in the thread's own cache lists and are updated with a relaxed load and
//!   store (no read-modify-write, no shared cache line), so counting costs a plain add.
//! - Other threads read them only while the owning thread is registered (the registry lock is
//!   held across the read and the owner unregisters under it before its TLS goes away).
//! - A thread's counts are folded into `RETIRED` when it exits, so totals never go backwards.

use crate::size_class::NUM_CLASSES;
use crate::sync::SpinLock;
use crate::thread_cache::ThreadCache;
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A counter written by one thread and read by any: relaxed load + store, never an RMW.
#[repr(transparent)]
pub struct LocalCounter(AtomicUsize);

impl LocalCounter {
    pub const fn new() -> Self {
        LocalCounter(AtomicUsize::new(0))
    }
    #[inline(always)]
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
    #[inline(always)]
    pub fn set(&self, v: usize) {
        self.0.store(v, Ordering::Relaxed)
    }
    #[inline(always)]
    pub fn add(&self, v: usize) {
        self.set(self.get().wrapping_add(v))
    }
    #[inline(always)]
    pub fn sub(&self, v: usize) {
        self.set(self.get().wrapping_sub(v))
    }
}

impl Default for LocalCounter {
    fn default() -> Self {
        Self::new()
    }
}

/// A thread cache's links in the registry of live caches (its counters live in its lists).
#[repr(C)]
pub struct ThreadStats {
    pub next: *mut ThreadCache,
    pub prev: *mut ThreadCache,
}

impl ThreadStats {
    pub const fn new() -> Self {
        ThreadStats {
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
        }
    }
}

impl Default for ThreadStats {
    fn default() -> Self {
        Self::new()
    }
}

struct Registry {
    head: *mut ThreadCache,
}

// SAFETY: the pointers are only followed under the registry lock.
unsafe impl Send for Registry {}

static REGISTRY: SpinLock<Registry> = SpinLock::new(Registry {
    head: ptr::null_mut(),
});

/// Counts of exited threads, by class.
static RETIRED_ALLOCS: [AtomicU64; NUM_CLASSES] = [const { AtomicU64::new(0) }; NUM_CLASSES];
static RETIRED_FREES: [AtomicU64; NUM_CLASSES] = [const { AtomicU64::new(0) }; NUM_CLASSES];

/// Adds `tc` to the registry.
///
/// # Safety
/// `tc` is the calling thread's cache and not registered.
pub unsafe fn register_thread(tc: *mut ThreadCache) {
    let mut r = REGISTRY.lock();
    // SAFETY: registered caches are live (they unregister under this lock before exiting).
    unsafe {
        (*tc).stats.prev = ptr::null_mut();
        (*tc).stats.next = r.head;
        if !r.head.is_null() {
            (*r.head).stats.prev = tc;
        }
    }
    r.head = tc;
}

/// Removes `tc` from the registry, keeping its counts.
///
/// # Safety
/// `tc` is the calling thread's registered cache.
pub unsafe fn unregister_thread(tc: *mut ThreadCache) {
    let mut r = REGISTRY.lock();
    // SAFETY: as in register_thread.
    unsafe {
        for (c, list) in (*tc).lists.iter().enumerate() {
            RETIRED_ALLOCS[c].fetch_add(list.allocs.get() as u64, Ordering::Relaxed);
            RETIRED_FREES[c].fetch_add(list.frees.get() as u64, Ordering::Relaxed);
        }
        let (p, n) = ((*tc).stats.prev, (*tc).stats.next);
        if p.is_null() {
            r.head = n;
        } else {
            (*p).stats.next = n;
        }
        if !n.is_null() {
            (*n).stats.prev = p;
        }
    }
}

/// Calls `f` on every registered thread cache, under the registry lock.
pub fn for_each_thread(mut f: impl FnMut(&ThreadCache)) {
    let r = REGISTRY.lock();
    let mut t = r.head;
    while !t.is_null() {
        // SAFETY: registered caches stay valid while the lock is held.
        unsafe {
            f(&*t);
            t = (*t).stats.next;
        }
    }
}

/// Allocation and free counts by class over the process lifetime.
pub fn op_counts(allocs: &mut [u64; NUM_CLASSES], frees: &mut [u64; NUM_CLASSES]) {
    for c in 0..NUM_CLASSES {
        allocs[c] = RETIRED_ALLOCS[c].load(Ordering::Relaxed);
        frees[c] = RETIRED_FREES[c].load(Ordering::Relaxed);
    }
    for_each_thread(|tc| {
        for (c, list) in tc.lists.iter().enumerate() {
            allocs[c] += list.allocs.get() as u64;
            frees[c] += list.frees.get() as u64;
        }
    });
}

/// Takes the registry lock (before `fork`).
pub fn lock_registry() {
    REGISTRY.raw_lock();
}

/// # Safety
/// Only after `lock_registry` on this thread (or in its forked child).
pub unsafe fn unlock_registry() {
    // SAFETY: per the caller's contract.
    unsafe { REGISTRY.force_unlock() }
}
