// SPDX-License-Identifier: GPL-2.0

//! Hashed wait queues for threads that wait for a page to be loaded.
//!
//! A fault on an unloaded page sleeps after it has released the mmap (or per-VMA) lock, so
//! the sleep cannot be [`kernel::sync::CondVar`]'s, which sleeps with a lock held and has no
//! killable state. Pages hash to one of [`WAIT_BUCKETS`] queues, as the kernel's own page
//! wait table does, so that a load wakes only the threads of its bucket rather than every
//! waiter of the object: waiting scales with vCPUs. A thread woken for another page of its
//! bucket finds its own page still unloaded and sleeps again.

use core::marker::PhantomPinned;
use kernel::{
    bindings,
    ffi::c_int,
    prelude::*,
    sync::{
        barrier::{
            smp_mb,
            Full, //
        },
        LockClassKey,
    },
    types::Opaque, //
};

/// How many wait queues an object has.
pub(crate) const WAIT_BUCKETS: usize = 64;

/// How a thread may be woken besides by a load.
#[derive(Clone, Copy)]
pub(crate) enum WaitState {
    /// Any signal wakes it (`FAULT_FLAG_INTERRUPTIBLE`).
    Interruptible,
    /// Only a fatal signal wakes it (`FAULT_FLAG_KILLABLE`).
    Killable,
    /// Nothing but the wake wakes it.
    Uninterruptible,
}

impl WaitState {
    fn as_raw(self) -> c_int {
        (match self {
            Self::Interruptible => bindings::TASK_INTERRUPTIBLE,
            Self::Killable => bindings::TASK_WAKEKILL | bindings::TASK_UNINTERRUPTIBLE,
            Self::Uninterruptible => bindings::TASK_UNINTERRUPTIBLE,
        }) as c_int
    }
}

/// A wait queue whose waiters are all woken at once (non-exclusive waits).
///
/// # Invariants
///
/// `head` is an initialised `struct wait_queue_head`.
#[pin_data]
pub(crate) struct WaitQueue {
    #[pin]
    head: Opaque<bindings::wait_queue_head>,
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: A `struct wait_queue_head` may be used from any thread; it has its own lock.
unsafe impl Send for WaitQueue {}
// SAFETY: A `struct wait_queue_head` may be used from many threads at once.
unsafe impl Sync for WaitQueue {}

impl WaitQueue {
    /// Creates an initialiser of an empty queue.
    pub(crate) fn new(name: &'static CStr, key: Pin<&'static LockClassKey>) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid while the closure runs; `name` and `key` are static.
            // INVARIANT: `__init_waitqueue_head` initialises the head.
            head <- Opaque::ffi_init(|slot| unsafe {
                bindings::__init_waitqueue_head(slot, name.as_char_ptr(), key.as_ptr())
            }),
            _pin: PhantomPinned,
        })
    }

    /// Sleeps in `state` until `done()` is true or a signal that `state` admits is pending;
    /// returns whether `done()` was.
    ///
    /// `done` runs with the task state already set, so it must not sleep (no mutex): it
    /// reads atomics. A wake between its `false` and the sleep is not lost, since the thread
    /// is on the queue before `done` runs.
    pub(crate) fn wait_until(&self, state: WaitState, done: impl Fn() -> bool) -> bool {
        let entry = Opaque::<bindings::wait_queue_entry>::uninit();
        // SAFETY: `entry` is valid memory for a wait queue entry.
        unsafe { bindings::init_wait_entry(entry.get(), 0) };
        let finished = loop {
            // SAFETY: By the type invariants `head` is initialised; `entry` is initialised and
            // is removed from the queue by `finish_wait` before it goes out of scope. A
            // nonzero return means a signal that `state` admits is pending.
            let interrupted = unsafe {
                bindings::prepare_to_wait_event(self.head.get(), entry.get(), state.as_raw())
            };
            if interrupted != 0 {
                break false;
            }
            if done() {
                break true;
            }
            // SAFETY: No spinlock is held and the task state is set: sleeping is allowed.
            unsafe { bindings::schedule() };
        };
        // SAFETY: `entry` was added to `head` by `prepare_to_wait_event`.
        unsafe { bindings::finish_wait(self.head.get(), entry.get()) };
        finished
    }

    /// Wakes every thread sleeping on this queue.
    ///
    /// The caller has published what the sleepers wait for (a page's state word). A queue
    /// with no sleeper is skipped without its lock, as `wq_has_sleeper()` does: the full
    /// barrier orders that store before the look at the queue, and pairs with the one in
    /// `prepare_to_wait_event()` between a sleeper joining the queue and its `done()`, so
    /// that either the sleeper sees the store or this sees the sleeper. Most loads have no
    /// sleeper (signal mode, the background stream): a 64-page load would otherwise take up
    /// to 64 queue locks for nothing.
    pub(crate) fn wake_all(&self) {
        smp_mb(Full);
        // SAFETY: By the type invariants `head` is initialised. Its list head is read
        // without the lock, as `waitqueue_active()` reads it: a stale answer is covered by
        // the barriers above.
        let has_sleeper = unsafe {
            let list = &raw mut (*self.head.get()).head;
            core::ptr::read_volatile(&raw const (*list).next) != list
        };
        if !has_sleeper {
            return;
        }
        // SAFETY: By the type invariants `head` is initialised. `nr` 0 with non-exclusive
        // waiters wakes them all.
        unsafe {
            bindings::__wake_up(
                self.head.get(),
                bindings::TASK_NORMAL,
                0,
                core::ptr::null_mut(),
            )
        };
    }
}
