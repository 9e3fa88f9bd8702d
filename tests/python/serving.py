"""Checks that the preloaded allocator is mapped and serves this process.

Environment: OXMALLOC_TEST_LIB is the path of the preloaded library, or "-"
when nothing is preloaded (then malloc must come from the C library).
Prints "serving.py: OK" and exits 0 on success; exits 1 with a message
otherwise.
"""

import ctypes
import os
import sys


class DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


LIBC = ctypes.CDLL(None)
LIBC.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
LIBC.dladdr.restype = ctypes.c_int


def fail(msg):
    print(f"serving.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def object_of(func):
    """Path of the shared object that defines the C function `func`."""
    addr = ctypes.cast(func, ctypes.c_void_p).value
    info = DlInfo()
    if LIBC.dladdr(addr, ctypes.byref(info)) == 0 or not info.dli_fname:
        fail(f"dladdr({addr:#x}) found no object")
    return os.fsdecode(info.dli_fname)


def mapped_files():
    with open("/proc/self/maps") as f:
        return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}


def same_file(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def main():
    lib = os.environ.get("OXMALLOC_TEST_LIB")
    if not lib:
        fail("OXMALLOC_TEST_LIB is not set")
    expected = object_of(LIBC.getpid) if lib == "-" else lib

    if os.path.realpath(expected) not in mapped_files():
        fail(f"{expected} is not mapped in this process (see /proc/self/maps)")

    for name in ("malloc", "free", "calloc", "realloc"):
        obj = object_of(getattr(LIBC, name))
        if not same_file(obj, expected):
            fail(f"{name} resolves into {obj}, not into {expected}")
    print(f"serving.py: malloc resolves into {object_of(LIBC.malloc)}")

    # Some work through the interpreter's allocators.
    data = [str(i) * (i % 50) for i in range(200_000)]
    table = {s: len(s) for s in data}
    blob = bytearray(32 << 20)
    blob[-1] = 1
    if sum(table.values()) <= 0 or blob[-1] != 1:
        fail("interpreter workload gave wrong results")
    del data, table, blob

    print("serving.py: OK")


main()
