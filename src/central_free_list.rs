//! Central free lists: one per size class, holding the spans that have free objects.
//!
//! Invariants (under the class's lock):
//! - The buckets hold exactly the class's spans that have at least one free or uncarved object,
//!   and bit `b` of `mask` is set exactly when bucket `b` is non-empty. A span sits in bucket
//!   `span.bucket`, which is at least its fullness bucket `allocated * BUCKETS /
//!   objects_per_span`: frees leave a span where it is (moving it on every free cost two more
//!   cache misses, its list neighbours, while a heap drains), so the recorded bucket can only be
//!   too high. Allocation looks at the first span of the highest bucket, moves it down when it
//!   is too high, and takes from it once it is not: that span is then among the fullest, since
//!   every other span's fullness is at most its bucket. Nearly empty spans get the chance to
//!   empty and leave.
//! - A span with every object out is in no bucket. A span with no object out goes back to the
//!   page heap at once, except that each class with spans of at most `MAX_KEPT_PAGES` pages
//!   keeps at most one such span (`empty_kept`), unless the page heap is shrinking, so
//!   that a program cycling around a span boundary does not bounce it through the page heap.
//! - `free_objects` = free + uncarved objects over the class's spans; `spans` counts them.
//! - Objects move out and in as null-terminated chains linked through their first word.
//! - Lock order: a central list lock may be held while taking the page heap lock, never the
//!   reverse.

use crate::check;
use crate::page_heap;
use crate::pagemap;
use crate::size_class::{ClassInfo, SizeClass, NUM_CLASSES};
use crate::span::{FreeObject, Span, SpanList, SpanState};
use crate::sync::SpinLock;
use crate::types::PageId;
use core::ptr;
use core::sync::atomic::Ordering;
use crossbeam_utils::CachePadded;

/// Fullness buckets per class.
const BUCKETS: usize = 8;
/// Classes whose spans have at most this many pages (those of objects up to 4 KiB, whose
/// spans are the 32 KiB minimum) keep one wholly free span; bigger spans go straight back to
/// the page heap, where any class can reuse them (a program that grows buffers through every
/// class would otherwise pin one span per class: 20 MiB over the biggest classes; the kept
/// spans of the classes up to 4 KiB total 1.5 MiB at most).
const MAX_KEPT_PAGES: u32 = 4;

pub struct CentralFreeList {
    buckets: [SpanList; BUCKETS],
    mask: u8,
    /// Wholly free spans kept in bucket 0 (0 or 1).
    empty_kept: usize,
    pub free_objects: usize,
    pub spans: usize,
}

// SAFETY: the raw span pointers are only used under the list's lock.
unsafe impl Send for CentralFreeList {}

pub static CENTRAL: [CachePadded<SpinLock<CentralFreeList>>; NUM_CLASSES] = [const {
    CachePadded::new(SpinLock::new(CentralFreeList {
        buckets: [const { SpanList::new() }; BUCKETS],
        mask: 0,
        empty_kept: 0,
        free_objects: 0,
        spans: 0,
    }))
}; NUM_CLASSES];

/// A chain of free objects: `head` .. `tail` linked through `next`, `tail.next` null.
#[derive(Clone, Copy)]
pub struct Chain {
    pub head: *mut FreeObject,
    pub tail: *mut FreeObject,
    pub count: usize,
}

impl Chain {
    pub const EMPTY: Chain = Chain {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
        count: 0,
    };
}

impl CentralFreeList {
    /// Links `s` into the bucket its fullness calls for.
    ///
    /// # Safety
    /// `s` is a valid small span of this list's class, in no list, with a free object.
    unsafe fn link(&mut self, s: *mut Span, info: &ClassInfo) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let b = bucket_of((*s).allocated, info);
            (*s).bucket = b as u8;
            self.buckets[b].push_front(s);
            self.mask |= 1 << b;
        }
    }

    /// # Safety
    /// `s` is linked into this list.
    unsafe fn unlink(&mut self, s: *mut Span) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let b = (*s).bucket as usize;
            self.buckets[b].remove(s);
            if self.buckets[b].is_empty() {
                self.mask &= !(1 << b);
            }
        }
    }

    /// Moves `s` to the bucket for its current fullness, if that changed.
    ///
    /// # Safety
    /// `s` is linked into this list.
    unsafe fn rebucket(&mut self, s: *mut Span, info: &ClassInfo) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let b = bucket_of((*s).allocated, info);
            if b != (*s).bucket as usize {
                self.unlink(s);
                self.link(s, info);
            }
        }
    }

    /// The fullest span with a free object, or null. Spans found above their fullness on the
    /// way are moved down to it.
    fn fullest(&mut self, info: &ClassInfo) -> *mut Span {
        while self.mask != 0 {
            let b = 7 - self.mask.leading_zeros() as usize;
            let s = self.buckets[b].first();
            // SAFETY: spans in our buckets are valid and owned by this list (lock held).
            unsafe {
                if bucket_of((*s).allocated, info) == b {
                    return s;
                }
                self.rebucket(s, info);
            }
        }
        core::ptr::null_mut()
    }
}

/// Takes up to `n` objects of `class`, carving new spans from the page heap as needed.
/// Returns fewer (possibly none) only when the page heap cannot supply memory.
pub fn remove_range(class: SizeClass, n: usize) -> Chain {
    let mut list = CENTRAL[class.index()].lock();
    let mut chain = Chain::EMPTY;
    let info = class.info();
    let size = info.size as usize;
    let checking = check::checking();
    while chain.count < n {
        let mut s = list.fullest(info);
        if s.is_null() {
            s = page_heap::lock().alloc_small_span(class);
            if s.is_null() {
                break;
            }
            list.spans += 1;
            list.free_objects += info.objects_per_span as usize;
            // SAFETY: a fresh span, in no list, all objects free.
            unsafe { list.link(s, info) };
        }
        // SAFETY: `s` is a valid small span of this class, owned by this list (lock held).
        unsafe {
            if (*s).allocated == 0 && list.empty_kept > 0 && (*s).carve > (*s).start_addr() {
                list.empty_kept -= 1;
            }
            while chain.count < n {
                let obj = if !(*s).free_objects.is_null() {
                    let o = (*s).free_objects;
                    if checking {
                        let next = check::decode((*o).next, o);
                        checked_reuse(s, class, o, next);
                        (*s).free_objects = next;
                    } else {
                        (*s).free_objects = (*o).next;
                    }
                    o
                } else if (*s).carve < (*s).carve_end {
                    let o = (*s).carve as *mut FreeObject;
                    (*s).carve += size;
                    o
                } else {
                    break;
                };
                (*obj).next = chain.head;
                if chain.head.is_null() {
                    chain.tail = obj;
                }
                chain.head = obj;
                chain.count += 1;
                (*s).allocated += 1;
            }
            if (*s).free_objects.is_null() && (*s).carve >= (*s).carve_end {
                list.unlink(s);
            } else {
                list.rebucket(s, info);
            }
        }
    }
    list.free_objects -= chain.count;
    chain
}

/// Returns `count` objects of `class` linked from `head`. Spans whose objects are all back
/// return to the page heap.
///
/// # Safety
/// The chain holds exactly `count` distinct objects of `class` that the program no longer uses.
pub unsafe fn insert_range(class: SizeClass, head: *mut FreeObject, count: usize) {
    let mut list = CENTRAL[class.index()].lock();
    let info = class.info();
    let checking = check::checking();
    let mut obj = head;
    // Objects freed in random order belong to spans all over the heap: the pagemap entry and
    // the span record of each are cache misses. Looking up a chunk's spans first lets those
    // misses overlap (the lookups do not depend on each other), and prefetching the records
    // lets theirs overlap too, before the dependent updates below.
    const CHUNK: usize = 16;
    let mut spans = [ptr::null_mut::<Span>(); CHUNK];
    let mut left = count;
    while left > 0 {
        let n = left.min(CHUNK);
        let mut o = obj;
        for slot in spans.iter_mut().take(n) {
            let s = pagemap::span_of(PageId::containing(o as usize));
            prefetch_write(s as *const u8);
            *slot = s;
            // SAFETY: the chain holds `count` valid objects (caller's contract).
            o = unsafe { (*o).next };
        }
        left -= n;
        for &s in spans.iter().take(n) {
            // SAFETY: each object is one of ours of this class (caller's contract), so the
            // pagemap maps its page to its live small span, which this list owns.
            unsafe {
                let next = (*obj).next;
                insert_one(&mut list, class, info, checking, s, obj);
                obj = next;
            }
        }
    }
}

/// Hints the CPU to bring the line at `p` in for writing (no effect on correctness).
#[inline(always)]
fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching any address is allowed, it cannot fault.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Links `obj` into its span `s`. A span that was full joins a bucket; one that becomes
/// wholly free is placed at once (it may go back to the page heap); any other stays in its
/// bucket (see the module's invariants).
///
/// # Safety
/// The list's lock is held; `obj` is a free object of this class in small span `s`.
#[inline(always)]
unsafe fn insert_one(
    list: &mut CentralFreeList,
    class: SizeClass,
    info: &ClassInfo,
    checking: bool,
    s: *mut Span,
    obj: *mut FreeObject,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        if checking {
            checked_free(s, class, obj);
            (*obj).next = check::encode((*s).free_objects, obj);
        } else {
            debug_assert!(!s.is_null() && (*s).state == SpanState::Small && (*s).class == class);
            (*obj).next = (*s).free_objects;
        }
        (*s).free_objects = obj;
        (*s).allocated -= 1;
        list.free_objects += 1;
        if (*s).allocated == 0 || !(*s).in_list {
            list.place(s, info);
        }
    }
}

/// The fullness bucket for a span with `allocated` objects out (a multiply and a shift).
#[inline]
fn bucket_of(allocated: usize, info: &ClassInfo) -> usize {
    let b = ((allocated * BUCKETS) as u64 * info.bucket_magic) >> 32;
    (b as usize).min(BUCKETS - 1)
}

impl CentralFreeList {
    /// Puts span `s`, which just got objects back and is wholly free or in no bucket, where its
    /// fullness calls for: a bucket, the kept empty slot, or (wholly free) the page heap.
    ///
    /// # Safety
    /// The list's lock is held; `s` is a valid small span of the list's class with at least
    /// one free object.
    unsafe fn place(&mut self, s: *mut Span, info: &ClassInfo) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let keep = self.empty_kept == 0
                && info.pages <= MAX_KEPT_PAGES
                && !page_heap::SHRINKING.load(Ordering::Relaxed);
            if (*s).allocated == 0 && !keep {
                if (*s).in_list {
                    self.unlink(s);
                }
                self.spans -= 1;
                self.free_objects -= info.objects_per_span as usize;
                page_heap::lock().dealloc(s);
                return;
            }
            if (*s).allocated == 0 {
                self.empty_kept = 1;
            }
            if (*s).in_list {
                self.rebucket(s, info);
            } else {
                self.link(s, info);
            }
        }
    }
}

/// Checking mode: `obj`, about to go back on span `s` (from the pagemap), must be an object
/// of the span that is not free already. Then tags it and fills it (see [`crate::check`]).
///
/// # Safety
/// The class lock is held; `s` is null or a valid span record.
#[cold]
unsafe fn checked_free(s: *mut Span, class: SizeClass, obj: *mut FreeObject) {
    let size = class.size();
    let p = obj as *mut u8;
    // SAFETY: `s` is checked before use; once `obj` is known to start an object of this
    // span, its `size` bytes are ours.
    unsafe {
        if s.is_null() || (*s).state != SpanState::Small || (*s).class != class {
            check::not_an_object("free", p, size);
        }
        if !check::link_target_ok(s, class, obj) {
            let into = (p as usize).wrapping_sub((*s).start_addr()) % size;
            if into != 0 {
                check::interior("free", p, into, size, "object");
            }
            check::not_an_object("free", p, size);
        }
        let tagged = size >= 16 && *check::tag_slot(p) == check::FREE_TAG.load(Ordering::Relaxed);
        if (tagged || size < 16) && span_list_holds(s, class, obj) {
            check::double_free("free", p, size);
        }
        if size >= 16 {
            *check::tag_slot(p) = check::FREE_TAG.load(Ordering::Relaxed);
            ptr::write_bytes(p.add(16), check::FREE_FILL, size - 16);
        }
    }
}

/// Checking mode: `obj` is leaving span `s`'s free list with decoded link `next`. The link
/// must be null or name an object of the span; the tag and fill must be intact.
///
/// # Safety
/// The class lock is held; `obj` is on `s`'s free list.
#[cold]
unsafe fn checked_reuse(
    s: *mut Span,
    class: SizeClass,
    obj: *mut FreeObject,
    next: *mut FreeObject,
) {
    let size = class.size();
    // SAFETY: `obj` is a free object of the span (guaranteed by the caller), `size` bytes.
    unsafe {
        if !next.is_null() && !check::link_target_ok(s, class, next) {
            check::corrupt_link(obj, size);
        }
        if size < 16 {
            return;
        }
        let p = obj as *mut u8;
        if *check::tag_slot(p) != check::FREE_TAG.load(Ordering::Relaxed) {
            let word = (*check::tag_slot(p)).to_ne_bytes();
            let key = check::FREE_TAG.load(Ordering::Relaxed).to_ne_bytes();
            let i = (0..8).find(|&i| word[i] != key[i]).unwrap_or(0);
            check::modified_after_free(p, size, 8 + i, word[i]);
        }
        let body = core::slice::from_raw_parts(p.add(16), size - 16);
        if let Some(i) = body.iter().position(|&b| b != check::FREE_FILL) {
            check::modified_after_free(p, size, 16 + i, body[i]);
        }
        *check::tag_slot(p) = 0;
    }
}

/// Whether `p`, which the pagemap placed in a small span of `class`, is on its span's free
/// list. Takes the class lock.
pub fn span_holds(p: *mut u8, class: SizeClass) -> bool {
    let _list = CENTRAL[class.index()].lock();
    let s = pagemap::span_of(PageId::containing(p as usize));
    // SAFETY: pagemap entries point at valid span records; the class lock keeps a small span
    // of this class from changing.
    unsafe {
        !s.is_null()
            && (*s).state == SpanState::Small
            && (*s).class == class
            && span_list_holds(s, class, p as *mut FreeObject)
    }
}

/// Whether `obj` is on span `s`'s free list (a bounded walk that stops at a bad link).
///
/// # Safety
/// The class lock is held; `s` is a valid small span of `class`.
unsafe fn span_list_holds(s: *mut Span, class: SizeClass, obj: *mut FreeObject) -> bool {
    // SAFETY: links are checked before they are followed.
    unsafe {
        let mut o = (*s).free_objects;
        for _ in 0..class.info().objects_per_span {
            if o.is_null() || !check::link_target_ok(s, class, o) {
                return false;
            }
            if o == obj {
                return true;
            }
            o = check::decode((*o).next, o);
        }
    }
    false
}

/// Returns the wholly free spans the lists keep (see `empty_kept`) to the page heap.
pub fn release_kept_spans() {
    for (c, l) in CENTRAL.iter().enumerate().skip(1) {
        let mut list = l.lock();
        if list.empty_kept == 0 {
            continue;
        }
        let per_span = SizeClass(c as u8).info().objects_per_span as usize;
        // The kept span has no object out, so it sits in bucket 0.
        let mut s = list.buckets[0].first();
        // SAFETY: spans in our buckets are valid and owned by this list (lock held).
        unsafe {
            while !s.is_null() {
                let next = (*s).next;
                if (*s).allocated == 0 {
                    list.unlink(s);
                    list.spans -= 1;
                    list.free_objects -= per_span;
                    list.empty_kept = 0;
                    page_heap::lock().dealloc(s);
                    break;
                }
                s = next;
            }
        }
    }
}

/// Takes every central list lock (before `fork`).
pub fn lock_all() {
    for l in CENTRAL.iter() {
        l.raw_lock();
    }
}

/// Releases the locks taken by [`lock_all`].
///
/// # Safety
/// Only after `lock_all`, on the thread that called it (or its forked child).
pub unsafe fn unlock_all() {
    for l in CENTRAL.iter() {
        // SAFETY: held since lock_all, per the caller's contract.
        unsafe { l.force_unlock() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::class_for_size;

    /// The spans of `chain`'s objects, in order of first appearance, with their objects.
    fn by_span(chain: Chain) -> Vec<(*mut Span, Vec<*mut FreeObject>)> {
        let mut out: Vec<(*mut Span, Vec<*mut FreeObject>)> = Vec::new();
        let mut o = chain.head;
        while !o.is_null() {
            let s = pagemap::span_of(PageId::containing(o as usize));
            match out.iter_mut().find(|(x, _)| *x == s) {
                Some((_, v)) => v.push(o),
                None => out.push((s, vec![o])),
            }
            // SAFETY: the chain links valid free objects.
            o = unsafe { (*o).next };
        }
        out
    }

    /// Returns `objs` (distinct objects of `class` out of the list) one at a time.
    fn give_back(class: SizeClass, objs: &[*mut FreeObject]) {
        for &o in objs {
            // SAFETY: each object came from remove_range of `class` and is not in use.
            unsafe {
                (*o).next = ptr::null_mut();
                insert_range(class, o, 1);
            }
        }
    }

    #[test]
    fn allocation_takes_from_the_fullest_span_though_frees_leave_spans_in_place() {
        // A class no other test of this binary allocates from.
        let class = class_for_size(3000);
        let per = class.info().objects_per_span as usize;
        assert!(per >= 8, "{per}");
        // Whole spans only: carve exactly four of them out of fresh memory.
        let chain = remove_range(class, 4 * per);
        assert_eq!(chain.count, 4 * per);
        let spans = by_span(chain);
        let full: Vec<_> = spans.iter().filter(|(_, v)| v.len() == per).collect();
        assert!(full.len() >= 3, "{} spans", spans.len());
        let (a, b, c) = (&full[0].1, &full[1].1, &full[2].1);
        // The fullest span gets its one object back first, so that later frees of emptier
        // spans leave it behind them in the top bucket.
        give_back(class, &c[..1]);
        give_back(class, &b[..per / 2]);
        give_back(class, &a[..per - 1]);
        let one = remove_range(class, 1);
        assert_eq!(one.count, 1);
        assert_eq!(
            by_span(one)[0].0,
            full[2].0,
            "not taken from the fullest span"
        );
        // That span is full again; the next fullest is the half-used one.
        let two = remove_range(class, 1);
        assert_eq!(
            by_span(two)[0].0,
            full[1].0,
            "not taken from the next fullest span"
        );
        give_back(class, &[one.head, two.head]);
        for (_, objs) in &spans {
            let left: Vec<_> = objs
                .iter()
                .copied()
                .filter(|o| !c[..1].contains(o) && !b[..per / 2].contains(o))
                .filter(|o| !a[..per - 1].contains(o))
                .collect();
            give_back(class, &left);
        }
    }
}
