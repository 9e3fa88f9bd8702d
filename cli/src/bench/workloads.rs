//! The benchmark workloads, run inside a worker process (`oxmalloc __bench-worker`).
//!
//! Invariants: every workload allocates through the process's C `malloc` family (this binary
//! keeps Rust's default `System` global allocator), so whatever library is preloaded is the
//! allocator under test. Every workload is deterministic: it draws from a fixed-seed generator
//! and its checksum depends only on the workload, its scale and its thread count, never on the
//! allocator, on timing or on thread interleaving. The worker prints `checksum N` as its last
//! line; the fragmentation workload also prints `sample T_MS RSS_KIB` and `phase NAME T_MS`
//! lines before it.

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Workloads run by the worker, with a one-line description each.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "churn-small",
        "one thread, live set of 16..256-byte blocks, random free/alloc",
    ),
    (
        "churn-medium",
        "one thread, live set of 256..4096-byte blocks, random free/alloc",
    ),
    (
        "churn-mixed",
        "one thread, live set of 16..65536-byte blocks, mostly small",
    ),
    (
        "batch",
        "allocate 100k blocks, then free them all, repeatedly",
    ),
    (
        "realloc",
        "vectors and strings grown element by element (realloc growth)",
    ),
    (
        "producer-consumer",
        "blocks allocated on one thread and freed on another",
    ),
    ("threads-1", "1 thread churning its own live set"),
    ("threads-ncpu", "one churning thread per core"),
    ("threads-2xncpu", "two churning threads per core"),
    (
        "fragmentation",
        "fill, free 90%, refill with other sizes, free all; RSS over time",
    ),
];

/// Small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// Allocates `n` bytes (n >= 1) and touches the first and the last byte.
fn block(n: usize, tag: u8) -> Vec<u8> {
    let mut v: Vec<u8> = Vec::with_capacity(n);
    v.push(tag);
    if n > 1 {
        v.spare_capacity_mut()[n - 2].write(tag);
    }
    v
}

#[derive(Clone, Copy)]
enum Sizes {
    Small,
    Medium,
    Mixed,
}

impl Sizes {
    fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Sizes::Small => rng.range(16, 257),
            Sizes::Medium => rng.range(256, 4097),
            Sizes::Mixed => match rng.next() % 100 {
                0..=79 => rng.range(16, 257),
                80..=97 => rng.range(256, 4097),
                _ => rng.range(4096, 65537),
            },
        }
    }
}

/// Keeps `live` blocks; each step frees a random one and allocates a new one in its place.
fn churn(seed: u64, sizes: Sizes, live: usize, ops: usize) -> u64 {
    let mut rng = Rng::new(seed);
    let mut slots: Vec<Vec<u8>> = (0..live)
        .map(|i| block(sizes.pick(&mut rng), i as u8))
        .collect();
    let mut sum = 0u64;
    for i in 0..ops {
        let k = (rng.next() % live as u64) as usize;
        let n = sizes.pick(&mut rng);
        let old = std::mem::replace(&mut slots[k], block(n, i as u8));
        sum = sum.wrapping_add(old[0] as u64 + old.capacity() as u64);
        drop(black_box(old));
    }
    for s in &slots {
        sum = sum.wrapping_add(s[0] as u64 + s.capacity() as u64);
    }
    sum
}

fn batch(scale: usize) -> u64 {
    let mut rng = Rng::new(2);
    let mut sum = 0u64;
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(100_000);
    for round in 0..4 * scale {
        for i in 0..100_000 {
            held.push(block(rng.range(16, 513), i as u8));
        }
        if round % 2 == 0 {
            for b in held.drain(..) {
                sum = sum.wrapping_add(b[0] as u64 + b.capacity() as u64);
            }
        } else {
            while let Some(b) = held.pop() {
                sum = sum.wrapping_add(b[0] as u64 + b.capacity() as u64);
            }
        }
        black_box(&held);
    }
    sum
}

fn realloc_growth(scale: usize) -> u64 {
    let mut rng = Rng::new(3);
    let mut sum = 0u64;
    let mut vecs: Vec<Vec<u64>> = (0..64).map(|_| Vec::new()).collect();
    let mut strings: Vec<String> = (0..64).map(|_| String::new()).collect();
    for i in 0..10_000 * scale {
        let k = i % 64;
        let len = rng.range(1, 4097);
        let mut v = Vec::new();
        for j in 0..len {
            v.push(black_box(j as u64));
        }
        sum = sum.wrapping_add(v[len - 1] + v.len() as u64);
        vecs[k] = v;
        let mut s = String::new();
        for _ in 0..rng.range(1, 257) {
            s.push_str(black_box("ab"));
        }
        sum = sum.wrapping_add(s.len() as u64);
        strings[k] = s;
    }
    sum
}

fn producer_consumer(scale: usize, threads: usize) -> u64 {
    let pairs = (threads / 2).max(1);
    let per_pair = 400_000 * scale / pairs;
    let handles: Vec<_> = (0..pairs)
        .map(|p| {
            let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(64);
            let producer = std::thread::spawn(move || {
                let mut rng = Rng::new(100 + p as u64);
                let mut sent = 0;
                while sent < per_pair {
                    let n = 64.min(per_pair - sent);
                    let batch: Vec<Vec<u8>> = (0..n)
                        .map(|i| block(rng.range(16, 1025), (sent + i) as u8))
                        .collect();
                    sent += n;
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            });
            let consumer = std::thread::spawn(move || {
                let mut sum = 0u64;
                for batch in rx {
                    for b in batch {
                        sum = sum.wrapping_add(b[0] as u64 + b.capacity() as u64);
                    }
                }
                sum
            });
            (producer, consumer)
        })
        .collect();
    let mut sum = 0u64;
    for (p, c) in handles {
        p.join().expect("producer panicked");
        sum = sum.wrapping_add(c.join().expect("consumer panicked"));
    }
    sum
}

fn threads(scale: usize, n: usize) -> u64 {
    let total = 1_200_000 * scale;
    let handles: Vec<_> = (0..n)
        .map(|t| {
            let ops = total / n;
            std::thread::spawn(move || churn(1000 + t as u64, Sizes::Mixed, 4_000, ops))
        })
        .collect();
    handles.into_iter().fold(0u64, |s, h| {
        s.wrapping_add(h.join().expect("thread panicked"))
    })
}

/// Resident set size of this process in KiB, from /proc/self/statm.
fn rss_kib() -> u64 {
    let mut buf = [0u8; 128];
    let Ok(mut f) = std::fs::File::open("/proc/self/statm") else {
        return 0;
    };
    let n = std::io::Read::read(&mut f, &mut buf).unwrap_or(0);
    let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page / 1024
}

fn fragmentation(scale: usize, out: &mut impl Write) -> u64 {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples: Vec<(u64, u64)> = Vec::with_capacity(100_000);
            loop {
                samples.push((start.elapsed().as_millis() as u64, rss_kib()));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            samples
        })
    };
    let mut phases: Vec<(&str, u64)> = Vec::new();
    let mark = |name, phases: &mut Vec<(&str, u64)>| {
        phases.push((name, start.elapsed().as_millis() as u64));
    };
    let scale = scale.min(4);
    let count = 250_000 * scale;
    let mut rng = Rng::new(4);
    let mut sum = 0u64;
    mark("fill", &mut phases);
    let mut held: Vec<Vec<u8>> = (0..count)
        .map(|i| block(rng.range(64, 513), i as u8))
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    mark("free-90%", &mut phases);
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(count / 10 + 1);
    for (i, b) in held.drain(..).enumerate() {
        if i % 10 == 0 {
            kept.push(b);
        } else {
            sum = sum.wrapping_add(b[0] as u64);
        }
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(20));
    mark("refill", &mut phases);
    let refill: Vec<Vec<u8>> = (0..count / 4)
        .map(|i| block(rng.range(1024, 2049), i as u8))
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    mark("free-all", &mut phases);
    for b in kept.iter().chain(refill.iter()) {
        sum = sum.wrapping_add(b[0] as u64 + b.capacity() as u64);
    }
    drop(kept);
    drop(refill);
    std::thread::sleep(Duration::from_millis(30));
    mark("end", &mut phases);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler panicked");
    for (t, r) in samples {
        let _ = writeln!(out, "sample {t} {r}");
    }
    for (name, t) in phases {
        let _ = writeln!(out, "phase {name} {t}");
    }
    sum
}

/// Entry point of `oxmalloc __bench-worker WORKLOAD SCALE THREADS`.
pub fn worker(args: &[String]) -> std::process::ExitCode {
    let usage = "usage: oxmalloc __bench-worker WORKLOAD SCALE THREADS";
    let (Some(name), Some(scale), Some(ncpu)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<usize>().ok()),
        args.get(2).and_then(|s| s.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        return std::process::ExitCode::from(2);
    };
    let scale = scale.max(1);
    let ncpu = ncpu.max(1);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let sum = match name.as_str() {
        "churn-small" => churn(1, Sizes::Small, 10_000, 1_000_000 * scale),
        "churn-medium" => churn(1, Sizes::Medium, 5_000, 500_000 * scale),
        "churn-mixed" => churn(1, Sizes::Mixed, 10_000, 800_000 * scale),
        "batch" => batch(scale),
        "realloc" => realloc_growth(scale),
        "producer-consumer" => producer_consumer(scale, ncpu * 2),
        "threads-1" => threads(scale, 1),
        "threads-ncpu" => threads(scale, ncpu),
        "threads-2xncpu" => threads(scale, 2 * ncpu),
        "fragmentation" => fragmentation(scale, &mut out),
        other => {
            eprintln!("oxmalloc __bench-worker: unknown workload '{other}'\n{usage}");
            return std::process::ExitCode::from(2);
        }
    };
    let _ = writeln!(out, "checksum {sum}");
    let _ = out.flush();
    std::process::ExitCode::SUCCESS
}

/// The Python workload: lists of tuples built and dropped, dict churn, string building.
/// Takes the element count as `sys.argv[1]`; prints a checksum independent of the allocator
/// and of hash randomisation.
pub const PYTHON_SCRIPT: &str = r#"
import sys
n = int(sys.argv[1])
total = 0
for r in range(4):
    rows = [(i, str(i), float(i) * 0.5, (i, r)) for i in range(n)]
    total += sum(t[0] for t in rows) % 1000003 + len(rows)
    del rows
    d = {}
    for i in range(n):
        d[i] = [i] * (i % 9)
        if i % 3 == 0:
            d.pop(i // 2, None)
    total += len(d) + sum(len(v) for v in d.values())
    del d
    parts = ["x" * (i % 300) for i in range(n // 4)]
    total += len("".join(parts))
print("checksum", total)
"#;
