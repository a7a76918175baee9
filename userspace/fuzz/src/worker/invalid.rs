//! Calls the module must refuse: a load of an unknown kind or with an unknown flag, not
//! page aligned, of length 0, wrapping around, in the wrong region, from or to memory it
//! cannot use, or with an unreadable argument; a LOADV with a bad count or an unreadable
//! vector; an arm with a bad signal, flags or range; an unknown ioctl; a second SETUP or
//! EVENTS; a private mapping.
//!
//! Checked here: each fails with the errno `Documentation/muserload.rst` gives it (or
//! ENOMEM while allocations may fail), and a refused load says it loaded no page. None is
//! logged for the shadow model: they must change nothing.

use crate::{
    abi::{self, muserload_arm, muserload_load, muserload_loadv, muserload_setup},
    shared::PAGE,
    sys,
};

use super::Worker;

impl Worker<'_> {
    /// A call with an invalid argument: it must fail with the documented errno and change
    /// nothing.
    pub(super) fn invalid(&mut self) {
        let fd = self.round.fd;
        let guest = self.round.guest;
        let hole = self.process.hole;
        let valid_src = [0u64; PAGE / 8];
        let src = valid_src.as_ptr() as usize;
        let load = |dst: usize, src: usize, len: u64, mode: u32| {
            let mut l = muserload_load {
                dst: dst as u64,
                src: src as u64,
                len,
                mode: u64::from(mode),
                loaded: 0,
            };
            let r = abi::load(fd, &mut l);
            if r.is_err() && l.loaded != 0 {
                return Err(-1);
            }
            r
        };
        let copy = abi::MUSERLOAD_LOAD_COPY;
        let zero = abi::MUSERLOAD_LOAD_ZERO;
        let page = PAGE as u64;
        match self.rng.below(24) {
            0 => self.check_errno("LOAD kind 0", load(guest, 0, page, 0), libc::EINVAL),
            1 => self.check_errno("LOAD kind 5", load(guest, 0, page, 5), libc::EINVAL),
            2 => self.check_errno(
                "LOAD unknown flag",
                load(guest, 0, page, zero | 1 << 9),
                libc::EINVAL,
            ),
            3 => {
                let off = self.rng.range(1, PAGE - 1);
                self.check_errno(
                    "COPY to a misaligned dst",
                    load(guest + off, src, page, copy),
                    libc::EINVAL,
                )
            }
            4 => self.check_errno("COPY of length 0", load(guest, src, 0, copy), libc::EINVAL),
            5 => {
                let len = page + self.rng.range(1, PAGE - 1) as u64;
                self.check_errno(
                    "COPY of a misaligned length",
                    load(guest, src, len, copy),
                    libc::EINVAL,
                )
            }
            6 => self.check_errno(
                "ZERO into staging",
                load(self.round.staging, 0, page, zero),
                libc::EINVAL,
            ),
            7 => self.check_errno(
                "MOVE from guest memory",
                load(guest, guest + page as usize, page, abi::MUSERLOAD_LOAD_MOVE),
                libc::EINVAL,
            ),
            8 => self.check_errno(
                "ZERO with a src",
                load(guest, src, page, zero),
                libc::EINVAL,
            ),
            9 => self.check_errno(
                "WAKE with a src",
                load(guest, src, page, abi::MUSERLOAD_LOAD_WAKE),
                libc::EINVAL,
            ),
            10 => self.check_errno(
                "ZERO to unmapped memory",
                load(hole, 0, page, zero),
                libc::EFAULT,
            ),
            11 => self.check_errno(
                "ZERO to another object",
                load(self.process.other, 0, page, zero),
                libc::EFAULT,
            ),
            12 => self.check_errno(
                "COPY from unreadable memory",
                load(guest, hole, page, copy),
                libc::EFAULT,
            ),
            13 => {
                let len = (u64::MAX - guest as u64 + 1) & !(page - 1);
                self.check_errno(
                    "COPY of a wrapping range",
                    load(guest, src, len, copy),
                    libc::EINVAL,
                )
            }
            14 => {
                // SAFETY: `hole` is mapped PROT_NONE: the kernel can neither read nor write it.
                let r = unsafe { abi::ioctl(fd, abi::IOC_LOAD, hole) }.map(drop);
                self.check_errno("LOAD of an unreadable struct", r, libc::EFAULT)
            }
            15 => {
                let count = if self.rng.one_in(2) {
                    0
                } else {
                    u64::from(abi::MUSERLOAD_LOADV_MAX) + 1
                };
                let mut v = muserload_loadv {
                    vec: src as u64,
                    count,
                    mode: u64::from(zero),
                    loaded: 0,
                };
                self.check_errno("LOADV count", abi::loadv(fd, &mut v), libc::EINVAL)
            }
            16 => {
                let mut v = muserload_loadv {
                    vec: hole as u64,
                    count: 2,
                    mode: u64::from(zero),
                    loaded: 0,
                };
                self.check_errno(
                    "LOADV of an unreadable vector",
                    abi::loadv(fd, &mut v),
                    libc::EFAULT,
                )
            }
            17 => {
                let signal = [libc::SIGKILL, libc::SIGSTOP, 65, 1000][self.rng.below(4)];
                let arm = muserload_arm {
                    start: guest as u64,
                    len: page,
                    signal: signal as u32,
                    flags: 0,
                };
                self.check_errno("ARM with a bad signal", abi::arm(fd, &arm), libc::EINVAL)
            }
            18 => {
                // KERNEL_WAITS is for signal mode only; the other bits are unknown.
                let (signal, flags) = if self.rng.one_in(2) {
                    (0, abi::MUSERLOAD_ARM_KERNEL_WAITS)
                } else {
                    (self.round.signals[0], !abi::MUSERLOAD_ARM_KERNEL_WAITS)
                };
                let arm = muserload_arm {
                    start: guest as u64,
                    len: page,
                    signal: signal as u32,
                    flags,
                };
                self.check_errno("ARM with flags", abi::arm(fd, &arm), libc::EINVAL)
            }
            19 => {
                let arm = muserload_arm {
                    start: guest as u64,
                    len: ((self.round.pages + 1) * PAGE) as u64,
                    signal: 0,
                    flags: 0,
                };
                self.check_errno("ARM past the mapping", abi::arm(fd, &arm), libc::EFAULT)
            }
            20 => self.check_errno(
                "an unknown ioctl",
                abi::ioctl_value(fd, abi::IOC_UNKNOWN, 0).map(drop),
                libc::ENOTTY,
            ),
            21 => {
                let setup = muserload_setup {
                    size: page,
                    staging_size: 0,
                    flags: 0,
                };
                self.check_errno("a second SETUP", abi::setup(fd, &setup), libc::EBUSY)
            }
            22 => {
                let r = abi::ioctl_value(fd, abi::IOC_EVENTS, 0).map(drop);
                self.check_errno("a second EVENTS", r, libc::EBUSY)
            }
            _ => {
                let r = sys::mmap(PAGE, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0).map(drop);
                self.check_errno("a private mapping", r, libc::EINVAL)
            }
        }
    }

    /// Checks that call `what` failed with `expected`, or with ENOMEM while allocations may
    /// fail.
    fn check_errno(&self, what: &str, got: Result<(), i32>, expected: i32) {
        match got {
            Err(e) if e == expected => {}
            Err(libc::ENOMEM) if self.allowed(libc::ENOMEM, &[]) => {}
            other => self.fail(format_args!(
                "{what}: got {other:?}, expected errno {expected}"
            )),
        }
    }
}
