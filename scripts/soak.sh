#!/usr/bin/env bash
# Soak test: run the stress workloads over and over for a chosen time, checking contents.
#
# usage: scripts/soak.sh [minutes] [log-dir]
#
# Each round runs, with fresh random seeds where the workload has them:
#   - the Rust stress tests (cross-thread frees, thread churn, working sets) and the shadow-model
#     property test with 2000 cases, with oxmalloc used directly;
#   - the Rust std workloads with oxmalloc as the global allocator;
#   - C programs under LD_PRELOAD=liboxmalloc.so: 8-thread cross-thread frees and thread churn,
#     fork from a busy threaded parent, realloc growth, calloc reuse, and the whole-process
#     benchmark workloads with 2 to 8 threads (their checksums must match glibc's);
#   - the C cross-thread and realloc programs and the Rust stress tests again under the checking
#     mode (OXMALLOC_CHECK=1), which must report nothing;
#   - idle-cache reclaim: sleeping threads' caches emptied while their owners wake, with signal
#     handlers that sleep inside malloc, in a forked child, and the C threads and fork programs
#     with a reclaim pass due every 5 ms.
# Every failure is logged with its output; the script exits non-zero if any round failed.
set -uo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
logdir=${2:-target/soak}
mkdir -p "$logdir"
summary="$logdir/summary.txt"

cargo build --release --workspace -q || exit 1
cargo test --release --no-run -q --test stress --test model --test global_std 2>/dev/null || exit 1
bin() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -1; }
stress=$(bin stress); model=$(bin model); global=$(bin global_std)
lib=$PWD/target/release/liboxmalloc.so
cdir=target/soak-c
mkdir -p "$cdir"
for src in tests/c/threads.c tests/c/fork.c tests/c/realloc.c tests/c/calloc.c tests/c_release/idle_cache.c; do
    cc -O2 -g -pthread -fno-builtin -o "$cdir/$(basename "$src" .c)" "$src" -ldl || exit 1
done
for src in benches/c/threads.c benches/c/prodcons.c benches/c/churn.c; do
    cc -O2 -pthread -o "$cdir/bench_$(basename "$src" .c)" "$src" || exit 1
done

end=$(( $(date +%s) + minutes * 60 ))
rounds=0 runs=0 failures=0
start=$(date +%s)
run() {
    local name=$1; shift
    runs=$((runs + 1))
    if ! out=$("$@" 2>&1); then
        failures=$((failures + 1))
        { echo "=== FAILED round $rounds: $name ($*)"; echo "$out" | tail -50; } >> "$logdir/failures.log"
        echo "FAILED: $name (round $rounds)"
    fi
}
same_checksum() {
    # Runs a C workload under glibc and under oxmalloc; their outputs must match.
    local a b
    a=$("$@" 2>&1) || return 1
    b=$(LD_PRELOAD=$lib "$@" 2>&1) || { echo "$b"; return 1; }
    [ "$a" = "$b" ] || { echo "glibc: $a"; echo "oxmalloc: $b"; return 1; }
}
while [ "$(date +%s)" -lt "$end" ]; do
    rounds=$((rounds + 1))
    seed=$RANDOM$RANDOM
    run "rust stress" "$stress" --test-threads=2
    run "rust model" env PROPTEST_CASES=2000 PROPTEST_RNG_SEED="$seed" "$model" random --test-threads=2
    run "rust std" "$global" --test-threads=2
    run "c threads" env LD_PRELOAD="$lib" "$cdir/threads"
    run "c fork" env LD_PRELOAD="$lib" "$cdir/fork"
    run "c realloc" env LD_PRELOAD="$lib" "$cdir/realloc"
    run "c calloc" env LD_PRELOAD="$lib" "$cdir/calloc"
    for n in 2 4 8; do
        run "bench threads $n" same_checksum "$cdir/bench_threads" "$n" 2000000
    done
    run "bench prodcons" same_checksum "$cdir/bench_prodcons" 2000000
    run "bench churn mixed" same_checksum "$cdir/bench_churn" mixed 1000000
    run "checked c threads" env OXMALLOC_CHECK=1 LD_PRELOAD="$lib" "$cdir/threads"
    run "checked c realloc" env OXMALLOC_CHECK=1 LD_PRELOAD="$lib" "$cdir/realloc"
    run "checked rust stress" env OXMALLOC_CHECK=1 "$stress" --test-threads=2
    for mode in stress signals; do
        run "reclaim $mode" env LD_PRELOAD="$lib" "$cdir/idle_cache" "$mode" 2
    done
    run "reclaim fork" env LD_PRELOAD="$lib" "$cdir/idle_cache" fork
    run "c threads, frequent reclaim" env OXMALLOC_IDLE_CACHE_MS=5 LD_PRELOAD="$lib" "$cdir/threads"
    run "c fork, frequent reclaim" env OXMALLOC_IDLE_CACHE_MS=5 LD_PRELOAD="$lib" "$cdir/fork"
    elapsed=$(( $(date +%s) - start ))
    echo "round $rounds: $runs runs, $failures failed, ${elapsed}s"
done
{
    echo "soak: $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD), $(nproc) cores"
    echo "duration: $(( ($(date +%s) - start) / 60 )) min; rounds: $rounds; runs: $runs; failures: $failures"
} | tee "$summary"
[ "$failures" -eq 0 ]
