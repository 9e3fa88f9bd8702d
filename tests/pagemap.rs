//! The pagemap finds every block's span again, from any interior address, and answers "not
//! ours" for memory oxmalloc never handed out. Also: depending on the crate leaves the C
//! `malloc` of this program alone.

use oxmalloc::pagemap::{class_of, span_of};
use oxmalloc::size_class::class_for;
use oxmalloc::span::SpanState;
use oxmalloc::types::PageId;
use oxmalloc::OxMalloc;
use std::alloc::{GlobalAlloc, Layout};

#[test]
fn interior_pointers_of_small_objects_find_their_class_and_span() {
    for size in [8usize, 16, 48, 100, 1000, 5000, 70_000, 262_144] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: non-zero layout.
        let p = unsafe { OxMalloc.alloc(layout) };
        let class = class_for(size, 8);
        for off in [0, 1, size / 2, size - 1] {
            let q = p as usize + off;
            assert_eq!(class_of(q), class, "size {size} offset {off}");
            let s = span_of(PageId::containing(q));
            assert!(!s.is_null());
            // SAFETY: the pagemap maps live spans to valid records.
            let span = unsafe { &*s };
            assert_eq!(span.state, SpanState::Small);
            assert!(span.start_addr() <= q && q < span.end_addr());
        }
        // SAFETY: allocated above with this layout.
        unsafe { OxMalloc.dealloc(p, layout) };
    }
}

#[test]
fn large_blocks_map_their_first_and_last_pages() {
    let size = 3 << 20;
    let layout = Layout::from_size_align(size, 8).unwrap();
    // SAFETY: non-zero layout.
    let p = unsafe { OxMalloc.alloc(layout) } as usize;
    assert!(class_of(p).is_large());
    let first = span_of(PageId::containing(p));
    let last = span_of(PageId::containing(p + size - 1));
    assert!(!first.is_null());
    assert_eq!(first, last);
    // SAFETY: a live record.
    let span = unsafe { &*first };
    assert_eq!(span.state, SpanState::Large);
    assert_eq!(span.start_addr(), p);
    assert!(span.end_addr() >= p + size);
    assert_eq!(
        oxmalloc::allocator::usable_size(p as *const u8),
        span.end_addr() - p
    );
    // SAFETY: allocated above with this layout.
    unsafe { OxMalloc.dealloc(p as *mut u8, layout) };
}

#[test]
fn memory_oxmalloc_never_handed_out_is_not_ours() {
    let on_stack = 0u64;
    let from_libc = Box::new(7u64); // this binary's global allocator is the system one
    let mapped = vec![0u8; 1 << 20];
    for addr in [
        &on_stack as *const u64 as usize,
        &*from_libc as *const u64 as usize,
        mapped.as_ptr() as usize,
        0x1000,
        usize::MAX - 4096,
        1 << 60,
    ] {
        assert!(class_of(addr).is_large(), "{addr:#x}");
        assert!(span_of(PageId::containing(addr)).is_null(), "{addr:#x}");
        assert_eq!(oxmalloc::allocator::usable_size(addr as *const u8), 0);
    }
}

#[test]
fn depending_on_the_crate_does_not_replace_c_malloc() {
    // SAFETY: Dl_info is plain data; dladdr only fills it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: any address may be passed to dladdr.
    let ok = unsafe { libc::dladdr(libc::malloc as *const libc::c_void, &mut info) };
    assert_ne!(ok, 0);
    // SAFETY: dladdr returns a NUL-terminated file name.
    let file = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    assert!(file.contains("libc.so"), "malloc resolves into {file}");
}
