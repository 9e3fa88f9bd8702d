//! Pointers oxmalloc never handed out: a preloaded oxmalloc reports them and aborts; a copy
//! loaded with dlopen refuses them and lets the host process go on.

mod common;

use common::{check, library, python, root};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn foreign_free(what: &str) -> (Option<i32>, String) {
    let dir = root().join("target/ctests-stats");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("foreign_free");
    let out = Command::new("cc")
        .args(["-O0", "-o"])
        .arg(&exe)
        .arg(root().join("tests/c_misuse/foreign_free.c"))
        .output()
        .unwrap();
    check(&out, "compiling foreign_free");
    let out = Command::new(&exe)
        .arg(what)
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    (
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn freeing_foreign_memory_is_reported_and_aborts() {
    for what in ["stack", "mmap", "interior-large"] {
        let (signal, stderr) = foreign_free(what);
        assert_eq!(signal, Some(libc::SIGABRT), "{what}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("oxmalloc: free(0x"))
            .unwrap_or_else(|| panic!("{what}: no report in {stderr}"));
        assert!(line.contains("was not handed out by oxmalloc"), "{line}");
        assert!(line.ends_with("aborting"), "{line}");
    }
}

#[test]
fn a_dlopened_copy_refuses_foreign_memory_and_the_host_goes_on() {
    let script = format!(
        r#"
import ctypes
lib = ctypes.CDLL({lib:?})
assert lib.oxmalloc_is_active() == 0
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
lib.free.argtypes = [ctypes.c_void_p]
p = libc.malloc(64)
lib.free(p)          # refused, reported, not freed
libc.free.argtypes = [ctypes.c_void_p]
libc.free(p)         # still valid for its owner
# The copy's own functions use its own heap, never the host's (realloc moving a block,
# pvalloc/valloc/aligned_alloc/posix_memalign going through memalign).
for name in ("malloc", "pvalloc", "valloc"):
    getattr(lib, name).restype = ctypes.c_void_p
lib.realloc.restype = ctypes.c_void_p
lib.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
lib.malloc_usable_size.argtypes = [ctypes.c_void_p]
lib.malloc_usable_size.restype = ctypes.c_size_t
q = lib.realloc(lib.malloc(16), 1 << 20)
assert lib.malloc_usable_size(q) >= 1 << 20
lib.free(q)
for f in (lib.pvalloc, lib.valloc):
    r = f(0)
    assert r and r % 4096 == 0 and lib.malloc_usable_size(r) >= 1, f
    lib.free(r)
print("host still running")
"#,
        lib = library().to_string_lossy()
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    check(&out, "python dlopen");
    assert!(String::from_utf8_lossy(&out.stdout).contains("host still running"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused: this liboxmalloc.so was loaded with dlopen"),
        "{stderr}"
    );
}
