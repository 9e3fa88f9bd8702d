#!/usr/bin/env bash
# Builds and runs every fuzz target in fuzz/ for a while; fails if any of them finds a crash.
#
#   scripts/fuzz.sh [seconds-per-target]        (default 20)
#
# Environment:
#   FUZZ_SANITIZER=address   build ops and threads with AddressSanitizer (c_api always runs
#                            without one: it preloads liboxmalloc.so as the process's malloc)
#   FUZZ_TARGETS="ops c_api" run only these targets
#   FUZZ_JOBS=N              run N fuzzing processes per target (libFuzzer -fork=N)
# Crash inputs land in fuzz/artifacts/<target>/, the growing corpus in fuzz/corpus/<target>/.
set -euo pipefail

secs=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
sanitizer=${FUZZ_SANITIZER:-none}
targets=${FUZZ_TARGETS:-ops threads c_api}
jobs=${FUZZ_JOBS:-1}

# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module); this lets the
# stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
host=$(rustc -vV | sed -n 's/^host: //p')

echo "fuzz.sh: building liboxmalloc.so (release) for c_api" >&2
cargo build --release -p oxmalloc-preload --manifest-path "$root/Cargo.toml"
target_dir=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
so="$target_dir/release/liboxmalloc.so"
[ -f "$so" ] || { echo "fuzz.sh: $so was not built" >&2; exit 1; }

cd "$root/fuzz"

# One build directory per sanitizer, so that switching does not rebuild everything.
bin_dir() { echo "target/$1/$host/release"; }

echo "fuzz.sh: building fuzz targets (sanitizer: $sanitizer, debug assertions on)" >&2
cargo fuzz build --sanitizer "$sanitizer" --debug-assertions --target-dir "target/$sanitizer"
if [ "$sanitizer" != none ] && [[ " $targets " == *" c_api "* ]]; then
    cargo fuzz build --sanitizer none --debug-assertions --target-dir target/none c_api
fi
built=$(date +%s)

failed=()
for t in $targets; do
    san=$sanitizer
    preload=()
    if [ "$t" = c_api ]; then
        san=none
        preload=(env "LD_PRELOAD=$so")
    fi
    mkdir -p "corpus/$t" "artifacts/$t"
    log="target/fuzz-$t.log"
    echo "fuzz.sh: running $t for ${secs}s (log: fuzz/$log)" >&2
    # The learned retention boost may keep up to 1 GiB of freed pages resident; the machine has
    # room, so give libFuzzer a higher RSS limit than its 2 GiB default.
    args=(-max_total_time="$secs" -timeout=60 -rss_limit_mb=6144 -print_final_stats=1 -artifact_prefix="artifacts/$t/")
    if [ "$jobs" -gt 1 ]; then
        args+=(-fork="$jobs" -ignore_crashes=0)
    fi
    if "${preload[@]}" "$(bin_dir "$san")/$t" "${args[@]}" "corpus/$t" >"$log" 2>&1; then
        grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units)' "$log" | tail -n 2 >&2 || true
    else
        echo "fuzz.sh: $t FAILED; last lines of fuzz/$log:" >&2
        tail -n 60 "$log" >&2
        failed+=("$t")
    fi
done

end=$(date +%s)
echo "fuzz.sh: builds $((built - start))s, fuzzing $((end - built))s, total $((end - start))s" >&2
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in: $targets" >&2
