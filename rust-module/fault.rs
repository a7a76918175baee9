// SPDX-License-Identifier: GPL-2.0

//! What a fault on a mapping of an object does, modelled on `handle_userfault()`.
//!
//! - A page the object has is mapped. A page neither loaded nor armed is zero-filled, as
//!   anonymous memory would be; so is a staging page, afresh after each MOVE took it.
//! - An armed page in signal mode: the configured signal goes to the faulting thread with
//!   `si_addr` the faulting address. A user-mode access returns to userspace, where the
//!   handler runs and the access is retried. A kernel-mode access (GUP from `KVM_RUN`,
//!   `copy_to_user()`) releases the fault lock and asks for a retry: GUP that may be
//!   interrupted (`KVM_RUN`) then returns `EINTR` with the signal pending; its retry, and
//!   any access that can only be retried (`copy_to_user()`), get SIGBUS, so the system call
//!   fails with `EFAULT` and the handler runs on its return; on a page armed with
//!   `MUSERLOAD_ARM_KERNEL_WAITS` they wait as in queue mode instead (KVM turns an
//!   `EFAULT` of its own guest-memory accesses into a fault injected into the guest).
//! - An armed page in queue mode: the first waiter queues one event; every waiter releases
//!   the fault lock and sleeps until the page is loaded, then returns to the access as a
//!   completed fault (the load mapped the page: no second walk); woken by an abort or a
//!   signal it admits, it asks for a retry instead. A page loaded and armed again before
//!   the waiter slept has no event: the waiter does not sleep, and its access faults again
//!   and queues one. `RETRY_NOWAIT` never sleeps, and a fault that cannot be retried gets
//!   SIGBUS.
//! - Once the object is aborted, a fault on an armed page gets SIGBUS.

use crate::{
    clock::LocalInstant,
    layout::{
        Layout,
        Region, //
    },
    memcg::zeroed_page,
    object::Object,
    state::ArmMode,
    stats::Counter,
    uapi::{
        muserload_event,
        MUSERLOAD_EVENT_KERNEL,
        MUSERLOAD_EVENT_WRITE, //
    },
    vma::{
        Fault,
        FaultResult, //
    },
    wait::WaitState,
};
use kernel::{
    page::Page,
    sync::Arc, //
};

/// Handles `fault` on a mapping of `object`.
pub(crate) fn handle(object: Arc<Object>, fault: Fault) -> FaultResult {
    let Some(layout) = object.layout() else {
        return FaultResult::SigBus;
    };
    match layout.region(fault.offset()) {
        None => FaultResult::SigBus,
        Some(Region::Staging(index)) => {
            let mut slot = layout.staging.lock(index, 1, object.lock_waits());
            map_or_zero_fill(slot.page_mut(0), &fault)
        }
        Some(Region::Guest(index)) => guest(&object, layout, index, fault),
    }
}

/// Maps the page in `slot`, zero-filling the slot first if it is empty.
fn map_or_zero_fill(slot: &mut Option<Page>, fault: &Fault) -> FaultResult {
    if slot.is_none() {
        match zeroed_page() {
            Ok(page) => *slot = Some(page),
            Err(_) => return FaultResult::Oom,
        }
    }
    match slot {
        Some(page) => fault.insert(page),
        None => FaultResult::Oom,
    }
}

fn guest(object: &Arc<Object>, layout: &Layout, index: usize, fault: Fault) -> FaultResult {
    // The page's own lock: faults and loads of other pages go on meanwhile.
    let mut slot = layout.guest.lock(index, 1, object.lock_waits());
    let state = slot.state(0);
    let Some(mode) = state.armed() else {
        return map_or_zero_fill(slot.page_mut(0), &fault);
    };
    if object.aborted() {
        return FaultResult::SigBus;
    }
    let access = fault.access();
    if let ArmMode::Signal {
        signal,
        kernel_waits,
    } = mode
    {
        // A kernel-mode access that its signal cannot end, on a page armed to wait then
        // (`MUSERLOAD_ARM_KERNEL_WAITS`): its first try sent the signal (a GUP that gives
        // up with EINTR, as KVM_RUN's does, never tries again), so a second try, or another
        // task's access, which no signal reaches, waits as in queue mode.
        if !(kernel_waits && !access.user && (fault.tried() || fault.remote())) {
            drop(slot);
            return signal_mode(object, u32::from(signal), fault);
        }
    }

    // Queue mode, or a signal-mode access that waits as in queue mode.
    if fault.nowait() {
        // The caller keeps the fault lock and will try again in a way that may wait.
        return FaultResult::Retry;
    }
    if !fault.may_retry() {
        return FaultResult::SigBus;
    }
    if !state.reported() {
        let mut flags = 0;
        if access.write {
            flags |= MUSERLOAD_EVENT_WRITE;
        }
        if !access.user {
            flags |= MUSERLOAD_EVENT_KERNEL;
        }
        let event = muserload_event {
            address: fault.address() & !(kernel::page::PAGE_SIZE as u64 - 1),
            offset: fault.offset(),
            tid: current_tid(),
            flags,
        };
        let counter = if access.user {
            Counter::FaultQueueUser
        } else {
            Counter::FaultQueueKernel
        };
        // Counted before the event can be read: whoever reads it and then the stats sees
        // the fault counted (the queue's lock orders the two).
        object.stats.add(counter, 1);
        if object.events.push(event).is_err() {
            object.stats.sub(counter, 1);
            return FaultResult::Oom;
        }
        slot.set_state(0, state.report());
        drop(slot);
        object.events.notify();
    } else {
        drop(slot);
    }

    let wait_state = match fault.wait_state() {
        // Its own signal is pending, and its handler can run only once this access is done:
        // only a fatal signal may end the wait.
        WaitState::Interruptible if mode != ArmMode::Queue => WaitState::Killable,
        state => state,
    };
    fault.release_lock();
    object.stats.wait_begin();
    let start = LocalInstant::now();
    let finished = object.waitq(index).wait_until(wait_state, || {
        !layout.guest.awaits_load(index) || object.aborted()
    });
    object.stats.wait_end(start.elapsed_ns());
    // Loaded: back to the access at once. A signal (the arch code must see the retry to
    // handle it, or a kernel access would loop) and an abort (SIGBUS on the next try)
    // take the retry.
    if finished && !object.aborted() {
        FaultResult::Completed
    } else {
        FaultResult::Retry
    }
}

fn signal_mode(object: &Object, signal: u32, fault: Fault) -> FaultResult {
    let access = fault.access();
    if !access.user {
        // Another thread's fault in our mm (KVM's async page fault worker) cannot be
        // signalled to the thread that needs the page.
        if fault.remote() {
            return FaultResult::SigBus;
        }
        if fault.nowait() {
            return FaultResult::Retry;
        }
        if fault.tried() || !fault.may_retry() {
            // The signal went with the first try; an access that can only be retried ends
            // here, so that the system call returns and the handler runs.
            return FaultResult::SigBus;
        }
    }
    if crate::signal::send_fault_signal(signal, fault.address()).is_err() {
        // Blocked or ignored: the thread would fault again and again.
        return FaultResult::SigBus;
    }
    let counter = if access.user {
        Counter::FaultSignalUser
    } else {
        Counter::FaultSignalKernel
    };
    object.stats.add(counter, 1);
    if access.user {
        // Back to userspace: the handler runs, then the access is retried.
        return FaultResult::NoPage;
    }
    fault.release_lock();
    FaultResult::Retry
}

/// The current thread's id in its own pid namespace (`task_pid_vnr(current)`).
fn current_tid() -> u32 {
    // SAFETY: `current` is a valid task; a null namespace means its own active one.
    let tid = unsafe {
        kernel::bindings::__task_pid_nr_ns(
            kernel::bindings::get_current(),
            kernel::bindings::pid_type_PIDTYPE_PID,
            core::ptr::null_mut(),
        )
    };
    tid as u32
}
