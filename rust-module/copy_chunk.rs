// SPDX-License-Identifier: GPL-2.0

//! The pages a COPY has filled and not yet installed: up to [`COPY_CHUNK`] of them, on the
//! stack.
//!
//! The array's unused part is never written: an array of `Option<Page>` would be zeroed
//! first, a 512-byte `memset` on every load, most of which (a fault's reply) fill one page.

use core::mem::MaybeUninit;
use kernel::page::Page;

/// Pages a COPY fills before it takes the locks to install them (and a ZERO marks under one
/// locking). The chunk lives on the stack (512 bytes): a single-page COPY, a fault's reply,
/// allocates nothing but its page.
pub(crate) const COPY_CHUNK: usize = 64;

/// Filled pages, handed out in the order they were added; those not handed out are freed
/// with the chunk.
///
/// # Invariants
///
/// `pages[taken..filled]` are initialised and owned by this value, the others are not;
/// `taken <= filled <= COPY_CHUNK`.
pub(crate) struct CopyChunk {
    pages: [MaybeUninit<Page>; COPY_CHUNK],
    taken: usize,
    filled: usize,
}

impl CopyChunk {
    /// An empty chunk.
    pub(crate) fn new() -> Self {
        // INVARIANT: Nothing is filled.
        Self {
            pages: [const { MaybeUninit::uninit() }; COPY_CHUNK],
            taken: 0,
            filled: 0,
        }
    }

    /// How many pages were added.
    pub(crate) fn filled(&self) -> usize {
        self.filled
    }

    /// Whether no more pages fit.
    pub(crate) fn is_full(&self) -> bool {
        self.filled == COPY_CHUNK
    }

    /// Adds `page`.
    ///
    /// # Panics
    ///
    /// If the chunk is full.
    pub(crate) fn push(&mut self, page: Page) {
        assert!(!self.is_full());
        self.pages[self.filled].write(page);
        // INVARIANT: The entry was just written.
        self.filled += 1;
    }

    /// Hands out the oldest page not handed out yet.
    pub(crate) fn take(&mut self) -> Option<Page> {
        if self.taken == self.filled {
            return None;
        }
        // SAFETY: By the type invariants the entry is initialised and ours; it leaves the
        // owned range below, so it is read once.
        let page = unsafe { self.pages[self.taken].assume_init_read() };
        // INVARIANT: The entry read out is no longer owned.
        self.taken += 1;
        Some(page)
    }
}

impl Drop for CopyChunk {
    fn drop(&mut self) {
        while self.take().is_some() {}
    }
}
