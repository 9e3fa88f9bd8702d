//! The C front (`liboxmalloc.so`) against glibc's documented semantics: extreme and
//! impossible sizes, alignments that are not powers of two, `calloc`/`reallocarray` overflow,
//! `errno` values, untouched out-pointers on failure, zeroing, contents kept by `realloc`, and
//! `malloc_usable_size` at least the requested size.
//!
//! The target runs the way the library is used: preloaded (`LD_PRELOAD=.../liboxmalloc.so`),
//! serving `malloc` for the whole fuzzer process, which therefore has to be built without a
//! sanitizer (a sanitizer's own `malloc` would win over the preloaded one). The functions are
//! looked up with `dlsym(RTLD_DEFAULT, ..)`, and the target refuses to run when they are not
//! oxmalloc's. With `OXMALLOC_FUZZ_DLOPEN=PATH` it instead `dlopen`s that copy (RTLD_LOCAL) and
//! calls its exports, which is how a `ctypes.CDLL` user reaches them.

#![no_main]

use arbitrary::Arbitrary;
use core::ffi::{c_int, c_void};
use libfuzzer_sys::fuzz_target;
use oxmalloc_fuzz::{check, check_zero, fill};
use std::ffi::CString;
use std::sync::OnceLock;

const MAX_OPS: usize = 256;
const MAX_LIVE: usize = 128;
/// Most bytes kept live (the oldest blocks are freed to make room), so that the pages the
/// pattern touches stay well below libFuzzer's RSS limit.
const MAX_LIVE_BYTES: usize = 256 << 20;
const PAGE: usize = 4096;

/// A size argument. Every variant but `Impossible*` can always be satisfied.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum CSize {
    Zero,
    Tiny(u8),
    Small(u16),
    /// Up to 4 MiB.
    Medium(u32),
    /// Whole 4 KiB pages, up to 8 MiB, plus or minus a little.
    Pages {
        n: u16,
        delta: i8,
    },
    /// `2^47 ..= 2^63`: more than the address space.
    ImpossiblePow2(u8),
    /// Within 64 KiB of `SIZE_MAX`.
    ImpossibleNearMax(u16),
    /// Around `PTRDIFF_MAX`.
    ImpossibleNearIsizeMax(i16),
}

impl CSize {
    fn bytes(self) -> usize {
        match self {
            CSize::Zero => 0,
            CSize::Tiny(n) => n as usize,
            CSize::Small(n) => n as usize,
            CSize::Medium(n) => n as usize % (4 << 20),
            CSize::Pages { n, delta } => {
                ((n as usize % 2048) * PAGE).saturating_add_signed(delta as isize)
            }
            CSize::ImpossiblePow2(e) => 1 << (47 + e as u32 % 17),
            CSize::ImpossibleNearMax(n) => usize::MAX - n as usize,
            CSize::ImpossibleNearIsizeMax(d) => {
                (isize::MAX as usize).wrapping_add_signed(d as isize)
            }
        }
    }

    fn possible(self) -> bool {
        !matches!(
            self,
            CSize::ImpossiblePow2(_)
                | CSize::ImpossibleNearMax(_)
                | CSize::ImpossibleNearIsizeMax(_)
        )
    }
}

/// An alignment argument, valid or not.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum CAlign {
    /// A power of two up to 2 MiB.
    Pow2(u8),
    /// Any small value (mostly not powers of two, including 0).
    Small(u16),
    /// A power of two from 4 MiB to 2^63.
    HugePow2(u8),
    /// Anything.
    Raw(u64),
}

impl CAlign {
    fn value(self) -> usize {
        match self {
            CAlign::Pow2(e) => 1 << (e % 22),
            CAlign::Small(n) => n as usize,
            CAlign::HugePow2(e) => 1 << (22 + e as u32 % 42),
            CAlign::Raw(n) => n as usize,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Malloc(CSize),
    Calloc {
        n: CSize,
        size: CSize,
    },
    Realloc {
        idx: u16,
        size: CSize,
    },
    /// `realloc(NULL, size)`.
    ReallocNull(CSize),
    Reallocarray {
        idx: u16,
        n: CSize,
        size: CSize,
    },
    Memalign {
        align: CAlign,
        size: CSize,
    },
    AlignedAlloc {
        align: CAlign,
        size: CSize,
    },
    PosixMemalign {
        align: CAlign,
        size: CSize,
    },
    Valloc(CSize),
    Pvalloc(CSize),
    Free {
        idx: u16,
    },
    FreeNull,
    UsableSize {
        idx: u16,
    },
}

type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type ReallocarrayFn = unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
type MemalignFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int;
type UsableFn = unsafe extern "C" fn(*mut c_void) -> usize;
type FailureHook = extern "C" fn(usize, usize, c_int, *mut c_void);
type SetFailureHookFn = unsafe extern "C" fn(Option<FailureHook>, *mut c_void);
type LargeAllocHook = extern "C" fn(usize, *mut c_void, *mut c_void);
type SetLargeAllocHookFn = unsafe extern "C" fn(Option<LargeAllocHook>, *mut c_void);

struct Api {
    malloc: MallocFn,
    free: FreeFn,
    calloc: CallocFn,
    realloc: ReallocFn,
    reallocarray: ReallocarrayFn,
    memalign: MemalignFn,
    aligned_alloc: MemalignFn,
    posix_memalign: PosixMemalignFn,
    valloc: MallocFn,
    pvalloc: MallocFn,
    malloc_usable_size: UsableFn,
}

/// Failure reports are expected here by the thousand; this hook keeps them off stderr.
extern "C" fn quiet_failure(_size: usize, _align: usize, _reason: c_int, _user: *mut c_void) {}

/// Likewise for the reports of (successful) multi-TiB reservations.
extern "C" fn quiet_large(_size: usize, _addr: *mut c_void, _user: *mut c_void) {}

fn sym<T: Copy>(handle: *mut c_void, name: &str) -> T {
    assert_eq!(
        core::mem::size_of::<T>(),
        core::mem::size_of::<*mut c_void>()
    );
    let cname = CString::new(name).unwrap();
    // SAFETY: `handle` is RTLD_DEFAULT or a live dlopen handle, and `cname` is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, cname.as_ptr()) };
    assert!(
        !p.is_null(),
        "{name} not found: run this target with LD_PRELOAD=.../liboxmalloc.so (see docs/fuzzing.md)"
    );
    // SAFETY: `T` is a function pointer type of the same size as `p`, matching the C
    // signature of the export `name`.
    unsafe { core::mem::transmute_copy::<*mut c_void, T>(&p) }
}

/// The library's handle: the process's own symbols when preloaded, or a `dlopen`ed copy when
/// `OXMALLOC_FUZZ_DLOPEN` names one.
fn library() -> *mut c_void {
    let Ok(path) = std::env::var("OXMALLOC_FUZZ_DLOPEN") else {
        let active: extern "C" fn() -> c_int = sym(libc::RTLD_DEFAULT, "oxmalloc_is_active");
        assert_eq!(
            active(),
            1,
            "liboxmalloc.so is loaded but does not serve malloc: preload it with LD_PRELOAD"
        );
        return libc::RTLD_DEFAULT;
    };
    let cpath = CString::new(path.clone()).unwrap();
    // SAFETY: `cpath` is NUL-terminated; the library's constructors only read the environment
    // and the dynamic linker's tables.
    let handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            String::new()
        } else {
            // SAFETY: non-null dlerror results are NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        panic!("cannot dlopen {path}: {msg}");
    }
    handle
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let handle = library();
        let set_hook: SetFailureHookFn = sym(handle, "oxmalloc_set_alloc_failure_hook");
        // SAFETY: the hook is a valid `extern "C"` function that ignores its arguments.
        unsafe { set_hook(Some(quiet_failure), core::ptr::null_mut()) };
        let set_large: SetLargeAllocHookFn = sym(handle, "oxmalloc_set_large_alloc_hook");
        // SAFETY: as above.
        unsafe { set_large(Some(quiet_large), core::ptr::null_mut()) };
        Api {
            malloc: sym(handle, "malloc"),
            free: sym(handle, "free"),
            calloc: sym(handle, "calloc"),
            realloc: sym(handle, "realloc"),
            reallocarray: sym(handle, "reallocarray"),
            memalign: sym(handle, "memalign"),
            aligned_alloc: sym(handle, "aligned_alloc"),
            posix_memalign: sym(handle, "posix_memalign"),
            valloc: sym(handle, "valloc"),
            pvalloc: sym(handle, "pvalloc"),
            malloc_usable_size: sym(handle, "malloc_usable_size"),
        }
    })
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn clear_errno() {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = 0 };
}

struct Block {
    ptr: *mut u8,
    size: usize,
    tag: u32,
}

struct State {
    api: &'static Api,
    blocks: Vec<Block>,
    next_tag: u32,
}

impl State {
    /// Checks a successful result of `what` for `size` bytes aligned to `align`, and keeps it.
    fn add(&mut self, p: *mut c_void, size: usize, align: usize, zeroed: bool, what: &str) {
        assert!(
            !p.is_null(),
            "{what}: null for {size} bytes (errno {})",
            errno()
        );
        let p = p as *mut u8;
        assert_eq!(
            p as usize % align,
            0,
            "{what}: {p:p} not aligned to {align} ({size} bytes)"
        );
        // SAFETY: `p` is live in the library's heap.
        let usable = unsafe { (self.api.malloc_usable_size)(p.cast()) };
        assert!(
            usable >= size,
            "{what}: malloc_usable_size({p:p}) = {usable} < {size}"
        );
        if zeroed {
            // SAFETY: `p` holds `size` readable bytes.
            unsafe { check_zero(p, size, what) };
        }
        self.next_tag = self.next_tag.wrapping_add(1);
        // SAFETY: `p` holds `size` writable bytes.
        unsafe { fill(p, size, self.next_tag) };
        while !self.blocks.is_empty()
            && (self.blocks.len() >= MAX_LIVE || self.live_bytes() + size > MAX_LIVE_BYTES)
        {
            let old = self.blocks.swap_remove(0);
            self.free(old);
        }
        self.blocks.push(Block {
            ptr: p,
            size,
            tag: self.next_tag,
        });
    }

    fn live_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.size).sum()
    }

    fn check(&self, b: &Block, what: &str) {
        // SAFETY: `b` is live with `b.size` bytes.
        unsafe { check(b.ptr, b.size, b.size, b.tag, what) };
        // SAFETY: `b.ptr` is live in the library's heap.
        let usable = unsafe { (self.api.malloc_usable_size)(b.ptr.cast()) };
        assert!(
            usable >= b.size,
            "malloc_usable_size({:p}) = {usable} < {}",
            b.ptr,
            b.size
        );
    }

    fn free(&self, b: Block) {
        self.check(&b, "before free");
        // SAFETY: `b.ptr` is live and came from this library.
        unsafe { (self.api.free)(b.ptr.cast()) };
    }

    /// Checks a failed call: null with `errno == ENOMEM`.
    fn expect_enomem(&self, p: *mut c_void, what: &str) {
        assert!(
            p.is_null(),
            "{what}: returned {p:p} for an impossible request"
        );
        assert_eq!(
            errno(),
            libc::ENOMEM,
            "{what}: errno {} instead of ENOMEM",
            errno()
        );
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let api = api();
    let mut st = State {
        api,
        blocks: Vec::new(),
        next_tag: 0,
    };
    for op in ops.into_iter().take(MAX_OPS) {
        run(&mut st, op);
    }
    for b in std::mem::take(&mut st.blocks) {
        st.free(b);
    }
});

fn pick(st: &State, idx: u16) -> Option<usize> {
    (!st.blocks.is_empty()).then(|| idx as usize % st.blocks.len())
}

/// The alignment every `malloc` result must have for `size` bytes: 16, or 8 for blocks of at
/// most 8 bytes (no C object that small needs more).
fn malloc_align(size: usize) -> usize {
    if size <= 8 {
        8
    } else {
        16
    }
}

fn run(st: &mut State, op: Op) {
    let api = st.api;
    match op {
        Op::Malloc(size) | Op::ReallocNull(size) => {
            let n = size.bytes();
            clear_errno();
            let p = if matches!(op, Op::Malloc(_)) {
                // SAFETY: malloc accepts any size.
                unsafe { (api.malloc)(n) }
            } else {
                // SAFETY: realloc(NULL, n) is malloc(n).
                unsafe { (api.realloc)(core::ptr::null_mut(), n) }
            };
            if size.possible() {
                st.add(p, n, malloc_align(n), false, "malloc");
            } else {
                st.expect_enomem(p, "malloc");
            }
        }
        Op::Calloc { n, size } => {
            let (a, b) = (n.bytes(), size.bytes());
            clear_errno();
            // SAFETY: calloc accepts any counts.
            let p = unsafe { (api.calloc)(a, b) };
            match a.checked_mul(b) {
                // Includes a huge count times a zero size.
                Some(total) if total <= 64 << 20 => {
                    st.add(p, total, malloc_align(total), true, "calloc")
                }
                Some(total) if total >= 1 << 47 => st.expect_enomem(p, "calloc"),
                Some(_) => {
                    // Between 64 MiB and 128 TiB: may or may not fit; either way it is correct.
                    if p.is_null() {
                        st.expect_enomem(p, "calloc");
                    } else {
                        // SAFETY: `p` is live in the library's heap.
                        unsafe { (api.free)(p) };
                    }
                }
                None => st.expect_enomem(p, "calloc (overflow)"),
            }
        }
        Op::Realloc { idx, size } => {
            let Some(i) = pick(st, idx) else { return };
            realloc_block(st, i, Some(size.bytes()), "realloc", |p, n| {
                // SAFETY: `p` is live in the library's heap.
                unsafe { (api.realloc)(p, n) }
            });
        }
        Op::Reallocarray { idx, n, size } => {
            let Some(i) = pick(st, idx) else { return };
            let (a, b) = (n.bytes(), size.bytes());
            let total = a.checked_mul(b);
            realloc_block(st, i, total, "reallocarray", |p, _| {
                // SAFETY: `p` is live in the library's heap.
                unsafe { (api.reallocarray)(p, a, b) }
            });
        }
        Op::Memalign { align, size } => {
            let (a, n) = (align.value(), size.bytes());
            clear_errno();
            // SAFETY: memalign accepts any arguments.
            let p = unsafe { (api.memalign)(a, n) };
            if a > usize::MAX / 2 + 1 {
                assert!(p.is_null(), "memalign({a:#x}, {n}) returned {p:p}");
                assert_eq!(
                    errno(),
                    libc::EINVAL,
                    "memalign({a:#x}, {n}): errno {}",
                    errno()
                );
                return;
            }
            let eff = a.max(1).next_power_of_two();
            aligned_result(st, p, eff, size, "memalign");
        }
        Op::AlignedAlloc { align, size } => {
            let (a, n) = (align.value(), size.bytes());
            clear_errno();
            // SAFETY: aligned_alloc accepts any arguments.
            let p = unsafe { (api.aligned_alloc)(a, n) };
            if !a.is_power_of_two() {
                assert!(p.is_null(), "aligned_alloc({a}, {n}) returned {p:p}");
                assert_eq!(
                    errno(),
                    libc::EINVAL,
                    "aligned_alloc({a}, {n}): errno {}",
                    errno()
                );
                return;
            }
            aligned_result(st, p, a, size, "aligned_alloc");
        }
        Op::PosixMemalign { align, size } => {
            let (a, n) = (align.value(), size.bytes());
            let sentinel = 0x5a5a_5a5a_5a5a_5a5ausize as *mut c_void;
            let mut out = sentinel;
            // SAFETY: `out` is a valid out-pointer.
            let rc = unsafe { (api.posix_memalign)(&mut out, a, n) };
            let valid = a.is_power_of_two() && a % core::mem::size_of::<*mut c_void>() == 0;
            if !valid {
                assert_eq!(
                    rc,
                    libc::EINVAL,
                    "posix_memalign(_, {a}, {n}) returned {rc}"
                );
                assert_eq!(
                    out, sentinel,
                    "posix_memalign(_, {a}, {n}) wrote {out:p} on EINVAL"
                );
            } else if rc == 0 {
                assert_ne!(
                    out, sentinel,
                    "posix_memalign(_, {a}, {n}) succeeded without output"
                );
                aligned_result(st, out, a, size, "posix_memalign");
            } else {
                assert_eq!(
                    rc,
                    libc::ENOMEM,
                    "posix_memalign(_, {a}, {n}) returned {rc}"
                );
                assert_eq!(
                    out, sentinel,
                    "posix_memalign(_, {a}, {n}) wrote {out:p} on ENOMEM"
                );
                assert!(
                    !(size.possible() && a <= 2 << 20),
                    "posix_memalign(_, {a}, {n}) failed for a possible request"
                );
            }
        }
        Op::Valloc(size) | Op::Pvalloc(size) => {
            let n = size.bytes();
            let pv = matches!(op, Op::Pvalloc(_));
            clear_errno();
            // SAFETY: valloc/pvalloc accept any size.
            let p = unsafe {
                if pv {
                    (api.pvalloc)(n)
                } else {
                    (api.valloc)(n)
                }
            };
            let what = if pv { "pvalloc" } else { "valloc" };
            if !size.possible() {
                st.expect_enomem(p, what);
                return;
            }
            let want = if pv {
                n.max(1).next_multiple_of(PAGE)
            } else {
                n
            };
            st.add(p, want, PAGE, false, what);
        }
        Op::Free { idx } => {
            if let Some(i) = pick(st, idx) {
                let b = st.blocks.swap_remove(i);
                st.free(b);
            }
        }
        Op::FreeNull => {
            // SAFETY: free(NULL) does nothing.
            unsafe { (api.free)(core::ptr::null_mut()) };
            // SAFETY: malloc_usable_size(NULL) is 0 by contract.
            let u = unsafe { (api.malloc_usable_size)(core::ptr::null_mut()) };
            assert_eq!(u, 0, "malloc_usable_size(NULL) = {u}");
        }
        Op::UsableSize { idx } => {
            if let Some(i) = pick(st, idx) {
                st.check(&st.blocks[i], "usable size");
            }
        }
    }
}

/// Checks the result of an aligned allocation of `size` with (effective) alignment `align`,
/// which is never less than what `malloc` guarantees for that size.
fn aligned_result(st: &mut State, p: *mut c_void, align: usize, size: CSize, what: &str) {
    let n = size.bytes();
    let align = align.max(malloc_align(n));
    if size.possible() && align <= 2 << 20 {
        st.add(p, n, align, false, what);
    } else if !size.possible() {
        st.expect_enomem(p, what);
    } else if p.is_null() {
        // A huge alignment may be more than the address space can offer.
        st.expect_enomem(p, what);
    } else {
        st.add(p, n, align, false, what);
    }
}

/// Resizes block `i` with `call(ptr, n)`, where `total` is the requested size (`None` on
/// overflow), and checks glibc's outcome: a zero size frees the block and returns null; an
/// impossible size fails with ENOMEM and leaves the block intact; otherwise the contents are
/// kept up to the smaller size.
fn realloc_block(
    st: &mut State,
    i: usize,
    total: Option<usize>,
    what: &str,
    call: impl FnOnce(*mut c_void, usize) -> *mut c_void,
) {
    let b = &st.blocks[i];
    st.check(b, "before realloc");
    let (ptr, old, tag) = (b.ptr, b.size, b.tag);
    clear_errno();
    let q = call(ptr.cast(), total.unwrap_or(usize::MAX));
    match total {
        Some(0) => {
            assert!(
                q.is_null(),
                "{what}({ptr:p}, 0) returned {q:p} instead of freeing"
            );
            st.blocks.swap_remove(i);
        }
        Some(n) if n <= 64 << 20 => {
            assert!(
                !q.is_null(),
                "{what}({ptr:p}, {n}) failed (errno {})",
                errno()
            );
            let keep = old.min(n);
            // SAFETY: `q` is live with at least `keep` bytes.
            unsafe { check(q as *const u8, keep, old, tag, what) };
            st.blocks.swap_remove(i);
            st.add(q, n, malloc_align(n), false, what);
        }
        Some(n) if n < 1 << 47 && !q.is_null() => {
            // Large but possible: keep it only long enough to check and free it.
            // SAFETY: `q` is live with at least `old` bytes.
            unsafe { check(q as *const u8, old, old, tag, what) };
            st.blocks.swap_remove(i);
            // SAFETY: `q` is live in the library's heap.
            unsafe { (st.api.free)(q) };
        }
        _ => {
            st.expect_enomem(q, what);
            st.check(&st.blocks[i], "after failed realloc");
        }
    }
}
