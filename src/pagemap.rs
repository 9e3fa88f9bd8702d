//! The pagemap: a two-level radix tree from page number to span (and size class).
//!
//! Invariants:
//! - Reads are lock-free (acquire loads); writes happen only under the page heap lock.
//! - A leaf, once installed, is never removed, so a reader holding a leaf pointer stays valid.
//! - For a `Small` span every page maps to the span and carries an entry `class | phase << 8`,
//!   where `phase` is the page's distance from the span start modulo the class size, so that
//!   `(addr % PAGE_SIZE + phase) % class_size` is the offset of `addr` into its object (zero
//!   exactly for object starts). For `Large` and free spans the first and last pages map to the
//!   span with entry 0; other pages map to null.
//! - Addresses outside the 47-bit user range, or in a region oxmalloc never mapped, map to null:
//!   that is how `free` recognises a pointer it never handed out.
//!
//! Leaves cover 2^15 pages (256 MiB) and come straight from the OS layer; the root is a static
//! array of 2^19 pointers (4 MiB of zero-filled .bss, touched only where used).

use crate::os;
use crate::size_class::SizeClass;
use crate::span::Span;
use crate::types::{Length, PageId, PAGE_SHIFT, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};

const ADDRESS_BITS: usize = 47;
const LEAF_BITS: usize = 15;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_BITS: usize = ADDRESS_BITS - PAGE_SHIFT - LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

struct Leaf {
    spans: [AtomicPtr<Span>; LEAF_LEN],
    /// `class | phase << 8` (see the module invariants).
    entries: [AtomicU32; LEAF_LEN],
}

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_LEN];
static LEAF_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Bytes of memory mapped for pagemap leaves.
pub fn metadata_bytes() -> usize {
    LEAF_BYTES.load(Ordering::Relaxed)
}

#[inline(always)]
fn leaf(page: PageId) -> *mut Leaf {
    let i = page.0 >> LEAF_BITS;
    if i >= ROOT_LEN {
        return ptr::null_mut();
    }
    // SAFETY: i < ROOT_LEN was just checked.
    unsafe { ROOT.get_unchecked(i) }.load(Ordering::Acquire)
}

/// The span covering `page`, or null.
#[inline(always)]
pub fn span_of(page: PageId) -> *mut Span {
    let l = leaf(page);
    if l.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: installed leaves are never freed; the index is masked into range.
    unsafe { (*l).spans.get_unchecked(page.0 & (LEAF_LEN - 1)) }.load(Ordering::Acquire)
}

/// Whether the pagemap has a leaf for `page` (oxmalloc has managed memory near it).
pub fn covers(page: PageId) -> bool {
    !leaf(page).is_null()
}

/// The size class of the small object containing `addr`, or `SizeClass::LARGE` when the
/// address is not in a small span (large, free, or not ours).
#[inline(always)]
pub fn class_of(addr: usize) -> SizeClass {
    entry_class(entry_of(addr))
}

/// The raw entry for the page of `addr`: `class | phase << 8` for small spans, else 0.
#[inline(always)]
pub fn entry_of(addr: usize) -> u32 {
    let page = PageId::containing(addr);
    let l = leaf(page);
    if l.is_null() {
        return 0;
    }
    // SAFETY: installed leaves are never freed; the index is masked into range.
    unsafe { (*l).entries.get_unchecked(page.0 & (LEAF_LEN - 1)) }.load(Ordering::Relaxed)
}

/// The class an entry from [`entry_of`] names.
#[inline(always)]
pub fn entry_class(entry: u32) -> SizeClass {
    SizeClass(entry as u8)
}

/// For `addr` in a small span with entry `entry`: a number congruent to `addr`'s offset into
/// its object modulo the class size (zero modulo the size exactly at object starts).
#[inline(always)]
pub fn object_phase(addr: usize, entry: u32) -> usize {
    (addr & (PAGE_SIZE - 1)) + (entry >> 8) as usize
}

/// Makes sure leaves exist for every page of `[start, start + len)`. Page heap lock held.
pub fn ensure(start: PageId, len: Length) -> bool {
    let first = start.0 >> LEAF_BITS;
    let last = (start.0 + len.0 - 1) >> LEAF_BITS;
    if last >= ROOT_LEN {
        return false;
    }
    for slot in &ROOT[first..=last] {
        if slot.load(Ordering::Relaxed).is_null() {
            let bytes = core::mem::size_of::<Leaf>().next_multiple_of(4096);
            let Some(mem) = os::map(bytes) else {
                return false;
            };
            LEAF_BYTES.fetch_add(bytes, Ordering::Relaxed);
            // Fresh anonymous memory is zero: all spans null, all classes 0.
            slot.store(mem as *mut Leaf, Ordering::Release);
        }
    }
    true
}

/// Sets the entry for one page. Page heap lock held; the leaf exists (see [`ensure`]).
#[inline]
pub fn set(page: PageId, span: *mut Span, class: SizeClass) {
    set_entry(page, span, class.0 as u32);
}

#[inline]
fn set_entry(page: PageId, span: *mut Span, entry: u32) {
    let l = leaf(page);
    debug_assert!(!l.is_null());
    let i = page.0 & (LEAF_LEN - 1);
    // SAFETY: `ensure` installed the leaf for every page the page heap manages.
    unsafe {
        (*l).entries[i].store(entry, Ordering::Relaxed);
        (*l).spans[i].store(span, Ordering::Release);
    }
}

/// Maps the first and last pages of `s` to it (large and free spans).
///
/// # Safety
/// `s` is a valid span record; page heap lock held.
pub unsafe fn set_ends(s: *mut Span) {
    // SAFETY: guaranteed by the caller.
    let (start, last) = unsafe { ((*s).start, (*s).last_page()) };
    set(start, s, SizeClass::LARGE);
    set(last, s, SizeClass::LARGE);
}

/// Maps every page of `s` to it with `class` (small spans), or clears them (null span).
pub fn set_range(start: PageId, len: Length, s: *mut Span, class: SizeClass) {
    let size = if class.is_large() { 0 } else { class.size() };
    for i in 0..len.0 {
        let phase = if size == 0 { 0 } else { i * PAGE_SIZE % size };
        set_entry(PageId(start.0 + i), s, class.0 as u32 | (phase as u32) << 8);
    }
}
