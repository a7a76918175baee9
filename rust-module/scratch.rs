// SPDX-License-Identifier: GPL-2.0

//! Scratch vectors for a load's bookkeeping: a few items inline, more on the heap.
//!
//! A MOVE keeps lists for the length of one call: the staging runs it emptied, the guest
//! runs it moved, the fresh pages that refill staging. A fault's reply is one pair of one
//! page, and such lists held in `KVec`s cost it three allocations and three frees (six
//! `krealloc()` calls, traced under TCG as the largest part of the call after the page
//! table work). Up to `N` items live in the value itself, on the caller's stack.

use kernel::{
    alloc::Flags,
    prelude::*, //
};

/// Room for a number of items fixed at creation: inline if it is at most `N`, else in one
/// allocation. The first `len` slots hold the items.
pub(crate) struct Scratch<T, const N: usize> {
    inline: [Option<T>; N],
    /// `None` when the items fit inline: dropping even an empty `KVec` calls the allocator.
    heap: Option<KVec<Option<T>>>,
    /// How many items fit (inline: the first `capacity` slots of `inline`).
    capacity: usize,
    len: usize,
}

impl<T, const N: usize> Scratch<T, N> {
    /// Room for `capacity` items; allocates (with `flags`) only past `N`.
    pub(crate) fn with_capacity(capacity: usize, flags: Flags) -> Result<Self> {
        let heap = if capacity > N {
            let mut heap = KVec::with_capacity(capacity, flags)?;
            for _ in 0..capacity {
                heap.push_within_capacity(None).map_err(|_| ENOMEM)?;
            }
            Some(heap)
        } else {
            None
        };
        Ok(Self {
            inline: [const { None }; N],
            heap,
            capacity,
            len: 0,
        })
    }

    fn slots(&self) -> &[Option<T>] {
        match &self.heap {
            Some(heap) => heap,
            None => &self.inline[..self.capacity],
        }
    }

    fn slots_mut(&mut self) -> &mut [Option<T>] {
        match &mut self.heap {
            Some(heap) => heap,
            None => &mut self.inline[..self.capacity],
        }
    }

    /// How many items there are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether no more items fit.
    pub(crate) fn is_full(&self) -> bool {
        self.len == self.slots().len()
    }

    /// Appends `item`, or hands it back if there is no room.
    pub(crate) fn push(&mut self, item: T) -> core::result::Result<(), T> {
        let len = self.len;
        match self.slots_mut().get_mut(len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
                Ok(())
            }
            None => Err(item),
        }
    }

    /// The last item.
    pub(crate) fn last_mut(&mut self) -> Option<&mut T> {
        let last = self.len.checked_sub(1)?;
        self.slots_mut()[last].as_mut()
    }

    /// The items, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots()[..self.len].iter().flatten()
    }

    /// Takes every item out, in order. Items the iterator is dropped before reaching stay
    /// in their slots until the vector is dropped or a push overwrites them.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        let len = self.len;
        self.len = 0;
        self.slots_mut()[..len].iter_mut().filter_map(Option::take)
    }
}
