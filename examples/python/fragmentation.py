"""Shows a fragmentation problem in oxmalloc's statistics.

Run:  PYTHONMALLOC=malloc PYTHONPATH=python target/release/oxmalloc run -- \
          python3 examples/python/fragmentation.py
"""
import oxmalloc

objs = [("x" * (40 + i % 60)) for i in range(1_000_000)]  # ~100 MB of small strings
big = [bytearray(8 << 20) for _ in range(4)]
survivors = objs[::10]  # keep one in ten, scattered over every span
del objs, big
print(oxmalloc.stats_text())
