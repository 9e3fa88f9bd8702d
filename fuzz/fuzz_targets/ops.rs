//! Single-threaded sequences of `GlobalAlloc` calls on `OxMalloc`, checked against a shadow
//! model of the live blocks: size, alignment, usable size, no overlap, zeroing and contents.
//! After each input every block is freed and the page heap's invariants must hold.
//!
//! The fuzz binary keeps the default global allocator; `OxMalloc` is called explicitly.

#![no_main]

use arbitrary::Arbitrary;
use core::alloc::{GlobalAlloc, Layout};
use libfuzzer_sys::fuzz_target;
use oxmalloc::OxMalloc;
use oxmalloc_fuzz::{align_from, check, check_zero, fill, Size};
use std::collections::BTreeMap;

/// Most operations one input runs.
const MAX_OPS: usize = 512;
/// Most blocks live at once.
const MAX_LIVE: usize = 256;
/// Most bytes live at once (allocations past it are skipped).
const MAX_LIVE_BYTES: usize = 256 << 20;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: Size,
        align: u8,
    },
    AllocZeroed {
        size: Size,
        align: u8,
    },
    Realloc {
        idx: u16,
        size: Size,
    },
    Dealloc {
        idx: u16,
    },
    /// Checks one block's contents and usable size without changing anything.
    Check {
        idx: u16,
    },
    /// Returns all free memory to the OS (drains this thread's cache too).
    Release,
}

struct Block {
    ptr: *mut u8,
    layout: Layout,
    tag: u32,
}

#[derive(Default)]
struct Model {
    blocks: Vec<Block>,
    /// Start address -> end address of every live block.
    ranges: BTreeMap<usize, usize>,
    live_bytes: usize,
    next_tag: u32,
}

impl Model {
    fn insert_range(&mut self, p: *mut u8, size: usize) {
        let start = p as usize;
        let end = start + size;
        if let Some((&s, &e)) = self.ranges.range(..end).next_back() {
            assert!(
                e <= start,
                "block {start:#x}..{end:#x} overlaps live block {s:#x}..{e:#x}"
            );
        }
        self.ranges.insert(start, end);
        self.live_bytes += size;
    }

    fn remove_range(&mut self, p: *mut u8, size: usize) {
        let removed = self.ranges.remove(&(p as usize));
        assert_eq!(removed, Some(p as usize + size), "model lost block {p:p}");
        self.live_bytes -= size;
    }

    fn tag(&mut self) -> u32 {
        self.next_tag = self.next_tag.wrapping_add(1);
        self.next_tag
    }

    /// Checks a fresh block from the allocator and records it.
    fn add(&mut self, p: *mut u8, layout: Layout, zeroed: bool) {
        let size = layout.size();
        assert!(!p.is_null(), "allocation of {layout:?} failed");
        assert_eq!(
            p as usize % layout.align(),
            0,
            "{p:p} misaligned for {layout:?}"
        );
        let usable = oxmalloc::allocator::usable_size(p);
        assert!(
            usable >= size,
            "usable_size({p:p}) = {usable} < {size} for {layout:?}"
        );
        if zeroed {
            // SAFETY: `p` is a fresh block of `size` bytes.
            unsafe { check_zero(p, size, "alloc_zeroed") };
        }
        self.insert_range(p, size);
        let tag = self.tag();
        // SAFETY: `p` is a fresh block of `size` bytes.
        unsafe { fill(p, size, tag) };
        self.blocks.push(Block {
            ptr: p,
            layout,
            tag,
        });
    }

    fn check_block(&self, b: &Block, what: &str) {
        let size = b.layout.size();
        // SAFETY: `b` is live with `size` bytes.
        unsafe { check(b.ptr, size, size, b.tag, what) };
        let usable = oxmalloc::allocator::usable_size(b.ptr);
        assert!(
            usable >= size,
            "usable_size({:p}) = {usable} < {size}",
            b.ptr
        );
    }

    fn dealloc(&mut self, i: usize) {
        let b = self.blocks.swap_remove(i);
        self.check_block(&b, "before dealloc");
        self.remove_range(b.ptr, b.layout.size());
        // SAFETY: `b.ptr` is live and was allocated by OxMalloc with `b.layout`.
        unsafe { OxMalloc.dealloc(b.ptr, b.layout) };
    }

    fn realloc(&mut self, i: usize, new_size: usize) {
        let b = &self.blocks[i];
        let old = b.layout;
        let (ptr, tag) = (b.ptr, b.tag);
        self.check_block(&self.blocks[i], "before realloc");
        // SAFETY: `ptr` is live with `old`; `new_size` is non-zero and fits `old.align()` (the
        // caller built it with `Layout::from_size_align`).
        let q = unsafe { OxMalloc.realloc(ptr, old, new_size) };
        let new = Layout::from_size_align(new_size, old.align()).unwrap();
        assert!(!q.is_null(), "realloc({ptr:p}, {old:?}, {new_size}) failed");
        assert_eq!(
            q as usize % new.align(),
            0,
            "realloc result {q:p} misaligned for {new:?}"
        );
        let keep = old.size().min(new_size);
        // SAFETY: `q` is live with at least `keep` bytes.
        unsafe { check(q, keep, old.size(), tag, "after realloc") };
        self.remove_range(ptr, old.size());
        self.insert_range(q, new_size);
        let usable = oxmalloc::allocator::usable_size(q);
        assert!(
            usable >= new_size,
            "usable_size({q:p}) = {usable} < {new_size} after realloc"
        );
        let tag = self.tag();
        // SAFETY: `q` is live with `new_size` bytes.
        unsafe { fill(q, new_size, tag) };
        self.blocks[i] = Block {
            ptr: q,
            layout: new,
            tag,
        };
    }

    fn fits(&self, size: usize) -> bool {
        self.blocks.len() < MAX_LIVE && self.live_bytes + size <= MAX_LIVE_BYTES
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut m = Model::default();
    for op in ops.into_iter().take(MAX_OPS) {
        match op {
            Op::Alloc { size, align } | Op::AllocZeroed { size, align } => {
                let zeroed = matches!(op, Op::AllocZeroed { .. });
                let Ok(layout) = Layout::from_size_align(size.bytes(), align_from(align)) else {
                    continue;
                };
                if !m.fits(layout.size()) {
                    continue;
                }
                // SAFETY: `layout` has a non-zero size.
                let p = unsafe {
                    if zeroed {
                        OxMalloc.alloc_zeroed(layout)
                    } else {
                        OxMalloc.alloc(layout)
                    }
                };
                m.add(p, layout, zeroed);
            }
            Op::Realloc { idx, size } => {
                if m.blocks.is_empty() {
                    continue;
                }
                let i = idx as usize % m.blocks.len();
                let new_size = size.bytes();
                let old = m.blocks[i].layout;
                if Layout::from_size_align(new_size, old.align()).is_err()
                    || (new_size > old.size() && !m.fits(new_size - old.size()))
                {
                    continue;
                }
                m.realloc(i, new_size);
            }
            Op::Dealloc { idx } => {
                if !m.blocks.is_empty() {
                    let i = idx as usize % m.blocks.len();
                    m.dealloc(i);
                }
            }
            Op::Check { idx } => {
                if !m.blocks.is_empty() {
                    let i = idx as usize % m.blocks.len();
                    m.check_block(&m.blocks[i], "check");
                }
            }
            Op::Release => {
                oxmalloc::release_free_memory();
            }
        }
    }
    while !m.blocks.is_empty() {
        m.dealloc(m.blocks.len() - 1);
    }
    assert!(m.ranges.is_empty());
    if let Err(e) = oxmalloc::page_heap::lock().check_invariants() {
        panic!("page heap invariant broken after freeing everything: {e}");
    }
});
