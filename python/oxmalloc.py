"""oxmalloc from Python: statistics and control of the allocator serving this process.

The process must have been started under oxmalloc, before the interpreter started:

    oxmalloc run -- python3 train.py
    LD_PRELOAD=/path/to/liboxmalloc.so python3 train.py

(In a notebook, start the Jupyter server or kernel that way; the allocator cannot be switched
from inside a running interpreter.) Pure ctypes, no compiled code.

    import oxmalloc
    oxmalloc.is_active()      # True when oxmalloc serves malloc in this process
    oxmalloc.stats()          # dict: every field of docs/stats.md
    oxmalloc.release()        # return free memory to the OS; bytes released
"""
import ctypes
import json

__all__ = [
    "is_active",
    "stats",
    "stats_text",
    "release",
    "set_heap_limit",
    "heap_limit",
    "NotActiveError",
]


class NotActiveError(RuntimeError):
    """Raised when this process is not running under oxmalloc."""


_NOT_ACTIVE = (
    "this Python process is not running under oxmalloc, so there is nothing to report: "
    "start it with `oxmalloc run -- python3 ...` or with "
    "`LD_PRELOAD=/path/to/liboxmalloc.so python3 ...` (it must be set before the interpreter "
    "starts; for a notebook, start the kernel or server that way)"
)

_lib = None


def _library():
    """The oxmalloc library serving this process, or None."""
    global _lib
    if _lib is None:
        proc = ctypes.CDLL(None)
        try:
            active = proc.oxmalloc_is_active
        except AttributeError:
            return None
        active.restype = ctypes.c_int
        if not active():
            return None
        proc.oxmalloc_stats_json.restype = ctypes.c_size_t
        proc.oxmalloc_stats_json.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        proc.oxmalloc_stats_text.restype = ctypes.c_size_t
        proc.oxmalloc_stats_text.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        proc.oxmalloc_release_free_memory.restype = ctypes.c_size_t
        proc.oxmalloc_release_free_memory.argtypes = []
        proc.oxmalloc_set_heap_limit.restype = None
        proc.oxmalloc_set_heap_limit.argtypes = [ctypes.c_size_t]
        proc.oxmalloc_heap_limit.restype = ctypes.c_size_t
        proc.oxmalloc_heap_limit.argtypes = []
        _lib = proc
    return _lib


def is_active():
    """True when oxmalloc serves this process's malloc."""
    return _library() is not None


def _require():
    lib = _library()
    if lib is None:
        raise NotActiveError(_NOT_ACTIVE)
    return lib


def _read(fn):
    size = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(size)
        needed = fn(buf, size)
        if needed < size:
            return buf.value.decode()
        size = needed + 1024


def stats():
    """A snapshot of the allocator's statistics as a dict (see docs/stats.md)."""
    return json.loads(_read(_require().oxmalloc_stats_json))


def stats_text():
    """The human-readable statistics report."""
    return _read(_require().oxmalloc_stats_text)


def release():
    """Return free memory to the OS, including this thread's cache and those of sleeping
    threads; returns bytes released."""
    return int(_require().oxmalloc_release_free_memory())


_UNITS = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def _parse_size(value):
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a heap limit cannot be negative")
        return value
    text = str(value).strip().upper()
    for suffix in ("IB", "B"):
        if text.endswith(suffix) and text[:-len(suffix)][-1:] in "KMGT":
            text = text[: -len(suffix)]
            break
    unit = text[-1:] if text[-1:] in "KMGT" else ""
    number = text[: len(text) - len(unit)].strip()
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a size: {value!r} (use bytes or a K/M/G/T suffix)") from None
    if amount < 0:
        raise ValueError("a heap limit cannot be negative")
    return int(amount * (1 << _UNITS[unit]))


def set_heap_limit(limit):
    """Limit the heap: `set_heap_limit("2G")`, `set_heap_limit(512 << 20)`, `None` or 0 for
    no limit. Past it, allocations fail and Python raises MemoryError instead of the kernel
    killing the process."""
    _require().oxmalloc_set_heap_limit(0 if limit is None else _parse_size(limit))


def heap_limit():
    """The heap limit in bytes, or None."""
    value = int(_require().oxmalloc_heap_limit())
    return value or None
