//! Helpers shared by the process-level tests: finding the built library and tools, compiling C
//! test programs, and checking child processes.
#![allow(dead_code)]

pub mod pattern;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built artifact in target/release or target/debug (the newer one).
pub fn target_file(name: &str) -> PathBuf {
    let candidates = [
        root().join("target/release").join(name),
        root().join("target/debug").join(name),
    ];
    candidates
        .iter()
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .cloned()
        .unwrap_or_else(|| panic!("{name} is not built: run `cargo build --release` first"))
}

/// liboxmalloc.so: `$OXMALLOC_LIB`, else the built one.
pub fn library() -> PathBuf {
    std::env::var_os("OXMALLOC_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_file("liboxmalloc.so"))
}

/// The real interpreter (not a pyenv shim, which would run several processes).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles a C test program into target/ctests-stats/, once per test process. The program is
/// written under a name of its own and renamed into place: a test compiling over a program
/// another test (or test process) is starting would make that `exec` fail with "Text file busy".
pub fn compile(src: &Path) -> PathBuf {
    compile_with(src, &["-O1", "-g"], &["-ldl"])
}

/// [`compile`] with the compiler's flags before the source and the libraries after it.
pub fn compile_with(src: &Path, flags: &[&str], libs: &[&str]) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let dir = root().join("target/ctests-stats");
    let exe = dir.join(src.file_stem().unwrap());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.contains(&exe) {
        return exe;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let fresh = exe.with_extension(format!("{}.tmp", std::process::id()));
    let out = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&fresh)
        .arg(src)
        .args(libs)
        .output()
        .expect("cc runs");
    check(&out, "compiling");
    std::fs::rename(&fresh, &exe).unwrap();
    built.push(exe.clone());
    exe
}
