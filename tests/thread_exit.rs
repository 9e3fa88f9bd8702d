//! Thread exit hands a thread's cache back: no objects stay stranded in a dead thread.
//! (A binary of its own: it compares process-wide counts, which other tests' threads would move.)

use oxmalloc::size_class::class_for;
use oxmalloc::OxMalloc;
use std::alloc::{GlobalAlloc, Layout};

#[test]
fn thread_exit_hands_the_cache_back() {
    let before = oxmalloc::stats();
    let layout = Layout::from_size_align(200, 8).unwrap();
    std::thread::spawn(move || {
        let ptrs: Vec<usize> = (0..5000)
            // SAFETY: non-zero layout.
            .map(|_| unsafe { OxMalloc.alloc(layout) } as usize)
            .collect();
        for p in ptrs {
            // SAFETY: allocated above with this layout.
            unsafe { OxMalloc.dealloc(p as *mut u8, layout) };
        }
        let during = oxmalloc::stats();
        assert!(during.thread_caches > before.thread_caches);
        assert!(during.thread_cache_bytes > 0);
    })
    .join()
    .unwrap();
    let after = oxmalloc::stats();
    assert_eq!(
        after.thread_caches, before.thread_caches,
        "the exited thread's cache is still registered"
    );
    let class = class_for(200, 8).index();
    assert_eq!(
        after.classes[class].free_threads, before.classes[class].free_threads,
        "objects stranded in a dead thread"
    );
}
