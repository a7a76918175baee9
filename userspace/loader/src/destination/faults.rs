//! The fault side: vCPUs (and KVM on their behalf) touching pages not loaded yet. Zero
//! pages are loaded at once, the others requested from the source, each once. Queue mode's
//! faults come as the object's events, read by a resolver thread; signal mode's as a signal
//! to the vCPU thread, which asks for the page and waits for it itself.

use std::{
    cell::{Cell, OnceCell},
    sync::{atomic::Ordering, Arc},
};

use kvm_ioctls::VcpuFd;
use muserload::{
    vcpu_signal::{self, VcpuFaultSignal},
    Event, Events, FaultMode, Wake,
};
use nix::{errno::Errno, sys::signal::Signal};

use super::{
    error::LoadError,
    loading::{Loading, RECHECK},
    Mode, PAGE,
};
use crate::{
    interrupted::{FaultError, Interrupted, NoFaults},
    memory::BATCH_PAGES,
    protocol::Control,
    timeline::Cause,
};

/// The signal of signal mode.
const FAULT_SIGNAL: Signal = Signal::SIGUSR1;

/// How the object reports faults in `mode`.
pub(super) fn fault_mode(mode: Mode) -> FaultMode {
    match mode {
        Mode::Queue => FaultMode::Queue,
        // KVM's own accesses to guest memory (kvmclock, instruction emulation) cannot be
        // ended by the signal, and an EFAULT there would become a fault in the guest: they
        // wait, and the resolver thread serves their events, as in queue mode.
        Mode::Signal => FaultMode::SignalKernelWaits(FAULT_SIGNAL as i32),
    }
}

/// Starts serving faults for `loading` in `mode`: the resolver thread (queue mode's
/// faults, and in signal mode the kernel's accesses that wait) and, in signal mode, the
/// signal's handler. Returns what the vCPU threads do when the signal interrupts them.
pub(super) fn serve_faults(
    loading: &Arc<Loading>,
    mode: Mode,
) -> Result<Arc<dyn Interrupted>, LoadError> {
    let events = loading.ram().object().events(false)?;
    loading.spawn("resolver", move |l| l.resolve_events(&events))?;
    Ok(match mode {
        Mode::Queue => Arc::new(NoFaults),
        Mode::Signal => {
            muserload::signal::install(FAULT_SIGNAL, note_fault)?;
            Arc::new(SignalFaults(loading.clone()))
        }
    })
}

impl Loading {
    /// Handles faults on `pages`: zero pages are loaded at once, the others requested
    /// (each once).
    fn resolve(&self, pages: impl IntoIterator<Item = u64>) -> Result<(), LoadError> {
        let mut wanted = Vec::new();
        for page in pages {
            self.counters.faults.fetch_add(1, Ordering::Relaxed);
            if self.pages.loaded.get(page) {
                continue;
            }
            if self.pages.zero.get(page) {
                match self.ram().object().load_zero(
                    self.ram().guest(),
                    page * PAGE,
                    PAGE,
                    Wake::Now,
                ) {
                    Ok(_) => self.timeline.loaded(Cause::Zero, 1),
                    Err(e) if e.errno() == Some(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                self.mark_loaded(page);
                self.outcome.notify();
            } else if self.pages.request(page) {
                wanted.push(page);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        Ok(self.send(&Control::Request { pages: wanted })?)
    }

    /// Queue mode: reads fault events and resolves them, until the object is aborted.
    fn resolve_events(&self, events: &Events) -> Result<(), LoadError> {
        let mut batch = [Event::default(); BATCH_PAGES];
        loop {
            let n = events.read(&mut batch)?;
            if n == 0 {
                return Ok(());
            }
            self.resolve(batch[..n].iter().map(|e| e.offset / PAGE))?;
        }
    }

    /// Signal mode: waits until `page` is loaded.
    fn wait_loaded(&self, page: u64) -> Result<(), LoadError> {
        let loaded = || self.pages.loaded.get(page);
        while !loaded() {
            self.outcome.check()?;
            if self.outcome.is_abandoned() {
                return Err(LoadError::Abandoned { page });
            }
            self.outcome.wait(RECHECK, loaded);
        }
        Ok(())
    }
}

thread_local! {
    /// The address signal mode's handler saw last in this thread (0: none): a thread that
    /// is no vCPU's (restoring a vCPU's MSRs).
    static FAULT_ADDRESS: Cell<u64> = const { Cell::new(0) };
    /// A vCPU thread's signal, which it takes in its loop instead
    /// ([`muserload::vcpu_signal`]): no signal frame per fault.
    static VCPU_SIGNAL: OnceCell<VcpuFaultSignal> = const { OnceCell::new() };
}

/// Signal mode's handler: notes the address for the interrupted KVM call's caller, which
/// sees it fail next. A thread-local `Cell` store is async-signal-safe.
fn note_fault(address: u64) {
    FAULT_ADDRESS.with(|a| a.set(address));
}

/// The fault this thread was signalled, if any: the handler's note, or the vCPU signal
/// pending.
fn fault_address() -> Result<Option<u64>, LoadError> {
    let noted = FAULT_ADDRESS.with(|a| a.replace(0));
    if noted != 0 {
        return Ok(Some(noted));
    }
    Ok(VCPU_SIGNAL
        .with(|signal| signal.get().map(VcpuFaultSignal::take).transpose())?
        .flatten())
}

/// Signal mode's faults, handled in the vCPU threads.
struct SignalFaults(Arc<Loading>);

impl SignalFaults {
    /// Handles the fault this thread was signalled, if any: asks for its page, waits until
    /// it is loaded and maps it into `vcpu`'s VM. Returns whether there was one.
    fn handle(&self, vcpu: &VcpuFd) -> Result<bool, LoadError> {
        let Some(address) = fault_address()? else {
            return Ok(false);
        };
        let base = self.0.ram().guest().as_ptr() as u64;
        let page = address
            .checked_sub(base)
            .map(|offset| offset / PAGE)
            .filter(|&page| page < self.0.pages.len())
            .ok_or(LoadError::StrayFault { address })?;
        self.0.resolve([page])?;
        self.0.wait_loaded(page)?;
        // Guest RAM is guest physical memory from 0 on. Only a saving (the access would
        // exit once more and KVM map the page then): a failure is no fault's.
        let _ = vcpu_signal::map_loaded(vcpu, page * PAGE, PAGE);
        Ok(true)
    }
}

impl Interrupted for SignalFaults {
    fn vcpu_started(&self, vcpu: &VcpuFd) -> Result<(), FaultError> {
        let signal = VcpuFaultSignal::block_outside_run(FAULT_SIGNAL, vcpu)
            .map_err(|e| FaultError(Box::new(LoadError::from(e))))?;
        // A thread starts one vCPU: the cell is empty.
        let _ = VCPU_SIGNAL.with(|cell| cell.set(signal));
        Ok(())
    }

    fn interrupted(&self, vcpu: &VcpuFd) -> Result<bool, FaultError> {
        self.handle(vcpu).map_err(|e| FaultError(Box::new(e)))
    }
}
