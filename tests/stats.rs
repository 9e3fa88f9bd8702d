//! Statistics: counters move by what the program did, and every mapped byte is accounted for.
//!
//! Runs with oxmalloc as this binary's global allocator; tests share one lock because the
//! counters are process-wide.

use oxmalloc::size_class::class_for_size;
use oxmalloc::stats::format::{write_json, write_text};
use oxmalloc::{OxMalloc, Stats};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: OxMalloc = OxMalloc;

static SERIAL: Mutex<()> = Mutex::new(());

fn layers_sum(s: &Stats) -> usize {
    s.in_use_bytes
        + s.thread_cache_bytes
        + s.transfer_cache_bytes
        + s.central_free_bytes
        + s.span_waste_bytes
        + s.page_heap_free_bytes
        + s.released_bytes
}

#[test]
fn small_allocations_move_their_class_counters() {
    let _g = SERIAL.lock().unwrap();
    let size = 3000;
    let class = class_for_size(size).index();
    let layout = Layout::from_size_align(size, 8).unwrap();
    let mut ptrs = [std::ptr::null_mut(); 1000];
    let before = oxmalloc::stats();
    for p in ptrs.iter_mut() {
        // SAFETY: non-zero layout.
        *p = unsafe { OxMalloc.alloc(layout) };
        assert!(!p.is_null());
    }
    let during = oxmalloc::stats();
    assert_eq!(
        during.classes[class].in_use - before.classes[class].in_use,
        1000
    );
    assert_eq!(
        during.classes[class].allocs - before.classes[class].allocs,
        1000
    );
    // Absolute, not a difference: threads of the test harness may free memory meanwhile.
    assert!(during.small_in_use_bytes >= 1000 * 3072);
    assert!(during.allocations_total >= before.allocations_total + 1000);
    for &p in &ptrs {
        // SAFETY: allocated above with this layout.
        unsafe { OxMalloc.dealloc(p, layout) };
    }
    let after = oxmalloc::stats();
    assert_eq!(after.classes[class].in_use, before.classes[class].in_use);
    assert_eq!(
        after.classes[class].frees - before.classes[class].frees,
        1000
    );
}

#[test]
fn large_allocations_are_counted_exactly() {
    let _g = SERIAL.lock().unwrap();
    let before = oxmalloc::stats();
    let layout = Layout::from_size_align(1 << 20, 8).unwrap();
    let blocks: Vec<*mut u8> = (0..10)
        // SAFETY: non-zero layout.
        .map(|_| unsafe { OxMalloc.alloc(layout) })
        .collect();
    let during = oxmalloc::stats();
    assert_eq!(during.large_allocations - before.large_allocations, 10);
    assert_eq!(
        during.large_in_use_bytes - before.large_in_use_bytes,
        10 << 20
    );
    assert_eq!(
        during.large_allocations_total - before.large_allocations_total,
        10
    );
    // Absolute: other threads' frees move the (estimated) requested bytes of small objects.
    assert!(during.requested_bytes >= 10 << 20);
    for p in blocks {
        // SAFETY: allocated above with this layout.
        unsafe { OxMalloc.dealloc(p, layout) };
    }
    let after = oxmalloc::stats();
    assert_eq!(after.large_allocations, before.large_allocations);
    assert_eq!(after.large_in_use_bytes, before.large_in_use_bytes);
}

#[test]
fn every_mapped_byte_is_in_exactly_one_layer() {
    let _g = SERIAL.lock().unwrap();
    let keep: Vec<Vec<u8>> = (0..5000).map(|i| vec![1u8; 16 + i % 5000]).collect();
    let big = vec![7u8; 3 << 20];
    let s = oxmalloc::stats();
    assert_eq!(layers_sum(&s), s.mapped_bytes, "{s:#?}");
    assert!(s.in_use_bytes <= s.peak_active_bytes);
    assert!(s.peak_active_bytes <= s.mapped_bytes);
    assert!(s.requested_bytes <= s.in_use_bytes);
    assert!(s.largest_free_run_bytes <= s.page_heap_free_bytes + s.released_bytes);
    assert!(s.rss_bytes > 0);
    assert!(s.metadata_bytes > 0);
    assert!(s.thread_caches >= 1);
    let share = s.external_share();
    assert!((0.0..=1.0).contains(&share));
    drop((keep, big));
    let s = oxmalloc::stats();
    assert_eq!(layers_sum(&s), s.mapped_bytes);
    oxmalloc::page_heap::lock().check_invariants().unwrap();
}

#[test]
fn freed_pages_go_back_to_the_os() {
    let _g = SERIAL.lock().unwrap();
    let before = oxmalloc::stats();
    let v = vec![1u8; 64 << 20];
    drop(v);
    // The retention policy releases most of it at once; the explicit call the rest.
    let released = oxmalloc::release_free_memory();
    let s = oxmalloc::stats();
    assert!(
        s.released_bytes_total >= before.released_bytes_total + (64 << 20),
        "released only {} (explicit call: {released})",
        s.released_bytes_total - before.released_bytes_total
    );
    assert_eq!(s.page_heap_free_bytes, 0);
}

/// Small objects freed in scrambled order empty their spans one by one while the heap shrinks:
/// those runs pass through the page heap's release queue. Every byte stays accounted for, the
/// free lists stay consistent, most of the memory goes back at once, and an explicit release
/// leaves no free page resident (the queued ones included).
#[test]
fn runs_freed_while_the_heap_shrinks_are_accounted_and_released() {
    let _g = SERIAL.lock().unwrap();
    let layout = Layout::from_size_align(256, 8).unwrap();
    let before = oxmalloc::stats();
    let mut ptrs: Vec<*mut u8> = (0..200_000)
        .map(|_| {
            // SAFETY: non-zero layout.
            let p = unsafe { OxMalloc.alloc(layout) };
            assert!(!p.is_null());
            p
        })
        .collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..ptrs.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ptrs.swap(i, (x >> 33) as usize % (i + 1));
    }
    for &p in &ptrs {
        // SAFETY: allocated above with this layout.
        unsafe { OxMalloc.dealloc(p, layout) };
    }
    let s = oxmalloc::stats();
    assert_eq!(layers_sum(&s), s.mapped_bytes, "{s:#?}");
    assert!(s.largest_free_run_bytes <= s.page_heap_free_bytes + s.released_bytes);
    oxmalloc::page_heap::lock().check_invariants().unwrap();
    let filled = 200_000 * 256;
    assert!(
        s.released_bytes_total - before.released_bytes_total >= filled / 2,
        "only {} of {filled} bytes released with no explicit call",
        s.released_bytes_total - before.released_bytes_total
    );
    oxmalloc::release_free_memory();
    let s = oxmalloc::stats();
    assert_eq!(s.page_heap_free_bytes, 0, "{s:#?}");
    assert_eq!(layers_sum(&s), s.mapped_bytes, "{s:#?}");
    oxmalloc::page_heap::lock().check_invariants().unwrap();
}

#[test]
fn json_has_every_documented_field_and_text_names_the_layers() {
    let _g = SERIAL.lock().unwrap();
    let s = oxmalloc::stats();
    let mut json = String::new();
    write_json(&mut json, &s).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).expect("stats JSON parses");
    for field in [
        "in_use_bytes",
        "small_in_use_bytes",
        "large_in_use_bytes",
        "requested_bytes",
        "peak_active_bytes",
        "thread_cache_bytes",
        "transfer_cache_bytes",
        "central_free_bytes",
        "span_waste_bytes",
        "page_heap_free_bytes",
        "released_bytes",
        "released_bytes_total",
        "metadata_bytes",
        "mapped_bytes",
        "rss_bytes",
        "internal_fragmentation_bytes",
        "external_fragmentation_bytes",
        "internal_fragmentation_share",
        "external_fragmentation_share",
        "large_allocations",
        "large_allocations_total",
        "largest_free_run_bytes",
        "allocations_total",
        "frees_total",
        "bytes_allocated_total",
        "thread_caches",
        "page_size",
        "classes_count",
        "classes",
        "free_runs",
    ] {
        assert!(v.get(field).is_some(), "JSON lacks {field}: {json}");
    }
    let classes = v["classes"].as_array().unwrap();
    assert_eq!(classes.len(), v["classes_count"].as_u64().unwrap() as usize);
    for key in [
        "class",
        "size",
        "in_use",
        "spans",
        "span_bytes",
        "free_central",
        "free_transfer",
        "free_threads",
        "allocs",
        "frees",
    ] {
        assert!(classes[0].get(key).is_some(), "class entry lacks {key}");
    }
    assert_eq!(v["mapped_bytes"].as_u64().unwrap() as usize, s.mapped_bytes);
    let mut text = String::new();
    write_text(&mut text, &s).unwrap();
    for line in [
        "in use by the program",
        "free in thread caches",
        "released to the OS",
        "= mapped heap",
        "largest free run",
        "size classes in use",
    ] {
        assert!(text.contains(line), "text report lacks '{line}':\n{text}");
    }
}
