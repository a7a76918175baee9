// SPDX-License-Identifier: GPL-2.0

//! Pre-zeroed pages for the staging slots that MOVE loads empty.
//!
//! A MOVE takes the page out of a staging slot; the loader's next receive into that slot
//! needs a fresh zeroed page. Allocating and zeroing it in the loader's thread (on its next
//! write, or right after the MOVE) puts a page clear on the loader's path for every page it
//! loads. The pool keeps zeroed pages ready: the MOVE's refill takes them from here, and a
//! work item on the module's unbound workqueue refills the pool in the background, charging
//! the pages to the memory cgroup of the task that opened the object.
//!
//! # Locking
//!
//! [`PagePool::pages`] is a leaf spinlock (the lock order is at the top of `object.rs`),
//! held only to push or pop pages, never while allocating one; it nests inside no slot lock
//! (`slots.rs`: refills take from the pool before they lock staging's slots).

use crate::{
    memcg::{
        charged_may_fail,
        zeroed_page_may_fail,
        MemCgroup, //
    },
    scratch::Scratch,
};
use kernel::{
    new_spinlock,
    page::Page,
    prelude::*,
    sync::{
        atomic::{
            Acquire,
            Atomic,
            Release, //
        },
        SpinLock,
    },
};

/// An object's pool of zeroed pages.
#[pin_data]
pub(crate) struct PagePool {
    /// The pages; their vector's capacity is the target, reserved at setup.
    #[pin]
    pages: SpinLock<KVec<Page>>,
    /// How many pages the pool keeps: 0 until the object is set up.
    target: Atomic<usize>,
    /// Whose memory the pages are.
    memcg: MemCgroup,
}

impl PagePool {
    /// An empty pool, charging to the current task's memory cgroup.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            pages <- new_spinlock!(KVec::new()),
            target: Atomic::new(0),
            memcg: MemCgroup::current(),
        })
    }

    /// Sizes the pool for an object with `staging_pages` staging pages (once, at setup): as
    /// many pages as staging has, at most the module parameter `pool_pages`.
    pub(crate) fn set_target(&self, staging_pages: usize) -> Result {
        let target = staging_pages.min(crate::module_parameters::pool_pages.value() as usize);
        // Reserve outside the spinlock; refills never allocate under it.
        let reserved = KVec::with_capacity(target, charged_may_fail())?;
        *self.pages.lock() = reserved;
        self.target.store(target, Release);
        Ok(())
    }

    /// Moves pages into `into` until it is full or the pool is empty.
    pub(crate) fn take<const N: usize>(&self, into: &mut Scratch<Page, N>) {
        let mut pages = self.pages.lock();
        while !into.is_full() {
            let Some(page) = pages.pop() else { break };
            // Cannot fail: `into` has room.
            let _ = into.push(page);
        }
    }

    /// Whether the pool has fallen to half its target: then a refill is worth waking a
    /// worker for (waking one for every page taken costs more than the zeroing it saves).
    pub(crate) fn needs_refill(&self) -> bool {
        let target = self.target.load(Acquire);
        target > 0 && self.pages.lock().len() <= target / 2
    }

    /// Fills the pool up to its target (from the module's workqueue).
    pub(crate) fn refill(&self) {
        let _charging = self.memcg.charge();
        while self.pages.lock().len() < self.target.load(Acquire) {
            let Ok(page) = zeroed_page_may_fail() else {
                return;
            };
            // A concurrent refill may have filled it meanwhile: then the page is freed.
            if self.pages.lock().push_within_capacity(page).is_err() {
                return;
            }
        }
    }
}
