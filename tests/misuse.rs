//! Misuse, done on purpose in child processes: every case gets its one-line report naming the
//! address and the problem, then an abort. Pointers oxmalloc never handed out are refused by a
//! copy loaded with dlopen, and the host process goes on. The checking mode
//! (`OXMALLOC_CHECK=1`) catches writes after free and runs correct programs cleanly.

mod common;

use common::{check, compile, library, python, root};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

fn misuse_program() -> PathBuf {
    compile(&root().join("tests/c_misuse/misuse.c"))
}

/// Runs one misuse case; returns the report line (asserting an abort with exactly one).
fn misuse(case: &str, checking: bool) -> String {
    let mut cmd = Command::new(misuse_program());
    cmd.arg(case).env("LD_PRELOAD", library());
    if checking {
        cmd.env("OXMALLOC_CHECK", "1");
    } else {
        cmd.env_remove("OXMALLOC_CHECK");
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{case}: {:?}, stdout {}, stderr {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("oxmalloc: "))
        .collect();
    assert_eq!(reports.len(), 1, "{case}: {stderr}");
    let line = reports[0].to_string();
    assert!(line.ends_with("; aborting"), "{case}: {line}");
    line
}

/// The hexadecimal address right after `func(` in a report.
fn reported_address(line: &str, func: &str) -> usize {
    let start = line.find(&format!("{func}(0x")).unwrap() + func.len() + 3;
    let hex: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    usize::from_str_radix(&hex, 16).unwrap()
}

#[test]
fn foreign_pointers_are_reported() {
    for case in ["foreign-stack", "foreign-mmap"] {
        let line = misuse(case, false);
        assert!(line.starts_with("oxmalloc: free(0x"), "{line}");
        assert!(line.contains("was not handed out by oxmalloc"), "{line}");
    }
    let line = misuse("realloc-foreign", false);
    assert!(line.starts_with("oxmalloc: realloc(0x"), "{line}");
    assert!(line.contains("was not handed out by oxmalloc"), "{line}");
}

#[test]
fn interior_pointers_are_reported() {
    let line = misuse("small-interior", false);
    assert!(
        line.contains("): interior pointer, 16 bytes into the 48-byte object at 0x"),
        "{line}"
    );
    let p = reported_address(&line, "free");
    assert!(line.contains(&format!("object at {:#x}", p - 16)), "{line}");

    let line = misuse("realloc-interior", false);
    assert!(line.starts_with("oxmalloc: realloc(0x"), "{line}");
    assert!(
        line.contains("interior pointer, 32 bytes into the 48-byte object"),
        "{line}"
    );

    let line = misuse("large-interior", false);
    assert!(
        line.contains("interior pointer, 24576 bytes into the 4194304-byte block at 0x"),
        "{line}"
    );
}

#[test]
fn double_frees_are_reported() {
    // Small objects: on top of this thread's cache, and deeper in it.
    for case in ["small-double", "small-double-cached"] {
        let line = misuse(case, false);
        assert!(line.starts_with("oxmalloc: free(0x"), "{line}");
        assert!(
            line.contains("double free: the 48-byte object is already free"),
            "{case}: {line}"
        );
    }
    let line = misuse("realloc-freed", false);
    assert!(line.starts_with("oxmalloc: realloc(0x"), "{line}");
    assert!(
        line.contains("the 48-byte object is already free"),
        "{line}"
    );
    // A large block.
    let line = misuse("large-double", false);
    assert!(
        line.contains("double free: the block at this address is already free"),
        "{line}"
    );
}

#[test]
fn checking_mode_catches_writes_after_free_and_every_double_free() {
    let line = misuse("write-after-free", true);
    assert!(
        line.contains("use after free: the 48-byte object at 0x")
            && line.contains("was written after it was freed (byte 20 is 0x78)"),
        "{line}"
    );
    let line = misuse("link-after-free", true);
    assert!(
        line.contains("use after free: the free list of 48-byte objects is corrupt at 0x"),
        "{line}"
    );
    let line = misuse("small-double-central", true);
    assert!(
        line.contains("double free: the 48-byte object is already free"),
        "{line}"
    );
    // Everything the default mode reports, the checking mode reports too.
    for case in ["small-interior", "small-double", "large-double"] {
        misuse(case, true);
    }
}

#[test]
fn default_mode_lets_writes_after_free_pass_silently_once() {
    // Documented limit: without OXMALLOC_CHECK a write after free is not looked for.
    let out = Command::new(misuse_program())
        .arg("write-after-free")
        .env("LD_PRELOAD", library())
        .env_remove("OXMALLOC_CHECK")
        .output()
        .unwrap();
    check(&out, "write-after-free without checking");
}

#[test]
fn checking_mode_runs_correct_programs_cleanly() {
    for name in ["threads", "realloc", "align", "calloc", "misc", "usable"] {
        let exe = compile(&root().join(format!("tests/c/{name}.c")));
        let out = Command::new(&exe)
            .env("LD_PRELOAD", library())
            .env("OXMALLOC_CHECK", "1")
            .output()
            .unwrap();
        check(&out, &format!("{name} under OXMALLOC_CHECK=1"));
    }
    let script = r#"
import json, threading
def work(seed):
    d = {}
    for i in range(60000):
        d[str(i * seed)] = [i, str(i), (i, i + 1)]
        if i % 3 == 0:
            d.pop(str((i // 2) * seed), None)
    json.loads(json.dumps({k: v for k, v in list(d.items())[:2000]}))
ts = [threading.Thread(target=work, args=(s,)) for s in range(1, 4)]
for t in ts: t.start()
for t in ts: t.join()
print("ok")
"#;
    for pymalloc in [None, Some("malloc")] {
        let mut cmd = Command::new(python());
        cmd.args(["-c", script])
            .env("LD_PRELOAD", library())
            .env("OXMALLOC_CHECK", "1");
        if let Some(m) = pymalloc {
            cmd.env("PYTHONMALLOC", m);
        }
        let out = cmd.output().unwrap();
        check(&out, "python under OXMALLOC_CHECK=1");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
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
