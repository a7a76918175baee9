// SPDX-License-Identifier: GPL-2.0

//! Queue mode: fault events, and the events descriptor they are read from.
//!
//! Each page armed in queue mode produces one event the first time a thread waits for it
//! (its state is then reported, `state.rs`), however many threads then wait. The resolver reads
//! fixed-size `struct muserload_event` records with `read()`, and waits for them with
//! `poll()`/`epoll`. Closing the descriptor is the resolver going away: the object is
//! aborted, so no fault waits for a load that will never come.
//!
//! The descriptor is an anonymous-inode file whose `private_data` is a reference on the
//! object; the kernel crate has no `poll` for misc devices, so its file operations are here.
//!
//! # Locking
//!
//! The lock order is at the top of `object.rs`. `queue` is taken inside a guest slot's lock
//! by the fault path (to queue an event) and alone
//! by readers, and only for short, non-faulting work. Any number of readers (threads calling
//! `read()` or `MUSERLOAD_IOC_RESOLVE`) share the descriptor: a reader takes its events out
//! of the queue under `queue`, so each event goes to one reader, and copies them to its
//! buffer after dropping it (the copy may fault on this very object, and another reader may
//! be the one to serve that fault). An event whose copy fails goes back to the front of the
//! queue: the queue keeps room for every event lent to a reader, so giving it back cannot
//! fail. A reader sleeps only in `ready`'s wait, never holding a lock, interruptibly.

use crate::{
    object::Object,
    sync_table::AssertSync,
    uapi::{
        muserload_event,
        MUSERLOAD_EVENTS_CLOEXEC,
        MUSERLOAD_EVENTS_NONBLOCK,
        MUSERLOAD_READ_MAX, //
    },
};
use kernel::{
    alloc::flags::GFP_KERNEL_ACCOUNT,
    bindings,
    ffi::{
        c_char,
        c_int, //
    },
    fs::File,
    new_mutex, new_poll_condvar,
    prelude::*,
    sync::{
        poll::{
            PollCondVar,
            PollTable, //
        },
        Arc,
        Mutex, //
    },
    types::ForeignOwnable,
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

/// `poll()` bits (`include/uapi/linux/eventpoll.h`), which bindgen cannot see through the
/// `__force __poll_t` casts of their definitions.
const EPOLLIN: u32 = 0x1;
const EPOLLHUP: u32 = 0x10;
const EPOLLRDNORM: u32 = 0x40;

/// How many events one read copies at most (a bounded on-stack buffer).
const READ_BATCH: usize = MUSERLOAD_READ_MAX as usize;

/// Queued events: a ring of `slots`, of which `len` from `head` on (wrapping) are unread.
///
/// # Invariants
///
/// `len + lent <= slots.len()`, and `head < slots.len()` unless `slots` is empty.
struct Queue {
    slots: KVVec<muserload_event>,
    head: usize,
    len: usize,
    /// Events readers took and are still copying out: room is kept for them to come back.
    lent: usize,
}

impl Queue {
    const fn new() -> Self {
        // INVARIANT: Empty, nothing lent.
        Self {
            slots: KVVec::new(),
            head: 0,
            len: 0,
            lent: 0,
        }
    }

    /// The slot of the `i`th unread event (`i` may be `len`: the next free slot).
    fn slot(&self, i: usize) -> usize {
        // A wrap, not `%`: `head < slots.len()` and `i <= len`, so one subtraction does; and
        // objtool does not know the divide-by-zero panic of a `%` by a variable as noreturn.
        let slot = self.head + i;
        if slot >= self.slots.len() {
            slot - self.slots.len()
        } else {
            slot
        }
    }

    /// Queues `event` at the back, growing the ring if every slot is taken or kept.
    fn push(&mut self, event: muserload_event) -> Result {
        if self.len + self.lent == self.slots.len() {
            let capacity = (self.slots.len() * 2).max(64);
            // The caller's memory cgroup pays, as for every other allocation of the fault
            // path (a queue-mode fault's event is a fault's allocation).
            let mut slots = KVVec::with_capacity(capacity, GFP_KERNEL_ACCOUNT)?;
            for i in 0..self.len {
                slots
                    .push_within_capacity(self.slots[self.slot(i)])
                    .map_err(|_| ENOMEM)?;
            }
            while slots.len() < capacity {
                slots
                    .push_within_capacity(muserload_event::default())
                    .map_err(|_| ENOMEM)?;
            }
            // INVARIANT: The unread events keep their order from slot 0; the ring is larger.
            self.slots = slots;
            self.head = 0;
        }
        let tail = self.slot(self.len);
        self.slots[tail] = event;
        // INVARIANT: `len + lent` was below `slots.len()`.
        self.len += 1;
        Ok(())
    }

    /// Takes up to `batch.len()` events from the front into `batch`, lent to the caller
    /// until [`Queue::settle`]; returns how many.
    fn lend(&mut self, batch: &mut [muserload_event]) -> usize {
        let n = self.len.min(batch.len());
        for (i, event) in batch[..n].iter_mut().enumerate() {
            *event = self.slots[self.slot(i)];
        }
        if n > 0 {
            self.head = self.slot(n);
        }
        // INVARIANT: `len + lent` is unchanged.
        self.len -= n;
        self.lent += n;
        n
    }

    /// Ends a loan of `lent` events, of which `back` (the last ones, in order) were not
    /// delivered: they go back to the front.
    fn settle(&mut self, lent: usize, back: &[muserload_event]) {
        for event in back.iter().rev() {
            // There is room: `lent` slots were kept for this loan and the ones before it.
            self.head = self.head.checked_sub(1).unwrap_or(self.slots.len() - 1);
            self.slots[self.head] = *event;
        }
        // INVARIANT: `back.len() <= lent`: `len + lent` does not grow.
        self.len += back.len();
        self.lent -= lent;
    }
}

/// The fault events of one object.
#[pin_data]
pub(crate) struct EventQueue {
    #[pin]
    queue: Mutex<Queue>,
    /// Signalled when an event is queued or the object is aborted.
    #[pin]
    ready: PollCondVar,
}

impl EventQueue {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            queue <- new_mutex!(Queue::new()),
            ready <- new_poll_condvar!("muserload_events"),
        })
    }

    /// Queues `event`. Called with the faulting page's slot locked, which orders the event
    /// with the page's state; [`Self::notify`] follows once the slot is unlocked.
    pub(crate) fn push(&self, event: muserload_event) -> Result {
        self.queue.lock().push(event)
    }

    /// Wakes one reader, and every poller, for an event [`Self::push`] queued. After the
    /// faulting page's slot is unlocked: a reader woken under it would run its load into
    /// that lock (on another CPU at once) and sleep again. One reader: any number of
    /// resolvers share the queue, and waking them all for one event would send all but one
    /// back to sleep.
    pub(crate) fn notify(&self) {
        self.ready.notify_one();
    }

    /// Wakes readers and pollers (the object was aborted).
    pub(crate) fn wake_readers(&self) {
        self.ready.notify_all();
    }

    fn pending(&self) -> bool {
        self.queue.lock().len > 0
    }

    /// Copies up to `max` events to `buf` (EINVAL for no room), waiting for one unless
    /// `nonblock` (then EAGAIN). Returns how many; 0 (end of file) once the object is aborted
    /// and nothing is queued. A signal while it waits gives ERESTARTSYS. Events it could not
    /// copy stay queued: EFAULT if it copied none.
    pub(crate) fn read(
        &self,
        object: &Object,
        buf: UserPtr,
        max: usize,
        nonblock: bool,
    ) -> Result<usize> {
        let max = max.min(READ_BATCH);
        if max == 0 {
            return Err(EINVAL);
        }
        let mut batch = [muserload_event::default(); READ_BATCH];
        let mut q = self.queue.lock();
        let n = loop {
            let n = q.lend(&mut batch[..max]);
            if n > 0 {
                break n;
            }
            if object.aborted() {
                return Ok(0);
            }
            if nonblock {
                return Err(EAGAIN);
            }
            if self.ready.wait_interruptible(&mut q) {
                // The wakeup this reader took may have been an event's only one
                // ([`Self::notify`]): another reader gets it.
                if q.len > 0 {
                    self.ready.notify_one();
                }
                return Err(ERESTARTSYS);
            }
        };
        drop(q);

        let mut writer = UserSlice::new(buf, n * size_of::<muserload_event>()).writer();
        let copied = batch[..n]
            .iter()
            .take_while(|event| writer.write(*event).is_ok())
            .count();
        self.queue.lock().settle(n, &batch[copied..n]);
        if copied < n {
            // Other readers may be waiting for what went back.
            self.ready.notify_all();
        }
        if copied == 0 {
            return Err(EFAULT);
        }
        Ok(copied)
    }
}

/// The events descriptor's file operations.
// SAFETY: The table is immutable; its pointers are functions, the module and null.
static EVENTS_FOPS: AssertSync<bindings::file_operations> = unsafe {
    AssertSync::new(bindings::file_operations {
        owner: kernel::module::this_module::<crate::LocalModule>().as_ptr(),
        read: Some(events_read),
        poll: Some(events_poll),
        release: Some(events_release),
        llseek: Some(bindings::noop_llseek),
        // SAFETY: All-zero is a valid `file_operations`: every other operation absent.
        ..core::mem::zeroed()
    })
};

/// Creates the events descriptor of `object` with `flags` (`MUSERLOAD_EVENTS_*`, checked
/// by the caller) and returns it.
pub(crate) fn create_fd(object: Arc<Object>, flags: u32) -> Result<i32> {
    // The uapi values are x86's `O_*` bits; other architectures number them otherwise.
    let mut file_flags = bindings::O_RDONLY;
    if flags & MUSERLOAD_EVENTS_NONBLOCK != 0 {
        file_flags |= bindings::O_NONBLOCK;
    }
    if flags & MUSERLOAD_EVENTS_CLOEXEC != 0 {
        file_flags |= bindings::O_CLOEXEC;
    }
    let data = object.into_foreign();
    // SAFETY: `EVENTS_FOPS` is static and its operations expect an `Arc<Object>` in
    // `private_data`.
    let fd = unsafe {
        crate::anon_file::install_fd(c"[muserload-events]", EVENTS_FOPS.get(), data, file_flags)
    };
    if fd.is_err() {
        // SAFETY: The file was not created: the reference is still ours.
        drop(unsafe { <Arc<Object> as ForeignOwnable>::from_foreign(data) });
    }
    fd
}

/// The object of an events descriptor.
///
/// # Safety
///
/// `file` must be an events descriptor that is not being released.
unsafe fn object_of<'a>(file: *mut bindings::file) -> kernel::sync::ArcBorrow<'a, Object> {
    // SAFETY: `create_fd` stored an `Arc<Object>` in `private_data`; it is taken back only
    // in `events_release`, which the caller excludes.
    unsafe { <Arc<Object> as ForeignOwnable>::borrow((*file).private_data) }
}

/// # Safety
///
/// Called by the VFS on an events descriptor, with a user buffer of `count` bytes.
unsafe extern "C" fn events_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    count: usize,
    _ppos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: `read` runs on an open file.
    let object = unsafe { object_of(file) };
    // SAFETY: `file` is valid during `read`.
    let nonblock = unsafe { (*file).f_flags } & bindings::O_NONBLOCK != 0;
    let size = size_of::<muserload_event>();
    match object.events.read(
        &object,
        UserPtr::from_ptr(buf.cast()),
        count / size,
        nonblock,
    ) {
        Ok(n) => (n * size) as isize,
        Err(e) => e.to_errno() as isize,
    }
}

/// # Safety
///
/// Called by the VFS on an events descriptor with a valid poll table (or null).
unsafe extern "C" fn events_poll(
    file: *mut bindings::file,
    wait: *mut bindings::poll_table_struct,
) -> bindings::__poll_t {
    // SAFETY: `poll` runs on an open file.
    let object = unsafe { object_of(file) };
    // SAFETY: The VFS passes a valid poll table for the duration of the call.
    let table = unsafe { PollTable::from_raw(wait) };
    // SAFETY: `file` is valid during `poll`; the poll table machinery holds its own
    // reference on it for as long as the wait entry exists.
    table.register_wait(unsafe { File::from_raw_file(file) }, &object.events.ready);
    let mut mask = 0;
    if object.events.pending() {
        mask |= EPOLLIN | EPOLLRDNORM;
    } else if object.aborted() {
        mask |= EPOLLHUP;
    }
    mask as bindings::__poll_t
}

/// # Safety
///
/// Called by the VFS once, when the last reference on an events descriptor goes.
unsafe extern "C" fn events_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: This is the release of the file: the reference stored by `create_fd` is ours.
    let object = unsafe { <Arc<Object> as ForeignOwnable>::from_foreign((*file).private_data) };
    // The resolver is gone: nobody will load what the waiters wait for.
    object.abort();
    0
}
