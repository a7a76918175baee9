//! The userfaultfd baseline: the few ioctls the benchmark compares muserload against.
//!
//! The structs mirror `include/uapi/linux/userfaultfd.h` of the 7.3 kernel the guest runs
//! (Debian 12's own headers predate `UFFDIO_MOVE`); the ABI is stable.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use nix::{errno::Errno, libc};

use crate::{Error, Result};

const UFFD_API: u64 = 0xaa;
const UFFDIO: u8 = 0xaa;
/// `UFFD_FEATURE_SIGBUS`: a fault gets SIGBUS instead of an event.
pub const FEATURE_SIGBUS: u64 = 1 << 7;
/// `UFFD_FEATURE_MOVE`: `UFFDIO_MOVE` exists.
pub const FEATURE_MOVE: u64 = 1 << 16;
const REGISTER_MODE_MISSING: u64 = 1;
const EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy` and `struct uffdio_move` share this layout.
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` (packed, 32 bytes: an 8-byte header and a 24-byte union), only as far
/// as page faults need.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

nix::ioctl_readwrite!(uffdio_api, UFFDIO, 0x3f, UffdioApi);
nix::ioctl_readwrite!(uffdio_register, UFFDIO, 0x00, UffdioRegister);
nix::ioctl_read!(uffdio_unregister, UFFDIO, 0x01, UffdioRange);
nix::ioctl_readwrite!(uffdio_copy, UFFDIO, 0x03, UffdioCopy);
nix::ioctl_readwrite!(uffdio_zeropage, UFFDIO, 0x04, UffdioZeropage);
nix::ioctl_readwrite!(uffdio_move, UFFDIO, 0x05, UffdioCopy);

/// A userfaultfd.
pub struct Userfaultfd {
    fd: OwnedFd,
}

fn check(op: &'static str, ret: nix::Result<i32>) -> Result<()> {
    ret.map(|_| ()).map_err(|errno| Error::Uffd { op, errno })
}

impl Userfaultfd {
    /// Opens a userfaultfd with `features`.
    pub fn new(features: u64) -> Result<Self> {
        // SAFETY: The syscall takes flags only and returns a new descriptor or -1.
        // Non-blocking: poll() never promises that read() will not block, since a fault
        // may be woken before it is read (a nested VM's reader blocked in read() so).
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Uffd {
                op: "userfaultfd",
                errno: Errno::last(),
            });
        }
        // SAFETY: A new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: `api` is a valid `struct uffdio_api`.
        check("UFFDIO_API", unsafe {
            uffdio_api(fd.as_raw_fd(), &mut api)
        })?;
        Ok(Self { fd })
    }

    /// Registers `[start, start + len)` for missing-page faults.
    pub fn register(&self, start: u64, len: u64) -> Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: `reg` is a valid `struct uffdio_register`.
        check("UFFDIO_REGISTER", unsafe {
            uffdio_register(self.fd.as_raw_fd(), &mut reg)
        })
    }

    /// Unregisters `[start, start + len)`: waiting faults then map zero pages.
    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut range = UffdioRange { start, len };
        // SAFETY: `range` is a valid `struct uffdio_range`.
        check("UFFDIO_UNREGISTER", unsafe {
            uffdio_unregister(self.fd.as_raw_fd(), &mut range)
        })
    }

    /// `UFFDIO_COPY` of `len` bytes from `src` to `dst`.
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<()> {
        let mut c = UffdioCopy {
            dst,
            src,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: `c` is a valid `struct uffdio_copy`; the kernel checks the addresses.
        check("UFFDIO_COPY", unsafe {
            uffdio_copy(self.fd.as_raw_fd(), &mut c)
        })
    }

    /// `UFFDIO_MOVE` of `len` bytes of anonymous memory from `src` to `dst`.
    pub fn move_pages(&self, dst: u64, src: u64, len: u64) -> Result<()> {
        let mut m = UffdioCopy {
            dst,
            src,
            len,
            mode: 0,
            copy: 0,
        };
        // SAFETY: `m` is a valid `struct uffdio_move`; the kernel checks the addresses.
        check("UFFDIO_MOVE", unsafe {
            uffdio_move(self.fd.as_raw_fd(), &mut m)
        })
    }

    /// `UFFDIO_ZEROPAGE` of `[start, start + len)`.
    pub fn zeropage(&self, start: u64, len: u64) -> Result<()> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: `z` is a valid `struct uffdio_zeropage`.
        check("UFFDIO_ZEROPAGE", unsafe {
            uffdio_zeropage(self.fd.as_raw_fd(), &mut z)
        })
    }

    /// Waits with `poll` for faults (at most `within`, if given) and reads up to
    /// `out.len()` of them (at most 16) into `out` as faulting addresses; returns how many
    /// (0 if none came `within`, or the one that came was woken before it was read).
    pub fn next_faults(&self, out: &mut [u64], within: Option<Duration>) -> Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = within.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: One valid `pollfd`.
        match unsafe { libc::poll(&mut pfd, 1, timeout) } {
            0 => return Ok(0),
            n if n < 0 => {
                return Err(Error::Uffd {
                    op: "poll",
                    errno: Errno::last(),
                })
            }
            _ => {}
        }
        let mut msgs = [UffdMsg::default(); 16];
        let size = std::mem::size_of::<UffdMsg>();
        let want = out.len().min(msgs.len());
        // SAFETY: `msgs` has room for `want` messages.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msgs.as_mut_ptr().cast(), want * size) };
        if n < 0 && Errno::last() == Errno::EAGAIN {
            return Ok(0);
        }
        if n <= 0 || n as usize % size != 0 {
            return Err(Error::Uffd {
                op: "read",
                errno: Errno::last(),
            });
        }
        let count = n as usize / size;
        for (slot, msg) in out.iter_mut().zip(&msgs[..count]) {
            if msg.event != EVENT_PAGEFAULT {
                return Err(Error::Uffd {
                    op: "read",
                    errno: Errno::EPROTO,
                });
            }
            *slot = msg.address;
        }
        Ok(count)
    }
}
