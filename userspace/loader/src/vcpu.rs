//! Running the vCPUs: one thread each, port I/O to the devices, and stopping them all with
//! their state captured (the source's switch to post-copy).

use std::{
    fmt, io,
    os::unix::thread::JoinHandleExt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use kvm_ioctls::{VcpuExit, VcpuFd};
use nix::{
    errno::Errno,
    sys::{
        pthread::{pthread_kill, Pthread},
        signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal},
    },
};

use crate::{
    interrupted::{FaultError, Interrupted},
    lock::lock,
    power_off::{self, PowerOff},
    vm::{VcpuState, Vm, VmError},
};

/// Why a vCPU stopped running the guest, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The kick's signal handler could not be installed.
    #[error("sigaction: {0}")]
    Sigaction(#[source] Errno),
    /// The vCPU's thread could not be started.
    #[error("spawning a vCPU thread: {0}")]
    Spawn(#[source] io::Error),
    /// `KVM_RUN` failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// Its errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The guest made the vCPU exit for good.
    #[error(transparent)]
    Exit(#[from] Exit),
    /// Its state could not be captured.
    #[error(transparent)]
    State(#[from] VmError),
    /// A fault (signal mode) could not be handled.
    #[error(transparent)]
    Fault(#[from] FaultError),
    /// Its thread panicked.
    #[error("a vCPU thread panicked")]
    Panicked,
    /// The power-off watcher could not be started.
    #[error("spawning the power-off watcher: {0}")]
    Watcher(#[source] io::Error),
}

/// How the guest made a vCPU exit for good.
#[derive(Debug, thiserror::Error)]
pub enum Exit {
    /// A triple fault, and where the vCPU was if KVM said.
    #[error("shutdown (triple fault){}", .0.map_or(String::new(), |at| format!(" at {at}")))]
    TripleFault(Option<FaultSite>),
    /// HLT, returned to userspace: only without KVM's in-kernel local APIC, which the
    /// loader always has.
    #[error("halted")]
    Halted,
    /// VM entry failed.
    #[error("VM entry failed (reason {reason:#x}, cpu {cpu})")]
    EntryFailed {
        /// The hardware's reason.
        reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// KVM's internal error: its suberror (1 emulation failure, 2 simultaneous exceptions,
    /// 3 an exit while delivering an event, 4 an unexpected exit reason) and data (for 3
    /// and 4: the exit reason and, where KVM gives them, the event being delivered and the
    /// faulting guest physical address), and where the vCPU was.
    #[error(
        "KVM internal error (suberror {suberror}, data [{}]) at rip {rip:#x}",
        .data.iter().map(|word| format!("{word:#x}")).collect::<Vec<_>>().join(", ")
    )]
    Internal {
        /// The suberror.
        suberror: u32,
        /// Its data.
        data: Vec<u64>,
        /// Where the vCPU was.
        rip: u64,
    },
    /// An exit this loader does not handle, as KVM's bindings print it.
    #[error("unexpected exit {0}")]
    Unexpected(String),
}

/// Where a vCPU was when it triple-faulted: its registers, and the last page fault's
/// address.
#[derive(Clone, Copy, Debug)]
pub struct FaultSite {
    /// The instruction pointer.
    rip: u64,
    /// The stack pointer.
    rsp: u64,
    /// The last page fault's address.
    cr2: u64,
    /// The page tables.
    cr3: u64,
}

/// "rip ..., rsp ..., cr2 ..., cr3 ...".
impl fmt::Display for FaultSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rip {:#x}, rsp {:#x}, cr2 {:#x}, cr3 {:#x}",
            self.rip, self.rsp, self.cr2, self.cr3
        )
    }
}

/// The guest stopped on its own: one of its vCPUs failed.
#[derive(Debug, thiserror::Error)]
#[error("the guest stopped: vcpu{id}: {source}")]
pub struct GuestStopped {
    /// The vCPU.
    pub id: usize,
    /// Why.
    #[source]
    pub source: VcpuError,
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
const KICK: Signal = Signal::SIGUSR2;

/// Running vCPUs.
pub struct Machine {
    /// The VM.
    vm: Arc<Vm>,
    /// A thread per vCPU, in id order: its state once stopped, or why it stopped first.
    threads: Vec<JoinHandle<Result<VcpuState, Arc<GuestStopped>>>>,
    /// Tells the threads to stop (with a kick, for those in KVM_RUN).
    stop: Arc<AtomicBool>,
    /// Why the guest stopped on its own, if it did: the first vCPU that failed.
    failure: Arc<Mutex<Option<Arc<GuestStopped>>>>,
    /// Whether the guest powered off.
    power: Arc<PowerOff>,
    /// Watches for the guest's power-off; ends when told to stop.
    watcher: JoinHandle<()>,
}

impl Machine {
    /// Starts a thread per vCPU; `interrupted` handles their signals.
    pub fn start(
        vm: Arc<Vm>,
        vcpus: Vec<VcpuFd>,
        interrupted: Arc<dyn Interrupted>,
    ) -> Result<Self, VcpuError> {
        extern "C" fn kicked(_: nix::libc::c_int) {}
        // No SA_RESTART: the kick is meant to make KVM_RUN return.
        let action = SigAction::new(
            SigHandler::Handler(kicked),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: The handler does nothing, which is async-signal-safe.
        unsafe { sigaction(KICK, &action) }.map_err(VcpuError::Sigaction)?;
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let power = Arc::new(PowerOff::new(vcpus.len()));
        let threads: Vec<_> = vcpus
            .into_iter()
            .enumerate()
            .map(|(id, vcpu)| {
                let (vm, stop, failure, interrupted, power) = (
                    vm.clone(),
                    stop.clone(),
                    failure.clone(),
                    interrupted.clone(),
                    power.clone(),
                );
                thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || {
                        let signals = (interrupted.as_ref(), power.as_ref());
                        run(&vm, id, vcpu, &stop, signals).map_err(|source| {
                            let stopped = Arc::new(GuestStopped { id, source });
                            lock(&failure).get_or_insert_with(|| stopped.clone());
                            // After releasing `failure`: waiters look at it with the
                            // report's lock held.
                            vm.devices().wake_waiters();
                            stopped
                        })
                    })
                    .map_err(VcpuError::Spawn)
            })
            .collect::<Result<_, _>>()?;
        let watcher = {
            // The watcher ends before the threads are joined (`stop`): their handles stay
            // valid for `kick` as long as it runs.
            let pthreads: Vec<usize> = threads.iter().map(|t| t.as_pthread_t() as usize).collect();
            let (stop, failure, vm) = (stop.clone(), failure.clone(), vm.clone());
            power_off::spawn_watcher(
                power.clone(),
                move |id| kick(pthreads[id]),
                move || stop.load(Ordering::SeqCst) || lock(&failure).is_some(),
                move || vm.devices().wake_waiters(),
            )
            .map_err(VcpuError::Watcher)?
        };
        Ok(Self {
            vm,
            threads,
            stop,
            failure,
            power,
            watcher,
        })
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Why the guest stopped on its own, if it did.
    pub fn failure(&self) -> Option<Arc<GuestStopped>> {
        lock(&self.failure).clone()
    }

    /// Whether the guest powered off: it stays so, its vCPUs halted, until stopped.
    pub fn powered_off(&self) -> bool {
        self.power.is_off()
    }

    /// Stops every vCPU and returns their states in id order; fails if one had stopped on
    /// its own.
    pub fn stop(self) -> Result<Vec<VcpuState>, Arc<GuestStopped>> {
        self.stop.store(true, Ordering::SeqCst);
        // Woken, the watcher ends at once, or after the probe under way (its kicks are
        // harmless).
        self.watcher.thread().unpark();
        let _ = self.watcher.join();
        // A kick that lands just before a thread enters KVM_RUN is lost: kick until each
        // thread has left.
        while self.threads.iter().any(|t| !t.is_finished()) {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                kick(t.as_pthread_t() as usize);
            }
            thread::sleep(Duration::from_millis(1));
        }
        let mut states = Vec::with_capacity(self.threads.len());
        for (id, t) in self.threads.into_iter().enumerate() {
            let panicked = |_| {
                Arc::new(GuestStopped {
                    id,
                    source: VcpuError::Panicked,
                })
            };
            states.push(t.join().map_err(panicked)??);
        }
        Ok(states)
    }
}

/// Kicks the vCPU thread `pthread` out of KVM_RUN. std's thread handle is an integer,
/// libc's a pointer on musl: it goes through usize. ESRCH (the thread finished meanwhile)
/// is no error.
fn kick(pthread: usize) {
    let _ = pthread_kill(pthread as Pthread, KICK);
}

/// Vcpu `id`'s loop. Returns its state once told to stop. A signal that interrupts
/// KVM_RUN is signal mode's fault (`interrupted`) or the power-off watcher's look
/// (`power`).
fn run(
    vm: &Vm,
    id: usize,
    mut vcpu: VcpuFd,
    stop: &AtomicBool,
    (interrupted, power): (&dyn Interrupted, &PowerOff),
) -> Result<VcpuState, VcpuError> {
    interrupted.vcpu_started(&vcpu)?;
    loop {
        if stop.load(Ordering::SeqCst) {
            // Let KVM finish the instruction of the last I/O exit, so that the state is
            // that of an instruction boundary (KVM's API documentation, immediate_exit).
            vcpu.set_kvm_immediate_exit(1);
            let _ = vcpu.run();
            vcpu.set_kvm_immediate_exit(0);
            return Ok(vm.vcpu_state(&vcpu)?);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                vm.devices().io_out(port, data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                vm.devices().io_in(port, data);
            }
            Ok(VcpuExit::Shutdown) => return Err(Exit::TripleFault(fault_site(&vcpu)).into()),
            Ok(VcpuExit::Hlt) => return Err(Exit::Halted.into()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(Exit::EntryFailed { reason, cpu }.into())
            }
            Ok(VcpuExit::InternalError) => return Err(internal_error(&mut vcpu).into()),
            Ok(exit) => return Err(Exit::Unexpected(format!("{exit:?}")).into()),
            Err(e) if e.errno() == Errno::EINTR as i32 || e.errno() == Errno::EAGAIN as i32 => {
                interrupted.interrupted(&vcpu)?;
                power.look(id, &vcpu);
            }
            Err(source) => {
                return Err(VcpuError::Kvm {
                    op: "KVM_RUN",
                    source,
                })
            }
        }
    }
}

/// What KVM's internal error says, and where the vCPU was.
fn internal_error(vcpu: &mut VcpuFd) -> Exit {
    let rip = vcpu.get_regs().map(|regs| regs.rip).unwrap_or_default();
    let run = vcpu.get_kvm_run();
    // SAFETY: After a KVM_EXIT_INTERNAL_ERROR exit, `internal` is the union's valid member.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let data = internal.data[..(internal.ndata as usize).min(internal.data.len())].to_vec();
    Exit::Internal {
        suberror: internal.suberror,
        data,
        rip,
    }
}

/// Where a vCPU that triple-faulted was, if KVM says.
fn fault_site(vcpu: &VcpuFd) -> Option<FaultSite> {
    let (regs, sregs) = (vcpu.get_regs().ok()?, vcpu.get_sregs().ok()?);
    Some(FaultSite {
        rip: regs.rip,
        rsp: regs.rsp,
        cr2: sregs.cr2,
        cr3: sregs.cr3,
    })
}
