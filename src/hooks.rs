//! Reports and hooks on the slow paths: misuse reports (and, later, large-allocation and
//! failure reports).
//!
//! Invariants: reports are formatted into a fixed stack buffer ([`StackBuf`]) and written with
//! `write(2)`; nothing here allocates or panics.

use core::fmt::{self, Write};

/// A fixed-size formatting buffer on the stack; text past its end is cut.
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only whole `&str` pieces are appended, except where a cut lands mid-character.
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                let ok = e.valid_up_to();
                // SAFETY: the prefix up to `valid_up_to` is valid UTF-8.
                unsafe { core::str::from_utf8_unchecked(&self.buf[..ok]) }
            }
        }
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Reports a free of a pointer oxmalloc did not hand out (or does not own any more) and aborts.
#[cold]
#[inline(never)]
pub fn invalid_free(p: *mut u8) {
    let mut b = StackBuf::<256>::new();
    let _ = writeln!(
        b,
        "oxmalloc: invalid free of {:p}: not the start of a block oxmalloc handed out (foreign, interior, or already freed pointer)",
        p
    );
    crate::os::write_stderr(b.as_bytes());
    // SAFETY: abort has no preconditions; continuing would corrupt the heap.
    unsafe { libc::abort() }
}
