//! `oxmalloc bench` end to end: runs the built launcher and checks the structure of its
//! reports, never its timings.
//!
//! Invariants: the launcher must already be built (`cargo build --release --workspace`); the
//! tests only read it, and write their outputs to fresh files in the temporary directory.

use std::path::PathBuf;
use std::process::{Command, Output};

fn launcher() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let exe = target.join("release").join("oxmalloc");
    assert!(
        exe.is_file(),
        "{} is not built; run `cargo build --release --workspace` first",
        exe.display()
    );
    exe
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("oxmalloc-bench-test-{}-{name}", std::process::id()))
}

fn bench(args: &[&str]) -> Output {
    Command::new(launcher())
        .arg("bench")
        .args(args)
        .output()
        .expect("cannot run the launcher")
}

/// The cells of a markdown table row, without the outer pipes.
fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

const PEERS: &[(&str, &str)] = &[
    ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    (
        "tcmalloc",
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    ),
    ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
];

#[test]
fn quick_run_reports_every_workload_and_allocator() {
    let json_path = tmp("quick.json");
    let svg_path = tmp("quick.svg");
    let out = bench(&[
        "--quick",
        "--json",
        json_path.to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench --quick failed: {}\n{stdout}\n{stderr}",
        out.status
    );

    let mut allocators = vec!["glibc", "oxmalloc"];
    for (name, path) in PEERS {
        if std::path::Path::new(path).is_file() {
            allocators.push(name);
        }
    }

    let json_text = std::fs::read_to_string(&json_path).expect("no JSON written");
    let svg = std::fs::read_to_string(&svg_path).expect("no SVG written");
    let _ = std::fs::remove_file(&json_path);
    let _ = std::fs::remove_file(&svg_path);
    let v: serde_json::Value = serde_json::from_str(&json_text).expect("JSON does not parse");
    let workloads: Vec<String> = v["workloads"]
        .as_array()
        .expect("workloads list")
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    for w in ["churn-small", "batch", "producer-consumer", "fragmentation"] {
        assert!(workloads.iter().any(|x| x == w), "workload {w} missing");
    }
    let json_allocs: Vec<&str> = v["allocators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(json_allocs, allocators);
    let results = v["results"].as_array().expect("results list");
    assert_eq!(results.len(), workloads.len() * allocators.len());
    for w in &workloads {
        for a in &allocators {
            let r = results
                .iter()
                .find(|r| r["workload"] == w.as_str() && r["allocator"] == *a)
                .unwrap_or_else(|| panic!("no result for {w} under {a}"));
            for m in ["wall_ms", "cpu_ms", "peak_rss_kib"] {
                assert!(
                    r["median"][m].is_number(),
                    "no median {m} for {w} under {a}"
                );
            }
            assert!(!r["runs"].as_array().unwrap().is_empty());
        }
    }

    // Three tables (wall, CPU, peak RSS), each with a header naming every allocator, ratio
    // columns, and one row per workload.
    let lines: Vec<&str> = stdout.lines().collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("| workload |"))
        .collect();
    assert_eq!(headers.len(), 3, "expected three tables:\n{stdout}");
    for &h in &headers {
        let head = cells(lines[h]);
        for a in &allocators {
            assert!(head.iter().any(|c| c == a), "no column {a} in {:?}", head);
            assert!(head.iter().any(|c| c == &format!("{a}/best")));
            if *a != "glibc" {
                assert!(head.iter().any(|c| c == &format!("{a}/glibc")));
            }
        }
        assert!(lines[h + 1].starts_with("|---"));
        let rows: Vec<Vec<String>> = lines[h + 2..]
            .iter()
            .take_while(|l| l.starts_with('|'))
            .map(|l| cells(l))
            .collect();
        let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(names, workloads);
        for r in &rows {
            assert_eq!(r.len(), head.len());
        }
    }

    let svg = svg.trim();
    assert!(svg.starts_with("<svg"), "SVG does not start with <svg");
    assert!(svg.ends_with("</svg>"), "SVG does not end with </svg>");
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
}

#[test]
fn shell_command_is_benchmarked() {
    let json_path = tmp("cmd.json");
    let out = bench(&[
        "--cmd",
        "true",
        "--runs",
        "1",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench --cmd true failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l.starts_with("| cmd |")), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json_path);
    assert_eq!(v["workloads"], serde_json::json!(["cmd"]));
}

#[test]
fn bad_options_fail_with_a_message() {
    for args in [
        &["--no-such-option"][..],
        &["--runs", "0"],
        &["--runs"],
        &["--workloads", "no-such-workload"],
        &["--allocators", "no-such-allocator"],
        &["--alloc", "broken"],
    ] {
        let out = bench(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("oxmalloc bench:") && stderr.lines().count() >= 1,
            "{args:?}: no message: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed a report");
    }
    let out = bench(&["--no-such-option"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-option"));
}
