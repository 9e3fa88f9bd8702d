//! Statistics: counters kept where the work happens, gathered into a snapshot on demand.
//!
//! Invariants:
//! - Fast-path counters live in the thread's own cache lists and are updated with a relaxed load and
//!   store (no read-modify-write, no shared cache line), so counting costs a plain add.
//! - Other threads read them only while the owning thread is registered (the registry lock is
//!   held across the read and the owner unregisters under it before its TLS goes away).
//! - A thread's counts are folded into `RETIRED_*` when it exits, so totals never go backwards.
//! - A [`Stats`] snapshot is plain data of fixed size (no heap), gathered layer by layer under
//!   each layer's own lock, so it can be taken from inside the C API without allocating. Layers
//!   are read one after another, so under concurrent traffic the parts may disagree by what
//!   moved meanwhile; at rest, `mapped = in use + every free layer + waste` holds exactly.

pub mod format;

use crate::central_free_list::CENTRAL;
use crate::page_heap::{self, MAX_LISTED};
use crate::size_class::{SizeClass, NUM_CLASSES};
use crate::sync::SpinLock;
use crate::thread_cache::ThreadCache;
use crate::transfer_cache::TRANSFER;
use crate::types::PAGE_SIZE;
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
static RETIRED_REQUESTED: [AtomicU64; NUM_CLASSES] = [const { AtomicU64::new(0) }; NUM_CLASSES];

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
        retire_counts(tc);
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

/// Folds a cache's lifetime counts into the retired totals.
///
/// # Safety
/// `tc` points to a cache that is being unregistered (its memory is valid).
unsafe fn retire_counts(tc: *mut ThreadCache) {
    // SAFETY: caller's contract.
    for (c, list) in unsafe { (*tc).lists.iter() }.enumerate() {
        RETIRED_ALLOCS[c].fetch_add(list.allocs.get() as u64, Ordering::Relaxed);
        RETIRED_FREES[c].fetch_add(list.frees.get() as u64, Ordering::Relaxed);
        RETIRED_REQUESTED[c].fetch_add(list.requested.get() as u64, Ordering::Relaxed);
    }
}

/// Empties the registry but for `keep` (null: nothing), folding the others' counts into the
/// retired totals. For the child side of `fork`.
///
/// # Safety
/// The registry lock is held by this thread (taken before `fork`), and `keep` is null or the
/// calling thread's registered cache.
pub unsafe fn keep_only_after_fork(keep: *mut ThreadCache) {
    // SAFETY: the lock is held (caller's contract), so the data is ours; the registered caches'
    // memory is still mapped in the child, though their threads are gone.
    unsafe {
        let r = &mut *REGISTRY.data_ptr();
        let mut t = r.head;
        while !t.is_null() {
            let next = (*t).stats.next;
            if t != keep {
                retire_counts(t);
            }
            t = next;
        }
        r.head = keep;
        if !keep.is_null() {
            (*keep).stats.next = ptr::null_mut();
            (*keep).stats.prev = ptr::null_mut();
        }
    }
}

/// Calls `f` on every registered cache, under the registry lock (so each stays valid).
pub fn for_each_cache(mut f: impl FnMut(*mut ThreadCache)) {
    let r = REGISTRY.lock();
    let mut t = r.head;
    while !t.is_null() {
        f(t);
        // SAFETY: registered caches stay valid while the registry lock is held.
        t = unsafe { (*t).stats.next };
    }
}

/// Allocation, free and requested-byte counts by class over the process lifetime.
fn op_counts(classes: &mut [ClassStats; NUM_CLASSES], requested: &mut [u64; NUM_CLASSES]) {
    for c in 0..NUM_CLASSES {
        classes[c].allocs = RETIRED_ALLOCS[c].load(Ordering::Relaxed);
        classes[c].frees = RETIRED_FREES[c].load(Ordering::Relaxed);
        requested[c] = RETIRED_REQUESTED[c].load(Ordering::Relaxed);
    }
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

/// Buckets of the free-run histograms: exact lengths 1..=128 pages, then powers of two.
pub const RUN_BUCKETS: usize = MAX_LISTED + 1 + 16;

/// One size class in a snapshot. Object counts, not bytes.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClassStats {
    /// Object size of the class in bytes.
    pub size: usize,
    /// Objects the program holds.
    pub in_use: usize,
    /// Spans carved for this class, and the bytes they cover.
    pub spans: usize,
    pub span_bytes: usize,
    /// Free objects in the central list's spans (including never-used ones).
    pub free_central: usize,
    /// Free objects in the transfer cache.
    pub free_transfer: usize,
    /// Free objects in all thread caches.
    pub free_threads: usize,
    /// Lifetime allocations and frees.
    pub allocs: u64,
    pub frees: u64,
}

/// A snapshot of the allocator: where every mapped byte is. See `docs/stats.md`.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Bytes the program holds, counting small objects at their class size and large blocks
    /// at their page-rounded size.
    pub in_use_bytes: usize,
    /// Of which small objects / large blocks.
    pub small_in_use_bytes: usize,
    pub large_in_use_bytes: usize,
    /// Bytes the program asked for: exact for large blocks; for small objects estimated from the
    /// lifetime ratio of requested to class-rounded bytes.
    pub requested_bytes: usize,
    /// Highest number of bytes held by small spans and large blocks together (an upper bound
    /// of the program's peak in use: it includes objects then in caches).
    pub peak_active_bytes: usize,
    /// Free bytes cached in thread caches, transfer caches and central span free lists.
    pub thread_cache_bytes: usize,
    pub transfer_cache_bytes: usize,
    pub central_free_bytes: usize,
    /// Tails of small spans too short for one more object.
    pub span_waste_bytes: usize,
    /// Free page runs still resident, and free runs released to the OS (not resident).
    pub page_heap_free_bytes: usize,
    pub released_bytes: usize,
    /// Lifetime bytes released to the OS by madvise.
    pub released_bytes_total: usize,
    /// Bytes of the allocator's own records (span records, pagemap leaves).
    pub metadata_bytes: usize,
    /// Address space mapped for the heap (excluding metadata).
    pub mapped_bytes: usize,
    /// Resident set size of the process (from /proc/self/statm), 0 if unreadable.
    pub rss_bytes: usize,
    /// Internal fragmentation: rounding of small requests to classes, large requests to pages,
    /// plus span tails.
    pub internal_fragmentation_bytes: usize,
    /// External fragmentation: free bytes that are still resident (all caches and free runs).
    pub external_fragmentation_bytes: usize,
    /// Live large blocks, and large allocations made over the lifetime.
    pub large_allocations: usize,
    pub large_allocations_total: usize,
    /// The longest free page run (resident or released), in bytes: the largest block that can
    /// be served without mapping more memory.
    pub largest_free_run_bytes: usize,
    /// Free runs by length (see [`RUN_BUCKETS`]), resident and released.
    pub free_runs_resident: [usize; RUN_BUCKETS],
    pub free_runs_released: [usize; RUN_BUCKETS],
    /// Lifetime totals.
    pub allocations_total: u64,
    pub frees_total: u64,
    pub bytes_allocated_total: u64,
    /// Threads with a live cache.
    pub thread_caches: usize,
    /// Caches of sleeping threads emptied by other threads, and the bytes taken from them,
    /// over the lifetime (see [`crate::reclaim`]).
    pub cache_reclaims_total: usize,
    pub cache_reclaimed_bytes_total: usize,
    /// Per class; index 0 is unused.
    pub classes: [ClassStats; NUM_CLASSES],
}

impl Stats {
    /// Internal fragmentation as a share of bytes in use (0..1).
    pub fn internal_share(&self) -> f64 {
        ratio(
            self.internal_fragmentation_bytes,
            self.in_use_bytes + self.span_waste_bytes,
        )
    }

    /// External fragmentation as a share of the heap's resident bytes (0..1).
    pub fn external_share(&self) -> f64 {
        ratio(
            self.external_fragmentation_bytes,
            self.mapped_bytes.saturating_sub(self.released_bytes),
        )
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Takes a snapshot. Does not allocate.
pub fn snapshot() -> Stats {
    let mut st = Stats {
        in_use_bytes: 0,
        small_in_use_bytes: 0,
        large_in_use_bytes: 0,
        requested_bytes: 0,
        peak_active_bytes: 0,
        thread_cache_bytes: 0,
        transfer_cache_bytes: 0,
        central_free_bytes: 0,
        span_waste_bytes: 0,
        page_heap_free_bytes: 0,
        released_bytes: 0,
        released_bytes_total: 0,
        metadata_bytes: crate::pagemap::metadata_bytes(),
        mapped_bytes: 0,
        rss_bytes: rss_bytes(),
        internal_fragmentation_bytes: 0,
        external_fragmentation_bytes: 0,
        large_allocations: 0,
        large_allocations_total: 0,
        largest_free_run_bytes: 0,
        free_runs_resident: [0; RUN_BUCKETS],
        free_runs_released: [0; RUN_BUCKETS],
        allocations_total: 0,
        frees_total: 0,
        bytes_allocated_total: 0,
        thread_caches: 0,
        cache_reclaims_total: crate::reclaim::RECLAIMS.load(Ordering::Relaxed) as usize,
        cache_reclaimed_bytes_total: crate::reclaim::RECLAIMED_BYTES.load(Ordering::Relaxed)
            as usize,
        classes: [ClassStats::default(); NUM_CLASSES],
    };
    let mut requested = [0u64; NUM_CLASSES];
    {
        // Thread caches first, under the registry lock, together with the retired counts so a
        // thread exiting meanwhile is counted exactly once.
        let r = REGISTRY.lock();
        op_counts(&mut st.classes, &mut requested);
        let mut t = r.head;
        while !t.is_null() {
            // SAFETY: registered caches stay valid while the registry lock is held.
            let tc = unsafe { &*t };
            st.thread_caches += 1;
            for (c, list) in tc.lists.iter().enumerate().skip(1) {
                let cs = &mut st.classes[c];
                cs.allocs += list.allocs.get() as u64;
                cs.frees += list.frees.get() as u64;
                cs.free_threads += list.len();
                requested[c] += list.requested.get() as u64;
            }
            t = tc.stats.next;
        }
    }
    let mut small_requested_est = 0.0;
    for c in 1..NUM_CLASSES {
        let class = SizeClass(c as u8);
        let info = class.info();
        let (spans, free_central) = {
            let l = CENTRAL[c].lock();
            (l.spans, l.free_objects)
        };
        let free_transfer = TRANSFER[c].lock().used * info.batch as usize;
        let cs = &mut st.classes[c];
        cs.size = info.size as usize;
        cs.spans = spans;
        cs.span_bytes = spans * info.pages as usize * PAGE_SIZE;
        cs.free_central = free_central;
        cs.free_transfer = free_transfer;
        let out = (spans * info.objects_per_span as usize).saturating_sub(free_central);
        cs.in_use = out.saturating_sub(free_transfer + cs.free_threads);
        st.small_in_use_bytes += cs.in_use * cs.size;
        st.thread_cache_bytes += cs.free_threads * cs.size;
        st.transfer_cache_bytes += free_transfer * cs.size;
        st.central_free_bytes += free_central * cs.size;
        st.span_waste_bytes += cs.span_bytes - spans * info.objects_per_span as usize * cs.size;
        st.allocations_total += cs.allocs;
        st.frees_total += cs.frees;
        let rounded = cs.allocs * cs.size as u64;
        st.bytes_allocated_total += rounded;
        if rounded > 0 {
            small_requested_est +=
                (cs.in_use * cs.size) as f64 * requested[c] as f64 / rounded as f64;
        }
    }
    let heap = {
        let h = page_heap::lock();
        st.metadata_bytes += h.record_bytes().1;
        let longest = h.free_runs(&mut st.free_runs_resident, &mut st.free_runs_released);
        st.largest_free_run_bytes = longest * PAGE_SIZE;
        h.stats
    };
    st.large_in_use_bytes = heap.large_pages * PAGE_SIZE;
    st.large_allocations = heap.large_spans;
    st.large_allocations_total = heap.large_allocs_total;
    st.in_use_bytes = st.small_in_use_bytes + st.large_in_use_bytes;
    st.requested_bytes =
        (small_requested_est as usize).min(st.small_in_use_bytes) + heap.large_requested_bytes;
    st.peak_active_bytes = heap.peak_active_pages * PAGE_SIZE;
    st.page_heap_free_bytes = heap.free_pages * PAGE_SIZE;
    st.released_bytes = heap.returned_pages * PAGE_SIZE;
    st.released_bytes_total = heap.released_bytes_total;
    st.mapped_bytes = heap.mapped_bytes;
    st.allocations_total += heap.large_allocs_total as u64;
    st.frees_total += heap.large_frees_total as u64;
    st.bytes_allocated_total += heap.large_bytes_total as u64;
    st.internal_fragmentation_bytes =
        st.in_use_bytes.saturating_sub(st.requested_bytes) + st.span_waste_bytes;
    st.external_fragmentation_bytes = st.thread_cache_bytes
        + st.transfer_cache_bytes
        + st.central_free_bytes
        + st.page_heap_free_bytes;
    st
}

/// The process's resident set size in bytes, read from /proc/self/statm without allocating.
pub fn rss_bytes() -> usize {
    let mut buf = [0u8; 128];
    let n = crate::os::read_small_file(c"/proc/self/statm", &mut buf);
    // Fields (none if the file could not be read): size resident shared ...; we want the second.
    let mut fields = buf[..n].split(|&b| b == b' ');
    let _ = fields.next();
    let resident = crate::os::leading_decimal(fields.next().unwrap_or(&[]));
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    resident * if page > 0 { page as usize } else { 4096 }
}
