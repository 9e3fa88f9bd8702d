//! Transfer caches: per size class, a small stack of whole batches moving between threads.
//!
//! Invariants (under the class's lock):
//! - Every stored chain holds exactly the class's batch size of objects.
//! - At most `capacity(class)` chains are stored: a class keeps at most about 256 KiB here, and
//!   no more than 1/1024 of the heap's handed-out bytes beyond one batch.
//! - While the page heap is shrinking (`page_heap::SHRINKING`), nothing is stored: batches go
//!   straight to the central lists, so that parked objects do not pin partly used spans.
//! - The lock is never held while calling the central free list: a full or empty transfer cache
//!   falls through to the central list after unlocking.

use crate::central_free_list::{self, Chain};
use crate::size_class::{SizeClass, NUM_CLASSES};
use crate::span::FreeObject;
use crate::sync::SpinLock;
use core::ptr;
use crossbeam_utils::CachePadded;

const MAX_SLOTS: usize = 32;
const TARGET_BYTES: usize = 256 * 1024;

pub struct TransferCache {
    slots: [(*mut FreeObject, *mut FreeObject); MAX_SLOTS],
    pub used: usize,
}

// SAFETY: the object pointers are only used under the lock.
unsafe impl Send for TransferCache {}

pub static TRANSFER: [CachePadded<SpinLock<TransferCache>>; NUM_CLASSES] = [const {
    CachePadded::new(SpinLock::new(TransferCache {
        slots: [(ptr::null_mut(), ptr::null_mut()); MAX_SLOTS],
        used: 0,
    }))
}; NUM_CLASSES];

/// How many batches class `class` may keep here: about `TARGET_BYTES`, but no more than
/// 1/1024 of the bytes the heap has handed out, and at least one batch.
#[inline]
pub fn capacity(class: SizeClass) -> usize {
    let info = class.info();
    let batch_bytes = info.batch as usize * info.size as usize;
    let active = crate::page_heap::ACTIVE_BYTES.load(core::sync::atomic::Ordering::Relaxed);
    (TARGET_BYTES.min(active / 1024) / batch_bytes).clamp(1, MAX_SLOTS)
}

/// [`capacity`] when the heap is large (for documentation and tables).
pub fn max_capacity(class: SizeClass) -> usize {
    let info = class.info();
    (TARGET_BYTES / (info.batch as usize * info.size as usize)).clamp(1, MAX_SLOTS)
}

/// Hands a chain of `chain.count` objects of `class` over to other threads.
///
/// # Safety
/// The chain holds distinct objects of `class` that the program no longer uses.
pub unsafe fn insert(class: SizeClass, chain: Chain) {
    let batch = class.info().batch as usize;
    let mut excess = None;
    let shrinking = crate::page_heap::SHRINKING.load(core::sync::atomic::Ordering::Relaxed);
    if chain.count == batch && !shrinking {
        let mut tc = TRANSFER[class.index()].lock();
        let cap = capacity(class);
        if tc.used < cap {
            let i = tc.used;
            tc.slots[i] = (chain.head, chain.tail);
            tc.used += 1;
            return;
        }
        if tc.used > cap {
            // The heap shrank: shed one stored batch along with this one.
            tc.used -= 1;
            excess = Some(tc.slots[tc.used].0);
        }
    }
    // SAFETY: forwarded from the caller; a stored chain holds a whole batch of free objects.
    unsafe {
        central_free_list::insert_range(class, chain.head, chain.count);
        if let Some(head) = excess {
            central_free_list::insert_range(class, head, batch);
        }
    }
}

/// Takes up to `n` objects of `class`: a stored batch when `n` is the batch size, otherwise
/// (or when none is stored) from the central free list.
pub fn remove(class: SizeClass, n: usize) -> Chain {
    let batch = class.info().batch as usize;
    if n == batch {
        let mut tc = TRANSFER[class.index()].lock();
        if tc.used > 0 {
            tc.used -= 1;
            let (head, tail) = tc.slots[tc.used];
            return Chain {
                head,
                tail,
                count: batch,
            };
        }
    }
    central_free_list::remove_range(class, n)
}

/// Moves every stored batch to the central free lists (so empty spans can reach the page heap).
pub fn drain_all() {
    for (c, cache) in TRANSFER.iter().enumerate().skip(1) {
        let class = SizeClass(c as u8);
        loop {
            let taken = {
                let mut tc = cache.lock();
                if tc.used == 0 {
                    break;
                }
                tc.used -= 1;
                tc.slots[tc.used]
            };
            // SAFETY: stored chains hold whole batches of free objects of this class.
            unsafe { central_free_list::insert_range(class, taken.0, class.info().batch as usize) };
        }
    }
}

/// Takes every transfer cache lock (before `fork`).
pub fn lock_all() {
    for l in TRANSFER.iter() {
        l.raw_lock();
    }
}

/// Releases the locks taken by [`lock_all`].
///
/// # Safety
/// Only after `lock_all`, on the thread that called it (or its forked child).
pub unsafe fn unlock_all() {
    for l in TRANSFER.iter() {
        // SAFETY: held since lock_all, per the caller's contract.
        unsafe { l.force_unlock() };
    }
}
