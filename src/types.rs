//! Unit types shared by the layers: pages, page numbers and page counts.
//!
//! Invariants: a [`PageId`] is an address shifted right by [`PAGE_SHIFT`]; a [`Length`] counts
//! whole pages. Keeping them apart from byte counts is what stops page/byte mix-ups.

/// log2 of the allocator's page size.
pub const PAGE_SHIFT: usize = 13;
/// The allocator's page: 8 KiB (two OS pages on x86-64).
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// Number of a page: `address >> PAGE_SHIFT`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct PageId(pub usize);

impl PageId {
    #[inline(always)]
    pub fn containing(addr: usize) -> PageId {
        PageId(addr >> PAGE_SHIFT)
    }

    #[inline(always)]
    pub fn addr(self) -> usize {
        self.0 << PAGE_SHIFT
    }

    #[inline(always)]
    pub fn offset(self, len: Length) -> PageId {
        PageId(self.0 + len.0)
    }
}

/// A count of pages.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct Length(pub usize);

impl Length {
    #[inline(always)]
    pub fn bytes(self) -> usize {
        self.0 << PAGE_SHIFT
    }

    /// Pages needed to hold `bytes`, or `None` when that overflows.
    #[inline]
    pub fn for_bytes(bytes: usize) -> Option<Length> {
        bytes
            .checked_add(PAGE_SIZE - 1)
            .map(|b| Length(b >> PAGE_SHIFT))
    }
}
