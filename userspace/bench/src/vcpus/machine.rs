//! The nested VM of `--vcpus`: KVM with one memory slot of the backend's memory from guest
//! physical address 0, the code and the log in slots of their own, and N vCPUs in 32-bit
//! protected mode that each run the guest loop ([`super::guest`]) over their own slice.
//! No interrupt controller: nothing interrupts the loop, and its end is a port write.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use muserload::{
    vcpu_signal::{self, VcpuFaultSignal},
    PAGE_SIZE,
};
use nix::{
    errno::Errno,
    sys::{
        pthread::{pthread_kill, pthread_self, Pthread},
        signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal},
    },
};

use super::{
    guest::{self, CODE, CODE_GPA, DONE_PORT, LOG_GPA, MISMATCH},
    kvm_stats::Exits,
};
use crate::{anon::Anon, Error, Result};

/// Why the nested VM could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A KVM call failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The call.
        op: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// vCPUs were not done by the deadline.
    #[error("vCPUs stuck after {seconds} s: {vcpus}")]
    Stuck {
        /// The deadline.
        seconds: u64,
        /// Each one, and how far it got.
        vcpus: String,
    },
    /// A vCPU exited in a way the loop never makes it.
    #[error("vCPU {vcpu} exited unexpectedly: {exit}")]
    Exit {
        /// The vCPU.
        vcpu: usize,
        /// How.
        exit: String,
    },
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| MachineError::Kvm { op, source }.into()
}

/// One vCPU's run: when it started and ended, and each touch's time in TSC cycles
/// ([`MISMATCH`] for a page whose first word was wrong).
pub struct VcpuRun {
    /// When the vCPU's thread entered the guest for the first time.
    pub start: Instant,
    /// When it saw the vCPU's last exit.
    pub end: Instant,
    /// Each page's touch, in order.
    pub cycles: Vec<u32>,
    /// What the run cost the vCPU in exits.
    pub exits: Exits,
}

/// Signal mode's faults taken by the vCPU loop ([`muserload::vcpu_signal`]): the signal the
/// memory is armed with, what loads the page at a faulting address, and whether the loop
/// maps that page into the VM itself before it enters again.
pub struct TakenFaults<'a> {
    /// The signal.
    pub signal: Signal,
    /// The load, in the faulting vCPU's thread.
    pub load: Load<'a>,
    /// Whether the loop maps each page it loaded into the VM's nested page tables
    /// (`KVM_PRE_FAULT_MEMORY`): the access it entered again for then finds it mapped,
    /// where otherwise it exits to KVM a second time and KVM maps it then.
    pub pre_fault: bool,
}

/// What loads the page at a faulting address; returns the guest physical address of the
/// page it loaded, if it loaded one.
pub type Load<'a> = &'a (dyn Fn(u64) -> Result<Option<u64>> + Sync);

/// A VM whose guest memory (from guest physical address 0) is `memory`, split into
/// `vcpus` slices of `slice_pages` pages.
pub struct Machine {
    /// Kept open for as long as the vCPUs run.
    _vm: VmFd,
    vcpus: Vec<VcpuFd>,
    slice_pages: usize,
    /// The code page and the log: the VM's slots point into them.
    _code: Anon,
    log: Anon,
    tsc_khz: u32,
}

impl Machine {
    /// Sets up the VM over `memory` (at least `vcpus * slice_pages` pages), its vCPUs at
    /// the loop's start; `loaded`: the backend puts [`guest::page_content`] in every page.
    pub fn new(memory: *mut u8, vcpus: usize, slice_pages: usize, loaded: bool) -> Result<Self> {
        let system = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        let vm = system.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm("KVM_SET_TSS_ADDR"))?;
        let code = Anon::new(PAGE_SIZE)?;
        // SAFETY: The code page is ours and PAGE_SIZE bytes long.
        unsafe { std::ptr::copy_nonoverlapping(CODE.as_ptr(), code.as_ptr(), CODE.len()) };
        let log_len = (vcpus * slice_pages * 4).next_multiple_of(PAGE_SIZE);
        let log = Anon::new(log_len)?;
        let slots = [
            (0, memory as u64, (vcpus * slice_pages * PAGE_SIZE) as u64),
            (CODE_GPA, code.addr(0), PAGE_SIZE as u64),
            (LOG_GPA, log.addr(0), log_len as u64),
        ];
        for (slot, (gpa, host, size)) in slots.into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: Each region is a mapping that outlives the VM: the backend's (which
            // the caller keeps until the machine is dropped), or this machine's own.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let vcpus = (0..vcpus)
            .map(|id| {
                let vcpu = vm.create_vcpu(id as u64).map_err(kvm("KVM_CREATE_VCPU"))?;
                enter_loop(&vcpu, id, slice_pages, loaded)?;
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>>>()?;
        let tsc_khz = vcpus[0].get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
        Ok(Self {
            _vm: vm,
            vcpus,
            slice_pages,
            _code: code,
            log,
            tsc_khz,
        })
    }

    /// The vCPUs' TSC rate, in kHz.
    pub fn tsc_khz(&self) -> u32 {
        self.tsc_khz
    }

    /// Runs every vCPU in a thread of its own until the loop is done, all starting
    /// together. Returns each vCPU's run; [`MachineError::Stuck`] if some are not done by
    /// `deadline` (their threads are kicked out of `KVM_RUN` first): a case that hangs ends
    /// the run with where its vCPUs stopped, long before the guest's timeout.
    pub fn run(
        &mut self,
        deadline: Duration,
        taken: Option<&TakenFaults<'_>>,
    ) -> Result<Vec<VcpuRun>> {
        let n = self.vcpus.len();
        install_kick()?;
        let start = Barrier::new(n);
        let abandon = AtomicBool::new(false);
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let pthreads: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let (start, abandon, pthreads, vcpus) = (&start, &abandon, &pthreads, &mut self.vcpus);
        let runs = thread::scope(|s| {
            let threads: Vec<_> = vcpus
                .iter_mut()
                .enumerate()
                .map(|(id, vcpu)| {
                    let done = done_tx.clone();
                    // Ok(Err(where)): abandoned, and where the vCPU stood.
                    s.spawn(
                        move || -> Result<std::result::Result<(Instant, Instant), String>> {
                            pthreads[id].store(pthread_self() as usize, Ordering::Release);
                            let faults = taken
                                .map(|t| {
                                    VcpuFaultSignal::block_outside_run(t.signal, vcpu)
                                        .map(|signal| (signal, t))
                                })
                                .transpose();
                            start.wait();
                            let began = Instant::now();
                            let finished = faults
                                .map_err(Error::from)
                                .and_then(|faults| run_loop(vcpu, id, abandon, faults.as_ref()));
                            let _ = done.send(id);
                            if finished? {
                                return Ok(Ok((began, Instant::now())));
                            }
                            Ok(Err(whereabouts(vcpu)))
                        },
                    )
                })
                .collect();
            await_or_kick(n, deadline, &done_rx, abandon, pthreads);
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| Error::Thread("vCPU"))?)
                .collect::<Result<Vec<_>>>()
        })?;
        let log = self.log.as_ptr().cast::<u32>();
        let cycles = |id: usize| -> Vec<u32> {
            (0..self.slice_pages)
                // SAFETY: The log holds `slice_pages` entries per vCPU, and no vCPU runs
                // any more.
                .map(|i| unsafe { log.add(id * self.slice_pages + i).read_volatile() })
                .collect()
        };
        if runs.iter().any(std::result::Result::is_err) {
            // A logged touch is never 0 cycles: the entries before the first 0 are done.
            let stuck = runs
                .iter()
                .enumerate()
                .filter_map(|(id, run)| run.as_ref().err().map(|at| (id, at)))
                .map(|(id, at)| {
                    let touched = cycles(id).iter().take_while(|&&c| c != 0).count();
                    format!(
                        "vCPU {id} after {touched} of {} pages ({at})",
                        self.slice_pages
                    )
                })
                .collect::<Vec<_>>();
            return Err(MachineError::Stuck {
                seconds: deadline.as_secs(),
                vcpus: stuck.join(", "),
            }
            .into());
        }
        runs.into_iter()
            .enumerate()
            .filter_map(|(id, run)| {
                run.ok().map(|(start, end)| {
                    Ok(VcpuRun {
                        start,
                        end,
                        cycles: cycles(id),
                        exits: Exits::of(&self.vcpus[id])?,
                    })
                })
            })
            .collect()
    }
}

/// The signal that kicks a stuck vCPU's thread out of `KVM_RUN` (signal mode's is SIGUSR1).
const KICK: Signal = Signal::SIGUSR2;

extern "C" fn kicked(_: nix::libc::c_int) {}

/// Installs [`KICK`]'s handler, which does nothing: the signal only makes `KVM_RUN` (and a
/// fault it waits in) return `EINTR`. Without `SA_RESTART`.
fn install_kick() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(kicked),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: The handler does nothing, which is async-signal-safe.
    unsafe { sigaction(KICK, &action) }.map_err(|errno| Error::Sys {
        op: "sigaction",
        errno,
    })?;
    Ok(())
}

/// Waits until all `n` vCPUs said they are done or `deadline` passed; then tells those
/// still running to give up and kicks them until they have.
fn await_or_kick(
    n: usize,
    deadline: Duration,
    done: &mpsc::Receiver<usize>,
    abandon: &AtomicBool,
    pthreads: &[AtomicUsize],
) {
    let deadline = Instant::now() + deadline;
    let mut finished = vec![false; n];
    let mut left = n;
    while left > 0 {
        match done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(id) => {
                finished[id] = true;
                left -= 1;
            }
            Err(_) => break,
        }
    }
    if left == 0 {
        return;
    }
    abandon.store(true, Ordering::Release);
    while left > 0 {
        for (id, pthread) in pthreads.iter().enumerate() {
            if !finished[id] {
                // ESRCH (the thread ended meanwhile) is no error.
                let _ = pthread_kill(pthread.load(Ordering::Acquire) as Pthread, KICK);
            }
        }
        while let Ok(id) = done.recv_timeout(Duration::from_millis(10)) {
            finished[id] = true;
            left -= 1;
        }
    }
}
/// Puts `vcpu` at the loop's start over slice `id`: flat 32-bit segments, paging off.
fn enter_loop(vcpu: &VcpuFd, id: usize, slice_pages: usize, loaded: bool) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let flat = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(0x08, 0xb);
    for segment in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *segment = flat(0x10, 0x3);
    }
    sregs.cr0 |= 1; // PE; paging stays off: guest linear addresses are physical.
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let slice = (id * slice_pages * PAGE_SIZE) as u64;
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    regs.rsi = slice;
    regs.rcx = slice_pages as u64;
    regs.rbx = u64::from(guest::expected_mask(loaded));
    regs.rsp = LOG_GPA + (id * slice_pages * 4) as u64;
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Runs `vcpu` until the loop writes to its port: `true`; `false` if told to `abandon`
/// it. A signal (signal mode's fault, loaded by the handler or here from `taken`, or a
/// kick) makes KVM_RUN return `EINTR`; entering again retries the access.
fn run_loop(
    vcpu: &mut VcpuFd,
    id: usize,
    abandon: &AtomicBool,
    taken: Option<&(VcpuFaultSignal, &TakenFaults<'_>)>,
) -> Result<bool> {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(DONE_PORT, _)) => return Ok(true),
            Ok(exit) => {
                let exit = format!("{exit:?}");
                return Err(MachineError::Exit {
                    vcpu: id,
                    exit: format!("{exit} ({})", whereabouts(vcpu)),
                }
                .into());
            }
            Err(e) if e.errno() == Errno::EINTR as i32 || e.errno() == Errno::EAGAIN as i32 => {
                if let Some((signal, taken)) = taken {
                    if let Some(address) = signal.take()? {
                        match (taken.load)(address)? {
                            Some(gpa) if taken.pre_fault => {
                                vcpu_signal::map_loaded(vcpu, gpa, PAGE_SIZE as u64)?
                            }
                            _ => {}
                        }
                    }
                }
                if abandon.load(Ordering::Acquire) {
                    return Ok(false);
                }
            }
            Err(source) => {
                return Err(MachineError::Kvm {
                    op: "KVM_RUN",
                    source,
                }
                .into())
            }
        }
    }
}

/// Where an abandoned vCPU stood in the loop: the instruction, the page it was touching
/// (ESI) and how many were left (ECX).
fn whereabouts(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(regs) => format!(
            "RIP {:#x}, ESI {:#x}, ECX {}",
            regs.rip, regs.rsi as u32, regs.rcx as u32
        ),
        Err(e) => format!("registers unreadable: {e}"),
    }
}

/// A touch's time in TSC cycles, as a duration at `tsc_khz`.
pub fn cycles_to_duration(cycles: u32, tsc_khz: u32) -> Duration {
    Duration::from_nanos(u64::from(cycles) * 1_000_000 / u64::from(tsc_khz.max(1)))
}

/// Pages whose first word the guest found wrong.
pub fn mismatches(runs: &[VcpuRun]) -> usize {
    runs.iter()
        .flat_map(|r| &r.cycles)
        .filter(|&&c| c == MISMATCH)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_convert_at_the_tsc_rate() {
        assert_eq!(cycles_to_duration(2_000, 2_000), Duration::from_millis(1));
        assert_eq!(
            cycles_to_duration(2_600, 2_600_000),
            Duration::from_micros(1)
        );
    }
}
