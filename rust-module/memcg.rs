// SPDX-License-Identifier: GPL-2.0

//! The memory cgroup an object charges its pages to.
//!
//! Pages an object allocates in its user's system calls and faults are charged to that
//! task's memory cgroup (`__GFP_ACCOUNT`). Pages a kernel worker allocates on the object's
//! behalf (the page pool's refills) would be charged to no one: the worker charges them to
//! the cgroup of the task that opened the object instead. The inline C helpers this needs
//! are in `memcg_shim.c`.
//!
//! The module's allocations of pages and page arrays are here too, with the flags that
//! charge them.
//!
//! What happens past the cgroup's `memory.max` depends on who asked: a fault that needs a
//! page (a touch of an empty page) runs the cgroup's OOM killer, as anonymous memory does;
//! a system call (setup, a load) and background work get ENOMEM instead
//! ([`charged_may_fail`]), so that a limit fails a load rather than killing the VMM.

use crate::sched;
use core::{ffi::c_void, marker::PhantomData};
use kernel::{
    alloc::{
        flags::{
            __GFP_NOWARN,
            __GFP_ZERO, //
            GFP_KERNEL_ACCOUNT,
        },
        Flags,
    },
    bindings,
    page::Page,
    prelude::*,
};

/// Allocation flags of memory a system call or background work allocates: charged to the
/// memory cgroup, and failing with ENOMEM past its limit instead of running its OOM
/// killer (`__GFP_RETRY_MAYFAIL`).
pub(crate) fn charged_may_fail() -> Flags {
    GFP_KERNEL_ACCOUNT | retry_may_fail()
}

/// A new zeroed page for a fault, charged to the current task's memory cgroup (past its
/// limit, the cgroup's OOM killer runs, as for anonymous memory).
pub(crate) fn zeroed_page() -> Result<Page> {
    Ok(Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?)
}

/// A new zeroed page for a system call or background work, charged to the current (or
/// active) memory cgroup; past its limit, ENOMEM.
pub(crate) fn zeroed_page_may_fail() -> Result<Page> {
    Ok(Page::alloc_page(charged_may_fail() | __GFP_ZERO)?)
}

/// A guest page array of `n` slots made by `slot`: 12 bytes of bookkeeping per guest page
/// in all, so up to 48 GiB for the largest object the ABI allows (`MUSERLOAD_STAGING_OFFSET`
/// bytes). vmalloc'ed (kvmalloc refuses more than `INT_MAX` bytes, with a WARN), charged,
/// and `ENOMEM` without a warning when it does not fit; `EINTR` if the caller is killed
/// while the slots are filled.
pub(crate) fn page_array<T>(n: usize, slot: impl Fn() -> T) -> Result<VVec<T>> {
    let mut array = VVec::with_capacity(n, charged_may_fail() | __GFP_NOWARN)?;
    for i in 0..n {
        if i % sched::CHECKPOINT_EVERY == 0 {
            sched::checkpoint()?;
        }
        array.push_within_capacity(slot()).map_err(|_| ENOMEM)?;
    }
    Ok(array)
}

/// `__GFP_RETRY_MAYFAIL`, which `kernel::alloc::flags` lacks and has no constructor for.
fn retry_may_fail() -> Flags {
    const _: () = assert!(size_of::<Flags>() == size_of::<u32>());
    let raw = 1u32 << bindings::___GFP_RETRY_MAYFAIL_BIT;
    // SAFETY: `Flags` is a struct whose only field is a `u32` of gfp bits, and it is no
    // bigger than that field (checked above), so the field fills it and any `u32` is a valid
    // `Flags`; `raw` is a real gfp flag, as `kernel::alloc::flags` holds.
    unsafe { core::mem::transmute::<u32, Flags>(raw) }
}

extern "C" {
    fn muserload_memcg_get_current() -> *mut c_void;
    fn muserload_memcg_put(memcg: *mut c_void);
    fn muserload_memcg_set_active(memcg: *mut c_void) -> *mut c_void;
}

/// A reference to a memory cgroup.
///
/// # Invariants
///
/// `ptr` is null (memory cgroups are off) or a `struct mem_cgroup` this value holds a
/// reference to.
pub(crate) struct MemCgroup {
    ptr: *mut c_void,
}

// SAFETY: A cgroup reference may be used and dropped from any thread.
unsafe impl Send for MemCgroup {}
// SAFETY: `&MemCgroup` only allows making the cgroup active for the calling task.
unsafe impl Sync for MemCgroup {}

impl MemCgroup {
    /// The memory cgroup of the current task's address space.
    pub(crate) fn current() -> Self {
        // SAFETY: The helper takes no argument and may run in any task context.
        let ptr = unsafe { muserload_memcg_get_current() };
        // INVARIANT: The helper returns null or a new reference.
        Self { ptr }
    }

    /// Charges the current task's accounted allocations to this cgroup until the guard is
    /// dropped.
    pub(crate) fn charge(&self) -> Charging<'_> {
        // SAFETY: `ptr` is null or referenced for as long as the guard borrows `self`.
        let previous = unsafe { muserload_memcg_set_active(self.ptr) };
        Charging {
            previous,
            _memcg: PhantomData,
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `ptr` is null (which the helper ignores) or ours.
        unsafe { muserload_memcg_put(self.ptr) };
    }
}

/// While it lives, the current task's accounted allocations go to a [`MemCgroup`].
///
/// It restores the previous charging target in the same task, so it is neither `Send` nor
/// `Sync` (the raw pointer field sees to that).
pub(crate) struct Charging<'a> {
    previous: *mut c_void,
    _memcg: PhantomData<&'a MemCgroup>,
}

impl Drop for Charging<'_> {
    fn drop(&mut self) {
        // SAFETY: `previous` is what `set_active_memcg` returned in this task.
        unsafe { muserload_memcg_set_active(self.previous) };
    }
}
