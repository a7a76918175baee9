// SPDX-License-Identifier: GPL-2.0

//! Queue mode: fault events, and the events descriptor they are read from.
//!
//! Each page armed in queue mode produces one event the first time a thread waits for it
//! (the page's `STATE_REPORTED` bit), however many threads then wait. The resolver reads
//! fixed-size `struct muserload_event` records with `read()`, and waits for them with
//! `poll()`/`epoll`. Closing the descriptor is the resolver going away: the object is
//! aborted, so no fault waits for a load that will never come.
//!
//! The descriptor is an anonymous-inode file whose `private_data` is a reference on the
//! object; the kernel crate has no `poll` for misc devices, so its file operations are here.
//!
//! # Locking
//!
//! `queue` is taken inside `Object::pages` by the fault path (to queue an event) and alone
//! by readers. A reader copies events out without holding it (the copy may fault on this
//! very object), under `reader`, which keeps other readers away, and only then removes what
//! it copied: an event whose copy fails stays queued.

use crate::{
    object::Object,
    sync_table::AssertSync,
    uapi::{
        muserload_event,
        MUSERLOAD_EVENTS_NONBLOCK,
        MUSERLOAD_READ_MAX, //
    },
};
use kernel::{
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

/// Queued events: `events[head..]` are unread.
struct Queue {
    events: KVVec<muserload_event>,
    head: usize,
}

/// The fault events of one object.
#[pin_data]
pub(crate) struct EventQueue {
    #[pin]
    queue: Mutex<Queue>,
    /// Signalled when an event is queued or the object is aborted.
    #[pin]
    ready: PollCondVar,
    /// Serialises readers, see the locking rules at the top of this file.
    #[pin]
    reader: Mutex<()>,
}

impl EventQueue {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            queue <- new_mutex!(Queue {
                events: KVVec::new(),
                head: 0,
            }),
            ready <- new_poll_condvar!("muserload_events"),
            reader <- new_mutex!(()),
        })
    }

    /// Queues `event` and wakes readers. Called with `Object::pages` held.
    pub(crate) fn push(&self, event: muserload_event) -> Result {
        let mut q = self.queue.lock();
        if q.head == q.events.len() {
            q.events.clear();
            q.head = 0;
        } else if q.head > 0 && q.head * 2 >= q.events.len() {
            // Reclaim the read half, so the queue stays as long as what is unread.
            let head = q.head;
            let len = q.events.len();
            q.events.copy_within(head..len, 0);
            q.events.truncate(len - head);
            q.head = 0;
        }
        q.events.push(event, GFP_KERNEL)?;
        drop(q);
        self.ready.notify_all();
        Ok(())
    }

    /// Wakes readers and pollers (the object was aborted).
    pub(crate) fn wake_readers(&self) {
        self.ready.notify_all();
    }

    fn pending(&self) -> bool {
        let q = self.queue.lock();
        q.head < q.events.len()
    }

    /// Copies up to `max` events to `buf` (EINVAL for no room), waiting for one unless
    /// `nonblock` (then EAGAIN). Returns how many; 0 (end of file) once the object is aborted
    /// and nothing is queued. A signal while it waits gives ERESTARTSYS.
    pub(crate) fn read(
        &self,
        object: &Object,
        buf: UserPtr,
        max: usize,
        nonblock: bool,
    ) -> Result<usize> {
        let size = size_of::<muserload_event>();
        let max = max.min(READ_BATCH);
        if max == 0 {
            return Err(EINVAL);
        }
        let _reader = self.reader.lock();
        let mut batch = [muserload_event::default(); READ_BATCH];
        let mut q = self.queue.lock();
        while q.head == q.events.len() {
            if object.aborted() {
                return Ok(0);
            }
            if nonblock {
                return Err(EAGAIN);
            }
            if self.ready.wait_interruptible(&mut q) {
                return Err(ERESTARTSYS);
            }
        }
        let n = (q.events.len() - q.head).min(max);
        batch[..n].copy_from_slice(&q.events[q.head..q.head + n]);
        drop(q);

        let mut writer = UserSlice::new(buf, n * size).writer();
        for event in &batch[..n] {
            writer.write(event)?;
        }
        // Only readers remove events, and `reader` is held: the first `n` are still these.
        self.queue.lock().head += n;
        Ok(n)
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

/// Creates the events descriptor of `object` and returns it.
pub(crate) fn create_fd(object: Arc<Object>, flags: u32) -> Result<i32> {
    let data = object.into_foreign();
    // SAFETY: `EVENTS_FOPS` is static and its operations expect an `Arc<Object>` in
    // `private_data`.
    let fd = unsafe {
        crate::anon_file::install_fd(
            c"[muserload-events]",
            EVENTS_FOPS.get(),
            data,
            flags | bindings::O_RDONLY,
        )
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
    let nonblock = unsafe { (*file).f_flags } & MUSERLOAD_EVENTS_NONBLOCK != 0;
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
