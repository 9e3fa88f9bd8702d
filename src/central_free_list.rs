//! Central free lists: one per size class, holding the spans that have free objects.
//!
//! Invariants (under the class's lock):
//! - `nonempty` holds exactly the class's spans that have at least one free or uncarved object.
//!   A span with every object out is in no list. A span with no object out goes back to the
//!   page heap at once, except that each class keeps at most one such span (`empty_kept`) so
//!   that a program cycling around a span boundary does not bounce it through the page heap.
//! - `free_objects` = free + uncarved objects over the class's spans; `spans` counts them.
//! - Objects move out and in as null-terminated chains linked through their first word.
//! - Lock order: a central list lock may be held while taking the page heap lock, never the
//!   reverse.

use crate::page_heap;
use crate::pagemap;
use crate::size_class::{SizeClass, NUM_CLASSES};
use crate::span::{FreeObject, Span, SpanList, SpanState};
use crate::sync::SpinLock;
use crate::types::PageId;
use core::ptr;
use crossbeam_utils::CachePadded;

pub struct CentralFreeList {
    nonempty: SpanList,
    /// Wholly free spans kept in `nonempty` (0 or 1).
    empty_kept: usize,
    pub free_objects: usize,
    pub spans: usize,
}

// SAFETY: the raw span pointers are only used under the list's lock.
unsafe impl Send for CentralFreeList {}

pub static CENTRAL: [CachePadded<SpinLock<CentralFreeList>>; NUM_CLASSES] = [const {
    CachePadded::new(SpinLock::new(CentralFreeList {
        nonempty: SpanList::new(),
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

/// Takes up to `n` objects of `class`, carving new spans from the page heap as needed.
/// Returns fewer (possibly none) only when the page heap cannot supply memory.
pub fn remove_range(class: SizeClass, n: usize) -> Chain {
    let mut list = CENTRAL[class.index()].lock();
    let mut chain = Chain::EMPTY;
    let info = class.info();
    let size = info.size as usize;
    while chain.count < n {
        let mut s = list.nonempty.first();
        if s.is_null() {
            s = page_heap::lock().alloc_small_span(class);
            if s.is_null() {
                break;
            }
            list.spans += 1;
            list.free_objects += info.objects_per_span as usize;
            // SAFETY: a fresh span, in no list.
            unsafe { list.nonempty.push_front(s) };
        }
        // SAFETY: `s` is a valid small span of this class, owned by this list (lock held).
        unsafe {
            if (*s).allocated == 0 && list.empty_kept > 0 && (*s).carve > (*s).start_addr() {
                list.empty_kept -= 1;
            }
            while chain.count < n {
                let obj = if !(*s).free_objects.is_null() {
                    let o = (*s).free_objects;
                    (*s).free_objects = (*o).next;
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
                list.nonempty.remove(s);
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
    let per_span = class.info().objects_per_span as usize;
    let mut obj = head;
    for _ in 0..count {
        // SAFETY: each object is one of ours of this class (caller's contract), so the pagemap
        // maps its page to its live small span, which this list owns.
        unsafe {
            let next = (*obj).next;
            let s: *mut Span = pagemap::span_of(PageId::containing(obj as usize));
            debug_assert!(!s.is_null() && (*s).state == SpanState::Small && (*s).class == class);
            (*obj).next = (*s).free_objects;
            (*s).free_objects = obj;
            (*s).allocated -= 1;
            if (*s).allocated == 0 && list.empty_kept == 0 {
                if !(*s).in_list {
                    list.nonempty.push_front(s);
                }
                list.empty_kept = 1;
                list.free_objects += 1;
            } else if (*s).allocated == 0 {
                if (*s).in_list {
                    list.nonempty.remove(s);
                }
                list.spans -= 1;
                list.free_objects -= per_span - 1;
                page_heap::lock().dealloc(s);
            } else {
                if !(*s).in_list {
                    list.nonempty.push_front(s);
                }
                list.free_objects += 1;
            }
            obj = next;
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
