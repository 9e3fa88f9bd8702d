//! Misuse detection: frees of pointers that do not start a live block, double frees, and the
//! checking mode (`OXMALLOC_CHECK=1`) that also catches writes to freed objects.
//!
//! Always on (the C API; Rust's `dealloc` is given sizes by the compiler and is not checked):
//! - A small object freed must be an object start. The pagemap entry of its page carries the
//!   page's phase in the span, and [`ClassInfo::is_multiple`] tests the offset without a
//!   division.
//! - A freed small object carries [`FREE_TAG`] in its second word (C objects are at least 16
//!   bytes). A free that finds the tag already there looks for the object on this thread's
//!   cache list and on its span's free list, and reports a double free when it is there; the
//!   C API clears the tag when it hands an object out.
//! - A large block freed must start a live large span; otherwise [`bad_pointer`] tells an
//!   interior pointer or memory that is already free from a foreign pointer.
//!
//! Checking mode (read once at global set-up, before any object is freed):
//! - Thread caches stay off, so every small object goes back to its span's free list under
//!   the class lock and every check below sees every object.
//! - Links on span free lists are stored encoded with the link's own address and a secret key,
//!   and decoded links must name an object start of the same span (or be null).
//! - Every free of a small object checks the tag and confirms it on the span's list: a double
//!   free is caught for every object that is still free (8-byte objects, with no room for a
//!   tag, are always looked up).
//! - A freed object is filled with [`FREE_FILL`] after its tag; when it is handed out again the
//!   tag and the fill are checked, so a write after free is reported at the next reuse.
//!
//! Invariants:
//! - [`FREE_TAG`] is odd, so it never equals an aligned pointer a program stores; it and the
//!   link key are set in [`init`] before the first object is freed and never change after.
//! - Every report names the address and the problem on one line, then aborts: going on would
//!   corrupt the heap. Reports format into stack buffers and allocate nothing.

use crate::hooks::StackBuf;
use crate::page_heap;
use crate::pagemap;
use crate::size_class::SizeClass;
use crate::span::{FreeObject, Span, SpanState};
use crate::types::{PageId, PAGE_SIZE};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The word a freed small object holds at offset 8 (odd: never an aligned pointer).
pub static FREE_TAG: AtomicUsize = AtomicUsize::new(0x6f78_6d61_6c6c_6f63 | 1);
static LINK_KEY: AtomicUsize = AtomicUsize::new(0x9e37_79b9_7f4a_7c15);
/// Whether the checking mode is on.
pub static CHECKING: AtomicBool = AtomicBool::new(false);
/// The byte freed objects are filled with in checking mode (after their first 16 bytes).
pub const FREE_FILL: u8 = 0xdf;
/// Pages a search for the span around a bad pointer walks back before giving up.
const MAX_BACK_PAGES: usize = 1 << 20;

/// Draws the secret keys. Called once from global set-up, before any object is freed.
pub fn init() {
    let mut keys = [0usize; 2];
    // SAFETY: the buffer is valid for its size; getrandom writes at most that many bytes.
    let n = unsafe {
        libc::getrandom(
            keys.as_mut_ptr() as *mut libc::c_void,
            core::mem::size_of_val(&keys),
            libc::GRND_NONBLOCK,
        )
    };
    if n != core::mem::size_of_val(&keys) as isize {
        // No entropy yet (very early boot): mix what differs between processes.
        let here = &keys as *const _ as usize;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as usize;
        keys = [
            mix(here ^ pid.rotate_left(32)),
            mix(here.rotate_left(17) ^ pid),
        ];
    }
    FREE_TAG.store(keys[0] | 1, Ordering::Relaxed);
    LINK_KEY.store(keys[1], Ordering::Relaxed);
}

fn mix(mut x: usize) -> usize {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Whether the checking mode is on.
#[inline(always)]
pub fn checking() -> bool {
    CHECKING.load(Ordering::Relaxed)
}

/// The word stored at `at` to link it to `next` (encoded in checking mode).
#[inline(always)]
pub fn encode(next: *mut FreeObject, at: *mut FreeObject) -> *mut FreeObject {
    if !checking() {
        return next;
    }
    ((next as usize) ^ (at as usize).rotate_left(24) ^ LINK_KEY.load(Ordering::Relaxed))
        as *mut FreeObject
}

/// The inverse of [`encode`].
#[inline(always)]
pub fn decode(word: *mut FreeObject, at: *mut FreeObject) -> *mut FreeObject {
    encode(word, at)
}

/// The tag word of object `p` (its second word).
///
/// # Safety
/// `p` is an object of at least 16 bytes.
#[inline(always)]
pub unsafe fn tag_slot(p: *mut u8) -> *mut usize {
    // SAFETY: the object has at least two words.
    unsafe { (p as *mut usize).add(1) }
}

/// Whether `o` may be on span `s`'s free list: an object start inside the carved part.
///
/// # Safety
/// `s` is a valid small span of `class`.
pub unsafe fn link_target_ok(s: *mut Span, class: SizeClass, o: *mut FreeObject) -> bool {
    let a = o as usize;
    // SAFETY: guaranteed by the caller.
    let (start, carve) = unsafe { ((*s).start_addr(), (*s).carve) };
    a >= start && a < carve && class.info().is_multiple(a - start)
}

/// Checks in full a `free` or `realloc` (`func`) of small-object pointer `p`: reports and
/// aborts if it is not an object start or is already free; returns if it is a live object
/// start (its data may merely have looked like the tag). Called by `free` when its fast checks
/// failed, and by every `realloc`.
///
/// # Safety
/// The pagemap placed `p` in a small span of `class`; `phase` is from [`pagemap::object_phase`].
#[inline(never)]
pub unsafe fn check_small_free(func: &str, p: *mut u8, class: SizeClass, phase: usize) {
    let size = class.size();
    let into = phase % size;
    if into != 0 {
        interior(func, p, into, size, "object");
    }
    // SAFETY: C objects are at least 16 bytes (checked: class 8 is never handed out by the C
    // API, and the tag is only read for larger classes).
    unsafe {
        if size >= 16
            && *tag_slot(p) == FREE_TAG.load(Ordering::Relaxed)
            && (crate::thread_cache::cache_holds(p, class)
                || crate::central_free_list::span_holds(p, class))
        {
            double_free(func, p, size);
        }
    }
}

/// Reports a pointer `into` bytes past the start of a `size`-byte block and aborts.
#[cold]
pub fn interior(func: &str, p: *mut u8, into: usize, size: usize, what: &str) -> ! {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: {func}({p:p}): interior pointer, {into} bytes into the {size}-byte {what} at {:p}; aborting",
        p.wrapping_sub(into)
    );
    die(&b)
}

/// Reports a double free of a small object and aborts.
#[cold]
pub fn double_free(func: &str, p: *mut u8, size: usize) -> ! {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: {func}({p:p}): double free: the {size}-byte object is already free; aborting"
    );
    die(&b)
}

/// Reports a write to a free object found when it was about to be reused, and aborts.
#[cold]
pub fn modified_after_free(p: *mut u8, size: usize, at: usize, byte: u8) -> ! {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: use after free: the {size}-byte object at {p:p} was written after it was freed (byte {at} is 0x{byte:02x}), found when reusing it; aborting"
    );
    die(&b)
}

/// Reports a corrupt free-list link (overwritten after free) and aborts.
#[cold]
pub fn corrupt_link(p: *mut FreeObject, size: usize) -> ! {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: use after free: the free list of {size}-byte objects is corrupt at {p:p} (its link was overwritten after free); aborting"
    );
    die(&b)
}

/// Reports a small free the span's own bookkeeping refuses (checking mode) and aborts.
#[cold]
pub fn not_an_object(func: &str, p: *mut u8, size: usize) -> ! {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: {func}({p:p}): not a {size}-byte object oxmalloc handed out; aborting"
    );
    die(&b)
}

fn die<const N: usize>(b: &StackBuf<N>) -> ! {
    crate::os::write_stderr(b.as_bytes());
    // SAFETY: abort has no preconditions; going on would corrupt the heap.
    unsafe { libc::abort() }
}

/// `p`, given to `func`, is not a live small object start nor the start of a live large block.
/// If it lies in memory oxmalloc manages, reports what it is (an interior pointer, or memory
/// already freed) and aborts; if oxmalloc never handed it out, returns so that the caller can
/// report a foreign pointer (or refuse it).
///
/// # Safety
/// No other thread frees `p` at the same time (reading the tag of a small object start is
/// then sound: the pagemap says the memory is a live small span of oxmalloc's).
#[cold]
#[inline(never)]
pub unsafe fn bad_pointer(func: &str, p: *mut u8) {
    let entry = pagemap::entry_of(p as usize);
    let class = pagemap::entry_class(entry);
    if !class.is_large() {
        // SAFETY: the pagemap places `p` in a small span of `class`.
        unsafe { check_small_free(func, p, class, pagemap::object_phase(p as usize, entry)) };
        return;
    }
    let page = PageId::containing(p as usize);
    let heap = page_heap::lock();
    let mut q = page.0;
    let s = loop {
        if !pagemap::covers(PageId(q)) {
            return;
        }
        let s = pagemap::span_of(PageId(q));
        if !s.is_null() {
            break s;
        }
        if q == 0 || page.0 - q >= MAX_BACK_PAGES {
            return;
        }
        q -= 1;
    };
    // SAFETY: pagemap entries point at valid span records; the page heap lock keeps large and
    // free spans from changing.
    let (start, len, state, requested) =
        unsafe { ((*s).start_addr(), (*s).len.0, (*s).state, (*s).allocated) };
    drop(heap);
    let a = p as usize;
    if a < start || a >= start + len * PAGE_SIZE {
        return;
    }
    let mut b = StackBuf::<256>::new();
    match state {
        SpanState::Large if a != start => interior(func, p, a - start, requested.max(1), "block"),
        SpanState::Free | SpanState::Returned if a == start => {
            let _ = writeln!(
                b,
                "oxmalloc: {func}({p:p}): double free: the block at this address is already free; aborting"
            );
        }
        SpanState::Free | SpanState::Returned => {
            let _ = writeln!(
                b,
                "oxmalloc: {func}({p:p}): pointer into memory that is already free (double free or stale pointer); aborting"
            );
        }
        // A live large start or a small span: the caller raced with another thread; let it
        // report what it saw.
        _ => return,
    }
    die(&b)
}
