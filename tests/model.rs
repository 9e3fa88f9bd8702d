//! Shadow-model tests of `OxMalloc` driven through its `GlobalAlloc` methods.
//!
//! The property tests run random sequences of `alloc`, `alloc_zeroed`, `realloc` and `dealloc`
//! (all sizes; large blocks only; small classes only) against a shadow model of the live
//! blocks and check, after every step:
//! - every valid non-zero-size layout gets a non-null, suitably aligned pointer;
//! - no two live blocks overlap (the model keeps the live blocks ordered by address);
//! - every live block keeps the byte pattern written into it (the pattern is derived from a
//!   per-block id, so a block clobbered by another block's writes, or handed out twice, shows);
//! - `realloc` preserves the first `min(old, new)` bytes and the alignment;
//! - `alloc_zeroed` memory reads as zero, including memory that held another block before.
//!
//! The deterministic tests cover zero-size and impossible layouts, very large alignments
//! (2 MiB and 1 GiB), `realloc` across size-class and small/large boundaries, and the natural
//! alignment promised for small sizes. `PROPTEST_CASES=N` runs more random cases.
//!
//! The test binary's own global allocator is the system one; `OxMalloc` is only called
//! explicitly.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::fmt::Write as _;

mod common;

use common::pattern::{fill_pattern, pattern_mismatch, splitmix64, PERIOD};
use oxmalloc::OxMalloc;
use proptest::prelude::*;
use proptest::test_runner::Config;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// Blocks up to this size are checked byte by byte after `alloc_zeroed`; bigger ones are
/// sampled.
const ZERO_CHECK_FULL: usize = MIB;

static ZEROS: [u8; 4096] = [0; 4096];

/// Offset of a non-zero byte in `bytes`: every byte is checked up to `ZERO_CHECK_FULL`, beyond
/// that the first and last 64 KiB and a 64-byte window every 4093 bytes.
fn zero_mismatch(bytes: &[u8]) -> Option<usize> {
    let check = |start: usize, end: usize| -> Option<usize> {
        let region = &bytes[start..end];
        for (chunk_index, chunk) in region.chunks(ZEROS.len()).enumerate() {
            if chunk != &ZEROS[..chunk.len()] {
                let within = chunk.iter().position(|&b| b != 0).expect("non-zero byte");
                return Some(start + chunk_index * ZEROS.len() + within);
            }
        }
        None
    };
    let len = bytes.len();
    if len <= ZERO_CHECK_FULL {
        return check(0, len);
    }
    let edge = 64 * KIB;
    if let Some(off) = check(0, edge).or_else(|| check(len - edge, len)) {
        return Some(off);
    }
    let mut start = edge;
    while start + 64 <= len - edge {
        if let Some(off) = check(start, start + 64) {
            return Some(off);
        }
        start += PERIOD;
    }
    None
}

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).expect("valid layout")
}

/// A live block handed out by `OxMalloc` and owned by the test.
#[derive(Debug)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
    /// Id whose pattern the block holds.
    id: u64,
}

impl Block {
    fn addr(&self) -> usize {
        self.ptr as usize
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` came from `OxMalloc` for `layout` and has not been freed (a `Block` is
        // dropped from the model when freed); its memory is owned by this block alone.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference to the block.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

/// Live blocks, indexable for op selection and ordered by address for overlap checks.
#[derive(Default)]
struct Model {
    blocks: Vec<Block>,
    /// Start address -> end address of every live block.
    by_addr: BTreeMap<usize, usize>,
    next_id: u64,
    /// Executed operations, for failure messages.
    trace: String,
}

impl Model {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records `[addr, addr + size)` as live, or describes the live block it overlaps.
    fn insert_range(&mut self, addr: usize, size: usize) -> Result<(), String> {
        let end = addr + size;
        if let Some((&prev_start, &prev_end)) = self.by_addr.range(..=addr).next_back() {
            if prev_end > addr {
                return Err(format!(
                    "new block {addr:#x}..{end:#x} overlaps live block {prev_start:#x}..{prev_end:#x}"
                ));
            }
        }
        if let Some((&next_start, &next_end)) = self.by_addr.range(addr..).next() {
            if next_start < end {
                return Err(format!(
                    "new block {addr:#x}..{end:#x} overlaps live block {next_start:#x}..{next_end:#x}"
                ));
            }
        }
        self.by_addr.insert(addr, end);
        Ok(())
    }

    fn check_block(&self, block: &Block, when: &str) -> Result<(), String> {
        match pattern_mismatch(block.bytes(), block.id) {
            None => Ok(()),
            Some(off) => Err(format!(
                "block #{} at {:#x} (size {}, align {}) lost its contents at offset {off} {when}",
                block.id,
                block.addr(),
                block.layout.size(),
                block.layout.align()
            )),
        }
    }

    fn alloc(&mut self, size: usize, align: usize, zeroed: bool) -> Result<(), String> {
        let layout = layout(size, align);
        let ptr = if zeroed {
            // SAFETY: `layout` has a non-zero size.
            unsafe { OxMalloc.alloc_zeroed(layout) }
        } else {
            // SAFETY: `layout` has a non-zero size.
            unsafe { OxMalloc.alloc(layout) }
        };
        let id = self.new_id();
        let name = if zeroed { "alloc_zeroed" } else { "alloc" };
        let _ = writeln!(
            self.trace,
            "{name}(size {size}, align {align}) -> #{id} {ptr:p}"
        );
        if ptr.is_null() {
            return Err(format!("{name}(size {size}, align {align}) returned null"));
        }
        if ptr as usize % align != 0 {
            return Err(format!(
                "{name}(size {size}, align {align}) returned misaligned {ptr:p}"
            ));
        }
        self.insert_range(ptr as usize, size)?;
        let mut block = Block { ptr, layout, id };
        if zeroed {
            if let Some(off) = zero_mismatch(block.bytes()) {
                return Err(format!(
                    "alloc_zeroed(size {size}, align {align}) -> {ptr:p}: byte at offset {off} is {:#04x}",
                    block.bytes()[off]
                ));
            }
        }
        fill_pattern(block.bytes_mut(), id);
        self.blocks.push(block);
        Ok(())
    }

    fn dealloc(&mut self, which: usize) -> Result<(), String> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        let index = which % self.blocks.len();
        let block = self.blocks.swap_remove(index);
        let _ = writeln!(
            self.trace,
            "dealloc(#{} {:p}, size {}, align {})",
            block.id,
            block.ptr,
            block.layout.size(),
            block.layout.align()
        );
        self.check_block(&block, "before dealloc")?;
        self.by_addr.remove(&block.addr());
        // SAFETY: the block is live, was allocated by `OxMalloc` with `block.layout`, and is
        // no longer referenced by the model.
        unsafe { OxMalloc.dealloc(block.ptr, block.layout) };
        Ok(())
    }

    fn realloc(&mut self, which: usize, new_size: usize) -> Result<(), String> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        let index = which % self.blocks.len();
        let old = &self.blocks[index];
        let (old_ptr, old_layout, old_id) = (old.ptr, old.layout, old.id);
        self.check_block(old, "before realloc")?;
        let id = self.new_id();
        // SAFETY: `old_ptr` is live and was allocated by `OxMalloc` with `old_layout`;
        // `new_size` is non-zero and far below `isize::MAX` when rounded to the alignment.
        let ptr = unsafe { OxMalloc.realloc(old_ptr, old_layout, new_size) };
        let _ = writeln!(
            self.trace,
            "realloc(#{old_id} {old_ptr:p}, size {}, align {}, new size {new_size}) -> #{id} {ptr:p}",
            old_layout.size(),
            old_layout.align()
        );
        let what = format!(
            "realloc(#{old_id} {old_ptr:p}, size {}, align {}, new size {new_size})",
            old_layout.size(),
            old_layout.align()
        );
        if ptr.is_null() {
            return Err(format!("{what} returned null"));
        }
        if ptr as usize % old_layout.align() != 0 {
            return Err(format!("{what} returned misaligned {ptr:p}"));
        }
        self.by_addr.remove(&(old_ptr as usize));
        self.insert_range(ptr as usize, new_size)?;
        let mut block = Block {
            ptr,
            layout: layout(new_size, old_layout.align()),
            id: old_id,
        };
        let kept = old_layout.size().min(new_size);
        if let Some(off) = pattern_mismatch(&block.bytes()[..kept], old_id) {
            return Err(format!(
                "{what} -> {ptr:p} did not preserve the contents: first difference at offset {off} of {kept}"
            ));
        }
        block.id = id;
        fill_pattern(block.bytes_mut(), id);
        self.blocks[index] = block;
        Ok(())
    }

    /// Checks and frees every live block.
    fn free_all(&mut self) -> Result<(), String> {
        while !self.blocks.is_empty() {
            self.dealloc(0)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, align: usize },
    AllocZeroed { size: usize, align: usize },
    Realloc { which: usize, new_size: usize },
    Dealloc { which: usize },
}

/// Sizes that sit on or next to likely class, page and small/large boundaries.
const EDGE_SIZES: [usize; 20] = [
    1,
    8,
    15,
    16,
    17,
    128,
    255,
    256,
    257,
    1024,
    4096,
    8192,
    8193,
    32 * KIB,
    64 * KIB,
    256 * KIB - 1,
    256 * KIB,
    256 * KIB + 1,
    MIB,
    2 * MIB + 1,
];

fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 1usize..64,
        5 => 64usize..=4096,
        3 => 4097usize..=300_000,
        1 => 300_001usize..=4 * MIB,
        1 => prop::sample::select(&EDGE_SIZES[..]),
    ]
}

fn align_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        10 => (0u32..=4).prop_map(|shift| 1usize << shift),
        4 => (5u32..=16).prop_map(|shift| 1usize << shift),
        1 => Just(2 * MIB),
    ]
}

/// Sizes of the page heap's large blocks, around and above the small/large boundary.
fn large_size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 200_000usize..=600_000,
        2 => 600_001usize..=4 * MIB,
        1 => prop::sample::select(&[256 * KIB, 256 * KIB + 1, 264 * KIB, MIB, 2 * MIB][..]),
    ]
}

/// Requests of the small classes only, mostly the smallest.
fn tiny_size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 1usize..=128,
        2 => 129usize..=2048,
        1 => 2049usize..=32 * KIB,
    ]
}

fn op_strategy<S>(sizes: fn() -> S, aligns: BoxedStrategy<usize>) -> impl Strategy<Value = Op>
where
    S: Strategy<Value = usize> + 'static,
{
    prop_oneof![
        4 => (sizes(), aligns.clone()).prop_map(|(size, align)| Op::Alloc { size, align }),
        2 => (sizes(), aligns).prop_map(|(size, align)| Op::AllocZeroed { size, align }),
        2 => (any::<usize>(), sizes())
            .prop_map(|(which, new_size)| Op::Realloc { which, new_size }),
        3 => any::<usize>().prop_map(|which| Op::Dealloc { which }),
    ]
}

/// Property-test configuration: `default_cases` cases unless `PROPTEST_CASES` is set; failing
/// cases are reported, not written to a regressions file.
fn config(default_cases: u32) -> Config {
    let base = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            default_cases
        },
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..base
    }
}

fn run_ops(ops: &[Op]) -> Result<(), String> {
    let mut model = Model::default();
    let result = ops
        .iter()
        .try_for_each(|op| match *op {
            Op::Alloc { size, align } => model.alloc(size, align, false),
            Op::AllocZeroed { size, align } => model.alloc(size, align, true),
            Op::Realloc { which, new_size } => model.realloc(which, new_size),
            Op::Dealloc { which } => model.dealloc(which),
        })
        .and_then(|()| model.free_all())
        .and_then(|()| {
            oxmalloc::page_heap::lock()
                .check_invariants()
                .map_err(|e| format!("page heap invariant broken: {e}"))
        });
    result.map_err(|err| format!("{err}\nexecuted operations:\n{}", model.trace))
}

proptest! {
    #![proptest_config(config(256))]

    /// All sizes and alignments.
    #[test]
    fn random_ops_match_shadow_model(
        ops in prop::collection::vec(op_strategy(size_strategy, align_strategy().boxed()), 1..200)
    ) {
        if let Err(err) = run_ops(&ops) {
            prop_assert!(false, "{}", err);
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Large blocks only, so that `realloc` grows and shrinks page runs next to each other.
    #[test]
    fn random_large_ops_match_shadow_model(
        ops in prop::collection::vec(
            op_strategy(large_size_strategy, prop_oneof![
                6 => Just(1usize),
                2 => (12u32..=16).prop_map(|shift| 1usize << shift),
                1 => Just(2 * MIB),
            ].boxed()),
            1..100,
        )
    ) {
        if let Err(err) = run_ops(&ops) {
            prop_assert!(false, "{}", err);
        }
    }

    /// Small classes only, with long sequences, so that objects are reused many times.
    #[test]
    fn random_small_ops_match_shadow_model(
        ops in prop::collection::vec(
            op_strategy(tiny_size_strategy, (0u32..=7).prop_map(|shift| 1usize << shift).boxed()),
            1..1000,
        )
    ) {
        if let Err(err) = run_ops(&ops) {
            prop_assert!(false, "{}", err);
        }
    }
}

#[test]
fn zero_size_layouts_return_null() {
    for shift in 0..=30 {
        let layout = layout(0, 1 << shift);
        // SAFETY: a zero-size layout is passed on purpose: `OxMalloc` documents a null return.
        let ptr = unsafe { OxMalloc.alloc(layout) };
        assert!(ptr.is_null(), "alloc({layout:?}) returned {ptr:p}");
        // SAFETY: as above.
        let ptr = unsafe { OxMalloc.alloc_zeroed(layout) };
        assert!(ptr.is_null(), "alloc_zeroed({layout:?}) returned {ptr:p}");
    }
}

/// Layouts that `Layout` accepts but no machine can satisfy.
fn impossible_layouts() -> Vec<Layout> {
    let max = isize::MAX as usize;
    let mut layouts = vec![
        layout(max - 4095, 4096),
        layout(max - 7, 8),
        layout(max - 15, 16),
        layout(max - 15, 1),
        layout(max - (2 * MIB - 1), 2 * MIB),
        layout(max - (GIB - 1), GIB),
        layout(max / 2 + 1, 1),
        layout(1 << 62, 64),
        layout(1 << 48, 16),
        layout(1 << 47, 4096),
        layout(1 << 47, GIB),
    ];
    // Sizes just below the limit for every alignment up to 1 GiB.
    for shift in 0..=30 {
        let align = 1usize << shift;
        layouts.push(layout(max - (align - 1), align));
        layouts.push(layout((max - (align - 1)) / 2, align));
    }
    layouts
}

#[test]
fn impossible_layouts_return_null() {
    for layout in impossible_layouts() {
        // SAFETY: non-zero size; `OxMalloc` documents a null return when it cannot satisfy it.
        let ptr = unsafe { OxMalloc.alloc(layout) };
        assert!(ptr.is_null(), "alloc({layout:?}) returned {ptr:p}");
        // SAFETY: as above.
        let ptr = unsafe { OxMalloc.alloc_zeroed(layout) };
        assert!(ptr.is_null(), "alloc_zeroed({layout:?}) returned {ptr:p}");
    }
}

#[test]
fn failed_realloc_to_impossible_size_keeps_old_block() {
    let max = isize::MAX as usize;
    for (size, align) in [
        (24, 8),
        (100, 16),
        (5000, 64),
        (300_000, 4096),
        (64, 2 * MIB),
    ] {
        let old = layout(size, align);
        for new_size in [max - 4095, max - (align - 1), 1 << 62, 1 << 47] {
            let new_size = new_size & !(align - 1);
            // SAFETY: non-zero size.
            let ptr = unsafe { OxMalloc.alloc(old) };
            assert!(!ptr.is_null(), "alloc({old:?}) returned null");
            let mut block = Block {
                ptr,
                layout: old,
                id: 7,
            };
            fill_pattern(block.bytes_mut(), 7);
            // SAFETY: `ptr` is live with layout `old`; `new_size` is a multiple of the
            // alignment no larger than `isize::MAX`.
            let new = unsafe { OxMalloc.realloc(ptr, old, new_size) };
            assert!(
                new.is_null(),
                "realloc({ptr:p}, {old:?}, new size {new_size}) returned {new:p}"
            );
            assert_eq!(
                pattern_mismatch(block.bytes(), 7),
                None,
                "old block of {old:?} changed after a failed realloc to {new_size}"
            );
            // The old block is still usable: it can still grow normally.
            // SAFETY: `ptr` is still live with layout `old` after the failed realloc.
            let grown = unsafe { OxMalloc.realloc(ptr, old, size * 2) };
            assert!(
                !grown.is_null(),
                "realloc of {old:?} to {} failed",
                size * 2
            );
            let grown_block = Block {
                ptr: grown,
                layout: layout(size * 2, align),
                id: 7,
            };
            assert_eq!(pattern_mismatch(&grown_block.bytes()[..size], 7), None);
            // SAFETY: `grown` is live with the layout it was reallocated to.
            unsafe { OxMalloc.dealloc(grown, grown_block.layout) };
        }
    }
}

/// Resident set size of this process in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS value")
}

fn check_huge_alignment(align: usize) {
    let sizes = [1, 8, 64, 4096, 100_000, 3 * MIB];
    let mut model = Model::default();
    for &size in &sizes {
        for zeroed in [false, true] {
            model
                .alloc(size, align, zeroed)
                .unwrap_or_else(|err| panic!("{err}\n{}", model.trace));
        }
    }
    for block in &model.blocks {
        model.check_block(block, "while all are live").unwrap();
    }
    // Grow and shrink in place of the alignment.
    for _ in 0..model.blocks.len() {
        let size = model.blocks[0].layout.size();
        model
            .realloc(0, size * 2 + 1)
            .and_then(|()| model.realloc(0, size))
            .unwrap_or_else(|err| panic!("{err}\n{}", model.trace));
        let first = model.blocks.swap_remove(0);
        model.blocks.push(first);
    }
    model
        .free_all()
        .unwrap_or_else(|err| panic!("{err}\n{}", model.trace));
}

#[test]
fn two_mib_aligned_small_allocations() {
    check_huge_alignment(2 * MIB);
}

#[test]
fn one_gib_aligned_small_allocations() {
    check_huge_alignment(GIB);
}

#[test]
fn one_gib_alignment_costs_little_resident_memory() {
    const COUNT: usize = 8;
    let before = rss_kib();
    let mut blocks = Vec::new();
    for i in 0..COUNT {
        let layout = layout(4096, GIB);
        let ptr = if i % 2 == 0 {
            // SAFETY: non-zero size.
            unsafe { OxMalloc.alloc(layout) }
        } else {
            // SAFETY: non-zero size.
            unsafe { OxMalloc.alloc_zeroed(layout) }
        };
        assert!(!ptr.is_null(), "allocation {i} of {layout:?} returned null");
        assert_eq!(ptr as usize % GIB, 0, "{ptr:p} is not 1 GiB aligned");
        let mut block = Block {
            ptr,
            layout,
            id: 1000 + i as u64,
        };
        let id = block.id;
        fill_pattern(block.bytes_mut(), id);
        blocks.push(block);
    }
    let grown_kib = rss_kib().saturating_sub(before);
    for block in &blocks {
        assert_eq!(pattern_mismatch(block.bytes(), block.id), None);
    }
    for block in blocks {
        // SAFETY: `block` is live and was allocated with `block.layout`.
        unsafe { OxMalloc.dealloc(block.ptr, block.layout) };
    }
    // Other tests run concurrently in this process, so allow generous slack; committing the
    // aligned gigabytes would add 8 GiB.
    assert!(
        grown_kib < GIB / KIB,
        "{COUNT} live 4 KiB blocks with 1 GiB alignment grew the resident set by {} MiB",
        grown_kib / 1024
    );
}

#[test]
fn realloc_across_class_and_large_boundaries_keeps_contents() {
    let sizes = [
        1,
        7,
        8,
        9,
        16,
        17,
        48,
        100,
        1000,
        1024,
        1025,
        4096,
        8191,
        8192,
        8193,
        65_536,
        100_000,
        256 * KIB - 16,
        256 * KIB,
        256 * KIB + 1,
        300_000,
        MIB,
        4 * MIB + 3,
    ];
    for align in [1, 8, 16, 64, 4096, 64 * KIB, 2 * MIB] {
        let mut model = Model::default();
        let run = |model: &mut Model| -> Result<(), String> {
            model.alloc(sizes[0], align, false)?;
            // Grow step by step, shrink step by step, then jump between the extremes.
            for &size in sizes.iter().skip(1) {
                model.realloc(0, size)?;
            }
            for &size in sizes.iter().rev().skip(1) {
                model.realloc(0, size)?;
            }
            for &(a, b) in &[(1, 4 * MIB), (256 * KIB, 256 * KIB + 1), (300_000, 16)] {
                model.realloc(0, a)?;
                model.realloc(0, b)?;
            }
            model.free_all()
        };
        if let Err(err) = run(&mut model) {
            panic!(
                "align {align}: {err}\nexecuted operations:\n{}",
                model.trace
            );
        }
    }
}

#[test]
fn small_sizes_are_sixteen_byte_aligned() {
    let mut model = Model::default();
    for size in (16..=1024).chain((1025..=64 * KIB).step_by(997)) {
        for align in [1, 2, 4, 8] {
            model.alloc(size, align, size % 3 == 0).unwrap();
            let block = model.blocks.last().unwrap();
            assert_eq!(
                block.addr() % 16,
                0,
                "alloc(size {size}, align {align}) returned {:p}, not 16-byte aligned",
                block.ptr
            );
        }
    }
    for size in 1..16 {
        model.alloc(size, 1, false).unwrap();
        let block = model.blocks.last().unwrap();
        assert_eq!(block.addr() % size.next_power_of_two().min(8), 0);
    }
    model.free_all().unwrap();
}

#[test]
fn many_objects_of_one_class_are_distinct_and_reusable() {
    let mut model = Model::default();
    for round in 0..3u64 {
        for _ in 0..30_000 {
            model.alloc(48, 16, false).unwrap();
        }
        for block in &model.blocks {
            model.check_block(block, "with all live").unwrap();
        }
        // Free in a scattered order.
        let mut state = 0x2545_F491_4F6C_DD1D ^ round;
        while !model.blocks.is_empty() {
            state = splitmix64(state);
            model.dealloc(state as usize).unwrap();
        }
    }
}
