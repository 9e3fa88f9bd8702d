//! The OS layer: the only module that calls `mmap`, `munmap` and `madvise`.
//!
//! Invariants: every function is a thin, non-allocating wrapper; failures are reported as
//! `None`/`false`, never by panicking. Mappings are private, anonymous, read-write and
//! `MAP_NORESERVE`, so untouched address space costs no memory. No mapping starts in the
//! first page (`PAGE_SIZE` bytes) of the address space, so null is never inside oxmalloc's
//! memory.

use core::ptr;

/// Maps `len` bytes (a multiple of the OS page size) of fresh zeroed memory.
pub fn map(len: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping with a null hint has no preconditions; the result
    // is checked against MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if (p as usize) < crate::types::PAGE_SIZE {
        // Only possible where vm.mmap_min_addr is 0. Page 0 must never be oxmalloc's: `free`
        // finds null there in the pagemap without testing for it.
        // SAFETY: the mapping was just made, and nothing else knows of it.
        unsafe { libc::munmap(p, len) };
        return None;
    }
    Some(p as *mut u8)
}

/// Maps `len` bytes whose start is a multiple of `align` (a power of two >= the OS page),
/// by over-mapping and trimming both ends.
pub fn map_aligned(len: usize, align: usize) -> Option<*mut u8> {
    let os_page = 4096;
    if align <= os_page {
        return map(len);
    }
    let total = len.checked_add(align - os_page)?;
    let p = map(total)? as usize;
    let start = (p + align - 1) & !(align - 1);
    let head = start - p;
    let tail = total - head - len;
    if head > 0 {
        unmap(p as *mut u8, head);
    }
    if tail > 0 {
        unmap((start + len) as *mut u8, tail);
    }
    Some(start as *mut u8)
}

/// Unmaps a range previously obtained from [`map`].
pub fn unmap(p: *mut u8, len: usize) {
    // SAFETY: callers pass a range they mapped and no longer use; munmap on such a range
    // cannot affect memory anyone else owns.
    unsafe {
        libc::munmap(p as *mut libc::c_void, len);
    }
}

/// Gives the physical memory behind `[p, p + len)` back to the OS. The range stays mapped and
/// reads as zero when next touched. Returns false if the kernel refused.
pub fn release(p: *mut u8, len: usize) -> bool {
    // SAFETY: the range is mapped by us and holds no live data (the page heap only releases
    // free runs); MADV_DONTNEED on private anonymous memory just drops the pages.
    unsafe { libc::madvise(p as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

/// Writes `msg` to standard error without allocating.
pub fn write_stderr(msg: &[u8]) {
    let mut rest = msg;
    while !rest.is_empty() {
        // SAFETY: the pointer and length describe the live slice `rest`.
        let n = unsafe { libc::write(2, rest.as_ptr() as *const libc::c_void, rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}
