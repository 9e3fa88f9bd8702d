//! Configuration from the environment, read once at global set-up with `getenv` (no
//! allocation), kept in atomics that the runtime setters may change later.
//!
//! Invariants: every setting has a documented default that applies when its variable is
//! absent or malformed; a malformed value is reported once on stderr and ignored, never fatal.
//!
//! | variable | values | default |
//! |---|---|---|
//! | `OXMALLOC_LARGE_ALLOC_REPORT_THRESHOLD` | bytes with optional K/M/G/T suffix; `0` or `off` disables | 1 GiB |
//! | `OXMALLOC_HEAP_LIMIT` | bytes with optional suffix, or `auto` | none |
//! | `OXMALLOC_RETAIN_MIN` | free page-heap bytes always allowed to stay resident | 1 MiB |
//! | `OXMALLOC_RETAIN_PERCENT` | free resident bytes allowed beyond that, as a percentage of the bytes handed out | 6 |
//! | `OXMALLOC_IDLE_CACHE_MS` | milliseconds (at most a day) a sleeping thread's cache may stay idle before another thread empties it; `0` or `off` never empties other threads' caches | 1000 |

use core::sync::atomic::{AtomicUsize, Ordering};

/// Large-allocation report threshold in bytes; `usize::MAX` means off.
pub static LARGE_ALLOC_REPORT_THRESHOLD: AtomicUsize = AtomicUsize::new(1 << 30);
/// Heap limit in bytes; 0 means none.
pub static HEAP_LIMIT: AtomicUsize = AtomicUsize::new(0);
/// Free page-heap bytes that may stay resident regardless of the heap's size.
pub static RETAIN_MIN: AtomicUsize = AtomicUsize::new(1 << 20);
/// Further free resident bytes allowed, in percent of the bytes handed out.
pub static RETAIN_PERCENT: AtomicUsize = AtomicUsize::new(6);
/// Bytes all thread caches together aim to stay under (`OXMALLOC_THREAD_CACHE_BYTES`).
pub static THREAD_CACHE_BYTES: AtomicUsize = AtomicUsize::new(32 << 20);

/// Parses a plain count of milliseconds, at most a day.
fn parse_millis(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = crate::os::leading_decimal(s);
    (n <= 86_400_000).then_some(n)
}

/// Parses "123", "64K", "1.5G", "2GiB", "512mb" (binary units, case-insensitive).
pub fn parse_size(s: &[u8]) -> Option<usize> {
    let s = trim(s);
    let digits_end = s
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    if num.is_empty() {
        return None;
    }
    let unit = trim(unit);
    let shift = match unit {
        b"" | b"b" | b"B" => 0,
        [u] | [u, b'b' | b'B'] | [u, b'i' | b'I', b'b' | b'B'] => match u.to_ascii_uppercase() {
            b'K' => 10,
            b'M' => 20,
            b'G' => 30,
            b'T' => 40,
            _ => return None,
        },
        _ => return None,
    };
    let mut int: u128 = 0;
    let mut frac: u128 = 0;
    let mut frac_scale: u128 = 1;
    let mut seen_dot = false;
    for &b in num {
        if b == b'.' {
            if seen_dot {
                return None;
            }
            seen_dot = true;
        } else if seen_dot {
            if frac_scale < 1_000_000_000 {
                frac = frac * 10 + (b - b'0') as u128;
                frac_scale *= 10;
            }
        } else {
            int = int.checked_mul(10)?.checked_add((b - b'0') as u128)?;
        }
    }
    let bytes = (int << shift) + ((frac << shift) / frac_scale);
    usize::try_from(bytes).ok()
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The value of environment variable `name`, read with `getenv` (no allocation).
pub fn env(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv with a NUL-terminated name; the entry is read at once.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

/// What a size setting looks like, for [`malformed`].
const SIZE: &str = "bytes with optional K/M/G suffix";

fn malformed(name: &str, expected: &str) {
    let mut b = crate::hooks::StackBuf::<200>::new();
    let _ = core::fmt::Write::write_fmt(
        &mut b,
        format_args!("oxmalloc: ignoring malformed {name} (expected {expected})\n"),
    );
    crate::os::write_stderr(b.as_bytes());
}

/// Reads the environment. Called once from global set-up.
pub fn load() {
    if let Some(v) = env(c"OXMALLOC_LARGE_ALLOC_REPORT_THRESHOLD") {
        match trim(v) {
            b"0" | b"off" | b"OFF" | b"none" => {
                LARGE_ALLOC_REPORT_THRESHOLD.store(usize::MAX, Ordering::Relaxed)
            }
            v => match parse_size(v) {
                Some(n) => LARGE_ALLOC_REPORT_THRESHOLD.store(n, Ordering::Relaxed),
                None => malformed("OXMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", SIZE),
            },
        }
    }
    if let Some(v) = env(c"OXMALLOC_RETAIN_MIN") {
        match parse_size(v) {
            Some(n) => RETAIN_MIN.store(n, Ordering::Relaxed),
            None => malformed("OXMALLOC_RETAIN_MIN", SIZE),
        }
    }
    if let Some(v) = env(c"OXMALLOC_RETAIN_PERCENT") {
        match parse_size(v).filter(|&p| p <= 1000) {
            Some(n) => RETAIN_PERCENT.store(n, Ordering::Relaxed),
            None => malformed("OXMALLOC_RETAIN_PERCENT", "a percentage up to 1000"),
        }
    }
    if let Some(v) = env(c"OXMALLOC_THREAD_CACHE_BYTES") {
        match parse_size(v) {
            Some(n) => THREAD_CACHE_BYTES.store(n, Ordering::Relaxed),
            None => malformed("OXMALLOC_THREAD_CACHE_BYTES", SIZE),
        }
    }
    if let Some(v) = env(c"OXMALLOC_IDLE_CACHE_MS") {
        match trim(v) {
            b"" | b"0" | b"off" | b"OFF" | b"no" | b"none" => {
                crate::reclaim::IDLE_MS.store(0, Ordering::Relaxed)
            }
            v => match parse_millis(v) {
                Some(n) => crate::reclaim::IDLE_MS.store(n, Ordering::Relaxed),
                None => malformed(
                    "OXMALLOC_IDLE_CACHE_MS",
                    "milliseconds up to 86400000, or off",
                ),
            },
        }
    }
    if let Some(v) = env(c"OXMALLOC_CHECK") {
        match trim(v) {
            b"" | b"0" | b"off" | b"no" => {}
            b"1" | b"on" | b"yes" => crate::check::CHECKING.store(true, Ordering::Relaxed),
            _ => malformed("OXMALLOC_CHECK", "1, on, yes, 0, off or no"),
        }
    }
    if let Some(v) = env(c"OXMALLOC_HEAP_LIMIT") {
        match trim(v) {
            b"" | b"0" | b"off" | b"none" => {}
            b"auto" => HEAP_LIMIT.store(auto_limit(), Ordering::Relaxed),
            v => match parse_size(v) {
                Some(n) => HEAP_LIMIT.store(n, Ordering::Relaxed),
                None => malformed("OXMALLOC_HEAP_LIMIT", SIZE),
            },
        }
    }
}

/// The memory this process may use: the cgroup v2 `memory.max`, else the cgroup v1
/// `memory.limit_in_bytes`, else the machine's `MemTotal`; 0 if none can be read.
pub fn memory_available() -> usize {
    let mut buf = [0u8; 4096];
    let n = crate::os::read_small_file(c"/sys/fs/cgroup/memory.max", &mut buf);
    if n > 0 {
        if let Some(v) = parse_size(&buf[..n]) {
            return v;
        }
    }
    let n = crate::os::read_small_file(c"/sys/fs/cgroup/memory/memory.limit_in_bytes", &mut buf);
    if n > 0 {
        // v1 reports "no limit" as a huge number near i64::MAX; treat it as none.
        if let Some(v) = parse_size(&buf[..n]).filter(|&v| v < 1 << 60) {
            return v;
        }
    }
    let n = crate::os::read_small_file(c"/proc/meminfo", &mut buf);
    let text = &buf[..n];
    if let Some(pos) = text.windows(9).position(|w| w == b"MemTotal:") {
        let line = &text[pos + 9..];
        let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
        let line = trim(&line[..end]);
        let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(kib) = parse_size(&line[..digits]) {
            return kib.saturating_mul(1024);
        }
    }
    0
}

/// `auto`: the memory available minus a margin for everything that is not heap (the
/// interpreter, libraries, stacks, page cache of the process): 10%, at least 256 MiB.
pub fn auto_limit() -> usize {
    let avail = memory_available();
    let margin = (avail / 10).max(256 << 20);
    avail.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size(b"123"), Some(123));
        assert_eq!(parse_size(b"64K"), Some(64 << 10));
        assert_eq!(parse_size(b"100M"), Some(100 << 20));
        assert_eq!(parse_size(b"2g"), Some(2 << 30));
        assert_eq!(parse_size(b"1.5G"), Some(3 << 29));
        assert_eq!(parse_size(b"512MiB"), Some(512 << 20));
        assert_eq!(parse_size(b" 7 kb "), Some(7 << 10));
        assert_eq!(parse_size(b"max\n"), None);
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"12Q"), None);
        assert_eq!(parse_size(b"1.2.3"), None);
        assert_eq!(parse_size(b"99999999999999999999999T"), None);
    }

    #[test]
    fn milliseconds_parse_as_plain_counts_up_to_a_day() {
        assert_eq!(parse_millis(b"50"), Some(50));
        assert_eq!(parse_millis(b"86400000"), Some(86_400_000));
        assert_eq!(parse_millis(b"86400001"), None);
        assert_eq!(parse_millis(b"1k"), None);
        assert_eq!(parse_millis(b"99999999999999999999"), None);
        assert_eq!(parse_millis(b""), None);
    }

    #[test]
    fn memory_available_is_known_here() {
        assert!(memory_available() > 64 << 20);
        assert!(auto_limit() < memory_available());
    }
}
