//! `oxmalloc`: run programs under oxmalloc.
//!
//! `oxmalloc run [--lib PATH] [--no-summary] [--] CMD [ARGS...]` runs CMD with liboxmalloc.so
//! preloaded, passes its exit status (or the signal that killed it) through as its own, and
//! prints a memory summary to standard error when it ends.
//!
//! `oxmalloc bench [OPTIONS]` compares allocators on a set of workloads, each run in a fresh
//! process with the allocator preloaded; `__bench-worker` is the hidden entry point of those
//! processes.

mod bench;
mod run;

use std::process::ExitCode;

const USAGE: &str = "\
usage: oxmalloc run [--lib PATH] [--no-summary] [--] CMD [ARGS...]
       oxmalloc bench [--quick] [--runs N] [--json FILE] [--svg FILE] [OPTIONS]

  bench: compare allocators on a set of workloads (see oxmalloc bench --help)

  run: run CMD with liboxmalloc.so preloaded (added in front of any existing LD_PRELOAD)

options:
  --lib PATH      the library to preload (default: $OXMALLOC_LIB, else liboxmalloc.so
                  next to this executable or in ../lib)
  --no-summary    do not print the memory summary when CMD ends
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some("__bench-worker") => bench::worker(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("oxmalloc: unknown command '{other}'\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
