//! Caches of threads that stop allocating are emptied by other threads (see `src/reclaim.rs`):
//! after an idle period on the other threads' slow paths, on an explicit release, and never
//! while the owner could be using its cache. The C programs run under LD_PRELOAD (the static
//! TLS route of the hit paths); the Rust tests call `OxMalloc` directly (the `thread_local!`
//! route).

mod common;

use common::pattern::{fill_pattern, pattern_mismatch, splitmix64};
use common::{check, compile, library, root};
use oxmalloc::OxMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// The Rust tests read process-wide counters: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs idle_cache with `args` and `env`; returns its stdout numbers.
fn idle_cache(args: &[&str], env: &[(&str, &str)]) -> Vec<f64> {
    let exe = compile(&root().join("tests/c_release/idle_cache.c"));
    let out = std::process::Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    check(&out, &format!("idle_cache {args:?}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

#[test]
fn a_sleeping_threads_cache_is_emptied_after_the_idle_period() {
    // cached KiB, reclaimed KiB, ms until reclaimed (or the 5 s limit), KiB released
    // A retention allowance far above what the test frees: the page heap never releases, so
    // only the timer can start a pass.
    let env = [
        ("OXMALLOC_IDLE_CACHE_MS", "50"),
        ("OXMALLOC_RETAIN_MIN", "1G"),
    ];
    let v = idle_cache(&["idle", "5"], &env);
    assert!(v[0] >= 256.0, "the worker's cache did not fill: {v:?}");
    assert!(v[1] >= v[0] / 2.0, "its cache was not emptied: {v:?}");
    // Two idle periods (one to see it idle, one to empty it) plus scheduling slack.
    assert!(v[2] < 2000.0, "emptied only after {} ms", v[2]);
    assert_eq!(v[3], 0.0, "the page heap released memory: {v:?}");
}

#[test]
fn idle_caches_stay_when_reclaiming_is_off() {
    let v = idle_cache(&["idle", "0.5"], &[("OXMALLOC_IDLE_CACHE_MS", "0")]);
    assert!(v[0] >= 256.0, "the worker's cache did not fill: {v:?}");
    assert_eq!(
        v[1], 0.0,
        "a cache was emptied with OXMALLOC_IDLE_CACHE_MS=0: {v:?}"
    );
}

#[test]
fn an_explicit_release_empties_sleeping_threads_caches() {
    let v = idle_cache(&["release", "5"], &[]);
    assert!(v[0] >= 256.0, "the worker's cache did not fill: {v:?}");
    assert!(v[1] >= v[0] / 2.0, "its cache was not emptied: {v:?}");
}

/// Threads churn verified blocks and sleep every few hundred operations while another thread
/// empties sleepers' caches without pause: owners waking mid-reclaim must wait, never share.
#[test]
fn reclaiming_races_with_waking_threads_without_corruption() {
    race_for_two_seconds("stress");
}

/// A signal handler that sleeps, installed with `SA_NODEFER` (the mask does not change), keeps
/// interrupting churning threads, often inside malloc or free, while another thread empties
/// sleepers' caches: a thread asleep in such a handler must be left alone.
#[test]
fn threads_asleep_in_a_signal_handler_inside_malloc_are_left_alone() {
    race_for_two_seconds("signals");
}

/// Runs an `idle_cache` race mode for two seconds; it checks the blocks itself, and enough
/// caches must have been emptied meanwhile for the race to have been run at all.
fn race_for_two_seconds(mode: &str) {
    let v = idle_cache(&[mode, "2"], &[]);
    assert!(
        v[0] > 10.0,
        "too few caches were emptied to test anything: {v:?}"
    );
}

/// In a forked child, the forking thread's cache is known by the child's thread id.
#[test]
fn a_forked_childs_sleeping_thread_is_reclaimed() {
    let v = idle_cache(&["fork"], &[]);
    assert!(v[0] >= 256.0, "the child's cache did not fill: {v:?}");
    assert!(v[1] >= v[0] / 2.0, "its cache was not emptied: {v:?}");
}

const ALLOC: OxMalloc = OxMalloc;

#[test]
fn release_empties_a_sleeping_rust_threads_cache() {
    let _serial = SERIAL.lock().unwrap();
    // Live data that stays, so the worker's frees do not start the heap shrinking (which
    // empties caches by itself).
    let keep_layout = Layout::from_size_align(4096, 16).unwrap();
    // SAFETY: a valid layout; each block is freed below.
    let keep: Vec<usize> = (0..16384)
        .map(|_| unsafe { ALLOC.alloc(keep_layout) } as usize)
        .collect();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (wake_tx, wake_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a valid layout; every block is freed with it.
        let blocks: Vec<usize> = (0..40_000)
            .map(|_| unsafe { ALLOC.alloc(layout) } as usize)
            .collect();
        for &b in &blocks {
            // SAFETY: allocated above with `layout`.
            unsafe { ALLOC.dealloc(b as *mut u8, layout) };
        }
        ready_tx.send(()).unwrap();
        wake_rx.recv().unwrap();
        // Allocating again after the cache was taken: distinct, intact blocks.
        let blocks: Vec<usize> = (0..40_000u64)
            .map(|i| {
                // SAFETY: a valid layout.
                let p = unsafe { ALLOC.alloc(layout) };
                // SAFETY: `p` is a fresh 64-byte block.
                fill_pattern(unsafe { std::slice::from_raw_parts_mut(p, 64) }, i);
                p as usize
            })
            .collect();
        for (i, &b) in blocks.iter().enumerate() {
            // SAFETY: `b` is a live 64-byte block filled above.
            let bytes = unsafe { std::slice::from_raw_parts(b as *const u8, 64) };
            assert_eq!(pattern_mismatch(bytes, i as u64), None, "block {i}");
            // SAFETY: allocated above with `layout`.
            unsafe { ALLOC.dealloc(b as *mut u8, layout) };
        }
    });
    ready_rx.recv().unwrap();
    let cached = oxmalloc::stats().thread_cache_bytes;
    assert!(
        cached >= 256 << 10,
        "the worker's cache did not fill: {cached}"
    );
    let before = oxmalloc::stats().cache_reclaimed_bytes_total;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = 0;
    while Instant::now() < deadline {
        oxmalloc::release_free_memory();
        got = oxmalloc::stats().cache_reclaimed_bytes_total - before;
        if got >= cached / 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(got >= cached / 2, "took {got} of {cached} cached bytes");
    wake_tx.send(()).unwrap();
    worker.join().unwrap();
    for &b in &keep {
        // SAFETY: allocated above with `keep_layout`.
        unsafe { ALLOC.dealloc(b as *mut u8, keep_layout) };
    }
}

/// The Rust route of the same race as the C stress: churning, often sleeping threads against
/// a thread that releases free memory in a loop.
#[test]
fn rust_threads_survive_constant_reclaiming() {
    let _serial = SERIAL.lock().unwrap();
    let stop = AtomicBool::new(false);
    let before = oxmalloc::stats().cache_reclaims_total;
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let stop = &stop;
            s.spawn(move || {
                let mut rng = splitmix64(t + 1);
                let mut live: Vec<Option<(usize, Layout, u64)>> = vec![None; 256];
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rng = splitmix64(rng);
                    let i = (rng % live.len() as u64) as usize;
                    if let Some((p, layout, id)) = live[i].take() {
                        // SAFETY: `p` is live with `layout`, filled with pattern `id`.
                        let bytes =
                            unsafe { std::slice::from_raw_parts(p as *const u8, layout.size()) };
                        assert_eq!(
                            pattern_mismatch(bytes, id),
                            None,
                            "block of {}",
                            layout.size()
                        );
                        // SAFETY: as above.
                        unsafe { ALLOC.dealloc(p as *mut u8, layout) };
                    }
                    let size = 1 + (rng >> 8) as usize % if rng >> 60 == 0 { 4096 } else { 300 };
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    // SAFETY: a valid layout.
                    let p = unsafe { ALLOC.alloc(layout) };
                    assert!(!p.is_null());
                    // SAFETY: a fresh block of `size` bytes.
                    fill_pattern(unsafe { std::slice::from_raw_parts_mut(p, size) }, rng);
                    live[i] = Some((p as usize, layout, rng));
                    ops += 1;
                    if ops % 200 == 0 {
                        std::thread::sleep(Duration::from_micros(rng % 150));
                    }
                }
                for (p, layout, _) in live.into_iter().flatten() {
                    // SAFETY: live blocks with their layouts.
                    unsafe { ALLOC.dealloc(p as *mut u8, layout) };
                }
            });
        }
        s.spawn(|| {
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                oxmalloc::release_free_memory();
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
    let reclaims = oxmalloc::stats().cache_reclaims_total - before;
    assert!(reclaims > 10, "only {reclaims} caches were emptied");
}
