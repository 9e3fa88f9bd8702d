//! liboxmalloc.so: the C front of oxmalloc, a drop-in `malloc` for any Linux/glibc process.
//!
//! `LD_PRELOAD=liboxmalloc.so CMD` makes every `malloc` family call of CMD go to oxmalloc.
//!
//! Invariants:
//! - Every export follows glibc/POSIX semantics: `errno` is `ENOMEM` on failure, alignment
//!   arguments are checked as glibc checks them, element counts are overflow-checked, and
//!   `realloc(p, 0)` frees `p` and returns null (glibc's choice).
//! - No export allocates through the global allocator, panics or unwinds; a failure is a null
//!   return, and misuse (a free of memory oxmalloc never handed out) is a one-line report and
//!   `abort`, never a silently corrupted heap.
//! - Only the symbols below are exported (rustc's version script for cdylibs hides the rest).
//! - Whether this copy serves the process's `malloc` is decided once, by a constructor that asks
//!   the dynamic linker which `malloc` the process resolves. When it does not (the library was
//!   `dlopen`ed, e.g. by `ctypes.CDLL`), the exports still work on their own memory but refuse
//!   foreign pointers with a report instead of aborting the host process.

#![deny(clippy::undocumented_unsafe_blocks)]

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};
use oxmalloc_core::allocator;
use oxmalloc_core::check;
use oxmalloc_core::hooks::StackBuf;
use oxmalloc_core::os::{self, errno, set_errno};
use oxmalloc_core::size_class::{self, MAX_SMALL_SIZE};
use oxmalloc_core::{pagemap, thread_cache};

mod report;

/// Alignment asked of the core for a plain `malloc`. Every C block is at least `MIN_SIZE` (16)
/// bytes, and classes of 16 bytes and more are 16-aligned, so results are 16-aligned as with
/// glibc's MALLOC_ALIGNMENT.
const MIN_ALIGN: usize = 8;
/// Smallest block the C API hands out: every C object has room for the free tag in its
/// second word (see `oxmalloc_core::check`).
const MIN_SIZE: usize = 16;

/// True while this copy is the process's `malloc` (the normal, preloaded case).
static SERVING: AtomicBool = AtomicBool::new(true);

/// Decides once, at load time, whether this library is the process's `malloc`.
extern "C" fn detect_serving() {
    let name = c"malloc";
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other preconditions.
    let resolved = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    // The address of our own `malloc` may be bound through the GOT to whichever `malloc` the
    // process uses, so compare the objects the two addresses live in instead.
    let serving = !resolved.is_null()
        && object_base(resolved) == object_base(&SERVING as *const _ as *const c_void);
    SERVING.store(serving, Ordering::Relaxed);
    if serving {
        // Serving malloc means we were loaded at start-up, so our TLS block is static.
        oxmalloc_core::thread_cache::use_static_tls();
    }
    report::read_exit_settings();
}

extern "C" fn at_exit() {
    report::report_at_exit();
}

#[used]
#[link_section = ".fini_array"]
static REPORT_AT_EXIT: extern "C" fn() = at_exit;

/// Load base of the shared object containing `addr` (null if none).
fn object_base(addr: *const c_void) -> *mut c_void {
    // SAFETY: Dl_info is plain data; dladdr only writes it.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer; dladdr accepts any address.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 {
        return ptr::null_mut();
    }
    info.dli_fbase
}

#[used]
#[link_section = ".init_array"]
static DETECT_SERVING: extern "C" fn() = detect_serving;

/// Whether oxmalloc is serving this process's `malloc` (false when merely `dlopen`ed).
#[no_mangle]
pub extern "C" fn oxmalloc_is_active() -> c_int {
    SERVING.load(Ordering::Relaxed) as c_int
}

/// A pointer oxmalloc does not know reached `free`/`realloc`.
#[cold]
#[inline(never)]
fn foreign_pointer(func: &str, p: *mut c_void) {
    use core::fmt::Write;
    let mut b = StackBuf::<320>::new();
    if SERVING.load(Ordering::Relaxed) {
        let _ = writeln!(
            b,
            "oxmalloc: {func}({p:p}): pointer was not handed out by oxmalloc (foreign, interior, or already freed); aborting"
        );
        os::write_stderr(b.as_bytes());
        // SAFETY: abort has no preconditions; going on would corrupt memory.
        unsafe { libc::abort() }
    }
    let _ = writeln!(
        b,
        "oxmalloc: {func}({p:p}) refused: this liboxmalloc.so was loaded with dlopen and does not manage that memory"
    );
    os::write_stderr(b.as_bytes());
}

/// Whether `p` is the start of a block this allocator handed out and still considers live
/// (`Small` class page, or the first page of a `Large` span).
#[inline(always)]
fn owns(p: *mut c_void) -> bool {
    !allocator::class_of(p as *const u8).is_large() || allocator::usable_size(p as *const u8) != 0
}

#[inline(always)]
fn malloc_aligned(size: usize, align: usize) -> *mut c_void {
    if size > isize::MAX as usize {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    let p = allocator::alloc(size.max(MIN_SIZE), align);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    } else if size <= MAX_SMALL_SIZE {
        // SAFETY: a fresh block of at least MIN_SIZE bytes. A reused small object may still
        // carry the free tag (see `check`), which would make its next free look like a
        // double free.
        unsafe { *check::tag_slot(p) = 0 };
    }
    p as *mut c_void
}

#[inline(always)]
fn malloc_default(size: usize) -> *mut c_void {
    malloc_aligned(size, MIN_ALIGN)
}

/// `malloc(3)`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    if let Some(class) = size_class::class_for_c_small(size) {
        return thread_cache::alloc_c(class, size) as *mut c_void;
    }
    malloc_bigger(size)
}

/// `malloc` of more than the small table covers: the other size classes, then page runs.
/// Kept out of `malloc` so that the common path does one table lookup with nothing shared
/// with this one. (`extern "C"`: it cannot unwind, so `malloc` needs no landing pad and
/// tail-calls it.)
#[inline(never)]
extern "C" fn malloc_bigger(size: usize) -> *mut c_void {
    let class = size_class::class_for_c(size);
    if !class.is_large() {
        return thread_cache::alloc_c(class, size) as *mut c_void;
    }
    malloc_aligned(size, MIN_ALIGN)
}

/// `free(3)`.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_impl(p) }
}

#[inline(always)]
unsafe fn free_impl(p: *mut c_void) {
    // The misuse check loads the object's second word, and an object freed long after its
    // allocation is rarely in the cache: start fetching its line now, so that the miss overlaps
    // the pagemap lookup (itself often a miss in a large heap) instead of following it.
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_ET0 }>(p as *const i8)
    };
    // Null needs no test here: page 0 is never oxmalloc's (see `os::map`), so its pagemap
    // entry is 0 and null goes to `free_large`, which returns.
    let entry = pagemap::entry_of(p as usize);
    let class = pagemap::entry_class(entry);
    if !class.is_large() {
        // SAFETY: the pagemap places `p` in a small span of `class`, of at least MIN_SIZE
        // bytes; the checks report a pointer that is not a live object start.
        unsafe {
            thread_cache::free_c(
                p as *mut u8,
                class,
                pagemap::object_phase(p as usize, entry),
            )
        };
        return;
    }
    free_large(p);
}

#[cold]
#[inline(never)]
extern "C" fn free_large(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    if allocator::usable_size(p as *const u8) == 0 || !is_large_start(p) {
        // SAFETY: `p` is being freed by this thread (the caller's contract).
        unsafe { check::bad_pointer("free", p as *mut u8) };
        foreign_pointer("free", p);
        return;
    }
    // SAFETY: `p` starts a live large span (checked just above).
    unsafe { allocator::free_large(p as *mut u8) }
}

fn is_large_start(p: *mut c_void) -> bool {
    let s = oxmalloc_core::pagemap::span_of(oxmalloc_core::types::PageId::containing(p as usize));
    // SAFETY: pagemap entries point at valid span records.
    !s.is_null() && unsafe { (*s).start_addr() } == p as usize
}

/// `calloc(3)`: overflow-checked, zeroed.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    calloc_impl(n, size)
}

fn calloc_impl(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size).filter(|&t| t <= isize::MAX as usize) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    let p = allocator::alloc_zeroed(total.max(MIN_SIZE), MIN_ALIGN);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p as *mut c_void
}

/// `realloc(3)`, with glibc's `realloc(p, 0)`: free `p`, return null.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { realloc_impl(p, size) }
}

unsafe fn realloc_impl(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc_default(size);
    }
    if size == 0 {
        // SAFETY: forwarded contract.
        unsafe { free_impl(p) };
        return ptr::null_mut();
    }
    if size > isize::MAX as usize {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    if !owns(p) || (allocator::class_of(p as *const u8).is_large() && !is_large_start(p)) {
        // SAFETY: `p` is being reallocated by this thread (the caller's contract).
        unsafe { check::bad_pointer("realloc", p as *mut u8) };
        foreign_pointer("realloc", p);
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    let entry = pagemap::entry_of(p as usize);
    let class = pagemap::entry_class(entry);
    if !class.is_large() {
        // SAFETY: the pagemap places `p` in a small span of `class` (at least MIN_SIZE bytes).
        unsafe {
            check::check_small_free(
                "realloc",
                p as *mut u8,
                class,
                pagemap::object_phase(p as usize, entry),
            )
        };
    }
    let old = allocator::usable_size(p as *const u8);
    if !class.is_large() {
        // Keep the block when the new size fits and does not waste more than half of it.
        if size <= old && size * 2 >= old.min(class.size()) {
            return p;
        }
    } else if size > oxmalloc_core::size_class::MAX_SMALL_SIZE {
        // SAFETY: `p` starts a live large span (checked above).
        if unsafe { allocator::resize_large_in_place(p as *mut u8, size) } {
            return p;
        }
    }
    // A small block that grows is most likely being appended to: give it room for a quarter
    // more, so that a buffer grown in small steps moves through fewer size classes (fewer
    // copies, and fewer classes left holding its old blocks).
    let want = if !class.is_large() && size > old && size <= MAX_SMALL_SIZE {
        size.max(old + old / 4).min(MAX_SMALL_SIZE)
    } else {
        size
    };
    let q = malloc_default(want);
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct; `old` bytes of `p` are readable.
        unsafe {
            ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, old.min(size));
            free_impl(p);
        }
    }
    q
}

/// `reallocarray(3)`: `realloc(p, n * size)` with an overflow check.
///
/// # Safety
/// As for `realloc`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { realloc_impl(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `memalign(3)`: like glibc, an alignment that is not a power of two is rounded up to one,
/// one below the minimum is raised to it, one above `SIZE_MAX / 2 + 1` is EINVAL, and one too
/// large to satisfy is ENOMEM.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

fn memalign_impl(align: usize, size: usize) -> *mut c_void {
    let Some(align) = align.max(MIN_ALIGN).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    if align > isize::MAX as usize / 2 + 1 || size > isize::MAX as usize - align {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    malloc_aligned(size, align)
}

/// `aligned_alloc(3)`: the alignment must be a power of two (EINVAL otherwise, as C17 and
/// current glibc require).
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    memalign_impl(align, size)
}

/// `posix_memalign(3)`: EINVAL unless `align` is a power of two multiple of `sizeof(void *)`;
/// ENOMEM when memory is short; `*out` is left untouched on failure.
///
/// # Safety
/// `out` is a valid pointer to write the result to.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = memalign_impl(align, size);
    if p.is_null() {
        set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid out-pointer.
    unsafe { *out = p };
    0
}

/// `valloc(3)`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    memalign_impl(os_page_size(), size)
}

/// `pvalloc(3)`: page-aligned, size rounded up to whole pages (one page for 0).
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = os_page_size();
    let Some(rounded) = size.max(1).checked_next_multiple_of(page) else {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    };
    memalign_impl(page, rounded)
}

fn os_page_size() -> usize {
    4096
}

/// `malloc_usable_size(3)`: bytes usable at `p` (at least what was requested); 0 for null.
#[no_mangle]
pub extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    allocator::usable_size(p as *const u8)
}

/// `cfree`: an old name for `free`.
///
/// # Safety
/// As for `free`.
#[no_mangle]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_impl(p) }
}

/// C23 `free_sized`.
///
/// # Safety
/// As for `free`.
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free_impl(p) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// As for `free`.
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free_impl(p) }
}

/// `malloc_trim(3)`: returns free memory to the OS; 1 if any was released.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    (oxmalloc_core::release_free_memory() > 0) as c_int
}

/// `mallopt(3)`: glibc's tuning knobs do not apply; accepted and ignored.
#[no_mangle]
pub extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}

/// glibc's `struct mallinfo2`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct MallInfo2 {
    pub arena: usize,
    pub ordblks: usize,
    pub smblks: usize,
    pub hblks: usize,
    pub hblkhd: usize,
    pub usmblks: usize,
    pub fsmblks: usize,
    pub uordblks: usize,
    pub fordblks: usize,
    pub keepcost: usize,
}

/// glibc's `struct mallinfo` (int fields, saturated).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct MallInfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

/// `mallinfo2(3)`, filled from a statistics snapshot: `arena` = mapped heap bytes,
/// `uordblks` = bytes in use by the program, `fordblks` = free bytes held (caches, central
/// lists, free page runs, released runs), `keepcost` = of those, bytes released to the OS,
/// `hblks`/`hblkhd` = live large blocks and their bytes, `usmblks` = peak active bytes,
/// `fsmblks` = free bytes in thread and transfer caches.
#[no_mangle]
pub extern "C" fn mallinfo2() -> MallInfo2 {
    mallinfo2_impl()
}

fn mallinfo2_impl() -> MallInfo2 {
    let s = oxmalloc_core::stats();
    MallInfo2 {
        arena: s.mapped_bytes,
        ordblks: s
            .free_runs_resident
            .iter()
            .chain(s.free_runs_released.iter())
            .sum(),
        smblks: 0,
        hblks: s.large_allocations,
        hblkhd: s.large_in_use_bytes,
        usmblks: s.peak_active_bytes,
        fsmblks: s.thread_cache_bytes + s.transfer_cache_bytes,
        uordblks: s.in_use_bytes,
        fordblks: s.mapped_bytes.saturating_sub(s.in_use_bytes),
        keepcost: s.released_bytes,
    }
}

/// `mallinfo(3)`: [`mallinfo2`] with fields saturated to `int`.
#[no_mangle]
pub extern "C" fn mallinfo() -> MallInfo {
    let m = mallinfo2_impl();
    let c = |v: usize| v.min(c_int::MAX as usize) as c_int;
    MallInfo {
        arena: c(m.arena),
        ordblks: c(m.ordblks),
        smblks: c(m.smblks),
        hblks: c(m.hblks),
        hblkhd: c(m.hblkhd),
        usmblks: c(m.usmblks),
        fsmblks: c(m.fsmblks),
        uordblks: c(m.uordblks),
        fordblks: c(m.fordblks),
        keepcost: c(m.keepcost),
    }
}

/// `malloc_stats(3)`: prints the full statistics report to standard error.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    report::write_report(2, report::Format::Text);
}

/// glibc's internal entry points, which some programs and libraries call directly.
#[no_mangle]
pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
    malloc_default(size)
}

/// # Safety
/// As for `free`.
#[no_mangle]
pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
    // SAFETY: forwarded contract.
    unsafe { free_impl(p) }
}

#[no_mangle]
pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
    calloc_impl(n, size)
}

/// # Safety
/// As for `realloc`.
#[no_mangle]
pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: forwarded contract.
    unsafe { realloc_impl(p, size) }
}

#[no_mangle]
pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
    memalign_impl(align, size)
}

/// `oxmalloc_release_free_memory`: returns free memory to the OS; the bytes released.
#[no_mangle]
pub extern "C" fn oxmalloc_release_free_memory() -> usize {
    oxmalloc_core::release_free_memory()
}

/// `oxmalloc_stats_json`: writes the statistics snapshot as JSON into `buf` (NUL-terminated,
/// truncated to `len`); returns the length the whole text needs, excluding the NUL.
///
/// # Safety
/// `buf` points to `len` writable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn oxmalloc_stats_json(buf: *mut libc::c_char, len: usize) -> usize {
    // SAFETY: forwarded contract.
    unsafe { report::write_to_buffer(buf, len, report::Format::Json) }
}

/// `oxmalloc_stats_text`: like [`oxmalloc_stats_json`], with the human-readable report.
///
/// # Safety
/// `buf` points to `len` writable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn oxmalloc_stats_text(buf: *mut libc::c_char, len: usize) -> usize {
    // SAFETY: forwarded contract.
    unsafe { report::write_to_buffer(buf, len, report::Format::Text) }
}

/// `oxmalloc_get_numeric_property`: stores the named statistic (see `oxmalloc.h` and
/// `docs/stats.md`) in `*out` and returns 1, or returns 0 for an unknown name.
///
/// # Safety
/// `name` is a NUL-terminated string and `out` a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn oxmalloc_get_numeric_property(
    name: *const libc::c_char,
    out: *mut usize,
) -> c_int {
    if name.is_null() || out.is_null() {
        return 0;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let name = unsafe { core::ffi::CStr::from_ptr(name) }.to_bytes();
    match report::numeric_property(name) {
        Some(v) => {
            // SAFETY: the caller passes a valid out-pointer.
            unsafe { *out = v };
            1
        }
        None => 0,
    }
}

/// `oxmalloc_set_heap_limit`: sets the heap limit in bytes (0 removes it).
#[no_mangle]
pub extern "C" fn oxmalloc_set_heap_limit(bytes: usize) {
    oxmalloc_core::set_heap_limit(bytes)
}

/// `oxmalloc_heap_limit`: the heap limit in bytes, 0 if none.
#[no_mangle]
pub extern "C" fn oxmalloc_heap_limit() -> usize {
    oxmalloc_core::heap_limit()
}

/// `oxmalloc_set_large_alloc_threshold`: large-allocation reports from this size on
/// (`SIZE_MAX` turns them off).
#[no_mangle]
pub extern "C" fn oxmalloc_set_large_alloc_threshold(bytes: usize) {
    oxmalloc_core::hooks::set_large_alloc_threshold(bytes)
}

/// `oxmalloc_set_large_alloc_hook`: replaces the large-allocation report with `hook(size,
/// address, user)`; null restores the report.
#[no_mangle]
pub extern "C" fn oxmalloc_set_large_alloc_hook(
    hook: Option<oxmalloc_core::hooks::LargeAllocHook>,
    user: *mut c_void,
) {
    oxmalloc_core::hooks::set_large_alloc_hook(hook, user)
}

/// `oxmalloc_set_alloc_failure_hook`: replaces the failure report with `hook(size, alignment,
/// reason, user)`; null restores the report.
#[no_mangle]
pub extern "C" fn oxmalloc_set_alloc_failure_hook(
    hook: Option<oxmalloc_core::hooks::FailureHook>,
    user: *mut c_void,
) {
    oxmalloc_core::hooks::set_failure_hook(hook, user)
}
