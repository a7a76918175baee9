//! Signal mode's userspace half: an `SA_SIGINFO` handler that hands each fault's address
//! to a callback, which loads the page.
//!
//! The callback runs in the faulting thread's signal handler. It must be
//! async-signal-safe: it may call the loads of [`crate::Object`] on an object and mapping
//! it can reach without locking (they are single `ioctl`s and allocate nothing, except
//! [`crate::Object::load_move_vectored`], which allocates and so must not be used there),
//! write to memory it owns, and use atomics; it must not allocate, take a lock, or print.
//! When it returns, the faulting access is retried.

use std::sync::atomic::{AtomicUsize, Ordering};

use nix::{
    errno::Errno,
    libc,
    sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal},
};

use crate::{Error, Result};

/// One callback per signal number.
static CALLBACKS: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];

/// A fault callback: receives the faulting address.
pub type FaultCallback = fn(u64);

extern "C" fn trampoline(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let Some(slot) = usize::try_from(signal).ok().and_then(|s| CALLBACKS.get(s)) else {
        return;
    };
    let raw = slot.load(Ordering::Acquire);
    if raw == 0 || info.is_null() {
        return;
    }
    // SAFETY: `raw` was stored from a `FaultCallback` by `install`; function pointers
    // round-trip through `usize`.
    let callback: FaultCallback = unsafe { std::mem::transmute::<usize, FaultCallback>(raw) };
    // SAFETY: The kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler.
    let address = unsafe { (*info).si_addr() } as u64;
    callback(address);
}

/// Installs `callback` as the handler of `signal` for the whole process, for objects
/// armed with [`crate::FaultMode::Signal`]`(signal)`.
pub fn install(signal: Signal, callback: FaultCallback) -> Result<()> {
    let index = signal as usize;
    let slot = CALLBACKS.get(index).ok_or(Error::Ioctl {
        op: "sigaction",
        errno: Errno::EINVAL,
    })?;
    slot.store(callback as usize, Ordering::Release);
    let action = SigAction::new(
        SigHandler::SigAction(trampoline),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: `trampoline` is async-signal-safe as long as the callback is, which the
    // caller is told above.
    unsafe { sigaction(signal, &action) }.map_err(|errno| Error::Ioctl {
        op: "sigaction",
        errno,
    })?;
    Ok(())
}
