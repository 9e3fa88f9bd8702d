//! Spans: runs of contiguous pages, the unit the page heap hands out, and intrusive lists of them.
//!
//! Invariants:
//! - A span's pages are `[start, start + len)`; `len >= 1`.
//! - `state` says who owns it: `Free`/`Returned` (page heap free lists; `Returned` pages are not
//!   resident and read as zero), `Small` (a central free list, carved into objects of `class`),
//!   `Large` (one allocation handed to the program).
//! - For a `Small` span: `allocated` objects are out; the rest are on `free_objects` or in the
//!   never-touched tail `[carve, carve_end)`. `allocated + free + uncarved == objects_per_span`.
//! - `next`/`prev` link the span into at most one [`SpanList`] at a time; `in_list` says whether.
//! - Span records come from the metadata arena (never the global allocator) and are recycled
//!   through the page heap's pool.

use crate::size_class::SizeClass;
use crate::types::{Length, PageId};
use core::ptr;

/// A free object: its first word links to the next free object.
#[repr(C)]
pub struct FreeObject {
    pub next: *mut FreeObject,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum SpanState {
    /// In a page heap free list; pages are resident (touched before).
    Free,
    /// In a page heap free list; pages were released to the OS (or never touched) and read as zero.
    Returned,
    /// Carved into small objects, owned by a central free list.
    Small,
    /// One large allocation in use by the program.
    Large,
}

#[repr(C)]
pub struct Span {
    pub start: PageId,
    pub len: Length,
    pub next: *mut Span,
    pub prev: *mut Span,
    pub free_objects: *mut FreeObject,
    pub carve: usize,
    pub carve_end: usize,
    /// Small: objects handed out. Large: bytes requested by the program.
    pub allocated: usize,
    pub class: SizeClass,
    pub state: SpanState,
    pub in_list: bool,
    /// Small spans: the central list's fullness bucket the span is linked into.
    pub bucket: u8,
    /// Large spans: whether the pages were all zero when handed out (used by realloc/calloc).
    pub zeroed: bool,
}

impl Span {
    pub const fn empty() -> Span {
        Span {
            start: PageId(0),
            len: Length(0),
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            free_objects: ptr::null_mut(),
            carve: 0,
            carve_end: 0,
            allocated: 0,
            class: SizeClass::LARGE,
            state: SpanState::Free,
            in_list: false,
            bucket: 0,
            zeroed: false,
        }
    }

    #[inline]
    pub fn start_addr(&self) -> usize {
        self.start.addr()
    }

    #[inline]
    pub fn end_addr(&self) -> usize {
        self.start.offset(self.len).addr()
    }

    #[inline]
    pub fn last_page(&self) -> PageId {
        PageId(self.start.0 + self.len.0 - 1)
    }

    #[inline]
    pub fn is_free(&self) -> bool {
        matches!(self.state, SpanState::Free | SpanState::Returned)
    }
}

/// An intrusive doubly linked list of spans (no sentinel, so it can live in a `static`).
pub struct SpanList {
    head: *mut Span,
    len: usize,
}

impl SpanList {
    pub const fn new() -> SpanList {
        SpanList {
            head: ptr::null_mut(),
            len: 0,
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn first(&self) -> *mut Span {
        self.head
    }

    /// # Safety
    /// `s` is a valid span not currently in any list.
    pub unsafe fn push_front(&mut self, s: *mut Span) {
        // SAFETY: the caller guarantees `s` is valid and unlinked; `head` is valid or null.
        unsafe {
            debug_assert!(!(*s).in_list);
            (*s).prev = ptr::null_mut();
            (*s).next = self.head;
            if !self.head.is_null() {
                (*self.head).prev = s;
            }
            (*s).in_list = true;
        }
        self.head = s;
        self.len += 1;
    }

    /// # Safety
    /// `s` is a valid span currently linked into this list.
    pub unsafe fn remove(&mut self, s: *mut Span) {
        // SAFETY: the caller guarantees `s` is in this list, so its neighbours are valid.
        unsafe {
            debug_assert!((*s).in_list);
            let (p, n) = ((*s).prev, (*s).next);
            if p.is_null() {
                self.head = n;
            } else {
                (*p).next = n;
            }
            if !n.is_null() {
                (*n).prev = p;
            }
            (*s).next = ptr::null_mut();
            (*s).prev = ptr::null_mut();
            (*s).in_list = false;
        }
        self.len -= 1;
    }
}

impl Default for SpanList {
    fn default() -> Self {
        Self::new()
    }
}
