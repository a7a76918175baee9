//! Running the vCPUs: one thread each, port I/O to the devices, and stopping them all with
//! their state captured (the source's switch to post-copy).

use std::{
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
    error::{Error, Result},
    interrupted::Interrupted,
    lock::lock,
    vm::{VcpuState, Vm},
};

/// The signal that kicks a vCPU thread out of KVM_RUN.
const KICK: Signal = Signal::SIGUSR2;

/// Running vCPUs.
pub struct Machine {
    vm: Arc<Vm>,
    threads: Vec<JoinHandle<Result<VcpuState>>>,
    stop: Arc<AtomicBool>,
    /// Why the guest stopped on its own, if it did.
    failure: Arc<Mutex<Option<String>>>,
}

impl Machine {
    /// Starts a thread per vCPU; `interrupted` handles their signals.
    pub fn start(
        vm: Arc<Vm>,
        vcpus: Vec<VcpuFd>,
        interrupted: Arc<dyn Interrupted>,
    ) -> Result<Self> {
        extern "C" fn kicked(_: nix::libc::c_int) {}
        // No SA_RESTART: the kick is meant to make KVM_RUN return.
        let action = SigAction::new(
            SigHandler::Handler(kicked),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: The handler does nothing, which is async-signal-safe.
        unsafe { sigaction(KICK, &action) }.map_err(|errno| Error::Io {
            what: "sigaction",
            source: errno.into(),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let threads = vcpus
            .into_iter()
            .enumerate()
            .map(|(id, vcpu)| {
                let (vm, stop, failure, interrupted) = (
                    vm.clone(),
                    stop.clone(),
                    failure.clone(),
                    interrupted.clone(),
                );
                thread::Builder::new()
                    .name(format!("vcpu{id}"))
                    .spawn(move || {
                        let result = run(&vm, vcpu, &stop, interrupted.as_ref());
                        if let Err(e) = &result {
                            lock(&failure).get_or_insert_with(|| format!("vcpu{id}: {e}"));
                            // After releasing `failure`: waiters look at it with the
                            // report's lock held.
                            vm.devices().wake_waiters();
                        }
                        result
                    })
                    .map_err(|e| Error::Io {
                        what: "spawning a vCPU thread",
                        source: e,
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            vm,
            threads,
            stop,
            failure,
        })
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// Why the guest stopped on its own, if it did.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Stops every vCPU and returns their states in id order.
    pub fn stop(self) -> Result<Vec<VcpuState>> {
        self.stop.store(true, Ordering::SeqCst);
        // A kick that lands just before a thread enters KVM_RUN is lost: kick until each
        // thread has left.
        while self.threads.iter().any(|t| !t.is_finished()) {
            for t in self.threads.iter().filter(|t| !t.is_finished()) {
                // std's thread handle is an integer, libc's a pointer on musl: go through
                // usize. ESRCH: the thread finished meanwhile.
                let _ = pthread_kill(t.as_pthread_t() as usize as Pthread, KICK);
            }
            thread::sleep(Duration::from_millis(1));
        }
        let mut states = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            states.push(
                t.join()
                    .map_err(|_| Error::Guest("a vCPU thread panicked".into()))??,
            );
        }
        Ok(states)
    }
}

/// One vCPU's loop. Returns its state once told to stop.
fn run(
    vm: &Vm,
    mut vcpu: VcpuFd,
    stop: &AtomicBool,
    interrupted: &dyn Interrupted,
) -> Result<VcpuState> {
    loop {
        if stop.load(Ordering::SeqCst) {
            // Let KVM finish the instruction of the last I/O exit, so that the state is
            // that of an instruction boundary (KVM's API documentation, immediate_exit).
            vcpu.set_kvm_immediate_exit(1);
            let _ = vcpu.run();
            vcpu.set_kvm_immediate_exit(0);
            return vm.vcpu_state(&vcpu);
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                vm.devices().io_out(port, data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                vm.devices().io_in(port, data);
            }
            Ok(VcpuExit::Shutdown) => return Err(Error::Guest(triple_fault(&vcpu))),
            Ok(VcpuExit::Hlt) => return Err(Error::Guest("halted".into())),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(Error::Guest(format!(
                    "VM entry failed (reason {reason:#x}, cpu {cpu})"
                )))
            }
            Ok(VcpuExit::InternalError) => return Err(Error::Guest(internal_error(&mut vcpu))),
            Ok(exit) => return Err(Error::Guest(format!("unexpected exit {exit:?}"))),
            Err(e) if e.errno() == Errno::EINTR as i32 || e.errno() == Errno::EAGAIN as i32 => {
                interrupted.interrupted()?;
            }
            Err(e) => {
                return Err(Error::Kvm {
                    op: "KVM_RUN",
                    source: e,
                })
            }
        }
    }
}

/// What KVM's internal error says: its suberror (1 emulation failure, 2 simultaneous
/// exceptions, 3 an exit while delivering an event, 4 an unexpected exit reason) and data
/// (for 3 and 4: the exit reason and, where KVM gives them, the event being delivered and
/// the faulting guest physical address), and where the vCPU was.
fn internal_error(vcpu: &mut VcpuFd) -> String {
    let rip = vcpu.get_regs().map(|regs| regs.rip).unwrap_or_default();
    let run = vcpu.get_kvm_run();
    // SAFETY: After a KVM_EXIT_INTERNAL_ERROR exit, `internal` is the union's valid member.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let data: Vec<String> = internal.data[..(internal.ndata as usize).min(internal.data.len())]
        .iter()
        .map(|word| format!("{word:#x}"))
        .collect();
    format!(
        "KVM internal error (suberror {}, data [{}]) at rip {rip:#x}",
        internal.suberror,
        data.join(", ")
    )
}

/// What a triple fault looks like: where the vCPU was, and the last page fault's address.
fn triple_fault(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => format!(
            "shutdown (triple fault) at rip {:#x}, rsp {:#x}, cr2 {:#x}, cr3 {:#x}",
            regs.rip, regs.rsp, sregs.cr2, sregs.cr3
        ),
        _ => "shutdown (triple fault)".into(),
    }
}
