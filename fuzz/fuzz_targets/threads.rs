//! Several threads allocating, resizing and freeing through `OxMalloc` at once, handing blocks
//! to each other through a shared list so that many are freed by a thread other than the one
//! that allocated them. Every block's contents are checked whenever it changes hands or is
//! resized or freed. After the threads exit (returning their caches) and the leftovers are
//! freed, the page heap's invariants must hold.

#![no_main]

use arbitrary::Arbitrary;
use core::alloc::{GlobalAlloc, Layout};
use libfuzzer_sys::fuzz_target;
use oxmalloc::OxMalloc;
use oxmalloc_fuzz::{align_from, check, fill, Size};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

/// Most operations one input runs, over all threads.
const MAX_OPS: usize = 1024;
/// Most blocks a thread keeps.
const MAX_OWN: usize = 128;
/// Largest block size.
const MAX_SIZE: usize = 4 << 20;
/// Most blocks waiting in the shared list.
const MAX_SHARED: usize = 256;
/// Most bytes live at once over all threads (allocations past it are skipped), so that the
/// pages the pattern touches stay well below libFuzzer's RSS limit.
const MAX_LIVE_BYTES: usize = 256 << 20;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: Size,
        align: u8,
    },
    Free {
        idx: u16,
    },
    Realloc {
        idx: u16,
        size: Size,
    },
    /// Moves one of this thread's blocks to the shared list.
    Give {
        idx: u16,
    },
    /// Takes a block from the shared list and keeps it.
    Take,
    /// Takes a block from the shared list and frees it at once.
    TakeFree,
    /// Returns all free memory to the OS (this thread's cache included).
    Release,
    Yield,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// 2 to 4 threads.
    threads: u8,
    /// Each op runs on thread `t % threads`.
    ops: Vec<(u8, Op)>,
}

struct Block {
    ptr: *mut u8,
    layout: Layout,
    tag: u32,
}

// SAFETY: a `Block` is the sole handle to its memory; moving it to another thread moves the
// ownership, and oxmalloc allows freeing on any thread.
unsafe impl Send for Block {}

static TAGS: AtomicU32 = AtomicU32::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Reserves `n` bytes of the live budget; false when it is spent.
fn reserve(n: usize) -> bool {
    let old = LIVE_BYTES.fetch_add(n, Ordering::Relaxed);
    if old + n > MAX_LIVE_BYTES {
        LIVE_BYTES.fetch_sub(n, Ordering::Relaxed);
        return false;
    }
    true
}

fn new_block(p: *mut u8, layout: Layout) -> Block {
    assert!(!p.is_null(), "allocation of {layout:?} failed");
    assert_eq!(
        p as usize % layout.align(),
        0,
        "{p:p} misaligned for {layout:?}"
    );
    let usable = oxmalloc::allocator::usable_size(p);
    assert!(
        usable >= layout.size(),
        "usable_size({p:p}) = {usable} < {layout:?}"
    );
    let tag = TAGS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `p` is a fresh block of `layout.size()` bytes.
    unsafe { fill(p, layout.size(), tag) };
    Block {
        ptr: p,
        layout,
        tag,
    }
}

fn check_block(b: &Block, what: &str) {
    // SAFETY: `b` is live with `layout.size()` bytes, owned by the calling thread.
    unsafe { check(b.ptr, b.layout.size(), b.layout.size(), b.tag, what) };
}

fn free_block(b: Block, what: &str) {
    check_block(&b, what);
    // SAFETY: `b.ptr` is live and was allocated by OxMalloc with `b.layout`.
    unsafe { OxMalloc.dealloc(b.ptr, b.layout) };
    LIVE_BYTES.fetch_sub(b.layout.size(), Ordering::Relaxed);
}

fn run_thread(ops: &[&Op], shared: &Mutex<Vec<Block>>) {
    let mut own: Vec<Block> = Vec::new();
    for op in ops {
        match op {
            Op::Alloc { size, align } => {
                let Ok(layout) =
                    Layout::from_size_align(size.bytes_at_most(MAX_SIZE), align_from(*align))
                else {
                    continue;
                };
                if own.len() >= MAX_OWN || !reserve(layout.size()) {
                    continue;
                }
                // SAFETY: `layout` has a non-zero size.
                let p = unsafe { OxMalloc.alloc(layout) };
                own.push(new_block(p, layout));
            }
            Op::Free { idx } => {
                if !own.is_empty() {
                    let i = *idx as usize % own.len();
                    free_block(own.swap_remove(i), "free by owner");
                }
            }
            Op::Realloc { idx, size } => {
                if own.is_empty() {
                    continue;
                }
                let i = *idx as usize % own.len();
                let b = &own[i];
                let new_size = size.bytes_at_most(MAX_SIZE);
                let Ok(new) = Layout::from_size_align(new_size, b.layout.align()) else {
                    continue;
                };
                if !reserve(new_size) {
                    continue;
                }
                check_block(b, "before realloc");
                // SAFETY: `b.ptr` is live with `b.layout`; `new` is a valid layout.
                let q = unsafe { OxMalloc.realloc(b.ptr, b.layout, new_size) };
                assert!(
                    !q.is_null(),
                    "realloc({:p}, {:?}, {new_size}) failed",
                    b.ptr,
                    b.layout
                );
                let keep = b.layout.size().min(new_size);
                // SAFETY: `q` is live with at least `keep` bytes.
                unsafe { check(q, keep, b.layout.size(), b.tag, "after realloc") };
                LIVE_BYTES.fetch_sub(b.layout.size(), Ordering::Relaxed);
                own[i] = new_block(q, new);
            }
            Op::Give { idx } => {
                if own.is_empty() {
                    continue;
                }
                let mut list = shared.lock().unwrap();
                if list.len() < MAX_SHARED {
                    let i = *idx as usize % own.len();
                    list.push(own.swap_remove(i));
                }
            }
            Op::Take => {
                if own.len() >= MAX_OWN {
                    continue;
                }
                let b = shared.lock().unwrap().pop();
                if let Some(b) = b {
                    check_block(&b, "taken from another thread");
                    own.push(b);
                }
            }
            Op::TakeFree => {
                let b = shared.lock().unwrap().pop();
                if let Some(b) = b {
                    free_block(b, "free by another thread");
                }
            }
            Op::Release => {
                oxmalloc::release_free_memory();
            }
            Op::Yield => std::thread::yield_now(),
        }
    }
    // Half of what is left goes to the other threads, the rest is freed here.
    let mut list = shared.lock().unwrap();
    for (k, b) in own.into_iter().enumerate() {
        if k % 2 == 0 && list.len() < MAX_SHARED {
            list.push(b);
        } else {
            free_block(b, "free at thread end");
        }
    }
}

fuzz_target!(|input: Input| {
    let n = 2 + input.threads as usize % 3;
    let mut streams: Vec<Vec<&Op>> = (0..n).map(|_| Vec::new()).collect();
    for (t, op) in input.ops.iter().take(MAX_OPS) {
        streams[*t as usize % n].push(op);
    }
    let shared = Mutex::new(Vec::new());
    let start = Barrier::new(n);
    std::thread::scope(|s| {
        for ops in &streams {
            let (shared, start) = (&shared, &start);
            s.spawn(move || {
                start.wait();
                run_thread(ops, shared);
            });
        }
    });
    for b in shared.into_inner().unwrap() {
        free_block(b, "free of leftovers by the main thread");
    }
    if let Err(e) = oxmalloc::page_heap::lock().check_invariants() {
        panic!("page heap invariant broken after freeing everything: {e}");
    }
});
