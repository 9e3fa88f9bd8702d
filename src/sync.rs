//! The allocator's own lock: a test-and-test-and-set spin lock that backs off and then yields,
//! or, for a lock whose holders make system calls (`SLEEPS`), sleeps on a futex.
//!
//! Invariants: locking never allocates and never parks through a global table (parking_lot
//! would), so it is safe inside malloc. Holders keep it for short, bounded work. `force_unlock`
//! exists only for `fork`, where the lock is known to be held by the forking thread (which no
//! longer exists in the child). The state is `UNLOCKED`, `LOCKED`, or `CONTENDED`: held, and a
//! thread may be asleep on it. Only sleeping locks use `CONTENDED`: a thread sets it (by swap)
//! before each sleep, so a holder that unlocks from it wakes one sleeper, and a sleeper that
//! takes the lock keeps it marked, since others may still sleep.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};
use crossbeam_utils::Backoff;

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;

/// A lock; with `SLEEPS`, waiters that have spun for a while sleep on a futex instead of
/// yielding in a loop (for a lock held across system calls, where a yielding waiter would burn
/// its CPU for as long as the call takes).
pub struct SpinLock<T, const SLEEPS: bool = false> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `state`.
unsafe impl<T: Send, const SLEEPS: bool> Sync for SpinLock<T, SLEEPS> {}
// SAFETY: the lock owns its value.
unsafe impl<T: Send, const SLEEPS: bool> Send for SpinLock<T, SLEEPS> {}

impl<T, const SLEEPS: bool> SpinLock<T, SLEEPS> {
    pub const fn new(value: T) -> Self {
        SpinLock {
            state: AtomicU32::new(UNLOCKED),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T, SLEEPS> {
        if self
            .state
            .compare_exchange_weak(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinGuard { lock: self }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T, SLEEPS>> {
        if self.state.load(Ordering::Relaxed) != UNLOCKED
            || self
                .state
                .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        Some(SpinGuard { lock: self })
    }

    #[cold]
    fn lock_contended(&self) {
        let backoff = Backoff::new();
        loop {
            while self.state.load(Ordering::Relaxed) != UNLOCKED {
                if !backoff.is_completed() {
                    backoff.snooze();
                } else if SLEEPS {
                    self.lock_sleeping();
                    return;
                } else {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe {
                        libc::sched_yield();
                    }
                }
            }
            if self
                .state
                .compare_exchange_weak(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Takes the lock, sleeping while it is held; leaves it `CONTENDED` (other threads may be
    /// asleep on it).
    #[cold]
    fn lock_sleeping(&self) {
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            // SAFETY: FUTEX_WAIT reads the word at a valid, aligned address we own for the
            // lock's lifetime; it returns at once if the word is no longer `CONTENDED`, and a
            // spurious wake-up only sends us round the loop again.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.state.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    CONTENDED,
                    core::ptr::null::<libc::timespec>(),
                );
            }
        }
    }

    #[inline]
    fn unlock(&self) {
        if !SLEEPS {
            self.state.store(UNLOCKED, Ordering::Release);
        } else if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            // SAFETY: FUTEX_WAKE on the lock's word; waking nobody is harmless.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.state.as_ptr(),
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    1,
                );
            }
        }
    }

    /// Takes the lock and keeps it without a guard (for `fork` preparation).
    pub fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken by [`raw_lock`](Self::raw_lock) (waking a sleeper, in the parent
    /// after fork).
    ///
    /// # Safety
    /// The lock must be held through `raw_lock` and not otherwise in use (the parent after
    /// fork, or the child where the holder's thread no longer exists).
    pub unsafe fn force_unlock(&self) {
        self.unlock();
    }

    /// Pointer to the protected value, for reads where a torn or stale value is acceptable
    /// (statistics). Callers must not write through it without the lock.
    pub fn data_ptr(&self) -> *mut T {
        self.value.get()
    }
}

pub struct SpinGuard<'a, T, const SLEEPS: bool = false> {
    lock: &'a SpinLock<T, SLEEPS>,
}

impl<T, const SLEEPS: bool> Deref for SpinGuard<'_, T, SLEEPS> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T, const SLEEPS: bool> DerefMut for SpinGuard<'_, T, SLEEPS> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T, const SLEEPS: bool> Drop for SpinGuard<'_, T, SLEEPS> {
    #[inline]
    fn drop(&mut self) {
        self.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::SpinLock;
    use std::sync::Arc;
    use std::time::Duration;

    /// Holders that sleep inside the lock send waiters to the futex; every waiter must be woken
    /// and every increment kept.
    #[test]
    fn sleeping_lock_excludes_and_wakes() {
        let lock = Arc::new(SpinLock::<u64, true>::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let mut g = lock.lock();
                        let v = *g;
                        if i % 20 == 0 {
                            std::thread::sleep(Duration::from_micros(300));
                        }
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 800);
        assert!(lock.try_lock().is_some());
    }

    /// `raw_lock` / `force_unlock` (the fork path) wake a thread asleep on the lock.
    #[test]
    fn force_unlock_wakes_a_sleeper() {
        let lock = Arc::new(SpinLock::<u64, true>::new(0));
        lock.raw_lock();
        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || *lock.lock() += 1)
        };
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: held through `raw_lock` by this thread, which uses it no further until here.
        unsafe { lock.force_unlock() };
        waiter.join().unwrap();
        assert_eq!(*lock.lock(), 1);
    }
}
