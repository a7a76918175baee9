//! Queue mode's events descriptor.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;

use crate::{
    uapi::{muserload_event, MUSERLOAD_EVENT_KERNEL, MUSERLOAD_EVENT_WRITE, MUSERLOAD_READ_MAX},
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

/// Converts the raw events the module wrote into `out`; returns how many.
pub(crate) fn convert(raw: &[muserload_event], out: &mut [Event]) -> usize {
    for (out, event) in out.iter_mut().zip(raw) {
        *out = Event::from(*event);
    }
    raw.len().min(out.len())
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
    /// returns how many, at most [`crate::READ_MAX`]. 0 means the object was aborted.
    pub fn read(&self, buf: &mut [Event]) -> Result<usize> {
        let mut raw = [muserload_event::default(); MUSERLOAD_READ_MAX as usize];
        let raw = &mut raw[..buf.len().min(MUSERLOAD_READ_MAX as usize)];
        let size = std::mem::size_of::<muserload_event>();
        // SAFETY: `raw` is `raw.len() * size` writable bytes, and the module writes whole
        // records of that type into it.
        let n = unsafe {
            nix::libc::read(
                self.fd.as_raw_fd(),
                raw.as_mut_ptr().cast(),
                std::mem::size_of_val(raw),
            )
        };
        if n < 0 {
            return Err(Error::Ioctl {
                op: "read events",
                errno: Errno::last(),
            });
        }
        Ok(convert(&raw[..n as usize / size], buf))
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
