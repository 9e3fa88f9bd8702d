//! Text and JSON renderings of a [`Stats`] snapshot, written through `core::fmt::Write` so they
//! work without allocating (into a stack buffer, a caller's C buffer, or a `String`).
//!
//! Invariants: the JSON has the same fields in every snapshot (documented in `docs/stats.md`);
//! numbers are plain integers (bytes, counts) except the `*_share` fields (0..1).

use super::{Stats, RUN_BUCKETS};
use crate::page_heap::MAX_LISTED;
use crate::types::PAGE_SIZE;
use core::fmt::{self, Write};

/// Writes into a byte slice like `snprintf`: output past the end is dropped, but `needed`
/// keeps counting, and the slice is always NUL-terminated when it has room for one byte.
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    written: usize,
    /// Bytes the whole output needs (excluding the NUL).
    pub needed: usize,
}

impl<'a> SliceWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter {
            buf,
            written: 0,
            needed: 0,
        }
    }

    /// NUL-terminates what was written (truncating by one byte if the buffer is full).
    pub fn finish(self) -> usize {
        if !self.buf.is_empty() {
            let end = self.written.min(self.buf.len() - 1);
            self.buf[end] = 0;
        }
        self.needed
    }
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(self.written);
        let n = s.len().min(room);
        self.buf[self.written..self.written + n].copy_from_slice(&s.as_bytes()[..n]);
        self.written += n;
        self.needed += s.len();
        Ok(())
    }
}

/// Lower and upper bound (pages) of free-run histogram bucket `i`.
pub fn run_bucket_bounds(i: usize) -> (usize, usize) {
    if i <= MAX_LISTED {
        (i, i)
    } else {
        let k = i - MAX_LISTED;
        ((MAX_LISTED << (k - 1)) + 1, MAX_LISTED << k)
    }
}

struct Bytes(usize);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 < 1 << 10 {
            write!(f, "{} B", self.0)
        } else if self.0 < 1 << 20 {
            write!(f, "{:.1} KiB", b / 1024.0)
        } else if self.0 < 1 << 30 {
            write!(f, "{:.1} MiB", b / (1u64 << 20) as f64)
        } else {
            write!(f, "{:.2} GiB", b / (1u64 << 30) as f64)
        }
    }
}

/// A few lines for the end of a run: in use, peak, RSS, fragmentation, large blocks.
pub fn write_summary(w: &mut impl Write, s: &Stats) -> fmt::Result {
    writeln!(
        w,
        "oxmalloc: in use {} (peak active {}), RSS {}, mapped {}, released to OS {}",
        Bytes(s.in_use_bytes),
        Bytes(s.peak_active_bytes),
        Bytes(s.rss_bytes),
        Bytes(s.mapped_bytes),
        Bytes(s.released_bytes)
    )?;
    writeln!(
        w,
        "oxmalloc: fragmentation internal {} ({:.1}%), external {} ({:.1}%); {} large allocations live, {} allocations in total",
        Bytes(s.internal_fragmentation_bytes),
        100.0 * s.internal_share(),
        Bytes(s.external_fragmentation_bytes),
        100.0 * s.external_share(),
        s.large_allocations,
        s.allocations_total
    )
}

/// The full human-readable report.
pub fn write_text(w: &mut impl Write, s: &Stats) -> fmt::Result {
    let row = |w: &mut dyn Write, name: &str, v: usize| -> fmt::Result {
        writeln!(
            w,
            "  {name:<34} {v:>16} B  {:>12}",
            Bytes(v).to_string_stack()
        )
    };
    writeln!(
        w,
        "------------------------------------------------ oxmalloc statistics"
    )?;
    row(w, "in use by the program", s.in_use_bytes)?;
    row(w, "  small objects (class-rounded)", s.small_in_use_bytes)?;
    row(w, "  large blocks (page-rounded)", s.large_in_use_bytes)?;
    row(w, "requested by the program (est.)", s.requested_bytes)?;
    row(w, "free in thread caches", s.thread_cache_bytes)?;
    row(w, "free in transfer caches", s.transfer_cache_bytes)?;
    row(w, "free in central free lists", s.central_free_bytes)?;
    row(w, "span tail waste", s.span_waste_bytes)?;
    row(w, "free in page heap (resident)", s.page_heap_free_bytes)?;
    row(w, "released to the OS (not resident)", s.released_bytes)?;
    row(w, "= mapped heap", s.mapped_bytes)?;
    row(w, "metadata", s.metadata_bytes)?;
    row(w, "process RSS", s.rss_bytes)?;
    row(w, "peak active (spans + large)", s.peak_active_bytes)?;
    row(w, "largest free run", s.largest_free_run_bytes)?;
    writeln!(
        w,
        "  internal fragmentation {} ({:.1}% of in use), external {} ({:.1}% of resident heap)",
        Bytes(s.internal_fragmentation_bytes),
        100.0 * s.internal_share(),
        Bytes(s.external_fragmentation_bytes),
        100.0 * s.external_share()
    )?;
    writeln!(
        w,
        "  {} allocations, {} frees, {} allocated over the lifetime; {} live large blocks; {} thread caches",
        s.allocations_total,
        s.frees_total,
        Bytes(s.bytes_allocated_total as usize),
        s.large_allocations,
        s.thread_caches
    )?;
    if s.cache_reclaims_total > 0 {
        writeln!(
            w,
            "  {} idle thread caches emptied by other threads, {} taken from them",
            s.cache_reclaims_total,
            Bytes(s.cache_reclaimed_bytes_total)
        )?;
    }
    writeln!(
        w,
        "------------------------------------------------ size classes in use"
    )?;
    writeln!(
        w,
        "  {:>7} {:>10} {:>6} {:>6} {:>10} {:>9} {:>9} {:>12}",
        "size", "in use", "spans", "util%", "central", "transfer", "threads", "allocs"
    )?;
    for c in s
        .classes
        .iter()
        .skip(1)
        .filter(|c| c.spans > 0 || c.allocs > 0)
    {
        let capacity = c.span_bytes / c.size.max(1);
        let util = if capacity == 0 {
            0.0
        } else {
            100.0 * c.in_use as f64 / capacity as f64
        };
        writeln!(
            w,
            "  {:>7} {:>10} {:>6} {:>6.1} {:>10} {:>9} {:>9} {:>12}",
            c.size,
            c.in_use,
            c.spans,
            util,
            c.free_central,
            c.free_transfer,
            c.free_threads,
            c.allocs
        )?;
    }
    writeln!(
        w,
        "------------------------------------------------ free page runs"
    )?;
    writeln!(w, "  {:>21} {:>9} {:>9}", "pages", "resident", "released")?;
    for i in 1..RUN_BUCKETS {
        let (r, f) = (s.free_runs_resident[i], s.free_runs_released[i]);
        if r + f == 0 {
            continue;
        }
        let (lo, hi) = run_bucket_bounds(i);
        if lo == hi {
            writeln!(w, "  {:>21} {:>9} {:>9}", lo, r, f)?;
        } else {
            writeln!(w, "  {:>10}..{:<9} {:>9} {:>9}", lo, hi, r, f)?;
        }
    }
    Ok(())
}

/// A small helper so `Bytes` can be padded inside a format string without allocating.
trait ToStackString {
    fn to_string_stack(&self) -> crate::hooks::StackBuf<24>;
}

impl ToStackString for Bytes {
    fn to_string_stack(&self) -> crate::hooks::StackBuf<24> {
        let mut b = crate::hooks::StackBuf::new();
        let _ = write!(b, "{self}");
        b
    }
}

impl<const N: usize> fmt::Display for crate::hooks::StackBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The JSON rendering: one object, every field always present.
pub fn write_json(w: &mut impl Write, s: &Stats) -> fmt::Result {
    w.write_str("{")?;
    let fields: [(&str, usize); 25] = [
        ("in_use_bytes", s.in_use_bytes),
        ("small_in_use_bytes", s.small_in_use_bytes),
        ("large_in_use_bytes", s.large_in_use_bytes),
        ("requested_bytes", s.requested_bytes),
        ("peak_active_bytes", s.peak_active_bytes),
        ("thread_cache_bytes", s.thread_cache_bytes),
        ("transfer_cache_bytes", s.transfer_cache_bytes),
        ("central_free_bytes", s.central_free_bytes),
        ("span_waste_bytes", s.span_waste_bytes),
        ("page_heap_free_bytes", s.page_heap_free_bytes),
        ("released_bytes", s.released_bytes),
        ("released_bytes_total", s.released_bytes_total),
        ("metadata_bytes", s.metadata_bytes),
        ("mapped_bytes", s.mapped_bytes),
        ("rss_bytes", s.rss_bytes),
        (
            "internal_fragmentation_bytes",
            s.internal_fragmentation_bytes,
        ),
        (
            "external_fragmentation_bytes",
            s.external_fragmentation_bytes,
        ),
        ("large_allocations", s.large_allocations),
        ("large_allocations_total", s.large_allocations_total),
        ("largest_free_run_bytes", s.largest_free_run_bytes),
        ("thread_caches", s.thread_caches),
        ("cache_reclaims_total", s.cache_reclaims_total),
        ("cache_reclaimed_bytes_total", s.cache_reclaimed_bytes_total),
        ("page_size", PAGE_SIZE),
        ("classes_count", s.classes.len() - 1),
    ];
    for (name, v) in fields {
        write!(w, "\"{name}\":{v},")?;
    }
    write!(
        w,
        "\"allocations_total\":{},\"frees_total\":{},\"bytes_allocated_total\":{},",
        s.allocations_total, s.frees_total, s.bytes_allocated_total
    )?;
    write!(
        w,
        "\"internal_fragmentation_share\":{:.4},\"external_fragmentation_share\":{:.4},",
        s.internal_share(),
        s.external_share()
    )?;
    w.write_str("\"classes\":[")?;
    for (i, c) in s.classes.iter().enumerate().skip(1) {
        if i > 1 {
            w.write_str(",")?;
        }
        write!(
            w,
            "{{\"class\":{i},\"size\":{},\"in_use\":{},\"spans\":{},\"span_bytes\":{},\"free_central\":{},\"free_transfer\":{},\"free_threads\":{},\"allocs\":{},\"frees\":{}}}",
            c.size, c.in_use, c.spans, c.span_bytes, c.free_central, c.free_transfer, c.free_threads, c.allocs, c.frees
        )?;
    }
    w.write_str("],\"free_runs\":[")?;
    let mut first = true;
    for i in 1..RUN_BUCKETS {
        let (r, f) = (s.free_runs_resident[i], s.free_runs_released[i]);
        if r + f == 0 {
            continue;
        }
        if !first {
            w.write_str(",")?;
        }
        first = false;
        let (lo, hi) = run_bucket_bounds(i);
        write!(
            w,
            "{{\"pages_min\":{lo},\"pages_max\":{hi},\"resident\":{r},\"released\":{f}}}"
        )?;
    }
    w.write_str("]}")
}
