//! Statistics reports of the shared library: into caller buffers, to file descriptors, and at
//! process exit.
//!
//! Invariants: nothing here allocates through the global allocator (text is formatted into
//! fixed buffers or straight to a file descriptor); settings are read from the environment once,
//! in the load-time constructor, into fixed buffers.

use core::ffi::c_int;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};
use oxmalloc_core::config::env;
use oxmalloc_core::stats::format::{write_json, write_summary, write_text, SliceWriter};
use oxmalloc_core::sync::SpinLock;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Summary,
}

/// Formats straight to a file descriptor through a small stack buffer.
struct FdWriter {
    fd: c_int,
    buf: [u8; 1024],
    len: usize,
}

impl FdWriter {
    fn new(fd: c_int) -> Self {
        FdWriter {
            fd,
            buf: [0; 1024],
            len: 0,
        }
    }

    fn flush(&mut self) {
        let mut rest = &self.buf[..self.len];
        while !rest.is_empty() {
            // SAFETY: `rest` is a live slice.
            let n =
                unsafe { libc::write(self.fd, rest.as_ptr() as *const libc::c_void, rest.len()) };
            if n <= 0 {
                break;
            }
            rest = &rest[n as usize..];
        }
        self.len = 0;
    }
}

impl Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

fn render(w: &mut impl Write, format: Format) {
    let s = oxmalloc_core::stats();
    let _ = match format {
        Format::Text => write_text(w, &s),
        Format::Json => write_json(w, &s),
        Format::Summary => write_summary(w, &s),
    };
}

/// Writes a report to file descriptor `fd`.
pub fn write_report(fd: c_int, format: Format) {
    let mut w = FdWriter::new(fd);
    render(&mut w, format);
    if format == Format::Json {
        let _ = w.write_str("\n");
    }
    w.flush();
}

/// Writes a report into a caller's buffer; returns the length the whole report needs.
///
/// # Safety
/// `buf` points to `len` writable bytes, or `len` is 0.
pub unsafe fn write_to_buffer(buf: *mut libc::c_char, len: usize, format: Format) -> usize {
    let slice: &mut [u8] = if buf.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: the caller guarantees `len` writable bytes at `buf`.
        unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, len) }
    };
    let mut w = SliceWriter::new(slice);
    render(&mut w, format);
    w.finish()
}

/// Documented names for `oxmalloc_get_numeric_property`.
pub fn numeric_property(name: &[u8]) -> Option<usize> {
    let s = oxmalloc_core::stats();
    let v = match name {
        b"oxmalloc.in_use_bytes" | b"generic.current_allocated_bytes" => s.in_use_bytes,
        b"oxmalloc.small_in_use_bytes" => s.small_in_use_bytes,
        b"oxmalloc.large_in_use_bytes" => s.large_in_use_bytes,
        b"oxmalloc.requested_bytes" => s.requested_bytes,
        b"oxmalloc.peak_active_bytes" => s.peak_active_bytes,
        b"oxmalloc.thread_cache_bytes" => s.thread_cache_bytes,
        b"oxmalloc.transfer_cache_bytes" => s.transfer_cache_bytes,
        b"oxmalloc.central_free_bytes" => s.central_free_bytes,
        b"oxmalloc.span_waste_bytes" => s.span_waste_bytes,
        b"oxmalloc.page_heap_free_bytes" => s.page_heap_free_bytes,
        b"oxmalloc.released_bytes" => s.released_bytes,
        b"oxmalloc.released_bytes_total" => s.released_bytes_total,
        b"oxmalloc.metadata_bytes" => s.metadata_bytes,
        b"oxmalloc.mapped_bytes" | b"generic.heap_size" => s.mapped_bytes,
        b"oxmalloc.rss_bytes" => s.rss_bytes,
        b"oxmalloc.internal_fragmentation_bytes" => s.internal_fragmentation_bytes,
        b"oxmalloc.external_fragmentation_bytes" => s.external_fragmentation_bytes,
        b"oxmalloc.large_allocations" => s.large_allocations,
        b"oxmalloc.large_allocations_total" => s.large_allocations_total,
        b"oxmalloc.largest_free_run_bytes" => s.largest_free_run_bytes,
        b"oxmalloc.allocations_total" => s.allocations_total as usize,
        b"oxmalloc.frees_total" => s.frees_total as usize,
        b"oxmalloc.bytes_allocated_total" => s.bytes_allocated_total as usize,
        b"oxmalloc.thread_caches" => s.thread_caches,
        b"oxmalloc.cache_reclaims_total" => s.cache_reclaims_total,
        b"oxmalloc.cache_reclaimed_bytes_total" => s.cache_reclaimed_bytes_total,
        _ => return None,
    };
    Some(v)
}

const PATH_MAX: usize = 4096;

/// What to report at exit, read from the environment at load time.
struct ExitSettings {
    /// Where: 0 = nothing, 1 = stderr, 2 = file at `path`.
    target: u8,
    format: Format,
    path: [u8; PATH_MAX],
    /// The launcher's private summary file, written only by its direct child.
    run_summary: [u8; PATH_MAX],
}

static EXIT: SpinLock<ExitSettings> = SpinLock::new(ExitSettings {
    target: 0,
    format: Format::Text,
    path: [0; PATH_MAX],
    run_summary: [0; PATH_MAX],
});
static REPORTED: AtomicU8 = AtomicU8::new(0);

fn copy_path(dst: &mut [u8; PATH_MAX], src: &[u8]) -> bool {
    if src.is_empty() || src.len() >= PATH_MAX {
        return false;
    }
    dst[..src.len()].copy_from_slice(src);
    dst[src.len()] = 0;
    true
}

/// Reads `OXMALLOC_STATS_AT_EXIT` (`1`/`text`, `json`, `summary`, or a file path; a path
/// ending in `.json` gets JSON) and the launcher's `OXMALLOC_RUN_SUMMARY`/`OXMALLOC_RUN_PARENT`.
pub fn read_exit_settings() {
    let mut e = EXIT.lock();
    if let Some(v) = env(c"OXMALLOC_STATS_AT_EXIT") {
        match v {
            b"" | b"0" | b"off" | b"no" => {}
            b"1" | b"text" | b"yes" | b"on" => e.target = 1,
            b"json" => {
                e.target = 1;
                e.format = Format::Json;
            }
            b"summary" => {
                e.target = 1;
                e.format = Format::Summary;
            }
            path => {
                if copy_path(&mut e.path, path) {
                    e.target = 2;
                    if path.ends_with(b".json") {
                        e.format = Format::Json;
                    }
                }
            }
        }
    }
    if let (Some(path), Some(parent)) = (env(c"OXMALLOC_RUN_SUMMARY"), env(c"OXMALLOC_RUN_PARENT"))
    {
        let parent = parent.iter().try_fold(0i64, |a, &b| {
            b.is_ascii_digit().then(|| a * 10 + (b - b'0') as i64)
        });
        // SAFETY: getppid has no preconditions.
        if parent == Some(unsafe { libc::getppid() } as i64) {
            copy_path(&mut e.run_summary, path);
        }
    }
}

fn open_for_write(path: &[u8]) -> c_int {
    // SAFETY: `path` is NUL-terminated (copy_path wrote the NUL).
    unsafe {
        libc::open(
            path.as_ptr() as *const libc::c_char,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    }
}

/// Runs once when the process exits (from the library's destructor).
pub fn report_at_exit() {
    if REPORTED.swap(1, Ordering::AcqRel) != 0 {
        return;
    }
    let e = EXIT.lock();
    match e.target {
        1 => write_report(2, e.format),
        2 => {
            let fd = open_for_write(&e.path);
            if fd >= 0 {
                write_report(fd, e.format);
                // SAFETY: `fd` is ours.
                unsafe { libc::close(fd) };
            }
        }
        _ => {}
    }
    if e.run_summary[0] != 0 {
        let fd = open_for_write(&e.run_summary);
        if fd >= 0 {
            write_report(fd, Format::Json);
            // SAFETY: `fd` is ours.
            unsafe { libc::close(fd) };
        }
    }
}
