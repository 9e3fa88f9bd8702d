//! Multi-threaded stress tests of `OxMalloc`, called through its `GlobalAlloc` methods.
//!
//! - `producer_consumer_cross_thread_frees`: producers allocate and fill blocks, consumers on
//!   other threads verify, sometimes `realloc`, and free them.
//! - `short_lived_threads_leave_blocks_behind`: waves of short-lived threads churn objects and
//!   leave some behind, which the main thread verifies and frees after the threads exited.
//! - `threads_churn_private_working_sets`: many threads each keep a working set that they
//!   replace and resize at random, verifying contents all along.
//! - `bulk_frees_of_one_class_from_other_threads`: many objects of one size allocated on one
//!   thread are freed on others, and the reverse.
//!
//! Every block carries a pattern derived from its own seed; a block that is handed out twice,
//! overlaps another, or is corrupted by the allocator's bookkeeping fails the check. The test
//! binary's own global allocator is the system one.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::VecDeque;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Barrier;
use std::thread;

mod common;

use common::pattern::{fill_pattern, pattern_mismatch, splitmix64};
use oxmalloc::OxMalloc;

/// xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(splitmix64(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A size in `min..=max`, spread evenly over powers of two so small sizes dominate.
    fn size(&mut self, min: usize, max: usize) -> usize {
        let low_bits = usize::BITS - min.leading_zeros() - 1;
        let high_bits = usize::BITS - max.leading_zeros();
        let bits = low_bits + self.below((high_bits - low_bits) as usize) as u32;
        let base = 1usize << bits;
        (base + self.below(base)).clamp(min, max)
    }

    fn align(&mut self) -> usize {
        match self.below(32) {
            0..=11 => 8,
            12..=23 => 16,
            24..=27 => 1,
            28..=30 => 64,
            _ => 4096,
        }
    }
}

/// A live block owned by the test, movable between threads; freeing consumes it.
#[derive(Debug)]
struct Block {
    addr: usize,
    size: usize,
    align: usize,
    seed: u64,
}

impl Block {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).expect("valid layout")
    }

    /// Allocates a block of `size` bytes aligned to `align` and fills it with `seed`'s pattern.
    fn alloc(size: usize, align: usize, seed: u64) -> Block {
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        // SAFETY: `size` is non-zero.
        let ptr = unsafe { OxMalloc.alloc(layout) };
        assert!(!ptr.is_null(), "alloc({layout:?}) returned null");
        assert_eq!(
            ptr as usize % align,
            0,
            "alloc({layout:?}) returned {ptr:p}"
        );
        let mut block = Block {
            addr: ptr as usize,
            size,
            align,
            seed,
        };
        block.fill();
        block
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` came from `OxMalloc` for `self.layout()` and stays live until the
        // `Block` (which is not `Clone`) is consumed by `free` or `realloc`; no one else
        // writes to it.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.size) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference to the block.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.size) }
    }

    fn fill(&mut self) {
        let seed = self.seed;
        fill_pattern(self.bytes_mut(), seed);
    }

    /// Panics unless the first `len` bytes hold the block's pattern.
    fn verify_prefix(&self, len: usize, context: &str) {
        if let Some(offset) = pattern_mismatch(&self.bytes()[..len], self.seed) {
            panic!(
                "{context}: block {:#x} (size {}, align {}, seed {:#x}) corrupted at offset {}",
                self.addr, self.size, self.align, self.seed, offset
            );
        }
    }

    fn verify(&self, context: &str) {
        self.verify_prefix(self.size, context);
    }

    /// Verifies the block, moves it to `new_size` bytes, checks the kept prefix and refills it
    /// with the pattern of `new_seed`.
    fn realloc(self, new_size: usize, new_seed: u64, context: &str) -> Block {
        self.verify(context);
        // SAFETY: the block is live with `self.layout()`; `new_size` is non-zero and small.
        let ptr = unsafe { OxMalloc.realloc(self.addr as *mut u8, self.layout(), new_size) };
        assert!(
            !ptr.is_null(),
            "{context}: realloc of {:?} to {new_size} returned null",
            self.layout()
        );
        assert_eq!(
            ptr as usize % self.align,
            0,
            "{context}: realloc returned {ptr:p}"
        );
        let moved = Block {
            addr: ptr as usize,
            size: new_size,
            ..self
        };
        moved.verify_prefix(self.size.min(new_size), context);
        let mut block = Block {
            seed: new_seed,
            ..moved
        };
        block.fill();
        block
    }

    fn free(self, context: &str) {
        self.verify(context);
        // SAFETY: the block is live, was allocated by `OxMalloc` with `self.layout()`, and is
        // consumed here.
        unsafe { OxMalloc.dealloc(self.addr as *mut u8, self.layout()) };
    }
}

#[test]
fn producer_consumer_cross_thread_frees() {
    const PRODUCERS: u64 = 4;
    const CONSUMERS: usize = 3;
    const ITEMS_PER_PRODUCER: u64 = 6000;
    const LOCAL_RING: usize = 64;

    fn produce(producer: u64, senders: Vec<SyncSender<Block>>) {
        let mut rng = Rng::new(producer);
        let mut local: VecDeque<Block> = VecDeque::new();
        for seq in 0..ITEMS_PER_PRODUCER {
            let seed = (producer << 32) | seq;
            let sent = Block::alloc(rng.size(8, 100_000), rng.align(), seed);
            let consumer = rng.below(senders.len());
            senders[consumer].send(sent).expect("consumer alive");
            // Objects of the same sizes freed on this thread, interleaved with remote frees.
            local.push_back(Block::alloc(rng.size(8, 100_000), rng.align(), !seed));
            if local.len() > LOCAL_RING {
                local.pop_front().unwrap().free("producer local free");
            }
        }
        for block in local {
            block.free("producer final free");
        }
    }

    fn consume(consumer: usize, receiver: Receiver<Block>) -> (u64, u64) {
        let mut rng = Rng::new(1000 + consumer as u64);
        let (mut count, mut seed_sum) = (0u64, 0u64);
        for block in receiver {
            count += 1;
            seed_sum = seed_sum.wrapping_add(block.seed);
            let block = if rng.below(4) == 0 {
                let new_size = rng.size(8, 100_000);
                let new_seed = block.seed ^ 0xABCD;
                block.realloc(new_size, new_seed, "consumer realloc")
            } else {
                block
            };
            block.free("consumer free");
        }
        (count, seed_sum)
    }

    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..CONSUMERS).map(|_| sync_channel::<Block>(128)).unzip();
    let (count, seed_sum) = thread::scope(|scope| {
        let consumers: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(consumer, receiver)| scope.spawn(move || consume(consumer, receiver)))
            .collect();
        for producer in 0..PRODUCERS {
            let senders = senders.clone();
            scope.spawn(move || produce(producer, senders));
        }
        drop(senders);
        consumers
            .into_iter()
            .map(|handle| handle.join().expect("consumer panicked"))
            .fold((0u64, 0u64), |(c, s), (count, sum)| {
                (c + count, s.wrapping_add(sum))
            })
    });
    let expected_sum = (0..PRODUCERS)
        .flat_map(|p| (0..ITEMS_PER_PRODUCER).map(move |seq| (p << 32) | seq))
        .fold(0u64, u64::wrapping_add);
    assert_eq!(count, PRODUCERS * ITEMS_PER_PRODUCER);
    assert_eq!(seed_sum, expected_sum);
}

#[test]
fn short_lived_threads_leave_blocks_behind() {
    const THREADS: u64 = 200;
    const WAVE: u64 = 8;
    const OPS: usize = 3000;
    const SLOTS: usize = 128;
    const KEEP: usize = 32;

    fn churn(thread_id: u64) -> Vec<Block> {
        let mut rng = Rng::new(thread_id);
        let mut slots: Vec<Option<Block>> = (0..SLOTS).map(|_| None).collect();
        for op in 0..OPS {
            let slot = rng.below(SLOTS);
            if let Some(block) = slots[slot].take() {
                block.free("short-lived thread free");
            }
            let size = if rng.below(16) == 0 {
                rng.size(1024, 100_000)
            } else {
                rng.size(8, 1024)
            };
            slots[slot] = Some(Block::alloc(
                size,
                rng.align(),
                (thread_id << 32) | op as u64,
            ));
        }
        let mut kept: Vec<Block> = slots.into_iter().flatten().collect();
        for block in kept.split_off(KEEP.min(kept.len())) {
            block.free("short-lived thread final free");
        }
        kept
    }

    let mut survivors: VecDeque<Vec<Block>> = VecDeque::new();
    let mut freed_after_exit = 0usize;
    for wave in 0..THREADS / WAVE {
        let handles: Vec<_> = (0..WAVE)
            .map(|i| thread::spawn(move || churn(wave * WAVE + i)))
            .collect();
        // Blocks of threads that exited two waves ago are freed while this wave runs.
        if survivors.len() >= 2 * WAVE as usize {
            for _ in 0..WAVE {
                for block in survivors.pop_front().unwrap() {
                    block.free("main thread free of an exited thread's block");
                    freed_after_exit += 1;
                }
            }
        }
        for handle in handles {
            survivors.push_back(handle.join().expect("short-lived thread panicked"));
        }
    }
    for block in survivors.into_iter().flatten() {
        block.free("main thread final free");
        freed_after_exit += 1;
    }
    assert_eq!(freed_after_exit, THREADS as usize * KEEP);
}

#[test]
fn threads_churn_private_working_sets() {
    const THREADS: u64 = 8;
    const SLOTS: usize = 1024;
    const OPS: u64 = 25_000;

    let barrier = Barrier::new(THREADS as usize);
    let totals: Vec<(u64, u64)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread_id| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = Rng::new(0x5EED + thread_id);
                    let mut slots: Vec<Option<Block>> = (0..SLOTS).map(|_| None).collect();
                    let (mut allocs, mut reallocs) = (0u64, 0u64);
                    barrier.wait();
                    for op in 0..OPS {
                        let seed = (thread_id << 40) | op;
                        let slot = rng.below(SLOTS);
                        let size = match rng.below(64) {
                            0 => rng.size(100_000, 400_000),
                            1..=8 => rng.size(1024, 100_000),
                            _ => rng.size(1, 1024),
                        };
                        slots[slot] = Some(match slots[slot].take() {
                            Some(block) if rng.below(4) == 0 => {
                                reallocs += 1;
                                block.realloc(size, seed, "working-set realloc")
                            }
                            old => {
                                if let Some(block) = old {
                                    block.free("working-set free");
                                }
                                allocs += 1;
                                Block::alloc(size, rng.align(), seed)
                            }
                        });
                    }
                    for block in slots.into_iter().flatten() {
                        block.free("working-set final free");
                    }
                    (allocs, reallocs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("worker panicked"))
            .collect()
    });
    for (allocs, reallocs) in totals {
        assert_eq!(allocs + reallocs, OPS);
        assert!(reallocs > OPS / 8, "only {reallocs} reallocs");
    }
}

#[test]
fn bulk_frees_of_one_class_from_other_threads() {
    const THREADS: usize = 4;

    for (size, align, per_thread) in [
        (16, 8, 25_000),
        (64, 16, 25_000),
        (200, 8, 10_000),
        (4000, 64, 1_000),
    ] {
        // Allocated here, freed on other threads.
        let mut blocks: Vec<Block> = (0..THREADS * per_thread)
            .map(|i| Block::alloc(size, align, i as u64))
            .collect();
        thread::scope(|scope| {
            while !blocks.is_empty() {
                let chunk = blocks.split_off(blocks.len() - per_thread);
                scope.spawn(move || {
                    for block in chunk {
                        block.free("bulk remote free");
                    }
                });
            }
        });
        // Allocated on other threads, freed here after they exited.
        let blocks: Vec<Block> = thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    scope.spawn(move || {
                        (0..per_thread)
                            .map(|i| Block::alloc(size, align, ((t as u64) << 32) | i as u64))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("allocating thread panicked"))
                .collect()
        });
        let mut addrs: Vec<usize> = blocks.iter().map(|block| block.addr).collect();
        addrs.sort_unstable();
        for pair in addrs.windows(2) {
            assert!(
                pair[1] - pair[0] >= size,
                "blocks of size {size} at {:#x} and {:#x} overlap",
                pair[0],
                pair[1]
            );
        }
        for block in blocks {
            block.free("free after the allocating thread exited");
        }
    }
}
