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

__all__ = ["is_active", "stats", "stats_text", "release", "NotActiveError"]


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
    """Return free memory to the OS, including this thread's cache; returns bytes released."""
    return int(_require().oxmalloc_release_free_memory())
