//! The page heap: runs of 8 KiB pages over memory mapped from the OS.
//!
//! Invariants (all under the single page heap lock):
//! - Every free span is in exactly one free list: by exact length for lengths up to
//!   [`MAX_LISTED`] pages, or the "long" list beyond; separate lists for resident (`Free`) and
//!   released (`Returned`) spans. `free_pages` / `returned_pages` count the pages in them.
//! - No two listed free spans of the same state are adjacent: freeing coalesces with listed
//!   neighbours of the same state (found through the pagemap). Spans of different states are
//!   kept apart so that a `Returned` span is always entirely non-resident and entirely zero.
//! - The pagemap maps both ends of every free and large span, and every page of a small span
//!   (see `pagemap`). Interior pages of free and large spans map to null.
//! - `mapped_bytes` = pages in free lists and the release queue + pages in small spans + pages
//!   in large spans, in bytes.
//! - With a heap limit set, `small_span_pages + large_pages` (the pages handed out) never
//!   exceeds it: `take` refuses first, recording the reason for the failure report.
//! - After every free into the page heap, the listed resident free pages are at most the
//!   allowance, `RETAIN_MIN + RETAIN_PERCENT%` of the pages handed out plus a learned boost (see
//!   `free_run`); past it, the longest runs go first.
//! - Runs on their way to the OS wait in the release queue: out of every list, state `Free`,
//!   both ends mapped, counted in `free_pages` and in the queue's `bytes`. The queue never
//!   holds more than `RELEASE_BATCH` runs or `QUEUE_MAX_BYTES` for longer than the push that
//!   filled it, which releases it with one system call; it is also released before the heap
//!   grows and on an explicit release. Released runs are listed `Returned` (`Free` if the
//!   release failed).
//! - A free span's record is moved to the lowest free slot of the metadata arena, if that lies
//!   before it, whenever the span enters a free list (see `compact`): free spans outlive the
//!   in-use spans around them, and their records then stay at the start of the arena, whose
//!   later pages can empty out and be released.
//! - The page heap never calls into the central free lists, so the lock order
//!   central free list -> page heap -> metadata arena cannot cycle.

use crate::hooks;
use crate::metadata;
use crate::os;
use crate::pagemap;
use crate::size_class::SizeClass;
use crate::span::{Span, SpanList, SpanState};
use crate::sync::SpinLock;
use crate::types::{Length, PageId, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Bounds of the retention boost: the first regret allows this much more to stay resident, and
/// each further one doubles it up to the maximum.
const RETAIN_BOOST_MIN: usize = 4 << 20;
const RETAIN_BOOST_MAX: usize = 1 << 30;
/// The boost may always count this much, however little is handed out: a program that frees a
/// batch of up to this size and allocates it again keeps it resident between rounds.
const RETAIN_BOOST_FLOOR: usize = 32 << 20;

/// Free spans up to this many pages sit in exact-length lists.
pub const MAX_LISTED: usize = 128;
/// The heap grows by at least this much address space at a time.
const GROW_MIN_BYTES: usize = 32 << 20;
/// Growth is aligned so that regions can be backed by huge pages where the system allows it.
const GROW_ALIGN: usize = 2 << 20;
/// Ranges released by one system call (at most the kernel's `UIO_MAXIOV`, 1024).
const RELEASE_BATCH: usize = 128;
/// Runs queued for release go to the OS once they hold this many bytes (or `RELEASE_BATCH`
/// runs), so what the queue keeps resident stays small.
const QUEUE_MAX_BYTES: usize = 1 << 20;

pub struct PageHeap {
    free: [SpanList; MAX_LISTED + 1],
    returned: [SpanList; MAX_LISTED + 1],
    long_free: SpanList,
    long_returned: SpanList,
    /// Bit `len` set when `free[len]` (resp. `returned[len]`) is non-empty.
    free_mask: [u64; 3],
    returned_mask: [u64; 3],
    /// Span records.
    records: metadata::RecordArena,
    /// Free runs on their way to the OS, in no list (see `queue`); counted in
    /// `stats.free_pages`.
    queue: ReleaseBatch,
    /// Bytes released by the retention policy that have not been taken back yet.
    released_recently: usize,
    /// Extra bytes the retention policy lets stay resident because the program took released
    /// pages back soon after they were released (see `allowance`).
    retain_boost: usize,
    /// Whether released pages were taken back since the last release.
    regretted: bool,
    pub stats: PageHeapStats,
}

/// Counters kept by the page heap, in pages unless named otherwise.
#[derive(Clone, Copy, Default, Debug)]
pub struct PageHeapStats {
    pub mapped_bytes: usize,
    pub free_pages: usize,
    pub returned_pages: usize,
    pub small_span_pages: usize,
    pub large_pages: usize,
    pub large_spans: usize,
    /// Bytes the program asked for in its live large allocations.
    pub large_requested_bytes: usize,
    /// Lifetime counts of large allocations and frees, and bytes requested by them.
    pub large_allocs_total: usize,
    pub large_frees_total: usize,
    pub large_bytes_total: usize,
    /// Highest `small_span_pages + large_pages` seen.
    pub peak_active_pages: usize,
    pub released_bytes_total: usize,
}

// SAFETY: the raw pointers are only touched under the page heap lock.
unsafe impl Send for PageHeap {}

/// Its holders may be in `mmap` or `madvise`: waiters sleep rather than spin.
pub static PAGE_HEAP: SpinLock<PageHeap, true> = SpinLock::new(PageHeap::new());

/// Bytes in spans handed out (small spans and large blocks), published for lock-free readers
/// that size caches to the heap.
pub static ACTIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// True from a release by the retention policy until the next span is taken: the heap is
/// shrinking, and free objects parked in transfer caches would pin partly used spans, so
/// transfer caches pass batches straight on to the central lists meanwhile.
pub static SHRINKING: AtomicBool = AtomicBool::new(false);
/// Set with `SHRINKING`: the next thread on a free slow path drains the transfer caches (the
/// page heap may not take their locks itself).
pub static DRAIN_REQUESTED: AtomicBool = AtomicBool::new(false);
/// Counts the times `SHRINKING` went from false to true: a thread whose slow path sees a new
/// value empties its whole cache once (cached objects pin partly used spans).
pub static SHRINK_EPOCH: AtomicU32 = AtomicU32::new(0);

impl PageHeap {
    const fn new() -> PageHeap {
        PageHeap {
            free: [const { SpanList::new() }; MAX_LISTED + 1],
            returned: [const { SpanList::new() }; MAX_LISTED + 1],
            long_free: SpanList::new(),
            long_returned: SpanList::new(),
            free_mask: [0; 3],
            returned_mask: [0; 3],
            records: metadata::RecordArena::new(),
            queue: ReleaseBatch::new(),
            released_recently: 0,
            retain_boost: 0,
            regretted: false,
            stats: PageHeapStats {
                mapped_bytes: 0,
                free_pages: 0,
                returned_pages: 0,
                small_span_pages: 0,
                large_pages: 0,
                large_spans: 0,
                large_requested_bytes: 0,
                large_allocs_total: 0,
                large_frees_total: 0,
                large_bytes_total: 0,
                peak_active_pages: 0,
                released_bytes_total: 0,
            },
        }
    }

    fn new_record(&mut self) -> *mut Span {
        let s = self.records.alloc();
        if !s.is_null() {
            // SAFETY: `s` is a valid record we own exclusively.
            unsafe { s.write(Span::empty()) };
        }
        s
    }

    fn free_record(&mut self, s: *mut Span) {
        // SAFETY: `s` is a record no list or pagemap entry refers to any more.
        unsafe { self.records.free(s) };
    }

    /// Bytes mapped for span records, and of those still resident.
    pub fn record_bytes(&self) -> (usize, usize) {
        (self.records.mapped_bytes(), self.records.resident_bytes())
    }

    fn update_mask(&mut self, len: Length, state: SpanState) {
        if len.0 > MAX_LISTED {
            return;
        }
        let (list, mask) = if state == SpanState::Returned {
            (&self.returned[len.0], &mut self.returned_mask)
        } else {
            (&self.free[len.0], &mut self.free_mask)
        };
        let bit = 1u64 << (len.0 % 64);
        if list.is_empty() {
            mask[len.0 / 64] &= !bit;
        } else {
            mask[len.0 / 64] |= bit;
        }
    }

    /// Smallest listed length `>= n` with a free span in either state, or 0.
    fn first_listed_at_least(&self, n: usize) -> usize {
        let mut word = n / 64;
        let mut bits = (self.free_mask[word] | self.returned_mask[word]) & (!0u64 << (n % 64));
        loop {
            if bits != 0 {
                return word * 64 + bits.trailing_zeros() as usize;
            }
            word += 1;
            if word >= self.free_mask.len() {
                return 0;
            }
            bits = self.free_mask[word] | self.returned_mask[word];
        }
    }

    fn list_for(&mut self, len: Length, state: SpanState) -> &mut SpanList {
        let returned = state == SpanState::Returned;
        match (len.0 <= MAX_LISTED, returned) {
            (true, false) => &mut self.free[len.0],
            (true, true) => &mut self.returned[len.0],
            (false, false) => &mut self.long_free,
            (false, true) => &mut self.long_returned,
        }
    }

    /// # Safety
    /// `s` is a valid free span not in a list.
    unsafe fn insert_free(&mut self, s: *mut Span) {
        // SAFETY: guaranteed by the caller.
        let (len, state) = unsafe { ((*s).len, (*s).state) };
        if state == SpanState::Returned {
            self.stats.returned_pages += len.0;
        } else {
            self.stats.free_pages += len.0;
        }
        // SAFETY: as above.
        unsafe {
            self.list_for(len, state).push_front(s);
            pagemap::set_ends(s);
        }
        self.update_mask(len, state);
    }

    /// # Safety
    /// `s` is a valid free span in its free list.
    unsafe fn remove_free(&mut self, s: *mut Span) {
        // SAFETY: guaranteed by the caller.
        let (len, state) = unsafe { ((*s).len, (*s).state) };
        if state == SpanState::Returned {
            self.stats.returned_pages -= len.0;
        } else {
            self.stats.free_pages -= len.0;
        }
        // SAFETY: as above.
        unsafe { self.list_for(len, state).remove(s) };
        self.update_mask(len, state);
    }

    /// Coalesces free span `s` (not in a list, state `Free` or `Returned`) with free neighbours
    /// of the same state and inserts the result.
    ///
    /// # Safety
    /// `s` is a valid free span, not in a list, whose pages no pagemap entry maps to another span.
    unsafe fn merge_and_insert(&mut self, s: *mut Span) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let s = self.merge(s);
            let s = self.compact(s);
            self.insert_free(s);
        }
    }

    /// Coalesces free span `s` (not in a list) with the listed free neighbours of its state and
    /// returns the result, in no list.
    ///
    /// # Safety
    /// As for [`Self::merge_and_insert`].
    unsafe fn merge(&mut self, s: *mut Span) -> *mut Span {
        // SAFETY: `s` is valid; neighbours found through the pagemap are valid records because
        // the pagemap only maps live spans (writes happen under this lock, which we hold).
        unsafe {
            let state = (*s).state;
            if (*s).start.0 > 0 {
                let prev = pagemap::span_of(PageId((*s).start.0 - 1));
                if !prev.is_null() && (*prev).state == state && (*prev).in_list {
                    self.remove_free(prev);
                    // Our old first page becomes interior: interior pages must map to null,
                    // or a later split at this boundary would find a stale record.
                    pagemap::set((*s).start, ptr::null_mut(), SizeClass::LARGE);
                    pagemap::set((*prev).start, ptr::null_mut(), SizeClass::LARGE);
                    pagemap::set((*prev).last_page(), ptr::null_mut(), SizeClass::LARGE);
                    (*s).start = (*prev).start;
                    (*s).len = Length((*s).len.0 + (*prev).len.0);
                    self.free_record(prev);
                }
            }
            let next = pagemap::span_of((*s).start.offset((*s).len));
            if !next.is_null() && (*next).state == state && (*next).in_list {
                self.remove_free(next);
                pagemap::set((*s).last_page(), ptr::null_mut(), SizeClass::LARGE);
                pagemap::set((*next).start, ptr::null_mut(), SizeClass::LARGE);
                pagemap::set((*next).last_page(), ptr::null_mut(), SizeClass::LARGE);
                (*s).len = Length((*s).len.0 + (*next).len.0);
                self.free_record(next);
            }
            s
        }
    }

    /// Moves the record of free span `s` to an earlier slot of the metadata arena if one is
    /// free, and returns where it is now. Records of free spans live long in a heap that has
    /// shrunk; gathering them at the start of the arena lets the arena release the pages past
    /// them (records of in-use spans cannot move: the central lists point at them).
    ///
    /// # Safety
    /// `s` is a valid free span, in no list; no pagemap entry points at it (or the caller sets
    /// them again).
    unsafe fn compact(&mut self, s: *mut Span) -> *mut Span {
        // SAFETY: `s` is a live record (caller's contract).
        let r = unsafe { self.records.alloc_before(s) };
        if r.is_null() {
            return s;
        }
        // SAFETY: `r` is a fresh record distinct from `s`; nothing else refers to `s`.
        unsafe { ptr::copy_nonoverlapping(s, r, 1) };
        self.free_record(s);
        r
    }

    /// Splits `s` after its first `n` pages; returns the new record for the rest (same state),
    /// or null if no record could be had (then `s` is unchanged). No pagemap changes.
    ///
    /// # Safety
    /// `s` is valid, not in a list, and `0 < n < s.len`.
    unsafe fn split(&mut self, s: *mut Span, n: Length) -> *mut Span {
        let r = self.new_record();
        if r.is_null() {
            return r;
        }
        // SAFETY: both records are valid and exclusively ours.
        unsafe {
            (*r).start = (*s).start.offset(n);
            (*r).len = Length((*s).len.0 - n.0);
            (*r).state = (*s).state;
            (*s).len = n;
        }
        r
    }

    fn find(&mut self, n: Length) -> *mut Span {
        if n.0 <= MAX_LISTED {
            let len = self.first_listed_at_least(n.0);
            if len != 0 {
                if !self.free[len].is_empty() {
                    return self.free[len].first();
                }
                return self.returned[len].first();
            }
        }
        // Best fit among long spans, resident ones first on ties.
        let mut best: *mut Span = ptr::null_mut();
        for list in [&self.long_free, &self.long_returned] {
            let mut s = list.first();
            while !s.is_null() {
                // SAFETY: spans in our lists are valid.
                unsafe {
                    if (*s).len >= n && (best.is_null() || (*s).len < (*best).len) {
                        best = s;
                    }
                    s = (*s).next;
                }
            }
        }
        best
    }

    fn grow(&mut self, n: Length) -> bool {
        let Some(want) = n.0.checked_mul(PAGE_SIZE) else {
            return false;
        };
        let Some(bytes) = want
            .max(GROW_MIN_BYTES)
            .checked_next_multiple_of(GROW_ALIGN)
        else {
            return false;
        };
        let Some(mem) = os::map_aligned(bytes, GROW_ALIGN) else {
            return false;
        };
        let start = PageId::containing(mem as usize);
        let len = Length(bytes / PAGE_SIZE);
        let s = self.new_record();
        if s.is_null() || !pagemap::ensure(start, len) {
            if !s.is_null() {
                self.free_record(s);
            }
            os::unmap(mem, bytes);
            return false;
        }
        self.stats.mapped_bytes += bytes;
        // SAFETY: `s` is a fresh record for pages nobody maps yet.
        unsafe {
            (*s).start = start;
            (*s).len = len;
            (*s).state = SpanState::Returned;
            self.merge_and_insert(s);
        }
        true
    }

    /// Takes a free run of exactly `n` pages out of the free lists (growing the heap if needed).
    /// The result keeps its free state (`Free` or `Returned`, telling whether it is zeroed) and
    /// is in no list; the caller sets its state and pagemap entries.
    fn take(&mut self, n: Length) -> *mut Span {
        if SHRINKING.load(Ordering::Relaxed) {
            SHRINKING.store(false, Ordering::Relaxed);
        }
        let limit = crate::config::HEAP_LIMIT.load(Ordering::Relaxed);
        if limit != 0 {
            let active = self.stats.small_span_pages + self.stats.large_pages;
            if active.saturating_add(n.0).saturating_mul(PAGE_SIZE) > limit {
                hooks::LAST_FAILURE.store(hooks::REASON_HEAP_LIMIT as u8, Ordering::Relaxed);
                return ptr::null_mut();
            }
        }
        let mut s = self.find(n);
        if s.is_null() && self.queue.n > 0 {
            // The queued runs may be what is needed: list them (released) before growing.
            self.release_queue(true);
            s = self.find(n);
        }
        if s.is_null() {
            if !self.grow(n) {
                hooks::LAST_FAILURE.store(hooks::REASON_OS as u8, Ordering::Relaxed);
                return ptr::null_mut();
            }
            s = self.find(n);
            if s.is_null() {
                return s;
            }
        }
        // SAFETY: `s` came from our free lists.
        unsafe {
            if (*s).state == SpanState::Returned && self.released_recently > 0 {
                // Pages the policy released are needed again: it released too eagerly for this
                // program. Let more stay resident next time.
                self.released_recently = self.released_recently.saturating_sub(n.bytes());
                self.retain_boost =
                    (self.retain_boost * 2).clamp(RETAIN_BOOST_MIN, RETAIN_BOOST_MAX);
                self.regretted = true;
            }
            self.remove_free(s);
            if (*s).len > n {
                let r = self.split(s, n);
                if r.is_null() {
                    self.merge_and_insert(s);
                    return ptr::null_mut();
                }
                self.merge_and_insert(r);
            }
        }
        s
    }

    /// Publishes the pages handed out (for lock-free readers) and tracks their peak.
    fn note_active(&mut self) {
        let active = self.stats.small_span_pages + self.stats.large_pages;
        if active > self.stats.peak_active_pages {
            self.stats.peak_active_pages = active;
        }
        ACTIVE_BYTES.store(active * PAGE_SIZE, Ordering::Relaxed);
    }

    /// The release policy's allowance: free resident pages may total at most
    /// `RETAIN_MIN + RETAIN_PERCENT% of the bytes handed out + boost`.
    ///
    /// The boost learns from the program: when `take` has to hand out pages this policy released
    /// and that were not taken back yet (a program that frees a batch and allocates it again),
    /// the boost doubles (from 4 MiB up to 1 GiB), until what the program reuses stays resident;
    /// each release with no such regret since the previous one halves it. A program that frees
    /// most of its memory and does not take it back never raises the boost, and the boost
    /// never counts for more than half of the bytes handed out (or 32 MiB, whichever is more),
    /// so one that freed most of a big heap gets its memory back even after it reused memory
    /// before.
    fn allowance(&self) -> usize {
        let active = (self.stats.small_span_pages + self.stats.large_pages) * PAGE_SIZE;
        crate::config::RETAIN_MIN
            .load(Ordering::Relaxed)
            .saturating_add(active / 100 * crate::config::RETAIN_PERCENT.load(Ordering::Relaxed))
            // The boost never keeps more free than half of what is handed out (or
            // `RETAIN_BOOST_FLOOR`): a program that freed most of a big heap gets its memory
            // back, whatever it reused before.
            .saturating_add(self.retain_boost.min((active / 2).max(RETAIN_BOOST_FLOOR)))
    }

    /// Resident free bytes in the free lists (runs queued for release not counted).
    fn listed_free_bytes(&self) -> usize {
        self.stats.free_pages * PAGE_SIZE - self.queue.bytes
    }

    /// Frees run `s` (state `Free`, in no list, its pagemap entries cleared): coalesces it with
    /// its resident free neighbours, then lists it, unless the heap is shrinking or listing it
    /// would take the free resident pages past the allowance: then it is queued for release at
    /// once, and past the allowance the longest listed runs follow it until a quarter of the
    /// allowance is left, so a program that frees and reallocates around the threshold does not
    /// release at every free.
    ///
    /// # Safety
    /// As for [`Self::merge_and_insert`], with `s` in state `Free`.
    unsafe fn free_run(&mut self, s: *mut Span) {
        let allowance = self.allowance();
        // SAFETY: guaranteed by the caller.
        let s = unsafe { self.merge(s) };
        // SAFETY: `s` is a valid record.
        let over = self.listed_free_bytes() + unsafe { (*s).len.bytes() } > allowance;
        if !over && !SHRINKING.load(Ordering::Relaxed) {
            // SAFETY: `s` is a free span in no list, no pagemap entry points at it.
            unsafe {
                let s = self.compact(s);
                self.insert_free(s);
            }
            return;
        }
        // A run freed while the heap shrinks goes out without being listed: listing it only to
        // take it out again costs two more visits to records that are not in the cache.
        // SAFETY: as above.
        unsafe {
            pagemap::set_ends(s);
            if self.queue(s, true).is_none() || !over {
                return;
            }
        }
        if !self.regretted {
            // Nothing released last time was needed again: let the boost fade.
            self.retain_boost /= 2;
        }
        self.regretted = false;
        if !SHRINKING.swap(true, Ordering::Relaxed) {
            SHRINK_EPOCH.fetch_add(1, Ordering::Relaxed);
        }
        DRAIN_REQUESTED.store(true, Ordering::Relaxed);
        // Idle threads' caches pin partly used spans: have the next slow path look at them.
        crate::reclaim::REQUESTED.store(true, Ordering::Relaxed);
        let _ = self.queue_longest(allowance / 4, true);
    }

    /// Queues the longest listed resident runs for release until at most `target` bytes stay
    /// listed. Returns the bytes released on the way: `Err` with those before a release the
    /// kernel refused, which ends the loop.
    fn queue_longest(&mut self, target: usize, by_policy: bool) -> Result<usize, usize> {
        let mut released = 0;
        while self.listed_free_bytes() > target {
            let s = self.longest_resident();
            if s.is_null() {
                break;
            }
            // SAFETY: `s` is a valid free span in its list.
            unsafe {
                self.remove_free(s);
                match self.queue(s, by_policy) {
                    Some(b) => released += b,
                    None => return Err(released),
                }
            }
        }
        Ok(released)
    }

    /// Queues resident free run `s` (in no list, its ends mapped) for release, and releases the
    /// queue if it is full. Returns the bytes that released, or `None` if the release failed.
    ///
    /// # Safety
    /// `s` is a valid `Free` span in no list.
    unsafe fn queue(&mut self, s: *mut Span, by_policy: bool) -> Option<usize> {
        // SAFETY: guaranteed by the caller.
        self.stats.free_pages += unsafe { (*s).len.0 };
        // SAFETY: as above; the queue is never left full.
        unsafe { self.queue.push(s) };
        if self.queue.is_full() || self.queue.bytes >= QUEUE_MAX_BYTES {
            return self.release_queue(by_policy);
        }
        Some(0)
    }

    /// Releases the queued runs (one system call where the kernel allows it) and lists them as
    /// `Returned`; if the release fails, they are listed as `Free`. Returns the bytes released,
    /// or `None` if the release failed. A release `by_policy` is one the program may regret
    /// (see `allowance`).
    fn release_queue(&mut self, by_policy: bool) -> Option<usize> {
        let n = self.queue.n;
        if n == 0 {
            return Some(0);
        }
        let ok = os::release_ranges(&self.queue.ranges[..n]);
        for i in 0..n {
            let s = self.queue.spans[i];
            // SAFETY: queued spans are valid `Free` spans out of every list, their pages free
            // (released now if `ok`).
            unsafe {
                self.stats.free_pages -= (*s).len.0;
                if ok {
                    (*s).state = SpanState::Returned;
                }
                let s = self.merge(s);
                self.insert_free(s);
            }
        }
        let bytes = self.queue.bytes;
        self.queue.n = 0;
        self.queue.bytes = 0;
        if !ok {
            return None;
        }
        self.stats.released_bytes_total += bytes;
        if by_policy {
            self.released_recently += bytes;
        }
        Some(bytes)
    }

    /// Checks the free-list invariants: every free span is in the list its length and state
    /// call for, its ends map to it, its interior maps to null, and no two free spans overlap.
    /// For tests; O(spans^2) over the first 1024 free spans.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut seen = [(0usize, 0usize); 1024];
        let mut n = 0;
        for len in 1..=MAX_LISTED + 1 {
            let long = len > MAX_LISTED;
            for (list, state) in [
                (
                    if long {
                        &self.long_free
                    } else {
                        &self.free[len]
                    },
                    SpanState::Free,
                ),
                (
                    if long {
                        &self.long_returned
                    } else {
                        &self.returned[len]
                    },
                    SpanState::Returned,
                ),
            ] {
                let mut x = list.first();
                while !x.is_null() {
                    // SAFETY: spans in our lists are valid records.
                    let sp = unsafe { &*x };
                    if sp.state != state
                        || (!long && sp.len.0 != len)
                        || (long && sp.len.0 <= MAX_LISTED)
                    {
                        return Err("a free span is in the wrong list");
                    }
                    if pagemap::span_of(sp.start) != x || pagemap::span_of(sp.last_page()) != x {
                        return Err("a free span's ends do not map to it");
                    }
                    for p in sp.start.0 + 1..sp.start.0 + sp.len.0 - 1 {
                        if !pagemap::span_of(PageId(p)).is_null() {
                            return Err("an interior page of a free span maps to a span");
                        }
                    }
                    let (a, b) = (sp.start.0, sp.start.0 + sp.len.0);
                    if seen[..n].iter().any(|&(c, d)| a < d && c < b) {
                        return Err("two free spans overlap");
                    }
                    if n < seen.len() {
                        seen[n] = (a, b);
                        n += 1;
                    }
                    x = sp.next;
                }
            }
        }
        Ok(())
    }

    /// The longest resident free span (any of the long list, else the longest listed length).
    fn longest_resident(&self) -> *mut Span {
        if !self.long_free.is_empty() {
            return self.long_free.first();
        }
        for word in (0..self.free_mask.len()).rev() {
            let bits = self.free_mask[word];
            if bits != 0 {
                let len = word * 64 + 63 - bits.leading_zeros() as usize;
                return self.free[len].first();
            }
        }
        ptr::null_mut()
    }

    /// A span of `n` pages whose start is a multiple of `align` bytes, for one large allocation
    /// of `requested` bytes.
    pub fn alloc_large(&mut self, n: Length, align: usize, requested: usize) -> *mut Span {
        let extra = if align > PAGE_SIZE {
            align / PAGE_SIZE - 1
        } else {
            0
        };
        let Some(total) = n.0.checked_add(extra) else {
            return ptr::null_mut();
        };
        let mut s = self.take(Length(total));
        if s.is_null() {
            return s;
        }
        // SAFETY: `s` is ours, out of every list; pieces we split off go back as free spans.
        unsafe {
            if extra > 0 {
                let addr = (*s).start_addr();
                let head = (addr.next_multiple_of(align) - addr) / PAGE_SIZE;
                if head > 0 {
                    let r = self.split(s, Length(head));
                    if r.is_null() {
                        self.merge_and_insert(s);
                        return ptr::null_mut();
                    }
                    self.merge_and_insert(s);
                    s = r;
                }
                if (*s).len > n {
                    let r = self.split(s, n);
                    if r.is_null() {
                        self.merge_and_insert(s);
                        return ptr::null_mut();
                    }
                    self.merge_and_insert(r);
                }
            }
            (*s).zeroed = (*s).state == SpanState::Returned;
            (*s).state = SpanState::Large;
            (*s).class = SizeClass::LARGE;
            pagemap::set_ends(s);
            (*s).allocated = requested;
            self.stats.large_pages += n.0;
            self.stats.large_spans += 1;
            self.stats.large_requested_bytes += requested;
            self.stats.large_allocs_total += 1;
            self.stats.large_bytes_total += requested;
        }
        self.note_active();
        s
    }

    /// A span for size class `class`, registered in the pagemap on every page.
    pub fn alloc_small_span(&mut self, class: SizeClass) -> *mut Span {
        let info = class.info();
        let n = Length(info.pages as usize);
        let s = self.take(n);
        if s.is_null() {
            return s;
        }
        // SAFETY: `s` is ours and out of every list.
        unsafe {
            (*s).zeroed = (*s).state == SpanState::Returned;
            (*s).state = SpanState::Small;
            (*s).class = class;
            (*s).allocated = 0;
            (*s).free_objects = ptr::null_mut();
            (*s).carve = (*s).start_addr();
            (*s).carve_end = (*s).carve + info.objects_per_span as usize * info.size as usize;
            pagemap::set_range((*s).start, n, s, class);
        }
        self.stats.small_span_pages += n.0;
        self.note_active();
        s
    }

    /// Returns an in-use span (small or large) to the free lists.
    ///
    /// # Safety
    /// `s` is a `Small` span with no objects out, or a `Large` span, and nothing uses its pages.
    pub unsafe fn dealloc(&mut self, s: *mut Span) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let (start, len) = ((*s).start, (*s).len);
            if (*s).state == SpanState::Small {
                pagemap::set_range(start, len, ptr::null_mut(), SizeClass::LARGE);
                self.stats.small_span_pages -= len.0;
            } else {
                debug_assert_eq!((*s).state, SpanState::Large);
                pagemap::set(start, ptr::null_mut(), SizeClass::LARGE);
                pagemap::set((*s).last_page(), ptr::null_mut(), SizeClass::LARGE);
                self.stats.large_pages -= len.0;
                self.stats.large_spans -= 1;
                self.stats.large_requested_bytes -= (*s).allocated;
                self.stats.large_frees_total += 1;
            }
            (*s).state = SpanState::Free;
            (*s).free_objects = ptr::null_mut();
            (*s).allocated = 0;
            self.free_run(s);
        }
        self.note_active();
    }

    /// Shrinks large span `s` to `n` pages in place, freeing the tail.
    ///
    /// # Safety
    /// `s` is a valid `Large` span and `1 <= n <= s.len`.
    pub unsafe fn shrink_large(&mut self, s: *mut Span, n: Length) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            if n >= (*s).len {
                return;
            }
            let old_last = (*s).last_page();
            let r = self.split(s, n);
            if r.is_null() {
                return;
            }
            pagemap::set(old_last, ptr::null_mut(), SizeClass::LARGE);
            pagemap::set((*s).last_page(), s, SizeClass::LARGE);
            self.stats.large_pages -= (*r).len.0;
            (*r).state = SpanState::Free;
            self.free_run(r);
        }
        self.note_active();
    }

    /// Grows large span `s` to `n` pages in place if the pages after it are free.
    ///
    /// # Safety
    /// `s` is a valid `Large` span and `n > s.len`.
    pub unsafe fn grow_large(&mut self, s: *mut Span, n: Length) -> bool {
        // SAFETY: guaranteed by the caller; `next` comes from the pagemap under our lock.
        unsafe {
            let extra = Length(n.0 - (*s).len.0);
            let next = pagemap::span_of((*s).start.offset((*s).len));
            if next.is_null() || !(*next).in_list || !(*next).is_free() || (*next).len < extra {
                return false;
            }
            self.remove_free(next);
            if (*next).len > extra {
                let r = self.split(next, extra);
                if r.is_null() {
                    self.merge_and_insert(next);
                    return false;
                }
                self.merge_and_insert(r);
            }
            pagemap::set((*next).start, ptr::null_mut(), SizeClass::LARGE);
            pagemap::set((*s).last_page(), ptr::null_mut(), SizeClass::LARGE);
            (*s).len = n;
            pagemap::set_ends(s);
            self.stats.large_pages += extra.0;
            self.free_record(next);
        }
        true
    }

    /// Records that large span `s` now holds a block of `requested` bytes (after a resize).
    ///
    /// # Safety
    /// `s` is a valid `Large` span.
    pub unsafe fn set_large_requested(&mut self, s: *mut Span, requested: usize) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            self.stats.large_requested_bytes -= (*s).allocated;
            self.stats.large_requested_bytes += requested;
            if requested > (*s).allocated {
                self.stats.large_bytes_total += requested - (*s).allocated;
            }
            (*s).allocated = requested;
        }
        self.note_active();
    }

    /// Counts free runs by length into `hist` (index = pages for runs up to `MAX_LISTED`, then
    /// one bucket per power of two above it: index `MAX_LISTED + k` holds runs of
    /// `(MAX_LISTED << (k-1), MAX_LISTED << k]` pages). Returns the longest free run in pages.
    pub fn free_runs(&self, resident: &mut [usize], released: &mut [usize]) -> usize {
        let mut longest = 0;
        for len in 1..=MAX_LISTED {
            if len < resident.len() {
                resident[len] = self.free[len].len();
                released[len] = self.returned[len].len();
            }
            if !self.free[len].is_empty() || !self.returned[len].is_empty() {
                longest = len;
            }
        }
        // Runs queued for release are still resident.
        for &s in &self.queue.spans[..self.queue.n] {
            // SAFETY: queued spans are valid records.
            let len = unsafe { (*s).len.0 };
            longest = longest.max(len);
            resident[run_bucket(len, resident.len())] += 1;
        }
        for (list, hist) in [
            (&self.long_free, &mut *resident),
            (&self.long_returned, &mut *released),
        ] {
            let mut s = list.first();
            while !s.is_null() {
                // SAFETY: spans in our lists are valid.
                let len = unsafe { (*s).len.0 };
                longest = longest.max(len);
                hist[run_bucket(len, hist.len())] += 1;
                // SAFETY: as above.
                s = unsafe { (*s).next };
            }
        }
        longest
    }

    /// Releases every resident free span to the OS (the queued ones first). Returns the bytes
    /// released; stops at the first release the kernel refuses.
    pub fn release_all(&mut self) -> usize {
        let Some(queued) = self.release_queue(true) else {
            return 0;
        };
        match self.queue_longest(0, false) {
            Ok(b) => queued + b + self.release_queue(false).unwrap_or(0),
            Err(b) => queued + b,
        }
    }
}

/// The bucket of `free_runs`' histograms (of `buckets` entries, at least one) for a run of
/// `len` pages.
fn run_bucket(len: usize, buckets: usize) -> usize {
    let i = if len <= MAX_LISTED {
        len
    } else {
        MAX_LISTED + (usize::BITS - ((len - 1) / MAX_LISTED).leading_zeros()) as usize
    };
    i.min(buckets - 1)
}

/// Resident free spans out of the free lists, to be released together.
struct ReleaseBatch {
    spans: [*mut Span; RELEASE_BATCH],
    ranges: [libc::iovec; RELEASE_BATCH],
    n: usize,
    /// Bytes in the batch.
    bytes: usize,
}

impl ReleaseBatch {
    const fn new() -> Self {
        ReleaseBatch {
            spans: [ptr::null_mut(); RELEASE_BATCH],
            ranges: [libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0,
            }; RELEASE_BATCH],
            n: 0,
            bytes: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.n == RELEASE_BATCH
    }

    /// # Safety
    /// `s` is a valid `Free` span in no list; the batch is not full.
    unsafe fn push(&mut self, s: *mut Span) {
        // SAFETY: guaranteed by the caller.
        let (addr, bytes) = unsafe { ((*s).start_addr(), (*s).len.bytes()) };
        self.spans[self.n] = s;
        self.ranges[self.n] = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: bytes,
        };
        self.n += 1;
        self.bytes += bytes;
    }
}

/// Locks the page heap.
#[inline]
pub fn lock() -> crate::sync::SpinGuard<'static, PageHeap, true> {
    PAGE_HEAP.lock()
}
