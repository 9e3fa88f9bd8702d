//! Core allocator benchmarks: oxmalloc side by side with glibc (`System`) and mimalloc.
//!
//! Every allocator is driven through its `GlobalAlloc` methods, called explicitly; the
//! benchmark binary's own global allocator stays the default (glibc). Each benchmark case is
//! one criterion group whose functions are named after the allocators, so the three results
//! for a case are measured one right after the other and reported together:
//!
//! - `malloc_free/<size>/<allocator>`: one `alloc` + `dealloc` pair of a fixed size per
//!   iteration (the thread-cache hit path). Time is per pair.
//! - `batch_10k/<size>/<allocator>`: allocate 10 000 objects of one size into a preallocated
//!   pointer array, then free them in allocation order. Time is per batch of 10 000 pairs;
//!   `benches/table.py` divides by the declared throughput to report time per object.
//! - `producer_consumer/<allocator>`: a producer thread allocates objects of 64..=256 bytes and
//!   sends them in batches to a consumer thread that frees them (every free is a cross-thread
//!   free). The two threads live for the whole benchmark; one iteration is one object.
//!
//! Run: `cargo bench --bench alloc` (about three minutes), `cargo bench --bench alloc -- --quick`,
//! or filter, e.g. `cargo bench --bench alloc -- malloc_free/64/`. Then
//! `python3 benches/table.py` prints a markdown table from criterion's saved estimates.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use mimalloc::MiMalloc;
use oxmalloc::OxMalloc;

static OX: OxMalloc = OxMalloc;
static SYS: System = System;
static MI: MiMalloc = MiMalloc;

/// Alignment of every request: that of a `usize`/pointer-bearing struct, the common case.
const ALIGN: usize = 8;

const MALLOC_FREE_SIZES: [usize; 9] = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096];
const BATCH_SIZES: [usize; 4] = [16, 64, 256, 1024];
const BATCH_LEN: usize = 10_000;

fn layout(size: usize) -> Layout {
    match Layout::from_size_align(size, ALIGN) {
        Ok(l) => l,
        Err(e) => panic!("bad layout for size {size}: {e}"),
    }
}

/// Runs `f` once per allocator, with the allocator's display name. Monomorphised per
/// allocator, so the calls under test are direct, not through a vtable.
macro_rules! for_each_allocator {
    ($group:expr, $f:ident $(, $arg:expr)*) => {{
        $f(&mut $group, "oxmalloc", &OX $(, $arg)*);
        $f(&mut $group, "System", &SYS $(, $arg)*);
        $f(&mut $group, "mimalloc", &MI $(, $arg)*);
    }};
}

// ---------------------------------------------------------------------------------------------
// 1. malloc_free/<size>

fn malloc_free_one<A: GlobalAlloc>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    a: &'static A,
    size: usize,
) {
    let l = layout(size);
    group.bench_function(name, |b| {
        b.iter(|| {
            let a = black_box(a);
            // SAFETY: `l` has a non-zero size (every size in MALLOC_FREE_SIZES is >= 16).
            let p = unsafe { a.alloc(l) };
            if p.is_null() {
                handle_alloc_error(l);
            }
            let p = black_box(p);
            // SAFETY: `p` was just returned by `a.alloc(l)`, is non-null, and is freed once,
            // with the same layout.
            unsafe { a.dealloc(p, l) };
        });
    });
}

fn bench_malloc_free(c: &mut Criterion) {
    for size in MALLOC_FREE_SIZES {
        let mut group = c.benchmark_group(format!("malloc_free/{size}"));
        group.throughput(Throughput::Elements(1));
        for_each_allocator!(group, malloc_free_one, size);
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// 2. batch_10k/<size>

fn batch_one<A: GlobalAlloc>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    a: &'static A,
    size: usize,
) {
    let l = layout(size);
    // Allocated once (by the binary's global allocator) and reused by every iteration.
    let mut ptrs: Vec<*mut u8> = vec![std::ptr::null_mut(); BATCH_LEN];
    group.bench_function(name, |b| {
        b.iter(|| {
            let a = black_box(a);
            for slot in ptrs.iter_mut() {
                // SAFETY: `l` has a non-zero size (every size in BATCH_SIZES is >= 16).
                let p = unsafe { a.alloc(l) };
                if p.is_null() {
                    handle_alloc_error(l);
                }
                *slot = p;
            }
            black_box(ptrs.as_mut_ptr());
            for &p in ptrs.iter() {
                // SAFETY: every slot was filled above by `a.alloc(l)` with a non-null pointer,
                // and each is freed exactly once, with the same layout.
                unsafe { a.dealloc(p, l) };
            }
        });
    });
}

fn bench_batch(c: &mut Criterion) {
    for size in BATCH_SIZES {
        let mut group = c.benchmark_group(format!("batch_10k/{size}"));
        group.throughput(Throughput::Elements(BATCH_LEN as u64));
        // An iteration takes 0.1-10 ms: equal-sized samples keep the run within its time budget.
        group.sampling_mode(SamplingMode::Flat);
        for_each_allocator!(group, batch_one, size);
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. producer_consumer

/// Objects per message from producer to consumer.
const PC_BATCH: usize = 256;
/// Number of message buffers in circulation; bounds the objects in flight to
/// `PC_POOL * PC_BATCH`.
const PC_POOL: usize = 8;

/// Size of the `i`-th object: 64..=256 bytes in steps of 16, in a scrambled but fixed order.
#[inline]
fn pc_size(i: usize) -> usize {
    64 + 16 * ((i * 5) % 13)
}

/// A producer and a consumer thread, alive across all iterations of one benchmark.
///
/// Message buffers (`Vec<usize>` of object addresses) are allocated once and circulate between
/// the threads; every channel is a bounded `sync_channel`, which never allocates per message.
/// An empty buffer marks the end of a round.
struct PcRig {
    cmd: Option<SyncSender<u64>>,
    done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl PcRig {
    fn new<A: GlobalAlloc + Sync>(a: &'static A) -> Self {
        let (cmd_tx, cmd_rx) = sync_channel::<u64>(1);
        let (full_tx, full_rx) = sync_channel::<Vec<usize>>(PC_POOL);
        let (free_tx, free_rx) = sync_channel::<Vec<usize>>(PC_POOL);
        let (done_tx, done_rx) = sync_channel::<()>(1);
        for _ in 0..PC_POOL {
            free_tx
                .send(Vec::with_capacity(PC_BATCH))
                .expect("pool channel open");
        }

        let producer = std::thread::Builder::new()
            .name("producer".into())
            .spawn(move || {
                let mut i = 0usize;
                while let Ok(n) = cmd_rx.recv() {
                    let mut left = n;
                    while left > 0 {
                        let mut buf = free_rx.recv().expect("consumer alive");
                        let k = left.min(PC_BATCH as u64);
                        for _ in 0..k {
                            let l = layout(pc_size(i));
                            i = i.wrapping_add(1);
                            // SAFETY: `l` has a non-zero size (64..=256).
                            let p = unsafe { a.alloc(l) };
                            if p.is_null() {
                                handle_alloc_error(l);
                            }
                            // SAFETY: `p` is valid for `l.size() >= 64` bytes and aligned to
                            // `ALIGN` = align_of::<usize>(); we record the size in the object
                            // so the consumer can rebuild the layout.
                            unsafe { p.cast::<usize>().write(l.size()) };
                            buf.push(p as usize);
                        }
                        left -= k;
                        full_tx.send(buf).expect("consumer alive");
                    }
                    let mut marker = free_rx.recv().expect("consumer alive");
                    marker.clear();
                    full_tx.send(marker).expect("consumer alive");
                }
            })
            .expect("spawn producer");

        let consumer = std::thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                while let Ok(mut buf) = full_rx.recv() {
                    let end_of_round = buf.is_empty();
                    for &addr in buf.iter() {
                        let p = addr as *mut u8;
                        // SAFETY: `p` came from the producer's `a.alloc`, which wrote the
                        // requested size into its first (aligned) word; nothing else touches
                        // the object, and the channel orders the write before this read.
                        let size = unsafe { p.cast::<usize>().read() };
                        // SAFETY: `p` was allocated by `a` with exactly `layout(size)` and is
                        // freed once, here.
                        unsafe { a.dealloc(p, layout(size)) };
                    }
                    buf.clear();
                    // The producer may already be gone at shutdown; then the buffer is dropped.
                    let _ = free_tx.send(buf);
                    if end_of_round && done_tx.send(()).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn consumer");

        PcRig {
            cmd: Some(cmd_tx),
            done: done_rx,
            threads: vec![producer, consumer],
        }
    }

    /// Passes `n` objects from producer to consumer; returns the wall time until the last
    /// one has been freed.
    fn round(&self, n: u64) -> Duration {
        let cmd = self.cmd.as_ref().expect("rig running");
        let start = Instant::now();
        cmd.send(n).expect("producer alive");
        self.done.recv().expect("consumer alive");
        start.elapsed()
    }
}

impl Drop for PcRig {
    fn drop(&mut self) {
        // Closing the command channel ends the producer, which closes the consumer's input.
        self.cmd = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn producer_consumer_one<A: GlobalAlloc + Sync>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    a: &'static A,
) {
    // Started on first use, so a filter that skips this benchmark starts no threads.
    let mut rig: Option<PcRig> = None;
    group.bench_function(name, |b| {
        let rig = rig.get_or_insert_with(|| PcRig::new(a));
        b.iter_custom(|iters| rig.round(iters));
    });
    drop(rig);
}

fn bench_producer_consumer(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer_consumer");
    group.throughput(Throughput::Elements(1));
    for_each_allocator!(group, producer_consumer_one);
    group.finish();
}

// ---------------------------------------------------------------------------------------------

/// Tuned so a full run (42 benchmarks) takes about three minutes on two cores; command-line
/// options (`--quick`, `--measurement-time`, `--sample-size`, a filter, ...) still override it.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_malloc_free, bench_batch, bench_producer_consumer
}
criterion_main!(benches);
