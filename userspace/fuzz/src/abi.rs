//! The raw ABI (the `muserload` crate's bindgen of `include/uapi/linux/muserload.h`) and raw
//! ioctls: unlike the `muserload` crate's safe types, which refuse bad arguments before the
//! kernel sees them, the fuzzer must hand the module whatever it likes.

#![allow(
    missing_docs,
    clippy::unnecessary_cast,
    reason = "request codes are named after the header's commands, documented there; they \
              are `c_int` with musl and `c_ulong` with glibc"
)]

pub use muserload::uapi::*;

use std::os::fd::RawFd;

/// The request codes, which bindgen cannot expand from the header's `_IOWR()` macros.
pub const IOC_API: u64 = nix::request_code_readwrite!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_API,
    size_of::<muserload_api>()
) as u64;
pub const IOC_SETUP: u64 = nix::request_code_write!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_SETUP,
    size_of::<muserload_setup>()
) as u64;
pub const IOC_ARM: u64 = nix::request_code_write!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_ARM,
    size_of::<muserload_arm>()
) as u64;
pub const IOC_LOAD: u64 = nix::request_code_readwrite!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_LOAD,
    size_of::<muserload_load>()
) as u64;
pub const IOC_LOADV: u64 = nix::request_code_readwrite!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_LOADV,
    size_of::<muserload_loadv>()
) as u64;
pub const IOC_EVENTS: u64 = nix::request_code_none!(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_EVENTS) as u64;
pub const IOC_ABORT: u64 = nix::request_code_none!(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_ABORT) as u64;
pub const IOC_STATS: u64 = nix::request_code_read!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_STATS,
    size_of::<muserload_stats>()
) as u64;

pub const IOC_RESOLVE: u64 = nix::request_code_readwrite!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_RESOLVE,
    size_of::<muserload_resolve>()
) as u64;

/// Every command number the header defines.
const KNOWN: [u32; 9] = [
    _MUSERLOAD_API,
    _MUSERLOAD_SETUP,
    _MUSERLOAD_ARM,
    _MUSERLOAD_LOAD,
    _MUSERLOAD_LOADV,
    _MUSERLOAD_EVENTS,
    _MUSERLOAD_ABORT,
    _MUSERLOAD_STATS,
    _MUSERLOAD_RESOLVE,
];

/// A command number the module does not know: one past the header's last.
const UNKNOWN: u32 = _MUSERLOAD_RESOLVE + 1;

// A known number would make the "unknown ioctl" case call that command (with a bogus
// argument) instead of checking ENOTTY: 0x08 was RESOLVE's before the fuzzer knew it.
const _: () = {
    let mut i = 0;
    while i < KNOWN.len() {
        assert!(
            KNOWN[i] != UNKNOWN,
            "IOC_UNKNOWN has a known command number"
        );
        i += 1;
    }
};

/// A request code the module does not know.
pub const IOC_UNKNOWN: u64 = nix::request_code_none!(MUSERLOAD_IOCTL_BASE, UNKNOWN) as u64;

/// The errno of the last failed call of this thread.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ioctl(fd, cmd, arg)`: the return value, or the errno.
///
/// Async-signal-safe: the signal handler loads with it.
///
/// # Safety
///
/// If `cmd` makes the kernel write through `arg`, `arg` must be the address of a live value
/// of the type the command writes, or an address that is not mapped at all (the kernel then
/// fails with `EFAULT`): never memory the program uses for something else.
pub unsafe fn ioctl(fd: RawFd, cmd: u64, arg: usize) -> Result<i32, i32> {
    // SAFETY: The caller vouches for what the kernel may write through `arg`.
    let ret = unsafe { libc::ioctl(fd, cmd as libc::Ioctl, arg) };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// `MUSERLOAD_IOC_LOAD` of `load`, which gets `loaded` back: Ok, or the errno.
pub fn load(fd: RawFd, load: &mut muserload_load) -> Result<(), i32> {
    // SAFETY: `load` is a live `struct muserload_load`, which the command reads and writes.
    unsafe { ioctl(fd, IOC_LOAD, load as *mut _ as usize) }.map(drop)
}

/// `MUSERLOAD_IOC_LOADV` of `loadv`, whose `vec` the caller keeps alive: Ok, or the errno.
pub fn loadv(fd: RawFd, loadv: &mut muserload_loadv) -> Result<(), i32> {
    // SAFETY: `loadv` is a live `struct muserload_loadv`, which the command reads and
    // writes; it only reads `vec`.
    unsafe { ioctl(fd, IOC_LOADV, loadv as *mut _ as usize) }.map(drop)
}

/// `MUSERLOAD_IOC_RESOLVE` of `req`, whose `load.vec` the caller keeps alive, with room for
/// `events.len()` events in `events` (which the call sets in `req`): Ok, or the errno.
pub fn resolve(
    fd: RawFd,
    req: &mut muserload_resolve,
    events: &mut [muserload_event],
) -> Result<(), i32> {
    req.events = events.as_mut_ptr() as u64;
    req.nr_events = events.len().min(u32::MAX as usize) as u32;
    // SAFETY: `req` is a live `struct muserload_resolve`, which the command reads and writes;
    // it only reads `load.vec`, and writes at most `nr_events` records to `events`, which
    // has room for them.
    unsafe { ioctl(fd, IOC_RESOLVE, req as *mut _ as usize) }.map(drop)
}

/// `MUSERLOAD_IOC_ARM`.
pub fn arm(fd: RawFd, arm: &muserload_arm) -> Result<(), i32> {
    // SAFETY: The command only reads `arm`.
    unsafe { ioctl(fd, IOC_ARM, arm as *const _ as usize) }.map(drop)
}

/// `MUSERLOAD_IOC_SETUP`.
pub fn setup(fd: RawFd, setup: &muserload_setup) -> Result<(), i32> {
    // SAFETY: The command only reads `setup`.
    unsafe { ioctl(fd, IOC_SETUP, setup as *const _ as usize) }.map(drop)
}

/// `MUSERLOAD_IOC_STATS`.
pub fn stats(fd: RawFd) -> Result<muserload_stats, i32> {
    let mut stats = muserload_stats::default();
    // SAFETY: `stats` is a live `struct muserload_stats`, which the command writes.
    unsafe { ioctl(fd, IOC_STATS, &mut stats as *mut _ as usize) }.map(|_| stats)
}

/// `MUSERLOAD_IOC_API` asking for version `api`: the module's answer, and Ok or the errno.
pub fn handshake(fd: RawFd, api: u64, features: u64) -> (muserload_api, Result<(), i32>) {
    let mut raw = muserload_api { api, features };
    // SAFETY: `raw` is a live `struct muserload_api`, which the command reads and writes.
    let ret = unsafe { ioctl(fd, IOC_API, &mut raw as *mut _ as usize) }.map(drop);
    (raw, ret)
}

/// A command that takes a plain number (`EVENTS`, `ABORT`, unknown ones).
pub fn ioctl_value(fd: RawFd, cmd: u64, value: usize) -> Result<i32, i32> {
    // SAFETY: The callers pass commands that do not write through their argument (EVENTS,
    // ABORT) or that the module does not know (ENOTTY before it looks at the argument).
    unsafe { ioctl(fd, cmd, value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel sees the low 32 bits (musl's codes are `c_int`, sign-extended here).
    #[test]
    fn request_codes_as_the_kernel_builds_them() {
        // _IOWR(0xBD, 0x08, struct muserload_resolve): read and write, 48 bytes.
        assert_eq!(size_of::<muserload_resolve>(), 48);
        assert_eq!(IOC_RESOLVE as u32, 0xc030_bd08);
        // _IO(0xBD, 0x09).
        assert_eq!(IOC_UNKNOWN as u32, 0xbd09);
    }
}
