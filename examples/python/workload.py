"""A small data-job shaped workload: build records, crunch them, drop them.

Run it under oxmalloc with:  target/release/oxmalloc run -- python3 examples/python/workload.py
It prints the process's resident memory at each stage so the effect of `del` is visible.
"""
import gc
import os


def rss_mib():
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def stage(name):
    print(f"{name:<34} RSS {rss_mib():8.1f} MiB", flush=True)


def main():
    stage("start")
    records = [
        {"id": i, "name": f"item-{i}", "tags": [i % 7, i % 11], "score": i * 0.5}
        for i in range(400_000)
    ]
    stage("400k records built")
    buffers = [bytearray(4 << 20) for _ in range(32)]
    stage("32 x 4 MiB buffers")
    total = sum(r["score"] for r in records if r["id"] % 3 == 0)
    index = {r["name"]: r for r in records}
    stage("index built")
    del index, records, buffers
    gc.collect()
    stage("after del + gc.collect()")
    print(f"checksum {total:.1f}")


if __name__ == "__main__":
    main()
