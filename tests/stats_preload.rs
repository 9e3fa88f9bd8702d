//! Statistics through liboxmalloc.so: the C API, the at-exit report, the launcher's summary and
//! the Python module, each in a real process under LD_PRELOAD.
//!
//! Needs `cargo build --release` first (the README's test command does that).

mod common;

use common::{check, compile, library, python, root, target_file};
use std::process::Command;

#[test]
fn c_api_reports_and_sizes_buffers_like_snprintf() {
    let exe = compile(&root().join("tests/c_stats/stats_api.c"));
    let out = Command::new(&exe)
        .env("LD_PRELOAD", library())
        .output()
        .unwrap();
    check(&out, "stats_api");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("oxmalloc statistics"),
        "malloc_stats printed nothing useful:\n{stderr}"
    );
}

#[test]
fn stats_at_exit_goes_to_stderr_or_a_json_file() {
    let py = python();
    let out = Command::new(&py)
        .args(["-c", "x = bytearray(10 << 20)"])
        .env("LD_PRELOAD", library())
        .env("OXMALLOC_STATS_AT_EXIT", "1")
        .output()
        .unwrap();
    check(&out, "python with text report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("oxmalloc statistics").count(), 1, "{stderr}");

    let file = std::env::temp_dir().join(format!("oxmalloc-stats-{}.json", std::process::id()));
    let out = Command::new(&py)
        .args(["-c", "x = bytearray(10 << 20)"])
        .env("LD_PRELOAD", library())
        .env("OXMALLOC_STATS_AT_EXIT", &file)
        .output()
        .unwrap();
    check(&out, "python with JSON file");
    let text = std::fs::read_to_string(&file).expect("report file written");
    let _ = std::fs::remove_file(&file);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON parses");
    assert!(v["large_allocations_total"].as_u64().unwrap() >= 1);
    assert!(v["bytes_allocated_total"].as_u64().unwrap() >= 10 << 20);
}

#[test]
fn launcher_prints_a_memory_summary_and_passes_the_status_on() {
    let launcher = target_file("oxmalloc");
    let out = Command::new(&launcher)
        .args(["run", "--lib"])
        .arg(library())
        .args([
            "--",
            &python(),
            "-c",
            "import sys; b = bytearray(64 << 20); sys.exit(3)",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exited with status 3; peak RSS"),
        "{stderr}"
    );
    assert!(stderr.contains("at exit: in use"), "{stderr}");
    assert!(stderr.contains("fragmentation: internal"), "{stderr}");
    assert!(stderr.contains("large allocations"), "{stderr}");

    let out = Command::new(&launcher)
        .args(["run", "--no-summary", "--lib"])
        .arg(library())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("oxmalloc:"));
}

#[test]
fn python_module_reports_a_large_bytearray() {
    let script = r#"
import oxmalloc
assert oxmalloc.is_active()
before = oxmalloc.stats()
b = bytearray(150 * 1000 * 1000)
after = oxmalloc.stats()
grew = after["large_in_use_bytes"] - before["large_in_use_bytes"]
assert 150_000_000 <= grew < 150_000_000 + 8192, grew
assert after["in_use_bytes"] >= after["large_in_use_bytes"]
assert "in use by the program" in oxmalloc.stats_text()
released_before = after["released_bytes_total"]
del b
oxmalloc.release()
final = oxmalloc.stats()
assert final["released_bytes_total"] - released_before >= 150_000_000, final["released_bytes_total"]
assert final["page_heap_free_bytes"] == 0
print("module ok")
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .env("LD_PRELOAD", library())
        .env("PYTHONMALLOC", "malloc")
        .env("PYTHONPATH", root().join("python"))
        .output()
        .unwrap();
    check(&out, "python module under oxmalloc");
    assert!(String::from_utf8_lossy(&out.stdout).contains("module ok"));
}

#[test]
fn python_module_explains_when_not_under_oxmalloc() {
    let script = r#"
import oxmalloc
assert not oxmalloc.is_active()
try:
    oxmalloc.stats()
except oxmalloc.NotActiveError as e:
    assert "oxmalloc run" in str(e) and "LD_PRELOAD" in str(e)
    print("explained")
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .env("PYTHONPATH", root().join("python"))
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap();
    check(&out, "python module without oxmalloc");
    assert!(String::from_utf8_lossy(&out.stdout).contains("explained"));
}

/// What the thread caches hold after `cache_budget` freed 60 000 objects, with the budget
/// variable set to `budget` (or unset). The page heap keeps its free pages (a shrinking heap
/// caps the caches by itself).
fn cached_after_free(budget: Option<&str>) -> (usize, String) {
    let exe = compile(&root().join("tests/c_stats/cache_budget.c"));
    let mut cmd = Command::new(&exe);
    cmd.env("LD_PRELOAD", library())
        .env("OXMALLOC_RETAIN_MIN", "1G");
    if let Some(b) = budget {
        cmd.env("OXMALLOC_THREAD_CACHE_BYTES", b);
    }
    let out = cmd.output().unwrap();
    check(&out, "cache_budget");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n = stdout
        .trim()
        .strip_prefix("thread_cache_bytes=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    (n, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn thread_cache_budget_is_set_from_the_environment() {
    let (default, _) = cached_after_free(None);
    assert!(
        default > 1 << 20,
        "default budget: only {default} bytes cached"
    );
    for (budget, bytes) in [("1M", 1usize << 20), ("64K", 64 << 10), ("0", 0)] {
        let (cached, _) = cached_after_free(Some(budget));
        assert!(cached <= bytes, "budget {budget}: {cached} bytes cached");
    }
    let (bad, stderr) = cached_after_free(Some("lots"));
    assert!(
        stderr.contains("ignoring malformed OXMALLOC_THREAD_CACHE_BYTES"),
        "{stderr}"
    );
    assert!(
        bad > 1 << 20,
        "a malformed value changed the budget: {bad} bytes cached"
    );
}
