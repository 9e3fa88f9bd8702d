//! Large-allocation reports, failure reports, hooks and the heap limit, in real processes under
//! LD_PRELOAD (C and Python) and through the Rust API.

mod common;

use common::{check, compile, library, python, root};
use std::process::Command;

#[test]
fn python_large_bytearray_is_reported_exactly_once() {
    let out = Command::new(python())
        .args([
            "-c",
            "a = bytearray(150 * 1000 * 1000)\nb = bytearray(150 * 1000 * 1000)\nprint('ok')",
        ])
        .env("LD_PRELOAD", library())
        .env("OXMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", "100M")
        .output()
        .unwrap();
    check(&out, "python with a report threshold");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("oxmalloc: large alloc"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    // bytearray asks for one byte more than its length, for the trailing NUL.
    assert!(
        lines[0].starts_with("oxmalloc: large alloc 150000001 bytes == 0x"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" @ 0x"), "no call stack: {}", lines[0]);
    assert!(
        lines[0].contains("PyByteArray"),
        "no symbol names: {}",
        lines[0]
    );
}

#[test]
fn threshold_off_and_below_threshold_print_nothing() {
    for (value, size) in [
        ("off", "300 << 20"),
        ("0", "300 << 20"),
        ("1G", "600 << 20"),
    ] {
        let out = Command::new(python())
            .args(["-c", &format!("a = bytearray({size})")])
            .env("LD_PRELOAD", library())
            .env("OXMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", value)
            .output()
            .unwrap();
        check(&out, "python");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("large alloc"),
            "{value}"
        );
    }
}

const LIMITED_SCRIPT: &str = r#"
import sys
try:
    b = bytearray(1 << 30)
    print("no MemoryError for 1 GiB under a 512 MiB limit")
    sys.exit(1)
except MemoryError:
    print("caught MemoryError for bytearray")
items = []
try:
    while True:
        items.append(bytes(1000))
except MemoryError:
    n = len(items)
    del items
    print("list stopped by MemoryError after", n)
# The program goes on normally afterwards.
d = {i: str(i) for i in range(200000)}
print("continued", len(d))
"#;

#[test]
fn heap_limit_gives_python_memory_error_not_a_kill() {
    for pymalloc in [None, Some("malloc")] {
        let mut cmd = Command::new(python());
        cmd.args(["-c", LIMITED_SCRIPT])
            .env("LD_PRELOAD", library())
            .env("OXMALLOC_HEAP_LIMIT", "512M");
        if let Some(m) = pymalloc {
            cmd.env("PYTHONMALLOC", m);
        }
        let out = cmd.output().unwrap();
        check(&out, "python under a heap limit");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("caught MemoryError for bytearray"),
            "{stdout}"
        );
        assert!(stdout.contains("list stopped by MemoryError"), "{stdout}");
        assert!(stdout.contains("continued 200000"), "{stdout}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("allocation of 1073741825 bytes"),
            "{stderr}"
        );
        assert!(stderr.contains("heap limit"), "{stderr}");
        assert!(stderr.contains("limit 536870912 B"), "{stderr}");
    }
}

#[test]
fn python_module_sets_the_heap_limit_at_run_time() {
    let script = r#"
import oxmalloc
assert oxmalloc.heap_limit() is None
oxmalloc.set_heap_limit("256M")
assert oxmalloc.heap_limit() == 256 << 20
try:
    bytearray(300 << 20)
    raise SystemExit("no MemoryError")
except MemoryError:
    pass
oxmalloc.set_heap_limit(None)
b = bytearray(300 << 20)
print("ok")
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .env("LD_PRELOAD", library())
        .env("PYTHONPATH", root().join("python"))
        .output()
        .unwrap();
    check(&out, "python set_heap_limit");
}

#[test]
fn c_hooks_receive_size_address_and_reason() {
    let exe = compile(&root().join("tests/c_stats/limits.c"));
    let out = Command::new(&exe)
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    check(&out, "limits (hooks)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hooks ok"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("oxmalloc: allocation of"),
        "hooks must replace the report: {stderr}"
    );
}

#[test]
fn c_failure_is_null_enomem_with_a_report() {
    let exe = compile(&root().join("tests/c_stats/limits.c"));
    let out = Command::new(&exe)
        .arg("report")
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    check(&out, "limits (report)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("oxmalloc: allocation of 104857600 bytes (alignment 8192) failed: it would exceed the heap limit"),
        "{stderr}"
    );
    assert!(stderr.contains("limit 67108864 B"), "{stderr}");
    assert_eq!(stderr.matches("failed:").count(), 1, "{stderr}");
}

#[test]
fn auto_limit_is_below_the_machine_memory() {
    let script = "import oxmalloc; print(oxmalloc.heap_limit())";
    let out = Command::new(python())
        .args(["-c", script])
        .env("LD_PRELOAD", library())
        .env("OXMALLOC_HEAP_LIMIT", "auto")
        .env("PYTHONPATH", root().join("python"))
        .output()
        .unwrap();
    check(&out, "auto limit");
    let limit: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(limit > 0 && limit < total_kib * 1024, "auto limit {limit}");
}

mod rust_api {
    use oxmalloc::hooks::{
        set_failure_hook, set_large_alloc_hook, set_large_alloc_threshold, REASON_HEAP_LIMIT,
    };
    use oxmalloc::OxMalloc;
    use std::alloc::{GlobalAlloc, Layout};
    use std::ffi::{c_int, c_void};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static LARGE_SIZE: AtomicUsize = AtomicUsize::new(0);
    static LARGE_ADDR: AtomicUsize = AtomicUsize::new(0);
    static FAIL_SIZE: AtomicUsize = AtomicUsize::new(0);
    static FAIL_REASON: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_large(size: usize, addr: *mut c_void, user: *mut c_void) {
        assert_eq!(user as usize, 7);
        LARGE_SIZE.store(size, Ordering::SeqCst);
        LARGE_ADDR.store(addr as usize, Ordering::SeqCst);
    }

    extern "C" fn on_fail(size: usize, _align: usize, reason: c_int, _user: *mut c_void) {
        FAIL_SIZE.store(size, Ordering::SeqCst);
        FAIL_REASON.store(reason as usize, Ordering::SeqCst);
    }

    #[test]
    fn limit_fails_with_null_and_hooks_see_size_and_address() {
        set_large_alloc_threshold(64 << 20);
        set_large_alloc_hook(Some(on_large), 7 as *mut c_void);
        let layout = Layout::from_size_align(100 << 20, 4096).unwrap();
        // SAFETY: non-zero layout.
        let p = unsafe { OxMalloc.alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(LARGE_SIZE.load(Ordering::SeqCst), 100 << 20);
        assert_eq!(LARGE_ADDR.load(Ordering::SeqCst), p as usize);
        // SAFETY: allocated above with this layout.
        unsafe { OxMalloc.dealloc(p, layout) };
        set_large_alloc_hook(None, std::ptr::null_mut());
        set_large_alloc_threshold(usize::MAX);

        set_failure_hook(Some(on_fail), std::ptr::null_mut());
        oxmalloc::set_heap_limit(16 << 20);
        assert_eq!(oxmalloc::heap_limit(), 16 << 20);
        let big = Layout::from_size_align(32 << 20, 8).unwrap();
        // SAFETY: non-zero layout.
        let q = unsafe { OxMalloc.alloc(big) };
        assert!(q.is_null());
        assert_eq!(FAIL_SIZE.load(Ordering::SeqCst), 32 << 20);
        assert_eq!(
            FAIL_REASON.load(Ordering::SeqCst),
            REASON_HEAP_LIMIT as usize
        );
        oxmalloc::set_heap_limit(0);
        set_failure_hook(None, std::ptr::null_mut());
        // SAFETY: non-zero layout.
        let r = unsafe { OxMalloc.alloc(big) };
        assert!(!r.is_null());
        // SAFETY: allocated above with this layout.
        unsafe { OxMalloc.dealloc(r, big) };
    }
}
