//! Emptying the caches of threads that stopped allocating, from other threads.
//!
//! A thread's cache is its own: its hit paths take no lock. A thread that stops allocating
//! (a worker waiting for work, a Python thread waiting for the GIL) would keep what it cached
//! for as long as it lives, pinning the partly used spans those objects belong to. A *reclaim
//! pass*, run by some other thread from a slow path, empties such caches:
//!
//! 1. It takes `PASS` (one pass at a time) and sets the hit paths' route to guarded (see
//!    `thread_cache::ROUTE`): from then on every allocation and free, on every thread, goes
//!    through a slow path, which holds its cache's guard.
//! 2. For each other registered cache worth emptying, it takes the cache's guard with
//!    `STOLEN` (impossible while the owner is in a slow path), then asks the kernel whether the
//!    owner is asleep in a system call (`/proc/self/task/TID/syscall`; a page fault or a stop
//!    does not read as one), and then whether the owner's in-hit-path mark is clear. Hit paths
//!    make no system call, so an owner asleep in one is in a hit path only if a signal handler
//!    interrupted it there and then slept: the mark says so (the owner sets it before reading
//!    the route a second time, and the kernel's switch makes the store visible). When the owner
//!    wakes, the route sends its next call to a slow path, which waits for the guard.
//! 3. It empties the cache into the transfer caches, caps its lists short, releases the guard,
//!    and in the end restores the route.
//!
//! Invariants: a cache is emptied only by another thread, under its guard with `STOLEN`, its
//! owner asleep in a system call with its in-hit-path mark clear, and `ROUTE` guarded since
//! before the guard was taken. The pass takes the registry lock first and the transfer, central
//! and page-heap locks under it (the order `fork` preparation uses too); it holds no other
//! allocator lock when it starts (it runs from slow paths and the explicit release). It reads
//! `/proc` with raw system calls: no cancellation point and no interposed libc function inside
//! malloc.
//!
//! When passes run: after the page heap released memory (a program is freeing much of its
//! heap: caches that did not follow the shrink, or made no allocation or free since the
//! previous pass, are emptied); every `OXMALLOC_IDLE_CACHE_MS`, checked on slow paths (caches
//! with no allocation or free since the previous pass); and on an explicit release of free
//! memory (every sleeping thread's cache). `OXMALLOC_IDLE_CACHE_MS=0` turns passes off.

use crate::sync::SpinLock;
use crate::thread_cache;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Held by a running pass, and by changes of the hit paths' route.
pub static PASS: SpinLock<()> = SpinLock::new(());

/// Set when the page heap released memory: the next slow path runs a pass.
pub static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Milliseconds between idle passes; 0 turns every pass off (`OXMALLOC_IDLE_CACHE_MS`).
pub static IDLE_MS: AtomicUsize = AtomicUsize::new(1000);

/// When the next idle pass is due, in `CLOCK_MONOTONIC_COARSE` milliseconds.
static NEXT_IDLE: AtomicU64 = AtomicU64::new(0);

/// Caches emptied by passes, and the bytes taken from them, over the lifetime.
pub static RECLAIMS: AtomicU64 = AtomicU64::new(0);
pub static RECLAIMED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Why a pass runs, which decides the caches it empties.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The page heap gave memory back: caches behind the shrink or idle since the last pass.
    Shrink,
    /// Time: caches with no allocation or free since the last pass.
    Idle,
    /// An explicit release: every cache whose owner sleeps.
    Release,
}

/// Runs a pass if one is due. Called at the end of slow paths, holding no lock, with the
/// calling thread's count of slow paths (the clock is read on every 16th).
#[inline]
pub fn poll(slow_ops: usize) {
    if REQUESTED.load(Ordering::Relaxed) && REQUESTED.swap(false, Ordering::Relaxed) {
        if run(Why::Shrink).is_none() {
            // A pass is running: leave the request for the next slow path.
            REQUESTED.store(true, Ordering::Relaxed);
        }
        return;
    }
    if slow_ops % 16 != 0 || IDLE_MS.load(Ordering::Relaxed) == 0 {
        return;
    }
    let now = coarse_ms();
    if now >= NEXT_IDLE.load(Ordering::Relaxed) && run(Why::Idle).is_some() {
        let period = IDLE_MS.load(Ordering::Relaxed) as u64;
        NEXT_IDLE.store(now.saturating_add(period), Ordering::Relaxed);
    }
}

/// `CLOCK_MONOTONIC_COARSE` in milliseconds (a vDSO read, no system call).
fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Runs a pass. An explicit release waits for a running pass to end; the others give up
/// (`None`). Returns the bytes taken from other threads' caches.
pub fn run(why: Why) -> Option<usize> {
    if IDLE_MS.load(Ordering::Relaxed) == 0 {
        return Some(0);
    }
    let _pass = if why == Why::Release {
        PASS.lock()
    } else {
        PASS.try_lock()?
    };
    if !proc_is_ours() {
        return Some(0);
    }
    // `free` and `malloc` that succeed leave errno alone; the pass's reads of /proc may not.
    let saved_errno = crate::os::errno();
    let bytes = run_locked(why);
    crate::os::set_errno(saved_errno);
    Some(bytes)
}

/// Whether `/proc` shows this process's own PID namespace (a `/proc` mounted from another
/// one would name other threads by our thread ids). Checked once.
fn proc_is_ours() -> bool {
    static KNOWN: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
    match KNOWN.load(Ordering::Relaxed) {
        1 => return true,
        2 => return false,
        _ => {}
    }
    let mut buf = [0u8; 32];
    let n = crate::os::read_small_file(c"/proc/self/stat", &mut buf);
    let pid = crate::os::leading_decimal(&buf[..n]);
    // SAFETY: getpid has no preconditions.
    let ours = n > 0 && pid == unsafe { libc::getpid() } as usize;
    KNOWN.store(if ours { 1 } else { 2 }, Ordering::Relaxed);
    ours
}

/// The pass itself, under `PASS`.
fn run_locked(why: Why) -> usize {
    let epoch = crate::page_heap::SHRINK_EPOCH.load(Ordering::Relaxed);
    let me = thread_cache::current();
    let mut bytes = 0;
    let mut routed = false;
    crate::stats::for_each_cache(|tc| {
        if tc == me {
            return;
        }
        // SAFETY: registered caches stay valid while the registry lock is held, which
        // `for_each_cache` does; the fields read without the guard are hints.
        unsafe {
            let ops = thread_cache::op_count(tc);
            let idle = ops == (*tc).seen_ops.get();
            (*tc).seen_ops.set(ops);
            if thread_cache::cached_bytes_hint(tc) == 0 {
                return;
            }
            let wanted = match why {
                Why::Release => true,
                Why::Idle => idle,
                Why::Shrink => idle || thread_cache::behind_shrink(tc, epoch),
            };
            if !wanted {
                return;
            }
            // A first look without the guard: a running owner is not stalled by the route
            // while its /proc entry is read.
            if !asleep_in_syscall((*tc).tid) {
                return;
            }
            if !routed {
                thread_cache::route_guarded();
                routed = true;
            }
            if !thread_cache::try_steal(tc) {
                return;
            }
            if asleep_in_syscall((*tc).tid) && !thread_cache::in_hit_path(tc) {
                let n = thread_cache::empty_stolen(tc, epoch);
                if n > 0 {
                    bytes += n;
                    RECLAIMS.fetch_add(1, Ordering::Relaxed);
                    RECLAIMED_BYTES.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            thread_cache::end_steal(tc);
        }
    });
    if routed {
        thread_cache::route_normal();
    }
    bytes
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: SYS_gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Whether thread `tid` of this process sleeps in a system call.
fn asleep_in_syscall(tid: i32) -> bool {
    let mut buf = [0u8; 64];
    // "nr arg0 ... sp pc", "-1 sp pc" outside a system call, or "running".
    let Some(n) = read_task_file(tid, "syscall", &mut buf) else {
        return false;
    };
    buf[..n].first().is_some_and(u8::is_ascii_digit)
}

/// Reads `/proc/self/task/<tid>/<name>` into `buf`; the byte count, or `None`.
fn read_task_file(tid: i32, name: &str, buf: &mut [u8]) -> Option<usize> {
    let mut path = crate::hooks::StackBuf::<64>::new();
    // A path cut at the buffer's end has no NUL and is refused below.
    let _ = write!(path, "/proc/self/task/{tid}/{name}\0");
    let path = core::ffi::CStr::from_bytes_with_nul(path.as_bytes()).ok()?;
    let n = crate::os::read_small_file(path, buf);
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_files_are_read() {
        let tid = gettid();
        let mut buf = [0u8; 64];
        assert!(read_task_file(tid, "syscall", &mut buf).is_some());
        assert!(read_task_file(-5, "syscall", &mut buf).is_none());
    }

    #[test]
    fn sleeping_thread_is_asleep_and_running_thread_is_not() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ttx, trx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = std::thread::spawn(move || {
            ttx.send(gettid()).unwrap();
            rx.recv().unwrap();
        });
        let stop2 = stop.clone();
        let (stx, srx) = std::sync::mpsc::channel();
        let spinner = std::thread::spawn(move || {
            stx.send(gettid()).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        });
        let tid = trx.recv().unwrap();
        let spinning = srx.recv().unwrap();
        let mut asleep = false;
        for _ in 0..200 {
            if asleep_in_syscall(tid) {
                asleep = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(asleep, "a thread blocked in recv reads as asleep");
        for _ in 0..20 {
            assert!(
                !asleep_in_syscall(spinning),
                "a spinning thread read as asleep"
            );
        }
        stop.store(true, Ordering::Relaxed);
        tx.send(()).unwrap();
        h.join().unwrap();
        spinner.join().unwrap();
    }
}
