// SPDX-License-Identifier: GPL-2.0

//! Long loops in system calls: a place to give the CPU away, and to stop when killed.
//!
//! The kernel the module runs on may be built without preemption: a loop over every page of
//! a large object (`MUSERLOAD_IOC_SETUP` of terabytes fills billions of slots) must call
//! `cond_resched()` now and then, or the soft-lockup detector fires, and must end when its
//! caller is killed, or the kill waits for it. Reached through `sched_shim.c`.

use kernel::{ffi::c_int, prelude::*};

extern "C" {
    fn muserload_cond_resched_fatal() -> c_int;
}

/// How many iterations a loop may run between two calls of [`checkpoint`].
pub(crate) const CHECKPOINT_EVERY: usize = 1 << 16;

/// Gives the CPU to another task that wants it; `EINTR` if the caller was killed.
pub(crate) fn checkpoint() -> Result {
    // SAFETY: Called from a system call in process context, with no lock held (the callers
    // hold only sleeping locks, which `cond_resched()` may sleep under).
    if unsafe { muserload_cond_resched_fatal() } != 0 {
        return Err(EINTR);
    }
    Ok(())
}
