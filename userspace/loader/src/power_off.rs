//! Telling that the guest powered off.
//!
//! The loader's machine has no ACPI and no power-off device, so Linux's `poweroff` halts
//! instead (`reboot(2)` turns a power-off it cannot do into a halt): every CPU ends in
//! `stop_this_cpu()`, HLT with interrupts off, which only an NMI, SMI or INIT ends. KVM
//! handles HLT in the kernel with its in-kernel local APIC and never returns to the loader:
//! the vCPU threads would sleep in `KVM_RUN` for good. So a watcher kicks every vCPU thread
//! out of `KVM_RUN` every [`PERIOD`]; each thread, back in userspace, looks whether its
//! vCPU is halted with IF clear. When every vCPU is, at [`PROBES`] probes in a row, the
//! guest has powered off. One vCPU halted so is not enough: Linux parks a CPU taken
//! offline the same way while the others run on.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use kvm_bindings::KVM_MP_STATE_HALTED;
use kvm_ioctls::VcpuFd;

/// How often the watcher looks.
const PERIOD: Duration = Duration::from_millis(500);
/// How many looks in a row must find every vCPU halted with interrupts off.
const PROBES: u32 = 2;
/// How long a vCPU thread may take to look after its kick: one whose vCPU is halted
/// answers within a millisecond; one that does not answer in time is busy, not halted.
const ANSWER: Duration = Duration::from_millis(100);
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// What the watcher and the vCPU threads share.
pub struct PowerOff {
    /// The probe under way, counted from 1.
    probe: AtomicU64,
    /// Per vCPU: the last probe it answered.
    answered: Vec<AtomicU64>,
    /// Per vCPU: whether it was halted with interrupts off at its last answer.
    halted: Vec<AtomicBool>,
    /// Whether the guest has powered off.
    off: AtomicBool,
}

impl PowerOff {
    /// The state of a guest with `vcpus` vCPUs, running.
    pub fn new(vcpus: usize) -> Self {
        Self {
            probe: AtomicU64::new(0),
            answered: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
            halted: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            off: AtomicBool::new(false),
        }
    }

    /// Whether the guest has powered off.
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::SeqCst)
    }

    /// Called by vCPU `id`'s thread, out of `KVM_RUN` after a signal: looks at its vCPU for
    /// the probe under way.
    pub fn look(&self, id: usize, vcpu: &VcpuFd) {
        let probe = self.probe.load(Ordering::SeqCst);
        self.halted[id].store(halted_with_interrupts_off(vcpu), Ordering::SeqCst);
        self.answered[id].store(probe, Ordering::SeqCst);
    }

    /// The watcher's loop: every `period` ([`PERIOD`]), kicks every vCPU thread with `kick` and
    /// counts the probes in a row that found them all halted with interrupts off. Returns
    /// once the guest has powered off (true), or `stopped` says the machine stops (false).
    /// It waits parked: whoever stops the machine unparks it, so that it ends at once (the
    /// source stops the machine at the pause, whose downtime must not wait out a period).
    pub fn watch(
        &self,
        period: Duration,
        kick: impl Fn(usize),
        stopped: impl Fn() -> bool,
    ) -> bool {
        let mut in_a_row = 0;
        loop {
            // A spurious wakeup only makes this probe early.
            thread::park_timeout(period);
            if stopped() {
                return false;
            }
            let probe = self.probe.fetch_add(1, Ordering::SeqCst) + 1;
            let asked = Instant::now();
            // A kick that lands just before a thread enters KVM_RUN is lost: kick until
            // each thread has answered, or the time to answer is up.
            let answered = loop {
                let pending: Vec<usize> = (0..self.answered.len())
                    .filter(|&id| self.answered[id].load(Ordering::SeqCst) < probe)
                    .collect();
                if pending.is_empty() || stopped() {
                    break pending.is_empty();
                }
                if asked.elapsed() > ANSWER {
                    break false;
                }
                pending.into_iter().for_each(&kick);
                thread::sleep(Duration::from_millis(1));
            };
            let all_halted = answered && self.halted.iter().all(|h| h.load(Ordering::SeqCst));
            in_a_row = if all_halted { in_a_row + 1 } else { 0 };
            if in_a_row == PROBES {
                self.off.store(true, Ordering::SeqCst);
                return true;
            }
        }
    }
}

/// Whether `vcpu` is halted with interrupts off. Call from its thread, out of `KVM_RUN`.
fn halted_with_interrupts_off(vcpu: &VcpuFd) -> bool {
    vcpu.get_mp_state()
        .is_ok_and(|state| state.mp_state == KVM_MP_STATE_HALTED)
        && vcpu
            .get_regs()
            .is_ok_and(|regs| regs.rflags & RFLAGS_IF == 0)
}

/// Watches `power` on a thread of its own (see [`PowerOff::watch`]); calls `powered_off`
/// once the guest has powered off.
pub fn spawn_watcher(
    power: Arc<PowerOff>,
    kick: impl Fn(usize) + Send + 'static,
    stopped: impl Fn() -> bool + Send + 'static,
    powered_off: impl FnOnce() + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("power-off".into())
        .spawn(move || {
            if power.watch(PERIOD, kick, stopped) {
                powered_off();
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every kick as a vCPU whose halted state `halted` gives would.
    fn answer(power: &PowerOff, id: usize, halted: bool) {
        power.halted[id].store(halted, Ordering::SeqCst);
        power.answered[id].store(power.probe.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    #[test]
    fn every_vcpu_halted_with_interrupts_off_is_a_power_off() {
        let power = PowerOff::new(2);
        assert!(power.watch(PERIOD, |id| answer(&power, id, true), || false));
        assert!(power.is_off());
    }

    #[test]
    fn one_vcpu_still_running_is_no_power_off() {
        let power = PowerOff::new(2);
        let probes = AtomicU64::new(0);
        // Stops after 4 probes: vcpu1 runs on while vcpu0 is parked (a CPU taken offline).
        let stopped = || probes.load(Ordering::SeqCst) >= 4;
        let kick = |id| {
            if id == 1 {
                probes.fetch_add(1, Ordering::SeqCst);
            }
            answer(&power, id, id == 0);
        };
        assert!(!power.watch(PERIOD, kick, stopped));
        assert!(!power.is_off());
    }

    #[test]
    fn a_vcpu_that_does_not_answer_is_no_power_off() {
        let power = PowerOff::new(2);
        let probes = AtomicU64::new(0);
        let stopped = || probes.load(Ordering::SeqCst) >= 3;
        let kick = |id| {
            if id == 0 {
                probes.fetch_add(1, Ordering::SeqCst);
                answer(&power, 0, true);
            }
            // vcpu1 is busy in a fault: halted at its last answer, long ago.
            power.halted[1].store(true, Ordering::SeqCst);
        };
        assert!(!power.watch(PERIOD, kick, stopped));
    }

    #[test]
    fn a_watcher_told_to_stop_ends_at_once() {
        let power = Arc::new(PowerOff::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (watched, stopped) = (power.clone(), stop.clone());
        // A period of an hour: a watcher that waited it out would hang the test.
        let hour = Duration::from_secs(3600);
        let watcher =
            thread::spawn(move || watched.watch(hour, |_| {}, || stopped.load(Ordering::SeqCst)));
        stop.store(true, Ordering::SeqCst);
        watcher.thread().unpark();
        assert!(!watcher.join().expect("the watcher"));
    }

    #[test]
    fn a_halt_that_ends_between_probes_is_no_power_off() {
        let power = PowerOff::new(1);
        let probes = AtomicU64::new(0);
        let stopped = || probes.load(Ordering::SeqCst) >= 6;
        // Halted at every other probe: a guest idling with interrupts on in between.
        let kick = |id| {
            let n = probes.fetch_add(1, Ordering::SeqCst);
            answer(&power, id, n % 2 == 0);
        };
        assert!(!power.watch(PERIOD, kick, stopped));
    }
}
