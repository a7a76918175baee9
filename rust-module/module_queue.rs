// SPDX-License-Identifier: GPL-2.0

//! The module's own workqueue.
//!
//! A work item holds a reference to its object, so it may drop the object's last one. The
//! object's final `fput()`, which releases the module, is deferred, but the work function
//! still returns through module code afterwards. Module exit destroys this queue, which
//! waits for every work item to finish, so unloading never cuts one off; the system
//! workqueues, which a module may not flush, could not promise that.

use kernel::{
    bindings,
    prelude::*,
    sync::atomic::{
        Acquire,
        Atomic,
        Release, //
    },
    workqueue::Queue,
};

/// The queue's address, from module init to module exit (0 otherwise).
static QUEUE: Atomic<usize> = Atomic::new(0);

/// Owns the queue: created at module init, destroyed (after draining) at module exit.
pub(crate) struct ModuleQueue(());

impl ModuleQueue {
    /// Creates the queue. Unbound: refills run on whichever CPU is idle, not on the one
    /// that is waiting for them.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The name is a static string with no conversion specifications.
        let wq = unsafe {
            bindings::alloc_workqueue_noprof(
                c"muserload".as_char_ptr(),
                bindings::wq_flags_WQ_UNBOUND,
                0,
            )
        };
        if wq.is_null() {
            return Err(ENOMEM);
        }
        QUEUE.store(wq as usize, Release);
        Ok(Self(()))
    }
}

impl Drop for ModuleQueue {
    fn drop(&mut self) {
        let wq = QUEUE.xchg(0, Acquire);
        // SAFETY: `wq` is the queue `new` created; it is destroyed once, here, at module
        // exit, when no object (so nothing that queues work) exists any more.
        unsafe { bindings::destroy_workqueue(wq as *mut bindings::workqueue_struct) };
    }
}

/// The module's queue.
pub(crate) fn queue() -> &'static Queue {
    let wq = QUEUE.load(Acquire) as *const bindings::workqueue_struct;
    // SAFETY: Only objects call this, and objects exist only while the module is loaded,
    // between `ModuleQueue::new` and its drop, when `wq` is a live workqueue.
    unsafe { Queue::from_raw(wq) }
}
