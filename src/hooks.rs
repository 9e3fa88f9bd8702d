//! Reports and hooks on the slow paths: large-allocation reports, allocation-failure reports,
//! misuse reports, and the user hooks that can replace the first two.
//!
//! Invariants:
//! - Reports are formatted into fixed stack buffers ([`StackBuf`]) and written with `write(2)`;
//!   nothing here allocates or panics, and no allocator lock is held while a report or hook runs.
//! - Hooks run on the allocating thread. While a hook (or the default reporter) runs, that
//!   thread's further allocations are served normally but trigger no hook or report, so a hook
//!   that allocates cannot recurse.
//! - Large-allocation reports cannot flood: each report raises the next threshold to 1/8 above
//!   the larger of the old threshold and the reported size, so repeated allocations of one size
//!   are reported once and a growing buffer is reported each time it grows by more than 1/8.
//! - Failure reports stop after [`MAX_FAILURE_REPORTS`], with a line saying so.

use crate::config;
use crate::sync::SpinLock;
use core::cell::Cell;
use core::ffi::{c_int, c_void};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// A fixed-size formatting buffer on the stack; text past its end is cut.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str` pieces are appended, except where a cut lands mid-character.
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                let ok = e.valid_up_to();
                // SAFETY: the prefix up to `valid_up_to` is valid UTF-8.
                unsafe { core::str::from_utf8_unchecked(&self.buf[..ok]) }
            }
        }
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Reports a free of a pointer oxmalloc did not hand out (or does not own any more) and aborts.
#[cold]
#[inline(never)]
pub fn invalid_free(p: *mut u8) {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: invalid free of {:p}: not the start of a block oxmalloc handed out (foreign, interior, or already freed pointer)",
        p
    );
    crate::os::write_stderr(b.as_bytes());
    // SAFETY: abort has no preconditions; continuing would corrupt the heap.
    unsafe { libc::abort() }
}

/// Why an allocation failed.
pub const REASON_OS: c_int = 1;
/// The heap limit would have been exceeded.
pub const REASON_HEAP_LIMIT: c_int = 2;

/// The reason of the most recent page-heap failure (set by the page heap under its lock).
pub static LAST_FAILURE: AtomicU8 = AtomicU8::new(0);

/// Called after a large allocation: `(size, address, user)`.
pub type LargeAllocHook = extern "C" fn(size: usize, addr: *mut c_void, user: *mut c_void);
/// Called when an allocation fails: `(size, alignment, reason, user)`.
pub type FailureHook = extern "C" fn(size: usize, align: usize, reason: c_int, user: *mut c_void);

struct Hooks {
    large: Option<LargeAllocHook>,
    large_user: usize,
    failure: Option<FailureHook>,
    failure_user: usize,
}

static HOOKS: SpinLock<Hooks> = SpinLock::new(Hooks {
    large: None,
    large_user: 0,
    failure: None,
    failure_user: 0,
});

/// Next size that gets a large-allocation report.
static NEXT_LARGE_REPORT: AtomicUsize = AtomicUsize::new(1 << 30);
static FAILURE_REPORTS: AtomicUsize = AtomicUsize::new(0);
/// Failure reports printed before the reporter falls silent.
pub const MAX_FAILURE_REPORTS: usize = 16;

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Takes the hooks lock (before `fork`).
pub fn lock_for_fork() {
    HOOKS.raw_lock();
}

/// # Safety
/// Only after `lock_for_fork` on this thread (or in its forked child).
pub unsafe fn unlock_after_fork() {
    // SAFETY: per the caller's contract.
    unsafe { HOOKS.force_unlock() }
}

/// Installs (or with `None` removes) the large-allocation hook, which then replaces the
/// default report line. The hook runs for every allocation at or above the threshold.
pub fn set_large_alloc_hook(hook: Option<LargeAllocHook>, user: *mut c_void) {
    let mut h = HOOKS.lock();
    h.large = hook;
    h.large_user = user as usize;
}

/// Installs (or with `None` removes) the failure hook, which then replaces the default report.
pub fn set_failure_hook(hook: Option<FailureHook>, user: *mut c_void) {
    let mut h = HOOKS.lock();
    h.failure = hook;
    h.failure_user = user as usize;
}

/// Sets the large-allocation report threshold (`usize::MAX` turns reports off).
pub fn set_large_alloc_threshold(bytes: usize) {
    config::LARGE_ALLOC_REPORT_THRESHOLD.store(bytes, Ordering::Relaxed);
    NEXT_LARGE_REPORT.store(bytes, Ordering::Relaxed);
}

/// Takes the configured threshold as the next one to report (after `config::load`).
pub fn reset_large_alloc_threshold() {
    NEXT_LARGE_REPORT.store(
        config::LARGE_ALLOC_REPORT_THRESHOLD.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
}

/// Runs `f` with this thread's hooks disabled; returns None if they already were.
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    if IN_HOOK.with(|c| c.replace(true)) {
        return None;
    }
    let r = f();
    IN_HOOK.with(|c| c.set(false));
    Some(r)
}

/// Called after every large allocation (and in-place growth) of `size` bytes at `addr`.
#[inline]
pub fn note_large_alloc(size: usize, addr: *mut u8) {
    let threshold = config::LARGE_ALLOC_REPORT_THRESHOLD.load(Ordering::Relaxed);
    if size < threshold {
        return;
    }
    let (hook, user) = {
        let h = HOOKS.lock();
        (h.large, h.large_user)
    };
    if let Some(hook) = hook {
        guarded(|| hook(size, addr as *mut c_void, user as *mut c_void));
        return;
    }
    // Raise the next threshold first, so concurrent reports of one size still print once.
    let mut next = NEXT_LARGE_REPORT.load(Ordering::Relaxed);
    loop {
        if size < next {
            return;
        }
        let base = next.max(size);
        let raised = base.saturating_add(base / 8);
        match NEXT_LARGE_REPORT.compare_exchange(next, raised, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => break,
            Err(now) => next = now,
        }
    }
    guarded(|| report_large_alloc(size, addr));
}

#[cold]
fn report_large_alloc(size: usize, addr: *mut u8) {
    let mut b = StackBuf::<2048>::new();
    let _ = write!(b, "oxmalloc: large alloc {size} bytes == {addr:p} @");
    write_stack(&mut b, 2);
    let _ = b.write_str("\n");
    crate::os::write_stderr(b.as_bytes());
}

mod unwind {
    use core::ffi::{c_int, c_void};
    pub type Trace = extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int;
    extern "C" {
        pub fn _Unwind_Backtrace(trace: Trace, arg: *mut c_void) -> c_int;
        pub fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
    }
}

const MAX_FRAMES: usize = 24;

struct Frames {
    ips: [usize; MAX_FRAMES],
    n: usize,
}

extern "C" fn collect_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Frames` passed to _Unwind_Backtrace below; `ctx` is the unwinder's.
    let frames = unsafe { &mut *(arg as *mut Frames) };
    if frames.n >= MAX_FRAMES {
        return 5; // _URC_END_OF_STACK
    }
    // SAFETY: `ctx` is a valid unwind context for the duration of this callback.
    frames.ips[frames.n] = unsafe { unwind::_Unwind_GetIP(ctx) };
    frames.n += 1;
    0 // _URC_NO_REASON
}

/// Appends up to `MAX_FRAMES` return addresses of the current stack, skipping `skip` frames of
/// the allocator itself, each with `symbol+offset` where `dladdr` can name it.
fn write_stack(w: &mut impl Write, skip: usize) {
    let mut frames = Frames {
        ips: [0; MAX_FRAMES],
        n: 0,
    };
    // SAFETY: the callback only writes into `frames`, which outlives the call.
    unsafe { unwind::_Unwind_Backtrace(collect_frame, &mut frames as *mut Frames as *mut c_void) };
    for &ip in frames.ips[..frames.n].iter().skip(skip) {
        if ip == 0 {
            continue;
        }
        let _ = write!(w, " {ip:#x}");
        // SAFETY: Dl_info is plain data; dladdr only fills it and accepts any address.
        let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::dladdr((ip - 1) as *const c_void, &mut info) } == 0 {
            continue;
        }
        if !info.dli_sname.is_null() {
            // SAFETY: dladdr returns NUL-terminated names that live as long as the object.
            let name = unsafe { core::ffi::CStr::from_ptr(info.dli_sname) };
            let _ = write!(
                w,
                "({}+{:#x})",
                name.to_str().unwrap_or("?"),
                ip - info.dli_saddr as usize
            );
        } else if !info.dli_fname.is_null() {
            // SAFETY: as above.
            let path = unsafe { core::ffi::CStr::from_ptr(info.dli_fname) }.to_bytes();
            let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            let _ = write!(
                w,
                "({}+{:#x})",
                core::str::from_utf8(base).unwrap_or("?"),
                ip - info.dli_fbase as usize
            );
        }
    }
}

/// Called when an allocation of `size` bytes aligned to `align` fails for good (after the
/// allocator released its caches and retried once). Runs the failure hook or prints the
/// default report. No allocator lock may be held.
#[cold]
#[inline(never)]
pub fn alloc_failed(size: usize, align: usize) {
    let reason = match LAST_FAILURE.load(Ordering::Relaxed) as c_int {
        REASON_HEAP_LIMIT => REASON_HEAP_LIMIT,
        _ => REASON_OS,
    };
    let (hook, user) = {
        let h = HOOKS.lock();
        (h.failure, h.failure_user)
    };
    if let Some(hook) = hook {
        guarded(|| hook(size, align, reason, user as *mut c_void));
        return;
    }
    guarded(|| report_failure(size, align, reason));
}

fn report_failure(size: usize, align: usize, reason: c_int) {
    let n = FAILURE_REPORTS.fetch_add(1, Ordering::Relaxed);
    if n > MAX_FAILURE_REPORTS {
        return;
    }
    let mut b = StackBuf::<1024>::new();
    if n == MAX_FAILURE_REPORTS {
        let _ = writeln!(b, "oxmalloc: further allocation failures are not reported");
        crate::os::write_stderr(b.as_bytes());
        return;
    }
    let s = crate::stats::snapshot();
    let limit = config::HEAP_LIMIT.load(Ordering::Relaxed);
    let why = if reason == REASON_HEAP_LIMIT {
        "it would exceed the heap limit (OXMALLOC_HEAP_LIMIT)"
    } else {
        "the operating system refused more memory (mmap failed)"
    };
    let _ = write!(
        b,
        "oxmalloc: allocation of {size} bytes (alignment {align}) failed: {why}; released cached memory and retried once.\n\
         oxmalloc: heap: in use {} B, free in thread/transfer/central caches {} B, free in page heap {} B (largest free run {} B), released to OS {} B, mapped {} B, limit ",
        s.in_use_bytes,
        s.thread_cache_bytes + s.transfer_cache_bytes + s.central_free_bytes,
        s.page_heap_free_bytes,
        s.largest_free_run_bytes,
        s.released_bytes,
        s.mapped_bytes,
    );
    if limit == 0 {
        let _ = writeln!(b, "none");
    } else {
        let _ = writeln!(b, "{limit} B");
    }
    crate::os::write_stderr(b.as_bytes());
}
