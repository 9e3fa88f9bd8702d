"""Loads the allocator library with ctypes into a process that did not
preload it, and checks that the process goes on allocating normally.

Environment: OXMALLOC_TEST_LIB is the path of the library. LD_PRELOAD must not
be set. Prints "dlopen.py: OK" and exits 0 on success.
"""

import ctypes
import gc
import os
import sys
import threading


class DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def fail(msg):
    print(f"dlopen.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def object_of(libc, func):
    info = DlInfo()
    addr = ctypes.cast(func, ctypes.c_void_p).value
    if libc.dladdr(addr, ctypes.byref(info)) == 0 or not info.dli_fname:
        fail(f"dladdr({addr:#x}) found no object")
    return os.path.realpath(os.fsdecode(info.dli_fname))


def mapped_files():
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def workload(tag):
    numbers = list(range(1_000_000))
    if sum(numbers) != 999_999 * 1_000_000 // 2:
        fail(f"{tag}: wrong sum of a list of 1M ints")
    blobs = [bytearray(n << 20) for n in (16, 64, 128)]
    for b in blobs:
        b[0] = 1
        b[-1] = 2
    if any(b[0] != 1 or b[-1] != 2 or b[len(b) // 2] != 0 for b in blobs):
        fail(f"{tag}: big bytearray contents are wrong")
    words = {f"key{i}": [i] * (i % 7) for i in range(200_000)}
    if len(words) != 200_000:
        fail(f"{tag}: dict lost entries")
    del numbers, blobs, words
    gc.collect()


def main():
    path = os.environ.get("OXMALLOC_TEST_LIB")
    if not path:
        fail("OXMALLOC_TEST_LIB is not set")
    if os.environ.get("LD_PRELOAD"):
        fail("LD_PRELOAD is set; this check is for a process that loads the library itself")

    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    libc.dladdr.restype = ctypes.c_int
    malloc_before = object_of(libc, libc.malloc)

    workload("before loading")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        fail(f"ctypes.CDLL({path!r}) failed: {e}")
    if os.path.realpath(path) not in mapped_files():
        fail(f"{path} is not mapped after ctypes.CDLL")

    # Loading it must not take over the process's malloc.
    malloc_after = object_of(libc, libc.malloc)
    if malloc_after != malloc_before:
        fail(f"malloc moved from {malloc_before} to {malloc_after} after ctypes.CDLL")

    # The library's own malloc/free pair works when called directly.
    lib.malloc.restype = ctypes.c_void_p
    lib.malloc.argtypes = [ctypes.c_size_t]
    lib.free.restype = None
    lib.free.argtypes = [ctypes.c_void_p]
    for size in (1, 100, 5000, 300_000, 8 << 20):
        p = lib.malloc(size)
        if not p:
            fail(f"the library's malloc({size}) returned NULL")
        ctypes.memset(p, 0xAB, size)
        lib.free(p)

    workload("after loading")
    errors = []

    def in_thread():
        try:
            workload("thread")
        except SystemExit as e:
            errors.append(e)

    threads = [threading.Thread(target=in_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(1)
    print(f"dlopen.py: loaded {path}; malloc stays in {malloc_after}")
    print("dlopen.py: OK")


main()
