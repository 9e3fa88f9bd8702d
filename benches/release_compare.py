#!/usr/bin/env python3
"""Memory given back: fill, free, and measure resident memory, beside the peer allocators.

Runs, as fresh processes under each allocator (interleaved, --runs times, medians reported):
  * fill/free, same thread:  tests/c_release/fill_free.c same 1024 64
  * fill/free, cross-thread: tests/c_release/fill_free.c cross 1024 64
  * fill/free, idle thread:  tests/c_release/fill_free.c idle 1024 64 (the thread that freed
    half stays alive, asleep, while RSS is read)
  * Python (PYTHONMALLOC=malloc): 3M small objects + 160 MiB of bytearrays, del, gc.collect()
Each program reports its own RSS before the fill, at the peak and after the free (from
/proc/self/statm); wall time is measured around the process, CPU time (user + system) from the
children's resource usage. The last column is the median, over the rounds, of each run's CPU
time divided by oxmalloc's in the same round: on a machine whose speed drifts, a steadier
comparison than the ratio of the medians.

usage: python3 benches/release_compare.py [--runs N] [--ox PATH]
                                         [--alloc NAME=PATH[,VAR=VALUE...] ...]
                                         [--no-peers] [--c-only] [--paired NAME]
--alloc adds a library (PATH) under NAME, with environment variables set for its runs only; for
example `--alloc policy-off=target/release/liboxmalloc.so,OXMALLOC_RETAIN_MIN=4G` runs oxmalloc
with its release policy off.

--paired NAME runs the C workloads under oxmalloc and under the --alloc library NAME at the same
time, each process pinned to one CPU (swapped every round), and reports the median and spread of
the per-round CPU ratios: both runs of a round meet the same load from the rest of the host,
which steadies the ratio on a shared machine. Each process, threads included, then has one CPU
(the cross-thread workloads' two threads share it), and the two runs share the caches and the
memory bus, so these ratios answer "which is cheaper", not "how fast alone".
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBDIR = "/usr/lib/x86_64-linux-gnu"
PEERS = [("jemalloc", "libjemalloc.so.2"), ("tcmalloc", "libtcmalloc_minimal.so.4"),
         ("mimalloc", "libmimalloc.so.2")]
PY_SCRIPT = r"""
import gc, os
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 10
start = rss()
data = [(i, str(i), [i] * 3) for i in range(3_000_000)]
blobs = [bytearray(8 << 20) for _ in range(20)]
peak = rss()
del data, blobs
gc.collect()
print(start, peak, rss())
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ox", default=os.path.join(ROOT, "target/release/liboxmalloc.so"))
    ap.add_argument("--alloc", action="append", default=[], metavar="NAME=PATH[,VAR=VALUE...]")
    ap.add_argument("--no-peers", action="store_true",
                    help="only oxmalloc and the --alloc libraries (no glibc, no peers)")
    ap.add_argument("--c-only", action="store_true", help="skip the Python workload")
    ap.add_argument("--paired", metavar="NAME",
                    help="run oxmalloc and the --alloc library NAME at once, one CPU each")
    args = ap.parse_args()
    exe = os.path.join(ROOT, "target/c-bench/fill_free")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    subprocess.run(["cc", "-O2", "-pthread", "-o", exe,
                    os.path.join(ROOT, "tests/c_release/fill_free.c")], check=True)
    python = subprocess.run([sys.executable, "-c", "import sys; print(sys.executable)"],
                            capture_output=True, text=True).stdout.strip()
    allocs = [("oxmalloc", args.ox, {})]
    if not args.no_peers:
        allocs.insert(0, ("glibc", None, {}))
        allocs += [(n, os.path.join(LIBDIR, f), {}) for n, f in PEERS
                   if os.path.exists(os.path.join(LIBDIR, f))]
    for a in args.alloc:
        name, spec = a.split("=", 1)
        path, *envs = spec.split(",")
        allocs.append((name, path, dict(e.split("=", 1) for e in envs)))
    workloads = [
        ("fill/free 1 GiB, same thread", [exe, "same", "1024", "64"], {}),
        ("fill/free 1 GiB, cross-thread", [exe, "cross", "1024", "64"], {}),
        ("fill/free 1 GiB, other thread asleep", [exe, "idle", "1024", "64"], {}),
        ("Python del + gc", [python, "-c", PY_SCRIPT], {"PYTHONMALLOC": "malloc"}),
    ]
    if args.c_only or args.paired:
        workloads = workloads[:3]
    if args.paired:
        other = [a for a in allocs if a[0] == args.paired]
        if not other:
            sys.exit(f"--paired {args.paired}: no --alloc of that name")
        paired(args.runs, [a for a in allocs if a[0] == "oxmalloc"] + other, workloads)
        return
    results = {}
    for r in range(args.runs):
        for w, cmd, extra in workloads:
            order = allocs[r % len(allocs):] + allocs[:r % len(allocs)]
            for name, lib, own_env in order:
                env = dict(os.environ, **extra, **own_env)
                env.pop("LD_PRELOAD", None)
                if lib:
                    env["LD_PRELOAD"] = lib
                ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t
                # One child at a time: the growth of the children's usage is this process's.
                ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime
                if out.returncode != 0:
                    print(f"{name} failed on {w}: {out.stderr[-300:]}", file=sys.stderr)
                    continue
                before, peak, after = map(int, out.stdout.split()[:3])
                results.setdefault((w, name), []).append((before, peak, after, wall, cpu, r))
            print(f"run {r + 1}/{args.runs}: {w} done", file=sys.stderr)
    names = [n for n, _, _ in allocs]
    print(f"Command: `python3 {' '.join(sys.argv)}`; "
          f"medians of {args.runs} interleaved runs; RSS in MiB.\n")
    for w, _, _ in workloads:
        print(f"**{w}**\n")
        print("| allocator | RSS before | peak RSS | RSS after free | wall s | CPU s "
              "| CPU / oxmalloc |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        ox_cpu = {x[5]: x[4] for x in results.get((w, "oxmalloc"), [])}
        for n in names:
            rs = results.get((w, n))
            if not rs:
                print(f"| {n} | failed | | | | | |")
                continue
            med = [statistics.median(x[i] for x in rs) for i in range(5)]
            ratios = [x[4] / ox_cpu[x[5]] for x in rs if ox_cpu.get(x[5])]
            ratio = f"{statistics.median(ratios):.3f}" if ratios else ""
            print(f"| {n} | {med[0] / 1024:.1f} | {med[1] / 1024:.1f} | {med[2] / 1024:.1f} "
                  f"| {med[3]:.2f} | {med[4]:.2f} | {ratio} |")
        afters = {n: statistics.median(x[2] for x in results[(w, n)]) for n in names if (w, n) in results}
        others = {"glibc"} | {n for n, _ in PEERS}
        peers = [v for n, v in afters.items() if n in others]
        if "oxmalloc" in afters and peers:
            print(f"\nRSS after free, best other allocator / oxmalloc: {min(peers) / afters['oxmalloc']:.1f}x")
        print()


def paired(runs, pair, workloads):
    """Runs both allocators of `pair` at once per round, pinned to CPUs 0 and 1 (swapped every
    round), and prints the per-round CPU ratios of the second to the first."""
    print(f"Command: `python3 {' '.join(sys.argv)}`; {runs} rounds, the two runs of a round at "
          "the same time, one CPU each.\n")
    print(f"| workload | {pair[0][0]} CPU s | {pair[1][0]} CPU s | {pair[1][0]} / {pair[0][0]}, "
          "median of rounds | standard deviation |")
    print("|---|---:|---:|---:|---:|")
    for w, cmd, _ in workloads:
        cpu = [[], []]
        for r in range(runs):
            procs = []
            for i, (_, lib, own_env) in enumerate(pair):
                env = dict(os.environ, **own_env, LD_PRELOAD=lib)
                core = (i + r) % 2
                procs.append(subprocess.Popen(
                    cmd, env=env, stdout=subprocess.DEVNULL,
                    preexec_fn=lambda core=core: os.sched_setaffinity(0, {core})))
            for i, p in enumerate(procs):
                _, status, ru = os.wait4(p.pid, 0)
                if status != 0:
                    sys.exit(f"{pair[i][0]} failed on {w}")
                cpu[i].append(ru.ru_utime + ru.ru_stime)
            print(f"round {r + 1}/{runs}: {w} done", file=sys.stderr)
        ratios = [b / a for a, b in zip(*cpu)]
        sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        print(f"| {w} | {statistics.median(cpu[0]):.2f} | {statistics.median(cpu[1]):.2f} "
              f"| {statistics.median(ratios):.3f} | {sd:.3f} |")


if __name__ == "__main__":
    main()
