// SPDX-License-Identifier: GPL-2.0

//! The mappings of an object: `vm_operations_struct` and page faults, behind a safe API.
//!
//! The kernel crate has no abstraction for `vm_operations_struct` or `struct vm_fault`, so
//! this file is the one place that touches them through raw bindings. The rest of the module
//! sees:
//! - [`install`], called from `mmap`, which makes a vma one of ours;
//! - [`Fault`], the fault being handled, with what the fault logic needs and nothing else;
//! - [`LockedRange`], which checks that an address range given to an ioctl lies in one
//!   mapping of the caller's own object, translates it to object offsets, and maps loaded
//!   pages into it.
//!
//! A vma is ours if its `vm_ops` is [`VM_OPS`]; its `vm_file` is then an open
//! `/dev/muserload`, whose `private_data` is an `Arc<Object>` (set by the kernel crate's
//! miscdevice `open`, released by its `release` only after the last mapping is gone, since
//! every vma holds a reference on its file).

use crate::{
    object::Object,
    slots::LockedPages,
    sync_table::AssertSync, //
};
use core::mem::MaybeUninit;
use kernel::{
    bindings,
    mm::{
        virt::{
            VmaNew,
            VmaRef, //
        },
        MmapReadGuard,
    },
    page::{
        Page,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::{
        Arc,
        ArcBorrow, //
    },
    types::ForeignOwnable,
};

/// `vm_fault_t` values, as the fault logic returns them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum FaultResult {
    /// The page is mapped (or the access is to be retried at once after a signal).
    NoPage,
    /// The fault lock was released (or, with `RETRY_NOWAIT`, the caller must not wait):
    /// the fault will be retried.
    Retry,
    /// The fault lock was released and the page loaded meanwhile: the access goes back to
    /// the faulting instruction without the retry's second lock and page-table walk
    /// (`VM_FAULT_COMPLETED`, which callers that allow a retry all handle; with
    /// `VM_FAULT_NOPAGE`, so that the core does not look for a page in the return). A load
    /// maps the page in the loader's mapping: the instruction finds it there, or faults
    /// once more (another process's mapping) and the fault maps it.
    Completed,
    /// Deliver SIGBUS.
    SigBus,
    /// Out of memory.
    Oom,
}

impl FaultResult {
    fn as_raw(self) -> bindings::vm_fault_t {
        (match self {
            Self::NoPage => bindings::vm_fault_reason_VM_FAULT_NOPAGE,
            Self::Retry => bindings::vm_fault_reason_VM_FAULT_RETRY,
            Self::Completed => {
                bindings::vm_fault_reason_VM_FAULT_COMPLETED
                    | bindings::vm_fault_reason_VM_FAULT_NOPAGE
            }
            Self::SigBus => bindings::vm_fault_reason_VM_FAULT_SIGBUS,
            Self::Oom => bindings::vm_fault_reason_VM_FAULT_OOM,
        }) as bindings::vm_fault_t
    }
}

/// The `vm_operations_struct` of every mapping of an object.
// SAFETY: The table is immutable, and its pointers are functions or null.
static VM_OPS: AssertSync<bindings::vm_operations_struct> = unsafe {
    AssertSync::new(bindings::vm_operations_struct {
        fault: Some(fault),
        map_pages: Some(map_pages),
        // SAFETY: All-zero is a valid `vm_operations_struct`: every callback absent.
        ..core::mem::zeroed()
    })
};

/// The object offset and length that `vma`, being created by `mmap`, maps.
pub(crate) fn new_range(vma: &VmaNew) -> (u64, u64) {
    // SAFETY: `vma` is being set up by `mmap`, so `vm_pgoff` is stable.
    let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
    (pgoff << PAGE_SHIFT, (vma.end() - vma.start()) as u64)
}

/// Makes `vma`, being created by `mmap` of `/dev/muserload`, a mapping of its object.
///
/// Shared mappings only: a private writable mapping would copy-on-write away from the
/// object's page, so the guest would never see a later load. `VM_MIXEDMAP` lets the fault
/// handler insert the object's pages; `VM_DONTEXPAND` keeps mremap from growing it.
pub(crate) fn install(vma: &VmaNew) -> Result {
    if vma.flags() & kernel::mm::virt::flags::SHARED == 0 {
        return Err(EINVAL);
    }
    vma.set_mixedmap();
    vma.set_dontexpand();
    // SAFETY: The vma is being set up by `mmap` (so `vm_ops` may be written); `VM_OPS` is
    // static and its callbacks only access vmas that are ours.
    unsafe { (*vma.as_ptr()).vm_ops = VM_OPS.get() };
    Ok(())
}

/// The object behind `vma` if `vma` is a mapping of an object.
fn object_of(vma: &VmaRef) -> Option<ArcBorrow<'_, Object>> {
    let raw = vma.as_ptr();
    // SAFETY: The caller holds the vma or mmap read lock (type invariant of `VmaRef`), so
    // its fields are stable.
    let (ops, file) = unsafe { ((*raw).vm_ops, (*raw).vm_file) };
    if !core::ptr::eq(ops, VM_OPS.get()) {
        return None;
    }
    // SAFETY: `vm_ops` is ours only on vmas made by `install`, whose `vm_file` is an open
    // `/dev/muserload` with an `Arc<Object>` in `private_data`. The vma holds a reference on
    // the file, so the crate's `release` (which takes the `Arc` back) has not run and cannot
    // run while the vma lock is held, which bounds the borrow.
    Some(unsafe { <Arc<Object> as ForeignOwnable>::borrow((*file).private_data) })
}

/// A range of a caller's mapping of its own object, found with the mmap read lock or the
/// mapping's own per-VMA lock held, for as long as `'a`.
pub(crate) struct LockedRange<'a> {
    vma: &'a VmaRef,
    /// The address of the range's first byte.
    addr: usize,
    /// The byte offset in the object of the range's first byte.
    pub(crate) offset: u64,
}

impl<'a> LockedRange<'a> {
    /// Checks that `[addr, addr + len)` is page aligned, nonempty and lies in one mapping of
    /// `object` in the locked mm, and returns where it is in the object.
    ///
    /// EINVAL for a misaligned or empty range, EFAULT if no single mapping of `object`
    /// covers it (unmapped, another file, or another object: a caller can only name its own).
    pub(crate) fn find(
        guard: &'a MmapReadGuard<'_>,
        object: &Object,
        addr: u64,
        len: u64,
    ) -> Result<Self> {
        let start = usize::try_from(addr).map_err(|_| EINVAL)?;
        // Misaligned or empty: EINVAL before EFAULT, whatever is mapped there.
        check_shape(addr, len)?;
        Self::in_vma(guard.vma_lookup(start).ok_or(EFAULT)?, object, addr, len)
    }

    /// As [`Self::find`], in `vma`, which the caller holds the per-VMA lock of, or which the
    /// mmap read lock it holds keeps: EFAULT if the range does not lie in it.
    pub(crate) fn in_vma(vma: &'a VmaRef, object: &Object, addr: u64, len: u64) -> Result<Self> {
        let end = check_shape(addr, len)?;
        let start = usize::try_from(addr).map_err(|_| EINVAL)?;
        if addr < vma.start() as u64 || end > vma.end() as u64 {
            return Err(EFAULT);
        }
        match object_of(vma) {
            Some(owner) if core::ptr::eq(&*owner, object) => {}
            _ => return Err(EFAULT),
        }
        // SAFETY: The vma's read lock or the mmap read lock is held, so `vm_pgoff` is
        // stable.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
        let offset = (pgoff << PAGE_SHIFT) + (addr - vma.start() as u64);
        Ok(Self {
            vma,
            addr: start,
            offset,
        })
    }

    /// Maps the page of the `i`th slot of `pages` at byte `delta + i * PAGE_SIZE` of the
    /// range for every slot that has a page, so that a thread waiting for one finds it
    /// mapped instead of faulting again. The slots are locked, as the fault path maps, so
    /// that no discard can come between. Best effort: a page that cannot be mapped (one is
    /// there already) is skipped, and the next fault maps it. One page-table walk and lock
    /// per page table, not per page (`vm_insert_pages()`).
    pub(crate) fn prefault_pages(&self, delta: usize, pages: &LockedPages<'_>) {
        /// Pages per `vm_insert_pages()` call: its array lives on the stack.
        const BATCH: usize = 32;
        let Some(mixed) = self.vma.as_mixedmap_vma() else {
            return;
        };
        // Left uninitialised: zeroing it would cost a 256-byte `memset` on every load, and a
        // single-page load (a fault's reply) uses one entry.
        let mut raw = [MaybeUninit::<*mut bindings::page>::uninit(); BATCH];
        let mut index = 0;
        while index < pages.len() {
            // A run of slots that have pages, at most `BATCH` long.
            let run = (index..pages.len())
                .take(BATCH)
                .map_while(|i| pages.page(i))
                .enumerate()
                .map(|(i, page)| raw[i] = MaybeUninit::new(page.as_ptr()))
                .count();
            let mut done = 0;
            while done < run {
                let mut left = (run - done) as kernel::ffi::c_ulong;
                // SAFETY: The caller holds the mmap read lock or the vma's own lock on a vma
                // of ours, which has `VM_MIXEDMAP` (type invariant of `VmaMixedMap`);
                // `raw[done..run]` were written above and point to order-0 pages the object
                // owns (not anonymous, not slab), which `vm_insert_pages` takes references of
                // its own on. It writes back in `left` how many it did not map.
                let ret = unsafe {
                    bindings::vm_insert_pages(
                        mixed.as_ptr(),
                        self.addr + delta + (index + done) * PAGE_SIZE,
                        raw.as_mut_ptr().add(done).cast(),
                        &mut left,
                    )
                };
                done = run - left as usize;
                // It stopped at a page it could not map (one already mapped there: EBUSY):
                // skip it.
                if ret != 0 {
                    done += 1;
                }
            }
            // Past the run, and past the empty slot that ended it, if any.
            index += run.max(1);
        }
    }

    /// Whether `next` starts where this range's first `len` bytes end, in the same mapping:
    /// then one [`Self::prefault_pages`] call can cover both.
    pub(crate) fn is_followed_by(&self, len: usize, next: &LockedRange<'_>) -> bool {
        core::ptr::eq(self.vma, next.vma) && self.addr + len == next.addr
    }
}

/// EINVAL unless `[addr, addr + len)` is page aligned, nonempty and does not wrap; its end
/// otherwise. The checks of a range that need no lock.
pub(crate) fn check_shape(addr: u64, len: u64) -> Result<u64> {
    let page_mask = PAGE_SIZE as u64 - 1;
    if addr & page_mask != 0 || len & page_mask != 0 || len == 0 {
        return Err(EINVAL);
    }
    addr.checked_add(len).ok_or(EINVAL)
}

/// Why the fault happened.
pub(crate) struct FaultAccess {
    /// A write access.
    pub(crate) write: bool,
    /// A user-mode access; otherwise the kernel touched the page for the task (GUP, as from
    /// `KVM_RUN`, or `copy_to_user`).
    pub(crate) user: bool,
}

/// A page fault on a mapping of an object, with the fault lock (mmap or per-VMA read lock)
/// held.
///
/// # Invariants
///
/// `vmf` is the `struct vm_fault` being handled, its vma is ours, and its fault lock is held
/// for as long as this value exists. It is consumed when the lock is released.
pub(crate) struct Fault {
    vmf: *mut bindings::vm_fault,
}

impl Fault {
    fn flags(&self) -> u32 {
        // SAFETY: By the type invariants `vmf` is valid.
        unsafe { (*self.vmf).flags }
    }

    fn has(&self, flag: u32) -> bool {
        self.flags() & flag != 0
    }

    /// The faulting page's byte offset in the object.
    pub(crate) fn offset(&self) -> u64 {
        // SAFETY: By the type invariants `vmf` is valid.
        (unsafe { (*self.vmf).__bindgen_anon_1.pgoff } as u64) << PAGE_SHIFT
    }

    /// The faulting address (not page aligned).
    pub(crate) fn address(&self) -> u64 {
        // SAFETY: By the type invariants `vmf` is valid.
        unsafe { (*self.vmf).__bindgen_anon_1.real_address as u64 }
    }

    /// What kind of access faulted.
    pub(crate) fn access(&self) -> FaultAccess {
        FaultAccess {
            write: self.has(bindings::fault_flag_FAULT_FLAG_WRITE),
            user: self.has(bindings::fault_flag_FAULT_FLAG_USER),
        }
    }

    /// The caller cannot wait (`FAULT_FLAG_RETRY_NOWAIT`, as KVM's first, async attempt).
    pub(crate) fn nowait(&self) -> bool {
        self.has(bindings::fault_flag_FAULT_FLAG_RETRY_NOWAIT)
    }

    /// This is a retry of a fault that asked for one (`FAULT_FLAG_TRIED`).
    pub(crate) fn tried(&self) -> bool {
        self.has(bindings::fault_flag_FAULT_FLAG_TRIED)
    }

    /// GUP on behalf of another task (`FAULT_FLAG_REMOTE`).
    pub(crate) fn remote(&self) -> bool {
        self.has(bindings::fault_flag_FAULT_FLAG_REMOTE)
    }

    /// The fault lock may be released and the fault retried (`FAULT_FLAG_ALLOW_RETRY`).
    pub(crate) fn may_retry(&self) -> bool {
        self.has(bindings::fault_flag_FAULT_FLAG_ALLOW_RETRY)
    }

    /// How a wait for this fault may be interrupted.
    ///
    /// As `handle_userfault()` decides it, except that a kernel-mode access never waits
    /// interruptibly: the x86 fault handler retries such a fault at once while a non-fatal
    /// signal is pending, which would spin. So a vCPU waiting in `KVM_RUN` (queue mode)
    /// returns when its page is loaded, the object is aborted, or it is killed.
    pub(crate) fn wait_state(&self) -> crate::wait::WaitState {
        use crate::wait::WaitState;
        if self.has(bindings::fault_flag_FAULT_FLAG_INTERRUPTIBLE)
            && self.has(bindings::fault_flag_FAULT_FLAG_USER)
        {
            WaitState::Interruptible
        } else if self.has(bindings::fault_flag_FAULT_FLAG_KILLABLE) {
            WaitState::Killable
        } else {
            WaitState::Uninterruptible
        }
    }

    /// The vma of the fault.
    fn vma(&self) -> &VmaRef {
        // SAFETY: By the type invariants `vmf` is valid and its fault lock, which keeps its
        // vma alive and readable, is held for as long as `self` is borrowed.
        unsafe { VmaRef::from_raw((*self.vmf).__bindgen_anon_1.vma) }
    }

    /// Maps `page` at the faulting address.
    pub(crate) fn insert(&self, page: &Page) -> FaultResult {
        // Every vma of ours is mixed-map (`install` sets it, and nothing clears it).
        let Some(vma) = self.vma().as_mixedmap_vma() else {
            return FaultResult::SigBus;
        };
        // SAFETY: By the type invariants `vmf` is valid.
        let address = unsafe { (*self.vmf).__bindgen_anon_1.address };
        match vma.vm_insert_page(address, page) {
            // EBUSY: a racing fault mapped it first.
            Ok(()) => FaultResult::NoPage,
            Err(e) if e == EBUSY => FaultResult::NoPage,
            Err(e) if e == ENOMEM => FaultResult::Oom,
            Err(_) => FaultResult::SigBus,
        }
    }

    /// Releases the fault lock, as `release_fault_lock()` does, so that the caller may sleep;
    /// the fault must then return [`FaultResult::Retry`] or [`FaultResult::Completed`].
    pub(crate) fn release_lock(self) {
        let vma = {
            // SAFETY: By the type invariants `vmf` is valid and its lock is held.
            unsafe { (*self.vmf).__bindgen_anon_1.vma }
        };
        if self.has(bindings::fault_flag_FAULT_FLAG_VMA_LOCK) {
            // SAFETY: The per-VMA read lock of `vma` is held; this releases it.
            unsafe { bindings::vma_end_read(vma) };
        } else {
            // SAFETY: The mmap read lock of `vma`'s mm is held; this releases it.
            unsafe { bindings::mmap_read_unlock((*vma).vm_mm) };
        }
        // INVARIANT: `self` is consumed: nothing can touch the vma any more.
    }
}

/// The `fault` callback of [`VM_OPS`].
///
/// # Safety
///
/// Called by the kernel with a valid `vmf` whose vma is ours, with its fault lock held.
unsafe extern "C" fn fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: By the function's safety requirements the vma is valid and locked.
    let vma = unsafe { VmaRef::from_raw((*vmf).__bindgen_anon_1.vma) };
    let Some(object) = object_of(vma) else {
        return FaultResult::SigBus.as_raw();
    };
    // Take a reference: the fault logic may release the fault lock and sleep, after which
    // nothing keeps the file (and so the object) alive.
    let object: Arc<Object> = object.into();
    // INVARIANT: The kernel holds the fault lock on our vma until we return or release it.
    crate::fault::handle(object, Fault { vmf }).as_raw()
}

/// The `map_pages` callback of [`VM_OPS`]: maps nothing around a fault.
///
/// Its presence lets user faults run under the per-VMA lock: without it the kernel sends
/// them back to the mmap lock.
///
/// # Safety
///
/// Called by the kernel with a valid `vmf`.
unsafe extern "C" fn map_pages(
    _vmf: *mut bindings::vm_fault,
    _start: kernel::ffi::c_ulong,
    _end: kernel::ffi::c_ulong,
) -> bindings::vm_fault_t {
    0
}
