//! `oxmalloc bench`: run allocation workloads under several allocators and compare them.
//!
//! Invariants: every run is a fresh child process, measured from outside with `wait4` (wall
//! time around spawn and reap, user+system CPU time and peak RSS from the child's rusage); the
//! allocator under test reaches the child only through `LD_PRELOAD` (removed entirely for
//! glibc). Within each repetition every workload runs once under every allocator, in an order
//! rotated by one allocator per repetition, so slow drift of the machine spreads over all
//! allocators alike. A workload that prints a checksum must print the same one under every
//! allocator; a mismatch or a failed run makes the whole command exit non-zero after the
//! report. Progress goes to standard error only, the report to standard output.

mod report;
mod workloads;

use std::io::{IsTerminal, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

pub use workloads::worker;

pub const USAGE: &str = "\
usage: oxmalloc bench [OPTIONS]

  run allocation workloads under glibc, oxmalloc and the peer allocators found on this
  machine (jemalloc, tcmalloc, mimalloc), each run in a fresh process, and print the median
  wall time, CPU time and peak RSS per workload and allocator as a markdown table

options:
  --quick               fewer runs and smaller inputs (well under a minute)
  --runs N              repetitions per workload and allocator (default 5, --quick 2)
  --workloads A,B       run only these workloads (see --list)
  --allocators A,B      run only these allocators (see --list)
  --alloc NAME=PATH     also benchmark the allocator in shared library PATH (repeatable)
  --cmd 'COMMAND'       benchmark a shell command (run with sh -c; repeatable); without
                        --workloads, only the commands run
  --lib PATH            the oxmalloc library (default: as for `oxmalloc run`)
  --json FILE           write all raw and median results as JSON
  --svg FILE            write a bar chart of ratios to glibc and the RSS timeline as SVG
  --list                list the workloads and allocators and exit
  -h, --help            show this help
";

const PEERS: &[(&str, &str)] = &[
    ("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    (
        "tcmalloc",
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    ),
    ("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
];

/// An allocator under test: `lib` is `None` for glibc.
#[derive(Clone, Debug)]
pub struct Allocator {
    pub name: String,
    pub lib: Option<PathBuf>,
}

/// What a workload runs.
#[derive(Clone, Debug)]
enum Kind {
    Builtin,
    Python { pymalloc: bool },
    Shell(String),
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    kind: Kind,
}

/// One measured run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub wall_ms: f64,
    pub cpu_ms: f64,
    pub peak_rss_kib: u64,
    pub checksum: Option<String>,
    /// `(t_ms, rss_kib)` samples, for the fragmentation workload.
    pub timeline: Vec<(u64, u64)>,
    /// `(phase, t_ms)` markers, for the fragmentation workload.
    pub phases: Vec<(String, u64)>,
    pub error: Option<String>,
}

/// All runs of one (workload, allocator) pair.
pub struct Cell {
    pub runs: Vec<Run>,
}

pub const METRICS: &[(&str, &str)] = &[
    ("wall_ms", "wall time (ms)"),
    ("cpu_ms", "CPU time, user+sys (ms)"),
    ("peak_rss_kib", "peak RSS (MiB)"),
];

impl Cell {
    fn ok_runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(|r| r.error.is_none())
    }

    /// Median of a metric over the successful runs, `None` if none succeeded.
    pub fn median(&self, metric: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .ok_runs()
            .map(|r| match metric {
                "wall_ms" => r.wall_ms,
                "cpu_ms" => r.cpu_ms,
                _ => r.peak_rss_kib as f64,
            })
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

/// Everything the report needs.
pub struct Results {
    pub workloads: Vec<Workload>,
    pub allocators: Vec<Allocator>,
    /// Indexed `[workload][allocator]`.
    pub cells: Vec<Vec<Cell>>,
    pub runs: usize,
    pub quick: bool,
    pub scale: usize,
    pub ncpu: usize,
    pub problems: Vec<String>,
}

struct Options {
    quick: bool,
    runs: Option<usize>,
    workloads: Option<Vec<String>>,
    allocators: Option<Vec<String>>,
    extra: Vec<Allocator>,
    cmds: Vec<String>,
    lib: Option<PathBuf>,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    list: bool,
    help: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        runs: None,
        workloads: None,
        allocators: None,
        extra: Vec::new(),
        cmds: Vec::new(),
        lib: None,
        json: None,
        svg: None,
        list: false,
        help: false,
    };
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg, None),
        };
        let takes_value = matches!(
            flag,
            "--runs"
                | "--workloads"
                | "--allocators"
                | "--alloc"
                | "--cmd"
                | "--lib"
                | "--json"
                | "--svg"
        );
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))?
                }
            }
        } else {
            if inline.is_some() {
                return Err(format!("{flag} takes no value"));
            }
            String::new()
        };
        let list = |v: &str| -> Result<Vec<String>, String> {
            let items: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if items.is_empty() {
                Err(format!("{flag} needs a comma-separated list of names"))
            } else {
                Ok(items)
            }
        };
        match flag {
            "--quick" => o.quick = true,
            "--list" => o.list = true,
            "-h" | "--help" => o.help = true,
            "--runs" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("--runs needs a positive integer, not '{value}'"))?;
                if n == 0 {
                    return Err("--runs must be at least 1".into());
                }
                o.runs = Some(n);
            }
            "--workloads" => o.workloads = Some(list(&value)?),
            "--allocators" => o.allocators = Some(list(&value)?),
            "--alloc" => {
                let (name, path) = value
                    .split_once('=')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .ok_or_else(|| format!("--alloc needs NAME=PATH, not '{value}'"))?;
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(format!(
                        "--alloc {name}: library {} does not exist",
                        path.display()
                    ));
                }
                o.extra.push(Allocator {
                    name: name.to_string(),
                    lib: Some(path.canonicalize().unwrap_or(path)),
                });
            }
            "--cmd" => {
                if value.trim().is_empty() {
                    return Err("--cmd needs a non-empty command".into());
                }
                o.cmds.push(value);
            }
            "--lib" => o.lib = Some(PathBuf::from(value)),
            "--json" => o.json = Some(PathBuf::from(value)),
            "--svg" => o.svg = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option '{arg}'")),
        }
        i += 1;
    }
    Ok(o)
}

/// The real python3 executable (resolving shims such as pyenv's), if there is one.
fn find_python() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

fn ncpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn all_allocators(o: &Options) -> Result<(Vec<Allocator>, Vec<String>), String> {
    let mut all = vec![Allocator {
        name: "glibc".into(),
        lib: None,
    }];
    let mut missing = Vec::new();
    let wants = |n: &str| {
        o.allocators
            .as_ref()
            .map_or(true, |a| a.iter().any(|x| x == n))
    };
    if wants("oxmalloc") {
        let lib = crate::run::find_library(o.lib.as_deref())?;
        all.push(Allocator {
            name: "oxmalloc".into(),
            lib: Some(lib),
        });
    }
    for (name, path) in PEERS {
        if Path::new(path).is_file() {
            all.push(Allocator {
                name: name.to_string(),
                lib: Some(PathBuf::from(path)),
            });
        } else {
            missing.push(format!("{name} (no {path})"));
        }
    }
    for e in &o.extra {
        if all.iter().any(|a| a.name == e.name) {
            return Err(format!(
                "--alloc: an allocator named '{}' already exists",
                e.name
            ));
        }
        all.push(e.clone());
    }
    Ok((all, missing))
}

fn select_allocators(
    o: &Options,
    all: Vec<Allocator>,
    missing: &[String],
) -> Result<Vec<Allocator>, String> {
    let Some(names) = &o.allocators else {
        return Ok(all);
    };
    let mut out = Vec::new();
    for n in names {
        // --alloc entries are always wanted, so a filter naming only them is fine too.
        match all.iter().find(|a| &a.name == n) {
            Some(a) => {
                if !out.iter().any(|x: &Allocator| x.name == a.name) {
                    out.push(a.clone());
                }
            }
            None => {
                let known: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
                let mut msg = format!(
                    "unknown or unavailable allocator '{n}' (available: {})",
                    known.join(", ")
                );
                if let Some(m) = missing.iter().find(|m| m.starts_with(n.as_str())) {
                    msg.push_str(&format!("; not installed: {m}"));
                }
                return Err(msg);
            }
        }
    }
    for e in &o.extra {
        if !out.iter().any(|x| x.name == e.name) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

fn select_workloads(o: &Options, python: bool) -> Result<Vec<Workload>, String> {
    let mut all: Vec<Workload> = workloads::BUILTIN
        .iter()
        .map(|(n, _)| Workload {
            name: n.to_string(),
            kind: Kind::Builtin,
        })
        .collect();
    let py = [("python", true), ("python-malloc", false)];
    if python {
        for (n, pymalloc) in py {
            all.push(Workload {
                name: n.into(),
                kind: Kind::Python { pymalloc },
            });
        }
    }
    let mut cmds = Vec::new();
    for (i, c) in o.cmds.iter().enumerate() {
        cmds.push(Workload {
            name: if o.cmds.len() == 1 {
                "cmd".into()
            } else {
                format!("cmd{}", i + 1)
            },
            kind: Kind::Shell(c.clone()),
        });
    }
    let Some(names) = &o.workloads else {
        return Ok(if cmds.is_empty() { all } else { cmds });
    };
    let mut out = Vec::new();
    for n in names {
        match all.iter().chain(cmds.iter()).find(|w| &w.name == n) {
            Some(w) => {
                if !out.iter().any(|x: &Workload| x.name == w.name) {
                    out.push(w.clone());
                }
            }
            None if !python && py.iter().any(|(p, _)| p == n) => {
                return Err(format!("workload '{n}' needs python3, which was not found"));
            }
            None => {
                let known: Vec<&str> = all.iter().map(|w| w.name.as_str()).collect();
                return Err(format!(
                    "unknown workload '{n}' (known: {})",
                    known.join(", ")
                ));
            }
        }
    }
    for c in cmds {
        if !out.iter().any(|x| x.name == c.name) {
            out.push(c);
        }
    }
    Ok(out)
}

struct Ctx {
    exe: PathBuf,
    python: Option<PathBuf>,
    scale: usize,
    python_n: usize,
    ncpu: usize,
}

fn read_all(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

fn run_once(ctx: &Ctx, w: &Workload, a: &Allocator) -> Run {
    let mut cmd = match &w.kind {
        Kind::Builtin => {
            let mut c = Command::new(&ctx.exe);
            c.arg("__bench-worker")
                .arg(&w.name)
                .arg(ctx.scale.to_string())
                .arg(ctx.ncpu.to_string());
            c
        }
        Kind::Python { pymalloc } => {
            let mut c = Command::new(ctx.python.as_ref().expect("python workload without python"));
            c.arg("-c")
                .arg(workloads::PYTHON_SCRIPT)
                .arg(ctx.python_n.to_string());
            if *pymalloc {
                c.env_remove("PYTHONMALLOC");
            } else {
                c.env("PYTHONMALLOC", "malloc");
            }
            c
        }
        Kind::Shell(s) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(s);
            c
        }
    };
    match &a.lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = Run::default();
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            run.error = Some(format!("cannot start: {e}"));
            return run;
        }
    };
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own unreaped child; both out-pointers are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            run.error = Some(format!("wait4 failed: {}", std::io::Error::last_os_error()));
            return run;
        }
    }
    run.wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    run.cpu_ms = tv(usage.ru_utime) + tv(usage.ru_stime);
    run.peak_rss_kib = usage.ru_maxrss.max(0) as u64;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let st = std::process::ExitStatus::from_raw(status);
    if !st.success() {
        let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        run.error = Some(format!(
            "{st}{}",
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ));
    }
    if !matches!(w.kind, Kind::Shell(_)) {
        for line in stdout.lines() {
            let mut f = line.split_whitespace();
            match (f.next(), f.next(), f.next()) {
                (Some("checksum"), Some(c), None) => run.checksum = Some(c.to_string()),
                (Some("sample"), Some(t), Some(r)) => {
                    if let (Ok(t), Ok(r)) = (t.parse(), r.parse()) {
                        run.timeline.push((t, r));
                    }
                }
                (Some("phase"), Some(n), Some(t)) => {
                    if let Ok(t) = t.parse() {
                        run.phases.push((n.to_string(), t));
                    }
                }
                _ => {}
            }
        }
        if run.error.is_none() && run.checksum.is_none() {
            run.error = Some("no checksum in the output".into());
        }
    }
    run
}

/// Progress on standard error: one rewritten line on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    total: usize,
    done: usize,
    start: Instant,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let secs = self.start.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let width = 30;
            let filled = width * self.done / self.total.max(1);
            let _ = write!(
                err,
                "\r\x1b[K[{}{}] {}/{} {:.0}s {}",
                "#".repeat(filled),
                "-".repeat(width - filled),
                self.done,
                self.total,
                secs,
                what.chars().take(60).collect::<String>()
            );
            if self.done == self.total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(
                err,
                "oxmalloc bench: [{}/{}] {:.1}s {}",
                self.done, self.total, secs, what
            );
        }
        let _ = err.flush();
    }
}

pub fn main(args: &[String]) -> ExitCode {
    match bench(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("oxmalloc bench: {e}\n(see oxmalloc bench --help)");
            ExitCode::from(2)
        }
    }
}

fn bench(args: &[String]) -> Result<ExitCode, String> {
    let o = parse(args)?;
    if o.help {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let python = find_python();
    let (all, missing) = all_allocators(&o)?;
    if o.list {
        println!("workloads:");
        for (n, d) in workloads::BUILTIN {
            println!("  {n:<18} {d}");
        }
        let py = if python.is_some() {
            ""
        } else {
            " (python3 not found)"
        };
        println!(
            "  {:<18} Python lists of tuples, dict churn, strings (pymalloc){py}",
            "python"
        );
        println!(
            "  {:<18} the same with PYTHONMALLOC=malloc{py}",
            "python-malloc"
        );
        println!("allocators:");
        for a in &all {
            let lib = a
                .lib
                .as_ref()
                .map_or("(no preload)".into(), |l| l.display().to_string());
            println!("  {:<18} {lib}", a.name);
        }
        for m in &missing {
            println!("  not installed: {m}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let allocators = select_allocators(&o, all, &missing)?;
    let workloads = select_workloads(&o, python.is_some())?;
    let runs = o.runs.unwrap_or(if o.quick { 2 } else { 5 });
    let ctx = Ctx {
        // /proc/self/exe stays valid even if the executable is rebuilt while the runs go on.
        exe: if Path::new("/proc/self/exe").exists() {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe().map_err(|e| format!("cannot locate myself: {e}"))?
        },
        python,
        scale: if o.quick { 1 } else { 6 },
        python_n: if o.quick { 30_000 } else { 150_000 },
        ncpu: ncpu(),
    };
    // Check the output files can be written before spending minutes on the runs.
    for p in [&o.json, &o.svg].into_iter().flatten() {
        std::fs::write(p, "").map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    let mut cells: Vec<Vec<Cell>> = workloads
        .iter()
        .map(|_| {
            allocators
                .iter()
                .map(|_| Cell { runs: Vec::new() })
                .collect()
        })
        .collect();
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total: runs * workloads.len() * allocators.len(),
        done: 0,
        start: Instant::now(),
    };
    let na = allocators.len();
    for rep in 0..runs {
        for (wi, w) in workloads.iter().enumerate() {
            for k in 0..na {
                let ai = (rep + k) % na;
                let a = &allocators[ai];
                let r = run_once(&ctx, w, a);
                let status = match &r.error {
                    Some(e) => format!("FAILED: {e}"),
                    None => format!("{:.0} ms", r.wall_ms),
                };
                progress.step(&format!(
                    "run {}/{runs} {} under {}: {status}",
                    rep + 1,
                    w.name,
                    a.name
                ));
                cells[wi][ai].runs.push(r);
            }
        }
    }
    let mut problems = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        let mut seen: Vec<(String, &str)> = Vec::new();
        for (ai, a) in allocators.iter().enumerate() {
            for r in &cells[wi][ai].runs {
                if let Some(e) = &r.error {
                    problems.push(format!("{} under {}: {e}", w.name, a.name));
                }
                if let Some(c) = &r.checksum {
                    if !seen.iter().any(|(s, _)| s == c) {
                        seen.push((c.clone(), &a.name));
                    }
                }
            }
        }
        if seen.len() > 1 {
            let list: Vec<String> = seen.iter().map(|(c, a)| format!("{c} ({a})")).collect();
            problems.push(format!(
                "{}: checksums differ between runs: {}",
                w.name,
                list.join(", ")
            ));
        }
    }
    let results = Results {
        workloads,
        allocators,
        cells,
        runs,
        quick: o.quick,
        scale: ctx.scale,
        ncpu: ctx.ncpu,
        problems,
    };
    print!("{}", report::markdown(&results));
    if let Some(p) = &o.json {
        let text =
            serde_json::to_string_pretty(&report::json(&results)).expect("JSON of plain values");
        std::fs::write(p, text + "\n").map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if let Some(p) = &o.svg {
        std::fs::write(p, report::svg(&results))
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if results.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &results.problems {
            eprintln!("oxmalloc bench: {p}");
        }
        Ok(ExitCode::from(1))
    }
}
