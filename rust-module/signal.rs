// SPDX-License-Identifier: GPL-2.0

//! Signal mode: the proposal's signal to the faulting thread, with the faulting address.
//!
//! The kernel crate cannot send signals, and `force_sig_fault()` is not exported, so this
//! file fills a `kernel_siginfo` by hand and calls `send_sig_info()`. Unlike
//! `force_sig_fault()`, `send_sig_info()` does not unblock or un-ignore the signal: a thread
//! that blocks or ignores it would re-fault forever, so such a fault gets SIGBUS instead.

use crate::uapi::MUSERLOAD_SI_CODE;
use kernel::{
    bindings,
    ffi::c_int,
    prelude::*, //
};

/// The highest signal number (`_NSIG`, `SIGRTMAX`).
const SIGRTMAX: u32 = bindings::_NSIG;

/// Checks a signal number given to `MUSERLOAD_IOC_ARM`: 1 to `SIGRTMAX`, but not SIGKILL or
/// SIGSTOP, which no handler can catch.
pub(crate) fn check(signal: u32) -> Result {
    match signal {
        bindings::SIGKILL | bindings::SIGSTOP => Err(EINVAL),
        1..=SIGRTMAX => Ok(()),
        _ => Err(EINVAL),
    }
}

/// Whether the current thread would run a handler for `signal`: it neither blocks it nor
/// ignores it (explicitly, or by default as SIGCHLD, SIGURG and SIGWINCH are).
///
/// Read without `siglock`: a change racing with the fault only decides whether this fault
/// gets the signal or SIGBUS, as if it had happened just before or after.
fn deliverable(signal: u32) -> bool {
    let bit = 1u64 << (signal - 1);
    // SAFETY: `current` is a valid task for the duration of the fault; its `blocked` mask and
    // `sighand` are only read.
    unsafe {
        let task = bindings::get_current();
        if (*task).blocked.sig[0] as u64 & bit != 0 {
            return false;
        }
        let action = &(*(*task).sighand).action[(signal - 1) as usize];
        match action.sa.sa_handler.map(|h| h as usize) {
            // SIG_IGN.
            Some(1) => false,
            // SIG_DFL.
            None => !matches!(
                signal,
                bindings::SIGCHLD | bindings::SIGURG | bindings::SIGWINCH
            ),
            Some(_) => true,
        }
    }
}

/// Queues `signal` for the current thread with `si_addr` = `address` and `si_code` =
/// `MUSERLOAD_SI_CODE`. Fails if the thread blocks or ignores it.
pub(crate) fn send_fault_signal(signal: u32, address: u64) -> Result {
    if !deliverable(signal) {
        return Err(EINVAL);
    }
    // SAFETY: All-zero is a valid `kernel_siginfo`.
    let mut info: bindings::kernel_siginfo = unsafe { core::mem::zeroed() };
    info.__bindgen_anon_1.si_signo = signal as c_int;
    info.__bindgen_anon_1.si_code = MUSERLOAD_SI_CODE as c_int;
    info.__bindgen_anon_1._sifields._sigfault._addr = address as usize as *mut _;
    // SAFETY: `info` is a valid siginfo and `current` a valid task.
    let ret =
        unsafe { bindings::send_sig_info(signal as c_int, &mut info, bindings::get_current()) };
    if ret != 0 {
        return Err(Error::from_errno(ret));
    }
    Ok(())
}
