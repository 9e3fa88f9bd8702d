//! Thread caches: per thread, per size class, a singly linked list of free objects.
//!
//! Invariants:
//! - A thread's cache lives in a `thread_local!` with a `const` initialiser and no `Drop`, so
//!   touching it never registers a TLS destructor through libc (which would allocate).
//! - `state` moves `UNINIT -> INITIALIZING -> ACTIVE -> TORN_DOWN`. Only an `ACTIVE` cache holds
//!   objects; in every other state every list is empty with `max_len == 0`, so the inlined fast
//!   paths fall through to the slow paths, which then go straight to the central layers.
//! - `lists[c].len` counts the objects on `lists[c]`, and `len <= max_len` after every
//!   operation. `budget` = `max_size` - sum over classes of `len * class_size`; a free that
//!   drives it negative scavenges.
//! - At thread exit a pthread key destructor hands every object back (no memory is stranded in
//!   dead threads) and marks the cache `TORN_DOWN`; later calls on that thread bypass it.
//! - The hit paths take no lock and use no atomic instruction.
//! - A cache's budget is its share of the total (`config::THREAD_CACHE_BYTES`, 32 MiB unless
//!   set) over the live threads, clamped to [256 KiB, 4 MiB] (both bounds lowered to the total
//!   when it is smaller), and while the page heap is shrinking also capped at 1/8 of the bytes it
//!   hands out; it is re-evaluated on the slow paths, so a thread that frees most of the heap
//!   trims its own cache as it goes. When the heap starts shrinking, each cache's next slow
//!   path empties it once and caps every list at `SHRINK_LEN`; while the heap shrinks, a list
//!   that overflows is emptied completely and capped at `SHRINK_LEN` again.
//! - Another thread may empty a cache (see [`crate::reclaim`]) only while holding its `guard`
//!   with the `STOLEN` bit, which it takes only when the owner holds no guard, and only once
//!   `ROUTE` is `ROUTE_GUARDED`, the owner is asleep in a system call and its `in_hit` count is
//!   zero. The owner holds the guard in every slow path (which may sleep in a system call
//!   mid-update). A hit path adds one to `in_hit`, reads `ROUTE` again (leaving for a slow path
//!   if it is guarded), and takes the one back after its last access to the cache; it makes no
//!   system call, so its owner can be asleep inside it only in a signal handler, with `in_hit`
//!   above zero (a handler's own hit paths nest: each takes back only its own one).

use crate::central_free_list::Chain;
use crate::check;
use crate::size_class::{SizeClass, NUM_CLASSES};
use crate::span::FreeObject;
use crate::stats::{LocalCounter, ThreadStats};
use crate::transfer_cache;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

pub const UNINIT: u8 = 0;
pub const INITIALIZING: u8 = 1;
pub const ACTIVE: u8 = 2;
pub const TORN_DOWN: u8 = 3;

const MIN_PER_THREAD: usize = 256 << 10;
const MAX_PER_THREAD: usize = 4 << 20;
/// Longest a list may grow, in objects.
const MAX_LIST_LEN: u32 = 16384;
/// While the page heap shrinks, a list that overflows is emptied and capped at this length.
const SHRINK_LEN: u32 = 4;

#[repr(C)]
pub struct FreeList {
    head: *mut FreeObject,
    /// Objects on the list (read by statistics from other threads).
    len: LocalCounter,
    max_len: u32,
    /// The class's object size, kept here so the hit paths touch one cache line.
    obj_size: u32,
    overflows: u32,
    /// The class's `multiple_magic` while the cache is active, else 0 (which fails every
    /// object-start test and so sends checked frees to the slow path).
    multiple_magic: u64,
    /// Lifetime operation counts for this class on this thread.
    pub allocs: LocalCounter,
    pub frees: LocalCounter,
    /// Lifetime bytes requested from this class on this thread (before rounding).
    pub requested: LocalCounter,
}

impl FreeList {
    // Used only as an array initialiser for a fresh cache; never shared.
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: FreeList = FreeList {
        head: ptr::null_mut(),
        len: LocalCounter::new(),
        max_len: 0,
        obj_size: 0,
        overflows: 0,
        multiple_magic: 0,
        allocs: LocalCounter::new(),
        frees: LocalCounter::new(),
        requested: LocalCounter::new(),
    };

    /// Objects on the list.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len.get()
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Detaches the first `n` objects (`n <= len`) as a chain.
    ///
    /// # Safety
    /// The list's objects are valid free objects.
    unsafe fn pop_chain(&mut self, n: usize) -> Chain {
        debug_assert!(n >= 1 && n <= self.len());
        let head = self.head;
        let mut tail = head;
        for _ in 1..n {
            // SAFETY: the list has at least n objects.
            tail = unsafe { (*tail).next };
        }
        // SAFETY: `tail` is the n-th object of the list.
        unsafe {
            self.head = (*tail).next;
            (*tail).next = ptr::null_mut();
        }
        self.len.sub(n);
        Chain {
            head,
            tail,
            count: n,
        }
    }
}

#[repr(C)]
pub struct ThreadCache {
    pub lists: [FreeList; NUM_CLASSES],
    /// Bytes the cache may still take before it must scavenge: `max_size - cached bytes`,
    /// stored as a wrapping `usize` and read as signed; negative means over budget.
    budget: LocalCounter,
    max_size: LocalCounter,
    /// A copy of `check::FREE_TAG` (set when the cache becomes active), one load closer.
    free_tag: usize,
    /// How many hit paths the owner is inside (one, or more when a signal handler that
    /// interrupted one allocates): raised before it re-reads `ROUTE`, lowered after its last
    /// access to the cache, each by a single instruction that a signal cannot split. A reclaim
    /// pass leaves a cache alone while it is not zero: its owner sleeps in a signal handler
    /// that interrupted a hit path.
    in_hit: AtomicU8,
    /// The `page_heap::SHRINK_EPOCH` this cache last followed.
    shrink_epoch: AtomicU32,
    /// `UNINIT`, `INITIALIZING`, `ACTIVE` or `TORN_DOWN` (read by reclaim passes).
    state: AtomicU8,
    /// Slow-path nesting depth of the owner, plus `STOLEN` while another thread empties the
    /// cache. Only the owner increments it; another thread only swaps 0 for `STOLEN` and back.
    guard: AtomicU32,
    /// Slow paths the owner entered.
    pub slow_ops: LocalCounter,
    /// The cache's operation count ([`op_count`]) as the previous reclaim pass saw it, to
    /// tell idle caches (written by reclaim passes only).
    pub seen_ops: LocalCounter,
    /// The owner's kernel thread id.
    pub tid: i32,
    pub stats: ThreadStats,
}

impl ThreadCache {
    const fn new() -> ThreadCache {
        ThreadCache {
            lists: [FreeList::EMPTY; NUM_CLASSES],
            budget: LocalCounter::new(),
            max_size: LocalCounter::new(),
            free_tag: 0,
            in_hit: AtomicU8::new(0),
            shrink_epoch: AtomicU32::new(0),
            state: AtomicU8::new(UNINIT),
            guard: AtomicU32::new(0),
            slow_ops: LocalCounter::new(),
            seen_ops: LocalCounter::new(),
            tid: 0,
            stats: ThreadStats::new(),
        }
    }

    /// Bytes of free objects this cache holds.
    pub fn cached_bytes(&self) -> usize {
        self.max_size.get().wrapping_sub(self.budget.get())
    }

    #[inline(always)]
    fn over_budget(&self) -> bool {
        (self.budget.get() as isize) < 0
    }
}

thread_local! {
    static CACHE: UnsafeCell<ThreadCache> = const { UnsafeCell::new(ThreadCache::new()) };
}

/// Threads with an active cache.
pub static ACTIVE_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Offset of the cache from the thread pointer when this code's TLS block is static (the
/// library was loaded at start-up, e.g. by LD_PRELOAD), or 0 when unknown. Static TLS blocks
/// sit at the same offset from the thread pointer in every thread, which is what lets the
/// shared library skip `__tls_get_addr` on the hit paths.
static STATIC_TLS_OFFSET: AtomicUsize = AtomicUsize::new(0);

/// How the hit paths find the cache: `STATIC_TLS_OFFSET` when it is known, else `ROUTE_TLS`
/// (through `thread_local!`); `ROUTE_GUARDED` while a reclaim pass may empty idle threads'
/// caches, which sends every operation through a slow path (under its cache's guard). Changed
/// only under `reclaim::PASS`.
static ROUTE: AtomicUsize = AtomicUsize::new(ROUTE_TLS);
const ROUTE_GUARDED: usize = 0;
const ROUTE_TLS: usize = 1;

/// The `ROUTE` outside reclaim passes. Call under `reclaim::PASS`.
fn normal_route() -> usize {
    match STATIC_TLS_OFFSET.load(Ordering::Relaxed) {
        0 => ROUTE_TLS,
        off => off,
    }
}

/// Sends every operation through the slow paths (the start of a reclaim pass). Call under
/// `reclaim::PASS`; the fence orders the store before the pass looks at other threads.
pub(crate) fn route_guarded() {
    ROUTE.store(ROUTE_GUARDED, Ordering::SeqCst);
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Ends [`route_guarded`]. Call under `reclaim::PASS`.
pub(crate) fn route_normal() {
    ROUTE.store(normal_route(), Ordering::Release);
}

#[inline(always)]
fn thread_pointer() -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let tp: usize;
        // SAFETY: on x86-64 Linux the first word of the TCB, at %fs:0, holds the thread
        // pointer itself; reading it has no side effects.
        unsafe {
            core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
                options(nostack, readonly, preserves_flags, pure));
        }
        tp
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        0
    }
}

/// This thread's cache, found through `thread_local!` (for slow paths, whatever `ROUTE`; for a
/// reclaim pass to skip; for `fork` preparation, which must find it before it takes any lock:
/// finding it may run the dynamic loader's TLS set-up, which may allocate).
#[inline(always)]
pub(crate) fn current() -> *mut ThreadCache {
    CACHE.with(|c| c.get())
}

/// This thread's cache for a hit path, marked in use (see [`enter_hit`]), or `None` while
/// operations must take the slow paths.
#[inline(always)]
fn hit_cache() -> Option<*mut ThreadCache> {
    let route = ROUTE.load(Ordering::Relaxed);
    let tc = if route > ROUTE_TLS {
        thread_pointer().wrapping_add(route) as *mut ThreadCache
    } else if route == ROUTE_TLS {
        current()
    } else {
        return None;
    };
    enter_hit(tc)
}

/// This thread's cache found from the thread pointer, when the static-TLS route is on,
/// marked in use (see [`enter_hit`]).
#[inline(always)]
fn static_tls_cache() -> Option<*mut ThreadCache> {
    let route = ROUTE.load(Ordering::Relaxed);
    if route <= ROUTE_TLS {
        return None;
    }
    enter_hit(thread_pointer().wrapping_add(route) as *mut ThreadCache)
}

/// Marks `tc` in a hit path, then reads `ROUTE` again: `None` (and unmarked) if a reclaim
/// pass started meanwhile. Between the two, a pass can only have found the owner asleep in a
/// signal handler that interrupted it here; the second read then sends it to a slow path,
/// which waits for the pass. After it, the mark keeps any pass away until [`leave_hit`].
#[inline(always)]
fn enter_hit(tc: *mut ThreadCache) -> Option<*mut ThreadCache> {
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        bump_in_hit(tc, true);
        if ROUTE.load(Ordering::Acquire) == ROUTE_GUARDED {
            bump_in_hit(tc, false);
            return None;
        }
    }
    Some(tc)
}

/// Ends [`enter_hit`], after the hit path's last access to the cache.
///
/// # Safety
/// `tc` is this thread's cache, marked by `enter_hit`.
#[inline(always)]
unsafe fn leave_hit(tc: *mut ThreadCache) {
    // SAFETY: caller's contract.
    unsafe { bump_in_hit(tc, false) };
}

/// Adds one to `tc.in_hit` (`up`) or takes one away in a single instruction (a signal handler
/// on this thread sees the count before or after, never half-way), ordered after every memory
/// access before it and before every one after it (for this thread; other threads look only
/// while it sleeps, after the kernel's switch). Only the owner writes the count.
///
/// # Safety
/// `tc` is this thread's cache.
#[inline(always)]
unsafe fn bump_in_hit(tc: *mut ThreadCache, up: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `tc` is this thread's cache; the byte is its `in_hit`, written by this thread
    // only. The asm is not `nomem`, so the compiler keeps memory accesses on their side of it.
    unsafe {
        const OFF: usize = core::mem::offset_of!(ThreadCache, in_hit);
        if up {
            core::arch::asm!("inc byte ptr [{tc} + {off}]", tc = in(reg) tc, off = const OFF,
                options(nostack));
        } else {
            core::arch::asm!("dec byte ptr [{tc} + {off}]", tc = in(reg) tc, off = const OFF,
                options(nostack));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above; without a one-instruction add, the fences keep the order and a signal
    // handler restores the value it found before the interrupted code stores.
    unsafe {
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
        let v = (*tc).in_hit.load(Ordering::Relaxed);
        let v = if up {
            v.wrapping_add(1)
        } else {
            v.wrapping_sub(1)
        };
        (*tc).in_hit.store(v, Ordering::Relaxed);
        core::sync::atomic::compiler_fence(Ordering::SeqCst);
    }
}

/// Whether the owner of `tc` was inside a hit path at its last visible store.
///
/// # Safety
/// `tc` is a registered cache.
pub(crate) unsafe fn in_hit_path(tc: *mut ThreadCache) -> bool {
    // SAFETY: registered caches are live.
    unsafe { (*tc).in_hit.load(Ordering::Acquire) != 0 }
}

/// Declares that this code's TLS is static (loaded at process start-up, never by `dlopen`),
/// so the hit paths may find the cache from the thread pointer. The offset is checked again on
/// every thread's first slow-path call, and the fast route is dropped if it ever disagrees.
pub fn use_static_tls() {
    if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        let off = (current() as usize).wrapping_sub(thread_pointer());
        if off <= ROUTE_TLS {
            // Cannot be told apart from the other routes (and cannot happen on x86-64, where
            // static TLS lies below the thread pointer): keep the `thread_local!` route.
            return;
        }
        let _pass = crate::reclaim::PASS.lock();
        STATIC_TLS_OFFSET.store(off, Ordering::Relaxed);
        route_normal();
    }
}

/// Checks the static TLS offset on this thread; turns the fast route off if it is wrong.
fn verify_static_tls() {
    let off = STATIC_TLS_OFFSET.load(Ordering::Relaxed);
    if off != 0 && thread_pointer().wrapping_add(off) != current() as usize {
        let _pass = crate::reclaim::PASS.lock();
        STATIC_TLS_OFFSET.store(0, Ordering::Relaxed);
        route_normal();
    }
}

/// The owner's hold on its cache in a slow path: while held, no other thread empties it.
struct Held(*mut ThreadCache);

/// Set in `guard` while another thread empties the cache.
pub(crate) const STOLEN: u32 = 1 << 31;

impl Held {
    /// Takes the guard of `tc`, waiting while another thread empties it.
    ///
    /// # Safety
    /// `tc` is the calling thread's cache.
    #[inline]
    unsafe fn new(tc: *mut ThreadCache) -> Held {
        // SAFETY: `tc` is this thread's cache (caller's contract).
        let guard = unsafe { &(*tc).guard };
        if !Self::try_enter(guard) {
            Self::wait(guard);
        }
        // SAFETY: as above; only the owner writes `slow_ops`.
        unsafe { (*tc).slow_ops.add(1) };
        Held(tc)
    }

    /// One more level of the owner's hold, unless another thread holds the cache.
    #[inline]
    fn try_enter(guard: &AtomicU32) -> bool {
        let v = guard.load(Ordering::Relaxed);
        v & STOLEN == 0
            && guard
                .compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    #[cold]
    fn wait(guard: &AtomicU32) {
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            if Self::try_enter(guard) {
                return;
            }
            if backoff.is_completed() {
                // Sleep rather than yield: under a real-time policy, yielding would never let a
                // lower-priority thread's pass on this CPU finish. (Asleep here, the owner is in
                // no hit path and holds no guard, so a pass may empty its cache meanwhile.)
                let ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000,
                };
                // The raw system call: libc's `nanosleep` is a cancellation point.
                // SAFETY: `ts` is a valid timespec; the remainder pointer may be null.
                unsafe {
                    libc::syscall(
                        libc::SYS_nanosleep,
                        &ts as *const libc::timespec,
                        ptr::null_mut::<libc::timespec>(),
                    )
                };
            } else {
                backoff.snooze();
            }
        }
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the cache outlives the hold (it is the owner's own, held on its stack).
        unsafe { (*self.0).guard.fetch_sub(1, Ordering::Release) };
    }
}

/// Takes the guard of another thread's cache if its owner holds none. The caller then has
/// the cache to itself once the owner is known to be outside every hit path.
///
/// # Safety
/// `tc` is a registered cache (the registry lock is held).
pub(crate) unsafe fn try_steal(tc: *mut ThreadCache) -> bool {
    // SAFETY: registered caches are live (caller's contract).
    unsafe {
        (*tc)
            .guard
            .compare_exchange(0, STOLEN, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

/// Ends [`try_steal`].
///
/// # Safety
/// The caller holds `tc`'s guard through `try_steal`.
pub(crate) unsafe fn end_steal(tc: *mut ThreadCache) {
    // SAFETY: as above.
    unsafe { (*tc).guard.store(0, Ordering::Release) };
}

/// Allocates an object of `class` for a request of `size` bytes; null only when memory is
/// exhausted.
#[inline(always)]
pub fn alloc(class: SizeClass, size: usize) -> *mut u8 {
    let Some(tc) = hit_cache() else {
        return alloc_guarded(class, size);
    };
    // SAFETY: `tc` is this thread's cache; nothing else touches it. The list's objects are
    // valid free objects of `class`.
    unsafe {
        let list = (*tc).lists.get_unchecked_mut(class.index());
        let head = list.head;
        if !head.is_null() {
            let p = pop(tc, list, head, size);
            leave_hit(tc);
            return p;
        }
        leave_hit(tc);
        alloc_slow(tc, class, size)
    }
}

/// Frees object `p` of `class`.
///
/// # Safety
/// `p` is an object of `class` handed out by oxmalloc and no longer used.
#[inline(always)]
pub unsafe fn free(p: *mut u8, class: SizeClass) {
    let Some(tc) = hit_cache() else {
        // SAFETY: forwarded contract.
        return unsafe { free_guarded(p, class) };
    };
    // SAFETY: `tc` is this thread's cache; `p` is a free object of `class` (caller's contract).
    unsafe {
        let list = (*tc).lists.get_unchecked_mut(class.index());
        if list.len() < list.max_len as usize {
            return push(tc, list, p);
        }
        leave_hit(tc);
        free_slow(tc, p, class)
    }
}

/// The C API's `malloc` of a small `class` (at least 16 bytes) for `size` bytes: sets errno
/// when memory is exhausted and clears the free tag of the object handed out (see
/// [`crate::check`]). Every call out of the hit path is a tail call, so the hit path saves no
/// registers.
#[inline(always)]
pub fn alloc_c(class: SizeClass, size: usize) -> *mut u8 {
    let Some(tc) = static_tls_cache() else {
        return alloc_c_slow(class, size);
    };
    // SAFETY: `tc` is this thread's cache; nothing else touches it. The list's objects are
    // valid free objects of `class`, at least 16 bytes.
    unsafe {
        let list = (*tc).lists.get_unchecked_mut(class.index());
        let head = list.head;
        if head.is_null() {
            leave_hit(tc);
            return alloc_c_slow(class, size);
        }
        let p = pop(tc, list, head, size);
        leave_hit(tc);
        *check::tag_slot(p) = 0;
        p
    }
}

/// Takes `head`, the first object of `list`, for a request of `size` bytes.
///
/// # Safety
/// `list` is one of `tc`'s lists, `tc` this thread's cache, and `head` its non-null head.
#[inline(always)]
unsafe fn pop(
    tc: *mut ThreadCache,
    list: &mut FreeList,
    head: *mut FreeObject,
    size: usize,
) -> *mut u8 {
    // SAFETY: guaranteed by the caller.
    unsafe {
        list.head = (*head).next;
        list.len.sub(1);
        (*tc).budget.add(list.obj_size as usize);
        list.allocs.add(1);
        list.requested.add(size);
    }
    head as *mut u8
}

// `extern "C"` so that it cannot unwind: the exported callers then need no landing pad and
// can tail-call it.
#[cold]
#[inline(never)]
extern "C" fn alloc_c_slow(class: SizeClass, size: usize) -> *mut u8 {
    let p = alloc(class, size);
    if p.is_null() {
        crate::os::set_errno(libc::ENOMEM);
    } else {
        // SAFETY: a fresh object of at least 16 bytes.
        unsafe { *check::tag_slot(p) = 0 };
    }
    p
}

/// The C API's `free` of `p`, which the pagemap places in a small span of `class` (at least
/// 16 bytes) at `phase` (see [`crate::pagemap::object_phase`]). First checks that `p` starts
/// an object and does not carry the free tag (see [`crate::check`]); misuse is reported and
/// aborts. Calls out of the hit path are tail calls.
///
/// # Safety
/// The pagemap entry of `p`'s page, when read, said class `class`.
#[inline(always)]
pub unsafe fn free_c(p: *mut u8, class: SizeClass, phase: usize) {
    let Some(tc) = static_tls_cache() else {
        // SAFETY: forwarded contract.
        return unsafe { free_c_slow(p, class, phase) };
    };
    // SAFETY: `tc` is this thread's cache; `p` lies in a small span of `class`, so once it is
    // known to start an object its (at least 16) bytes are ours to read; it is written only
    // once every check has passed.
    unsafe {
        let list = (*tc).lists.get_unchecked_mut(class.index());
        let magic = list.multiple_magic;
        let tag = check::tag_slot(p);
        let key = (*tc).free_tag;
        if (phase as u64).wrapping_mul(magic) >= magic
            || *tag == key
            || list.len() >= list.max_len as usize
        {
            leave_hit(tc);
            return free_c_slow(p, class, phase);
        }
        *tag = key;
        push(tc, list, p)
    }
}

/// The checks of [`free_c`] done in full, then an ordinary free.
///
/// # Safety
/// As for [`free_c`].
#[cold]
#[inline(never)]
unsafe extern "C" fn free_c_slow(p: *mut u8, class: SizeClass, phase: usize) {
    // SAFETY: forwarded contract.
    unsafe {
        if check::checking() {
            // The central list checks everything itself.
            return free(p, class);
        }
        check::check_small_free("free", p, class, phase);
        *check::tag_slot(p) = check::FREE_TAG.load(Ordering::Relaxed);
        free(p, class)
    }
}

/// Pushes `p` onto `list` (which has room), ends the hit path, and scavenges if the cache is
/// over budget.
///
/// # Safety
/// `list` is one of `tc`'s lists, `tc` this thread's cache, marked in a hit path, `p` a free
/// object of its class.
#[inline(always)]
unsafe fn push(tc: *mut ThreadCache, list: &mut FreeList, p: *mut u8) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let over = link(tc, list, p);
        leave_hit(tc);
        if over {
            scavenge(tc);
        }
    }
}

/// Links `p` onto `list`; returns whether the cache is now over budget.
///
/// # Safety
/// `list` is one of `tc`'s lists, `tc` this thread's cache, `p` a free object of its class.
#[inline(always)]
unsafe fn link(tc: *mut ThreadCache, list: &mut FreeList, p: *mut u8) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let obj = p as *mut FreeObject;
        (*obj).next = list.head;
        list.head = obj;
        list.len.add(1);
        list.frees.add(1);
        (*tc).budget.sub(list.obj_size as usize);
        (*tc).over_budget()
    }
}

/// Whether `p` is on this thread's cache list for `class`.
pub fn cache_holds(p: *mut u8, class: SizeClass) -> bool {
    let tc = current();
    // SAFETY: `tc` is this thread's cache; its list holds `len` valid free objects.
    unsafe {
        let _held = Held::new(tc);
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE {
            return false;
        }
        let list = &(*tc).lists[class.index()];
        let mut o = list.head;
        for _ in 0..list.len() {
            if o as *mut u8 == p {
                return true;
            }
            o = (*o).next;
        }
    }
    false
}

#[cold]
#[inline(never)]
unsafe extern "C" fn alloc_slow(tc: *mut ThreadCache, class: SizeClass, size: usize) -> *mut u8 {
    // SAFETY: `tc` is this thread's cache.
    let p = unsafe { alloc_held(tc, class, size) };
    // SAFETY: `tc` is this thread's cache.
    crate::reclaim::poll(unsafe { (*tc).slow_ops.get() });
    p
}

/// [`alloc`] while the hit paths are closed (a reclaim pass runs).
#[cold]
#[inline(never)]
extern "C" fn alloc_guarded(class: SizeClass, size: usize) -> *mut u8 {
    // SAFETY: `current()` is this thread's cache.
    unsafe { alloc_held(current(), class, size) }
}

/// The slow path of [`alloc`], under the cache's guard.
///
/// # Safety
/// `tc` is this thread's cache.
unsafe fn alloc_held(tc: *mut ThreadCache, class: SizeClass, size: usize) -> *mut u8 {
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        let _held = Held::new(tc);
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE && !activate(tc) {
            return alloc_uncached(class, size);
        }
        follow_shrink(tc);
        let list = (*tc).lists.get_unchecked_mut(class.index());
        let head = list.head;
        if !head.is_null() {
            // Sent here by a reclaim pass, not by an empty list.
            return pop(tc, list, head, size);
        }
        let info = class.info();
        let batch = info.batch;
        let list = &mut (*tc).lists[class.index()];
        // Slow start: one more object per refill up to a batch, then a batch more each time.
        if list.max_len < batch {
            list.max_len += 1;
        } else {
            list.max_len = (list.max_len + batch).min(max_len_for(class));
        }
        let want = list.max_len.min(batch) as usize;
        let mut chain = transfer_cache::remove(class, want);
        if chain.count == 0 {
            chain = crate::allocator::small_alloc_failed(class, size, want);
            if chain.count == 0 {
                return ptr::null_mut();
            }
        }
        let list = &mut (*tc).lists[class.index()];
        let obj = chain.head;
        if chain.count > 1 {
            (*chain.tail).next = list.head;
            list.head = (*obj).next;
            list.len.add(chain.count - 1);
            (*tc).budget.sub((chain.count - 1) * info.size as usize);
        }
        list.allocs.add(1);
        list.requested.add(size);
        obj as *mut u8
    }
}

fn max_len_for(class: SizeClass) -> u32 {
    let info = class.info();
    let by_bytes = (MAX_PER_THREAD / 2 / info.size as usize) as u32;
    by_bytes.clamp(info.batch, MAX_LIST_LEN)
}

#[cold]
#[inline(never)]
unsafe extern "C" fn free_slow(tc: *mut ThreadCache, p: *mut u8, class: SizeClass) {
    // SAFETY: `tc` is this thread's cache; `p` a free object of `class` (caller's contract).
    unsafe { free_held(tc, p, class) };
    // SAFETY: `tc` is this thread's cache.
    crate::reclaim::poll(unsafe { (*tc).slow_ops.get() });
}

/// [`free`] while the hit paths are closed (a reclaim pass runs).
///
/// # Safety
/// As for [`free`].
#[cold]
#[inline(never)]
unsafe extern "C" fn free_guarded(p: *mut u8, class: SizeClass) {
    // SAFETY: `current()` is this thread's cache; the rest is the caller's contract.
    unsafe { free_held(current(), p, class) }
}

/// The slow path of [`free`], under the cache's guard.
///
/// # Safety
/// `tc` is this thread's cache; `p` a free object of `class`.
unsafe fn free_held(tc: *mut ThreadCache, p: *mut u8, class: SizeClass) {
    // SAFETY: `tc` is this thread's cache; `p` a free object of `class` (caller's contract).
    unsafe {
        let _held = Held::new(tc);
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE && !activate(tc) {
            return free_uncached(p, class);
        }
        follow_shrink(tc);
        let batch = class.info().batch;
        let list = &mut (*tc).lists[class.index()];
        if list.len() < list.max_len as usize {
            // Sent here by a reclaim pass, not by a full list.
            if link(tc, list, p) {
                scavenge(tc);
            }
            return;
        }
        // The list overflows by this object; what goes out below also settles the budget.
        link(tc, list, p);
        if crate::page_heap::SHRINKING.load(Ordering::Relaxed) {
            // The heap is giving memory back, and cached objects pin the partly used spans
            // they belong to: the whole list goes, and it stays short until the heap grows.
            let n = list.len();
            list.max_len = list.max_len.min(SHRINK_LEN);
            release_head(tc, class, n, n);
            return drain_if_requested();
        }
        if list.max_len < batch {
            // Still in slow start: let the list grow by one instead of releasing.
            list.max_len += 1;
            if list.len() <= list.max_len as usize {
                return;
            }
        } else {
            list.overflows += 1;
            if list.overflows > 3 {
                list.max_len = (list.max_len - batch).max(batch);
                list.overflows = 0;
            }
        }
        let n = list.len().min(batch as usize);
        release_head(tc, class, n, n);
        // The heap may have shrunk since the budget was set: follow it.
        set_max_size(tc, per_thread_budget());
        if (*tc).over_budget() {
            scavenge(tc);
        }
        drain_if_requested();
    }
}

/// When the page heap has started shrinking since this cache last looked, empties the whole
/// cache once and caps every list at `SHRINK_LEN`: objects cached from before would pin the
/// partly used spans they belong to, and lists that never overflow again would keep them.
///
/// # Safety
/// `tc` is this thread's active cache.
unsafe fn follow_shrink(tc: *mut ThreadCache) {
    let epoch = crate::page_heap::SHRINK_EPOCH.load(Ordering::Relaxed);
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        if epoch != (*tc).shrink_epoch.load(Ordering::Relaxed) {
            empty_to_shrink_len(tc, epoch);
        }
    }
}

/// Empties `tc` into the transfer caches, caps every list at `SHRINK_LEN` and records that the
/// cache followed shrink `epoch`. Returns the bytes taken.
///
/// # Safety
/// `tc` is an active cache that the caller has to itself (its owner, or a thread that stole it).
unsafe fn empty_to_shrink_len(tc: *mut ThreadCache, epoch: u32) -> usize {
    // SAFETY: caller's contract.
    unsafe {
        (*tc).shrink_epoch.store(epoch, Ordering::Relaxed);
        let bytes = drain(tc);
        for list in (*tc).lists.iter_mut() {
            list.max_len = list.max_len.min(SHRINK_LEN);
        }
        bytes
    }
}

/// [`follow_shrink`] for the calling thread, from paths that do not use the cache (large
/// blocks).
pub fn follow_shrink_current() {
    let tc = current();
    // SAFETY: `tc` is this thread's cache; only an active cache holds objects.
    unsafe {
        let held = Held::new(tc);
        if (*tc).state.load(Ordering::Relaxed) == ACTIVE {
            follow_shrink(tc);
        }
        drop(held);
        crate::reclaim::poll((*tc).slow_ops.get());
    }
}

/// Empties the transfer caches if the page heap asked for it (it started giving memory back).
fn drain_if_requested() {
    if crate::page_heap::DRAIN_REQUESTED.load(Ordering::Relaxed)
        && crate::page_heap::DRAIN_REQUESTED.swap(false, Ordering::Relaxed)
    {
        transfer_cache::drain_all();
    }
}

/// Trims the cache below its budget by releasing half of every list, and again while it is
/// still over (a budget set very small: each later round releases the odd object too, so the
/// cache can empty). (`extern "C"`: cannot unwind, so the hit paths tail-call it.)
#[cold]
#[inline(never)]
unsafe extern "C" fn scavenge(tc: *mut ThreadCache) {
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        let _held = Held::new(tc);
        set_max_size(tc, per_thread_budget());
        let mut round_up = 0;
        loop {
            let mut left = 0;
            for c in 1..NUM_CLASSES {
                let class = SizeClass(c as u8);
                let half = ((*tc).lists[c].len() + round_up) / 2;
                release_head(tc, class, half, class.info().batch as usize);
                let list = &mut (*tc).lists[c];
                list.max_len = list.max_len.min(list.len().max(1) as u32);
                left += list.len();
            }
            if left == 0 || !(*tc).over_budget() {
                break;
            }
            round_up = 1;
        }
    }
}

/// Gives every cached object back to the central layers. Returns the bytes released.
///
/// # Safety
/// `tc` is the calling thread's cache.
pub unsafe fn drain(tc: *mut ThreadCache) -> usize {
    let mut bytes = 0;
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        for c in 1..NUM_CLASSES {
            let class = SizeClass(c as u8);
            bytes += release_head(tc, class, (*tc).lists[c].len(), class.info().batch as usize);
        }
    }
    bytes
}

/// Moves the first `n` objects of `class`'s list to the transfer caches, in chains of at most
/// `per_chain` objects, and credits them to the budget. Returns the bytes moved.
///
/// # Safety
/// `tc` is a cache the caller has to itself, whose `class` list holds at least `n` objects;
/// `per_chain` is at least 1.
unsafe fn release_head(
    tc: *mut ThreadCache,
    class: SizeClass,
    n: usize,
    per_chain: usize,
) -> usize {
    // SAFETY: caller's contract.
    unsafe {
        let list = &mut (*tc).lists[class.index()];
        let mut left = n;
        while left > 0 {
            let k = left.min(per_chain);
            let chain = list.pop_chain(k);
            (*tc).budget.add(k * class.size());
            transfer_cache::insert(class, chain);
            left -= k;
        }
    }
    n * class.size()
}

/// Allocations and frees `tc`'s owner made through its cache, read without its guard (a hint
/// that changes while the owner works).
///
/// # Safety
/// `tc` is a registered cache.
pub(crate) unsafe fn op_count(tc: *mut ThreadCache) -> usize {
    // SAFETY: registered caches are live; the counters are read racily on purpose.
    unsafe {
        (*tc).lists.iter().fold((*tc).slow_ops.get(), |n, l| {
            n.wrapping_add(l.allocs.get()).wrapping_add(l.frees.get())
        })
    }
}

/// Bytes `tc` caches, read without its guard (a hint).
///
/// # Safety
/// `tc` is a registered cache.
pub(crate) unsafe fn cached_bytes_hint(tc: *mut ThreadCache) -> usize {
    // SAFETY: registered caches are live; the fields are read racily on purpose.
    unsafe {
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE {
            return 0;
        }
        let b = (*tc).cached_bytes();
        if (b as isize) < 0 {
            0
        } else {
            b
        }
    }
}

/// Whether `tc` has not followed the page heap's shrink `epoch` (a hint).
///
/// # Safety
/// `tc` is a registered cache.
pub(crate) unsafe fn behind_shrink(tc: *mut ThreadCache, epoch: u32) -> bool {
    // SAFETY: registered caches are live; the field is read racily on purpose.
    unsafe { (*tc).shrink_epoch.load(Ordering::Relaxed) != epoch }
}

/// Empties another thread's cache, stolen with [`try_steal`], as [`follow_shrink`] does.
/// Returns the bytes taken.
///
/// # Safety
/// The caller holds `tc`'s guard through `try_steal`, and its owner is outside every hit path
/// until `ROUTE` is normal again.
pub(crate) unsafe fn empty_stolen(tc: *mut ThreadCache, epoch: u32) -> usize {
    // SAFETY: the guard gives the caller the cache (caller's contract).
    unsafe {
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE {
            return 0;
        }
        empty_to_shrink_len(tc, epoch)
    }
}

/// Drains the calling thread's cache (for an explicit release of free memory).
pub fn drain_current() -> usize {
    let tc = current();
    // SAFETY: `tc` is this thread's cache; an inactive cache holds nothing.
    unsafe {
        let _held = Held::new(tc);
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE {
            return 0;
        }
        drain(tc)
    }
}

/// In a child after `fork`, with the registry lock held: only the forking thread exists, so
/// only its cache stays registered. The other caches belonged to threads that do not exist
/// here; their memory (stacks and TLS) may be handed to new threads, whose fresh caches would
/// otherwise be registered twice. What they cached is left alone: a thread may have been
/// halfway through a list update when the parent forked.
pub(crate) fn forget_other_threads() {
    let tc = FORKING_CACHE.load(Ordering::Relaxed);
    // SAFETY: `tc` is this thread's cache, found before `fork` (see `note_forking_thread`).
    let active = unsafe { (*tc).state.load(Ordering::Relaxed) == ACTIVE };
    if active {
        // The child is a new process: its only thread has a new id.
        // SAFETY: as above; no other thread exists to read it.
        unsafe { (*tc).tid = crate::reclaim::gettid() };
    }
    // SAFETY: called in the child under the registry lock (caller's contract).
    unsafe { crate::stats::keep_only_after_fork(if active { tc } else { ptr::null_mut() }) };
    ACTIVE_THREADS.store(active as usize, Ordering::Relaxed);
}

/// The cache of the thread that is forking, found before `fork` takes the locks (finding it
/// through `thread_local!` may call into the dynamic loader, which may allocate).
static FORKING_CACHE: core::sync::atomic::AtomicPtr<ThreadCache> =
    core::sync::atomic::AtomicPtr::new(ptr::null_mut());

/// Notes the calling thread's cache for [`forget_other_threads`]: called first thing in
/// `fork` preparation.
pub(crate) fn note_forking_thread(tc: *mut ThreadCache) {
    FORKING_CACHE.store(tc, Ordering::Relaxed);
}

/// Changes the cache's byte budget, keeping `budget = max_size - cached`.
///
/// # Safety
/// `tc` is the calling thread's cache.
unsafe fn set_max_size(tc: *mut ThreadCache, max: usize) {
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        let cached = (*tc).cached_bytes();
        (*tc).max_size.set(max);
        (*tc).budget.set(max.wrapping_sub(cached));
    }
}

/// A thread's share of the total budget; while the heap is shrinking, no more than 1/8 of the
/// bytes it still hands out, so caches shrink with the heap when a program frees most of its
/// memory (cached objects pin the partly used spans they belong to).
fn per_thread_budget() -> usize {
    let threads = ACTIVE_THREADS.load(Ordering::Relaxed).max(1);
    let total = crate::config::THREAD_CACHE_BYTES.load(Ordering::Relaxed);
    let mut budget = total / threads;
    if crate::page_heap::SHRINKING.load(Ordering::Relaxed) {
        budget = budget.min(crate::page_heap::ACTIVE_BYTES.load(Ordering::Relaxed) / 8);
    }
    budget.clamp(MIN_PER_THREAD.min(total), MAX_PER_THREAD.min(total))
}

fn alloc_uncached(class: SizeClass, size: usize) -> *mut u8 {
    let mut chain = transfer_cache::remove(class, 1);
    if chain.count == 0 {
        chain = crate::allocator::small_alloc_failed(class, size, 1);
    }
    chain.head as *mut u8
}

/// # Safety
/// `p` is a free object of `class`.
unsafe fn free_uncached(p: *mut u8, class: SizeClass) {
    let obj = p as *mut FreeObject;
    // SAFETY: `p` is ours to link (caller's contract).
    unsafe {
        (*obj).next = ptr::null_mut();
        crate::central_free_list::insert_range(class, obj, 1);
    }
}

/// Brings an `UNINIT` cache to `ACTIVE`. Returns false if the cache cannot be used (torn
/// down, being set up further up this thread's stack, or global set-up failed).
#[cold]
unsafe fn activate(tc: *mut ThreadCache) -> bool {
    // SAFETY: `tc` is this thread's cache.
    unsafe {
        if (*tc).state.load(Ordering::Relaxed) != UNINIT
            || !crate::allocator::global_init()
            || check::checking()
        {
            return false;
        }
        verify_static_tls();
        (*tc).state.store(INITIALIZING, Ordering::Relaxed);
        // May allocate (libc's second-level key table); such calls see INITIALIZING and bypass
        // the cache.
        libc::pthread_setspecific(crate::allocator::thread_key(), tc as *const libc::c_void);
        ACTIVE_THREADS.fetch_add(1, Ordering::Relaxed);
        for (c, list) in (*tc).lists.iter_mut().enumerate().skip(1) {
            list.obj_size = SizeClass(c as u8).size() as u32;
            list.multiple_magic = SizeClass(c as u8).info().multiple_magic;
        }
        set_max_size(tc, per_thread_budget());
        (*tc).free_tag = check::FREE_TAG.load(Ordering::Relaxed);
        (*tc).tid = crate::reclaim::gettid();
        crate::stats::register_thread(tc);
        (*tc).state.store(ACTIVE, Ordering::Relaxed);
    }
    true
}

/// The pthread key destructor: runs on a thread as it exits.
pub extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let tc = arg as *mut ThreadCache;
    // SAFETY: the key's value is this exiting thread's own cache, set in `activate`, and its
    // TLS is still valid while key destructors run.
    unsafe {
        if tc != current() {
            return;
        }
        let _held = Held::new(tc);
        if (*tc).state.load(Ordering::Relaxed) != ACTIVE {
            return;
        }
        (*tc).state.store(TORN_DOWN, Ordering::Relaxed);
        drain(tc);
        for l in (*tc).lists.iter_mut() {
            l.max_len = 0;
        }
        crate::stats::unregister_thread(tc);
        ACTIVE_THREADS.fetch_sub(1, Ordering::Relaxed);
    }
}
