//! The OS layer: the only module that calls `mmap`, `munmap`, `madvise` and
//! `process_madvise`, and that reads files.
//!
//! Invariants: every function is a thin, non-allocating wrapper; failures are reported as
//! `None`/`false`, never by panicking. Mappings are private, anonymous, read-write and
//! `MAP_NORESERVE`, so untouched address space costs no memory. No mapping starts in the
//! first page (`PAGE_SIZE` bytes) of the address space, so null is never inside oxmalloc's
//! memory.

use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};

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

/// `pidfd` naming the calling thread (`PIDFD_SELF`, Linux 6.15+); `process_madvise` acts on
/// its address space, which is the whole process's.
const PIDFD_SELF: libc::c_int = -10000;

/// Set once `process_madvise` on the calling process turned out to be unavailable (kernel
/// before 6.15, or a seccomp filter); from then on [`release_ranges`] uses one `madvise` a range.
static NO_PROCESS_MADVISE: AtomicBool = AtomicBool::new(false);

/// Releases several ranges at once, like [`release`] on each: one `process_madvise` system call
/// for all of them where the kernel allows it on the calling process (the kernel then also
/// takes its locks and flushes the TLB once), else one `madvise` a range. Returns false if some
/// range could not be released (it may then be resident or not).
pub fn release_ranges(ranges: &[libc::iovec]) -> bool {
    if ranges.is_empty() {
        return true;
    }
    if !NO_PROCESS_MADVISE.load(Ordering::Relaxed) {
        let total: usize = ranges.iter().map(|r| r.iov_len).sum();
        // SAFETY: the iovec array is live for the call and the kernel only reads it; every range
        // is mapped by us and holds no live data (see `release`).
        let n = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                PIDFD_SELF,
                ranges.as_ptr(),
                ranges.len(),
                libc::MADV_DONTNEED,
                0,
            )
        };
        if n >= 0 && n as usize == total {
            return true;
        }
        if n < 0 {
            let err = errno();
            if matches!(err, libc::ENOSYS | libc::EINVAL | libc::EBADF | libc::EPERM) {
                NO_PROCESS_MADVISE.store(true, Ordering::Relaxed);
            }
        }
        // A partial or failed batch: release every range one by one (releasing twice is
        // harmless).
    }
    let mut ok = true;
    for r in ranges {
        ok &= release(r.iov_base as *mut u8, r.iov_len);
    }
    ok
}

/// Reads a small file (in `/proc` or `/sys`) into `buf`; returns the bytes read, 0 if it
/// cannot be read. Raw system calls, not libc's wrappers: inside malloc they must be neither
/// cancellation points nor functions another library may interpose (and allocate in).
pub fn read_small_file(path: &core::ffi::CStr, buf: &mut [u8]) -> usize {
    // SAFETY: a NUL-terminated path; the fd is closed below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 0;
    }
    let mut total = 0;
    while total < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_read,
                fd,
                buf[total..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - total,
            )
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
    // SAFETY: `fd` is ours.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    total
}

/// The decimal number at the start of `s` (0 if `s` starts with no digit), as the numbers in
/// `/proc` files read.
pub fn leading_decimal(s: &[u8]) -> usize {
    s.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0usize, |n, &d| {
            n.wrapping_mul(10).wrapping_add((d - b'0') as usize)
        })
}

/// This thread's errno.
#[inline]
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's errno.
#[inline]
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Maps `pages` OS pages, dirties them, releases every other one through
    /// `release_ranges`, and checks that exactly those read as zero.
    fn release_every_other_page(pages: usize) {
        let len = pages * 4096;
        let p = map(len).unwrap();
        // SAFETY: `p` is a fresh mapping of `len` bytes.
        unsafe { ptr::write_bytes(p, 0xA5, len) };
        let ranges: [libc::iovec; 4] = core::array::from_fn(|i| libc::iovec {
            // SAFETY: page `2 * i` lies inside the mapping (`pages >= 8`).
            iov_base: unsafe { p.add(2 * i * 4096) } as *mut libc::c_void,
            iov_len: 4096,
        });
        assert!(release_ranges(&ranges));
        for i in 0..8 {
            // SAFETY: inside the mapping.
            let b = unsafe { *p.add(i * 4096 + 100) };
            assert_eq!(b, if i % 2 == 0 { 0 } else { 0xA5 }, "page {i}");
        }
        unmap(p, len);
    }

    #[test]
    fn release_ranges_zeroes_exactly_the_ranges() {
        release_every_other_page(8);
        // The fallback, one madvise a range, as on kernels without process_madvise on self.
        let saved = NO_PROCESS_MADVISE.swap(true, Ordering::Relaxed);
        release_every_other_page(8);
        NO_PROCESS_MADVISE.store(saved, Ordering::Relaxed);
        assert!(release_ranges(&[]));
    }
}
