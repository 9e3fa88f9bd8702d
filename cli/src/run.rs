//! `oxmalloc run`: spawn a command with the library preloaded, wait for it, pass its status on.
//!
//! Invariants: the launcher never changes the child's arguments or environment beyond
//! `LD_PRELOAD`; while the child runs, terminal signals (SIGINT, SIGQUIT) reach the child
//! directly and are ignored here, and SIGTERM/SIGHUP sent to the launcher are forwarded. When
//! the child dies of a signal, the launcher dies of the same signal.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};

pub const LIB_NAME: &str = "liboxmalloc.so";

struct Options {
    lib: Option<PathBuf>,
    summary: bool,
    command: Vec<OsString>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        lib: None,
        summary: true,
        command: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--" => {
                i += 1;
                break;
            }
            "--lib" => {
                let p = args.get(i + 1).ok_or("--lib needs a path")?;
                opts.lib = Some(PathBuf::from(p));
                i += 2;
            }
            "--no-summary" => {
                opts.summary = false;
                i += 1;
            }
            s if s.starts_with("--lib=") => {
                opts.lib = Some(PathBuf::from(&s[6..]));
                i += 1;
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => break,
        }
    }
    opts.command = args[i..].iter().map(OsString::from).collect();
    if opts.command.is_empty() {
        return Err("no command given".into());
    }
    Ok(opts)
}

/// Finds the library: explicit path, then `$OXMALLOC_LIB`, then next to the executable.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return check(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("OXMALLOC_LIB") {
        return check(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate myself: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(LIB_NAME), dir.join("../lib").join(LIB_NAME)];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    Err(format!(
        "cannot find {LIB_NAME} (looked in {} and {}); pass --lib PATH or set OXMALLOC_LIB",
        candidates[0].display(),
        candidates[1].display()
    ))
}

fn check(p: PathBuf) -> Result<PathBuf, String> {
    if p.is_file() {
        Ok(p.canonicalize().unwrap_or(p))
    } else {
        Err(format!("library {} does not exist", p.display()))
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("oxmalloc run: {e}\nusage: oxmalloc run [--lib PATH] [--no-summary] [--] CMD [ARGS...]");
            return ExitCode::from(2);
        }
    };
    let lib = match find_library(opts.lib.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("oxmalloc run: {e}");
            return ExitCode::from(2);
        }
    };
    let mut preload = lib.clone().into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|e| !e.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let summary_file =
        std::env::temp_dir().join(format!("oxmalloc-run-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&summary_file);
    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]).env("LD_PRELOAD", &preload);
    if opts.summary {
        // Only the launcher's direct child (after any exec) writes this file at exit.
        cmd.env("OXMALLOC_RUN_SUMMARY", &summary_file)
            .env("OXMALLOC_RUN_PARENT", std::process::id().to_string());
    }
    // The child starts with default dispositions for the signals we change below.
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe signal().
    unsafe {
        cmd.pre_exec(|| {
            for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "oxmalloc run: cannot run {}: {e}",
                opts.command[0].to_string_lossy()
            );
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            });
        }
    };
    let pid = child.id() as libc::pid_t;
    CHILD.store(pid, Ordering::Relaxed);
    // SAFETY: installing plain handlers/ignores; `forward` only calls kill.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(
            libc::SIGTERM,
            forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGHUP,
            forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let (status, usage) = wait_for(pid);
    if opts.summary {
        let stats = std::fs::read_to_string(&summary_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let _ = std::fs::remove_file(&summary_file);
        print_summary(&opts.command, status, &usage, stats.as_ref());
    }
    pass_on(status)
}

fn wait_for(pid: libc::pid_t) -> (libc::c_int, libc::rusage) {
    let mut status = 0;
    // SAFETY: rusage is plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid out-pointers; `pid` is our child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return (status, usage);
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return (status, usage);
        }
    }
}

fn mib(v: Option<&serde_json::Value>) -> String {
    match v.and_then(|v| v.as_f64()) {
        Some(b) => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        None => "?".into(),
    }
}

fn print_summary(
    command: &[OsString],
    status: libc::c_int,
    usage: &libc::rusage,
    stats: Option<&serde_json::Value>,
) {
    let name = command[0].to_string_lossy();
    let peak = usage.ru_maxrss as f64 / 1024.0;
    let how = if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let mut s = format!("was killed by signal {sig} ({})", signal_name(sig));
        if sig == libc::SIGKILL {
            s.push_str(": if nobody sent it, the kernel's OOM killer did; OXMALLOC_HEAP_LIMIT=auto makes allocations fail cleanly (MemoryError in Python) before that point");
        }
        s
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    };
    eprintln!("oxmalloc: {name} {how}; peak RSS {peak:.1} MiB");
    let Some(s) = stats else {
        if !libc::WIFSIGNALED(status) {
            eprintln!("oxmalloc: no statistics came back (the program did not run under oxmalloc, or exited without running exit handlers)");
        }
        return;
    };
    let pct = |k: &str| s.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0) * 100.0;
    eprintln!(
        "oxmalloc: at exit: in use {}, peak active {}, RSS {}, mapped {}, released to OS {}",
        mib(s.get("in_use_bytes")),
        mib(s.get("peak_active_bytes")),
        mib(s.get("rss_bytes")),
        mib(s.get("mapped_bytes")),
        mib(s.get("released_bytes")),
    );
    eprintln!(
        "oxmalloc: fragmentation: internal {} ({:.1}% of in use), external {} ({:.1}% of resident heap); {} large allocations ({} still live); {} allocations in all",
        mib(s.get("internal_fragmentation_bytes")),
        pct("internal_fragmentation_share"),
        mib(s.get("external_fragmentation_bytes")),
        pct("external_fragmentation_share"),
        s.get("large_allocations_total").and_then(|v| v.as_u64()).unwrap_or(0),
        s.get("large_allocations").and_then(|v| v.as_u64()).unwrap_or(0),
        s.get("allocations_total").and_then(|v| v.as_u64()).unwrap_or(0),
    );
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

fn pass_on(status: libc::c_int) -> ExitCode {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restoring the default action and re-raising makes us die the same way.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            // Do not leave a core file of the launcher: the child already made its own.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::raise(sig);
        }
        return ExitCode::from(128 + sig as u8);
    }
    ExitCode::from(libc::WEXITSTATUS(status) as u8)
}
