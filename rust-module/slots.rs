// SPDX-License-Identifier: GPL-2.0

//! An object's page slots, each with a lock of its own.
//!
//! A slot holds the object's page at one index (guest memory or staging), the guest page's
//! state word (`state.rs`; unused for staging) and a sleeping lock: faults and loads of
//! different pages never wait for each other, however many vCPUs fault at once. The lock
//! is a word of the slot, as a folio's lock is a bit of its flags, with its sleepers on the
//! object's hashed wait queues (`wait.rs`): a slot is 16 bytes, with no lock object of its
//! own to initialise or track.
//!
//! The slot's page and its state are reached only through [`LockedPages`], which holds the
//! locks of a run of consecutive slots: the compiler checks that nothing reads or changes
//! them unlocked. The one exception is [`Slots::awaits_load`], a lock-free read of the state
//! for a fault that is about to sleep.
//!
//! A run is locked in ascending index order, and a thread holding a run blocks only on
//! slots above it in the order of `object.rs` (guest before staging, ascending within each):
//! [`Slots::try_lock`] serves the rest. The lock may be held across sleeping work (page
//! allocation, page-table allocation in `vm_insert_page()`, a TLB shootdown), never across
//! an access to user memory.

use crate::{
    clock::LocalInstant,
    memcg::page_array,
    state::PageState,
    stats::Stats,
    wait::{
        WaitQueue,
        WaitState,
        WAIT_BUCKETS, //
    },
};
use core::{
    cell::UnsafeCell,
    marker::PhantomData, //
};
use kernel::{
    page::Page,
    prelude::*,
    sync::atomic::{
        Acquire,
        Atomic,
        Relaxed,
        Release, //
    },
};

/// The lock word: free.
const UNLOCKED: u32 = 0;
/// The lock word: held, nobody asleep for it.
const LOCKED: u32 = 1;
/// The lock word: held, and a thread may be asleep for it (the unlock wakes).
const CONTENDED: u32 = 2;

/// One page slot.
///
/// # Invariants
///
/// `page` is read or written only by the thread that holds `lock` (set it from
/// [`UNLOCKED`]), through a [`LockedPages`].
struct Slot {
    lock: Atomic<u32>,
    /// The guest page's state ([`PageState`]), written with `lock` held.
    state: Atomic<u32>,
    page: UnsafeCell<Option<Page>>,
}

/// The slots of one region of an object (guest memory or staging). Their lock sleepers
/// wait on the object's queues, which each locking names ([`LockWaits`]).
pub(crate) struct Slots {
    slots: VVec<Slot>,
}

// SAFETY: A slot's page moves between threads only under its lock (type invariant of
// `Slot`), and a `Page` may be used and freed from any thread.
unsafe impl Send for Slots {}
// SAFETY: As above: shared references reach a slot's page only through its lock.
unsafe impl Sync for Slots {}

/// Where the lock waits of a region go, and where they are counted.
#[derive(Clone, Copy)]
pub(crate) struct LockWaits<'a> {
    pub(crate) queues: &'a [WaitQueue; WAIT_BUCKETS],
    pub(crate) stats: &'a Stats,
}

impl LockWaits<'_> {
    fn queue(&self, index: usize) -> &WaitQueue {
        &self.queues[index % WAIT_BUCKETS]
    }
}

impl Slots {
    /// `n` empty slots, all unlocked and [`PageState::LOADED`].
    pub(crate) fn new(n: usize) -> Result<Self> {
        Ok(Self {
            slots: page_array(n, || Slot {
                lock: Atomic::new(UNLOCKED),
                state: Atomic::new(PageState::LOADED.bits()),
                page: UnsafeCell::new(None),
            })?,
        })
    }

    /// Locks slots `first..first + count`, in order, sleeping for those another thread
    /// holds.
    pub(crate) fn lock<'a>(
        &'a self,
        first: usize,
        count: usize,
        waits: LockWaits<'a>,
    ) -> LockedPages<'a> {
        let (mut contended, mut wait_ns) = (0, 0);
        let mut since = None;
        for index in first..first + count {
            if let Some(ns) = lock_slot(&self.slots[index], index, waits) {
                contended += 1;
                wait_ns += ns;
            }
            // The hold counts from the first taking, not from a wait for it.
            since.get_or_insert_with(LocalInstant::now);
        }
        if count > 0 {
            waits.stats.pages_locked(count as u64, contended, wait_ns);
        }
        // INVARIANT: Slots `first..first + count` were locked above.
        LockedPages::new(self, first, count, waits, since)
    }

    /// Locks slots `first..first + count` if none is held, else none of them: for a thread
    /// that holds other slots, which may not sleep for these.
    pub(crate) fn try_lock<'a>(
        &'a self,
        first: usize,
        count: usize,
        waits: LockWaits<'a>,
    ) -> Option<LockedPages<'a>> {
        let since = LocalInstant::now();
        for (taken, slot) in self.slots[first..first + count].iter().enumerate() {
            if slot.lock.cmpxchg(UNLOCKED, LOCKED, Acquire).is_err() {
                // INVARIANT: The slots before this one were locked above: released at once,
                // neither counted nor timed.
                drop(LockedPages::new(self, first, taken, waits, None));
                return None;
            }
        }
        if count > 0 {
            waits.stats.pages_locked(count as u64, 0, 0);
        }
        // INVARIANT: Slots `first..first + count` were locked above.
        Some(LockedPages::new(self, first, count, waits, Some(since)))
    }

    /// Whether a fault may keep sleeping for guest page `index`
    /// ([`PageState::awaits_load`]): read without its lock, by a task whose sleeping state
    /// is set (it may not sleep for a lock). Acquire, pairing with the release of
    /// [`LockedPages::set_state`].
    pub(crate) fn awaits_load(&self, index: usize) -> bool {
        PageState::from_bits(self.slots[index].state.load(Acquire)).awaits_load()
    }
}

/// Takes `slot`'s lock; if another thread held it, returns how long the wait took.
fn lock_slot(slot: &Slot, index: usize, waits: LockWaits<'_>) -> Option<u64> {
    let Err(seen) = slot.lock.cmpxchg(UNLOCKED, LOCKED, Acquire) else {
        return None;
    };
    let start = LocalInstant::now();
    // As a futex mutex: a thread that may sleep leaves the word CONTENDED, so that the
    // unlock wakes; one that takes the lock after a sleep takes it CONTENDED, since others
    // may still sleep.
    let mut seen = if seen == CONTENDED {
        seen
    } else {
        slot.lock.xchg(CONTENDED, Acquire)
    };
    while seen != UNLOCKED {
        waits
            .queue(index)
            .wait_until(WaitState::Uninterruptible, || {
                slot.lock.load(Relaxed) != CONTENDED
            });
        seen = slot.lock.xchg(CONTENDED, Acquire);
    }
    Some(start.elapsed_ns())
}

/// The locks of slots `first..first + len` of a region, held: the only way to their pages
/// and states. Dropping it unlocks them.
///
/// # Invariants
///
/// This value holds the locks of slots `first..first + len` of `slots`.
pub(crate) struct LockedPages<'a> {
    slots: &'a Slots,
    first: usize,
    len: usize,
    waits: LockWaits<'a>,
    /// When the run's first lock was taken (none for an empty run): the pages' hold time is
    /// counted from it.
    since: Option<LocalInstant>,
    /// A lock is released by the thread that took it: not `Send`.
    _not_send: PhantomData<*mut ()>,
}

impl<'a> LockedPages<'a> {
    /// The run of slots `first..first + len` of `slots`, which the caller has locked.
    fn new(
        slots: &'a Slots,
        first: usize,
        len: usize,
        waits: LockWaits<'a>,
        since: Option<LocalInstant>,
    ) -> Self {
        // INVARIANT: The caller holds the slots' locks.
        Self {
            slots,
            first,
            len,
            waits,
            since,
            _not_send: PhantomData,
        }
    }

    /// The index of the first slot.
    pub(crate) fn first(&self) -> usize {
        self.first
    }

    /// How many slots are held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slot(&self, i: usize) -> &Slot {
        assert!(i < self.len);
        &self.slots.slots[self.first + i]
    }

    /// The page of the `i`th slot held.
    pub(crate) fn page(&self, i: usize) -> Option<&Page> {
        // SAFETY: By the type invariants this value holds the slot's lock, and it is
        // borrowed shared: nobody writes the page meanwhile.
        unsafe { (*self.slot(i).page.get()).as_ref() }
    }

    /// The `i`th slot held, to change its page.
    pub(crate) fn page_mut(&mut self, i: usize) -> &mut Option<Page> {
        // SAFETY: By the type invariants this value holds the slot's lock, and it is
        // borrowed exclusively: nobody else reads or writes the page meanwhile.
        unsafe { &mut *self.slot(i).page.get() }
    }

    /// The state of the `i`th slot held (a guest page).
    pub(crate) fn state(&self, i: usize) -> PageState {
        PageState::from_bits(self.slot(i).state.load(Relaxed))
    }

    /// Sets the state of the `i`th slot held (a guest page). Release: a fault that reads it
    /// without the lock ([`Slots::awaits_load`]) sees the page that came with it.
    pub(crate) fn set_state(&mut self, i: usize, state: PageState) {
        self.slot(i).state.store(state.bits(), Release);
    }

    /// Adds the slots `next` holds, which follow this run's in the same region, to this run.
    /// Returns `next` unchanged if they do not.
    pub(crate) fn extend(&mut self, next: Self) -> core::result::Result<(), Self> {
        if !core::ptr::eq(self.slots, next.slots) || self.first + self.len != next.first {
            return Err(next);
        }
        self.len += next.len;
        // INVARIANT: `next`'s locks are now held by `self`; it must not release them.
        core::mem::forget(next);
        Ok(())
    }

    /// Unlocks the slots from the `len`th on, keeping the first `len`.
    pub(crate) fn truncate(&mut self, len: usize) {
        if self.len <= len {
            return;
        }
        if let Some(since) = self.since {
            self.waits
                .stats
                .pages_unlocked((self.len - len) as u64, since.elapsed_ns());
        }
        while self.len > len {
            self.len -= 1;
            let index = self.first + self.len;
            // INVARIANT: The slot leaves the run before its lock is released.
            unlock_slot(&self.slots.slots[index], index, self.waits);
        }
    }
}

impl Drop for LockedPages<'_> {
    fn drop(&mut self) {
        self.truncate(0);
    }
}

/// Releases `slot`'s lock, which the caller holds, waking its sleepers if any.
fn unlock_slot(slot: &Slot, index: usize, waits: LockWaits<'_>) {
    if slot.lock.xchg(UNLOCKED, Release) == CONTENDED {
        waits.queue(index).wake_all();
    }
}
