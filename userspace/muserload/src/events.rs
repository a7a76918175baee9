//! Queue mode's events descriptor.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::{
    uapi::{muserload_event, MUSERLOAD_EVENT_KERNEL, MUSERLOAD_EVENT_WRITE},
    Error, Result,
};

/// A page a thread waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The first waiter's faulting address, page aligned.
    pub address: u64,
    /// The page's byte offset in guest memory.
    pub offset: u64,
    /// The first waiter's thread id.
    pub tid: u32,
    /// The access was a write.
    pub write: bool,
    /// The kernel touched the page for the thread (a system call's copy, `KVM_RUN`).
    pub kernel: bool,
}

impl From<muserload_event> for Event {
    fn from(raw: muserload_event) -> Self {
        Self {
            address: raw.address,
            offset: raw.offset,
            tid: raw.tid,
            write: raw.flags & MUSERLOAD_EVENT_WRITE != 0,
            kernel: raw.flags & MUSERLOAD_EVENT_KERNEL != 0,
        }
    }
}

/// The events descriptor of an object: read events, or wait for them with `poll`/`epoll`
/// on its descriptor. Dropping it is the resolver going away: the object is aborted.
#[derive(Debug)]
pub struct Events {
    fd: OwnedFd,
}

impl Events {
    pub(crate) fn from_owned(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Reads events into `buf` (waiting for one unless the descriptor is non-blocking);
    /// returns how many. 0 means the object was aborted.
    pub fn read(&self, buf: &mut [Event]) -> Result<usize> {
        let mut raw = vec![muserload_event::default(); buf.len()];
        let size = std::mem::size_of::<muserload_event>();
        // SAFETY: `raw` is `raw.len() * size` writable bytes, and the module writes whole
        // records of that type into it.
        let n = unsafe {
            nix::libc::read(
                self.fd.as_raw_fd(),
                raw.as_mut_ptr().cast(),
                raw.len() * size,
            )
        };
        if n < 0 {
            return Err(Error::Ioctl {
                op: "read events",
                errno: Errno::last(),
            });
        }
        let count = n as usize / size;
        for (out, event) in buf.iter_mut().zip(&raw[..count]) {
            *out = Event::from(*event);
        }
        Ok(count)
    }
}

impl AsFd for Events {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
