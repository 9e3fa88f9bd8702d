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
//! 2. For each registered cache worth emptying, it takes the cache's guard with `STOLEN`
//!    (impossible while the owner is in a slow path), then asks the kernel whether the owner is
//!    asleep in a system call (`/proc/self/task/TID/syscall`). A sleeping thread is in no hit
//!    path (hit paths make no system call; a page fault or a stop reads as "not in a system
//!    call"), and when it wakes, the route sends it to a slow path, which waits for the guard.
//!    The owner's signal mask must also be the one it had when its cache started: a signal
//!    handler that interrupted a hit path and then sleeps runs with its signal blocked.
//! 3. It empties the cache into the transfer caches, caps its lists short, releases the guard,
//!    and in the end restores the route.
//!
//! Invariants: a cache is emptied only under its guard with `STOLEN`, its owner asleep in a
//! system call, and `ROUTE` guarded since before the guard was taken. The pass takes the
//! registry lock first and the transfer, central and page-heap locks under it (the order
//! `fork` preparation uses too). Passes run from slow paths only, holding no allocator lock.
//!
//! When passes run: after the page heap released memory (a program is freeing much of its
//! heap: caches that did not follow the shrink, or were idle since the previous pass, are
//! emptied); every `OXMALLOC_IDLE_CACHE_MS` on a slow path (caches with no slow path since the
//! previous such pass); and on an explicit release of free memory (every sleeping thread's
//! cache). `OXMALLOC_IDLE_CACHE_MS=0` turns passes off.

use crate::sync::SpinLock;
use crate::thread_cache;
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
    /// Time: caches with no slow path since the last pass.
    Idle,
    /// An explicit release: every cache whose owner sleeps.
    Release,
}

/// Runs a pass if one is due. Called at the end of slow paths, holding no lock, with the
/// calling thread's count of slow paths (the clock is read on every 16th).
#[inline]
pub fn poll(slow_ops: usize) {
    if REQUESTED.load(Ordering::Relaxed) && REQUESTED.swap(false, Ordering::Relaxed) {
        run(Why::Shrink);
        return;
    }
    if slow_ops % 16 != 0 || IDLE_MS.load(Ordering::Relaxed) == 0 {
        return;
    }
    let now = coarse_ms();
    if now >= NEXT_IDLE.load(Ordering::Relaxed) {
        NEXT_IDLE.store(
            now + IDLE_MS.load(Ordering::Relaxed) as u64,
            Ordering::Relaxed,
        );
        run(Why::Idle);
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

/// Runs a pass (unless one is running). Returns the bytes taken from other threads' caches.
pub fn run(why: Why) -> usize {
    if IDLE_MS.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let Some(_pass) = PASS.try_lock() else {
        return 0;
    };
    let epoch = crate::page_heap::SHRINK_EPOCH.load(Ordering::Relaxed);
    let mut bytes = 0;
    let mut routed = false;
    crate::stats::for_each_cache(|tc| {
        // SAFETY: registered caches stay valid while the registry lock is held, which
        // `for_each_cache` does; the fields read without the guard are hints.
        unsafe {
            let ops = (*tc).slow_ops.get();
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
            if !routed {
                thread_cache::route_guarded();
                routed = true;
            }
            if !thread_cache::try_steal(tc) {
                return;
            }
            if asleep_in_syscall((*tc).tid, (*tc).sigmask) {
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

/// The calling thread's signal mask (its first 64 signals).
pub fn signal_mask() -> u64 {
    // SAFETY: sigset_t is plain data; pthread_sigmask with a null new set only reads the
    // mask into `set`.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut set) != 0 {
            return u64::MAX;
        }
        let mut mask = 0u64;
        for sig in 1..=64 {
            if libc::sigismember(&set, sig) == 1 {
                mask |= 1 << (sig - 1);
            }
        }
        mask
    }
}

/// Whether thread `tid` of this process sleeps in a system call with signal mask `mask`.
fn asleep_in_syscall(tid: i32, mask: u64) -> bool {
    let mut buf = [0u8; 2048];
    // "nr arg0 ... sp pc", "-1 sp pc" outside a system call, or "running".
    let Some(n) = read_task_file(tid, b"syscall", &mut buf[..64]) else {
        return false;
    };
    let text = &buf[..n];
    if text.is_empty() || !text[0].is_ascii_digit() {
        return false;
    }
    let Some(n) = read_task_file(tid, b"status", &mut buf) else {
        return false;
    };
    status_sigblk(&buf[..n]) == Some(mask)
}

/// The `SigBlk` mask of a `/proc/.../status` text.
fn status_sigblk(text: &[u8]) -> Option<u64> {
    let key = b"\nSigBlk:\t";
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let mut v = 0u64;
    let mut digits = 0;
    for &b in &text[at..] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => break,
        };
        v = (v << 4) | d as u64;
        digits += 1;
    }
    // More than 64 signals' worth of digits: keep the low 64, as `signal_mask` does.
    (digits > 0).then_some(v)
}

/// Reads `/proc/self/task/<tid>/<name>` into `buf`; the byte count, or `None`.
fn read_task_file(tid: i32, name: &[u8], buf: &mut [u8]) -> Option<usize> {
    let mut path = [0u8; 64];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        path[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    put(b"/proc/self/task/");
    let mut digits = [0u8; 12];
    let mut d = digits.len();
    let mut t = tid as u32;
    loop {
        d -= 1;
        digits[d] = b'0' + (t % 10) as u8;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b"/");
    put(name);
    // At most 16 + 10 + 1 + 7 bytes were written: the rest of `path` is NUL.
    let path = core::ffi::CStr::from_bytes_until_nul(&path).ok()?;
    let n = crate::config::read_file(path, buf);
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigblk_parses() {
        let text = b"Name:\tx\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000010002\nSigIgn:\t0\n";
        assert_eq!(status_sigblk(text), Some(0x10002));
        assert_eq!(status_sigblk(b"Name:\tx\n"), None);
    }

    #[test]
    fn own_thread_is_not_asleep() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let mut buf = [0u8; 64];
        assert!(read_task_file(tid, b"syscall", &mut buf).is_some());
        assert!(read_task_file(-5, b"syscall", &mut buf).is_none());
    }

    #[test]
    fn sleeping_thread_is_asleep() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ttx, trx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            ttx.send((unsafe { libc::gettid() }, signal_mask()))
                .unwrap();
            rx.recv().unwrap();
        });
        let (tid, mask) = trx.recv().unwrap();
        let mut asleep = false;
        for _ in 0..200 {
            if asleep_in_syscall(tid, mask) {
                asleep = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(asleep, "a thread blocked in recv reads as asleep");
        assert!(
            !asleep_in_syscall(tid, mask ^ 1),
            "a changed mask is refused"
        );
        tx.send(()).unwrap();
        h.join().unwrap();
    }
}
