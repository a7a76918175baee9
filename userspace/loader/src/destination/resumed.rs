//! The guest resumed here: its VM built from the machine state, the loading threads
//! started, its vCPUs restored and running; then every page loaded (recovering the link if
//! it breaks), the guest's checks of its memory awaited, and the report made.

use std::{
    net::TcpListener,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use super::{arrival::Arrival, error::ReceiveError, faults, loading::Loading, Mode};
use crate::{
    devices::TestReport,
    lock::lock,
    protocol::{Control, Kind},
    report::DestinationReport,
    vcpu::Machine,
    vm::{MachineState, Vm},
};

/// The guest, running here, and the loading of its pages.
pub(super) struct Resumed {
    /// Its VM.
    vm: Arc<Vm>,
    /// What the loading threads share.
    pub loading: Arc<Loading>,
    /// Its running vCPUs.
    machine: Machine,
    /// What the guest had reported when it was paused at the source.
    before: TestReport,
    /// When it resumed here.
    at: Instant,
    /// What came before, for the report.
    summary: ArrivalSummary,
}

/// How long the loading took.
pub(super) struct LoadTimes {
    /// From the guest's resumption to every page loaded.
    pub load_all: Duration,
    /// From the source's first connection to every page loaded.
    pub total: Duration,
}

/// The guest, stopped after its checks of its memory here: what the report and the verdict
/// are made of.
pub(super) struct Stopped {
    /// Its VM.
    pub vm: Arc<Vm>,
    /// What the loading threads shared.
    pub loading: Arc<Loading>,
    /// What came before the guest resumed, for the report.
    summary: ArrivalSummary,
    /// What the guest had reported when it was paused at the source.
    before: TestReport,
    /// Its report when it was stopped.
    after: TestReport,
    /// What it was to do here before it was stopped.
    task: Task,
    /// Whether it had powered off.
    powered_off: bool,
}

/// What the guest was to do here before the destination stopped it, within `timeout`.
#[derive(Clone, Copy)]
enum Task {
    /// Check all its memory `wanted` times: reach `target` complete checks (sweeps),
    /// counted from its start.
    Check {
        wanted: u64,
        target: u64,
        timeout: Duration,
    },
    /// Power off.
    PowerOff { timeout: Duration },
}

impl Resumed {
    /// Builds the VM from `arrival`, starts the loading threads (faults served in `mode`)
    /// and resumes the vCPUs; tells the source the guest runs here.
    pub fn start(arrival: Arrival, mode: Mode) -> Result<Self, ReceiveError> {
        let summary = ArrivalSummary {
            kind: arrival.kind,
            mode,
            precopy_pages: arrival.precopy.pages,
            discarded: arrival.discarded,
        };
        let MachineState {
            vcpus,
            vm: vm_state,
            clock,
            devices,
            ..
        } = arrival.machine;
        let vm = Arc::new(Vm::with_devices(
            arrival.ram,
            Box::new(std::io::stdout()),
            devices,
        )?);
        vm.set_state(&vm_state)?;
        // Before the vCPUs, whose TSCs follow it. The guest's clocks then count the wall-clock
        // time from the source's pause on: when exactly the vCPUs resume does not matter.
        let clock = vm.resume_clock(&clock)?;

        // Faults are served from here on: restoring a vCPU already touches guest pages (KVM
        // maps the kvmclock and steal-time pages when their MSRs are set).
        let loading = Arc::new(Loading::new(vm.clone(), arrival.zero, arrival.loaded));
        loading
            .counters
            .bytes
            .fetch_add(arrival.precopy.bytes, Ordering::Relaxed);
        let interrupted = faults::serve_faults(&loading, mode)?;
        loading.spawn("zero-loader", Loading::load_zero_pages)?;
        loading.connect(arrival.stream, arrival.requests)?;
        // The protocol allows no more vCPUs than there are ids.
        let vcpus = (0..=u8::MAX)
            .zip(&vcpus)
            .map(|(id, state)| vm.restore_vcpu(id, state, &clock, interrupted.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;

        let before = vm.devices().report();
        vm.devices().resume_interrupts()?;
        let machine = Machine::start(vm.clone(), vcpus, interrupted)?;
        let at = Instant::now();
        loading.send(&Control::Resumed)?;
        Ok(Self {
            vm,
            loading,
            machine,
            before,
            at,
            summary,
        })
    }

    /// Waits until every page is loaded, taking the source's reconnections on `listener`
    /// for up to `recover_timeout` each; then tells the source it may go. `accepted`: when
    /// the source first connected. If pages will not come, stops the guest.
    pub fn load_all(
        &self,
        listener: &TcpListener,
        recover_timeout: Duration,
        accepted: Instant,
    ) -> Result<LoadTimes, ReceiveError> {
        let waited = self
            .loading
            .wait_all_loaded(&self.machine, listener, recover_timeout);
        if let Err(e) = waited {
            // Pages will not come: vCPUs waiting on one get SIGBUS from the module's ABORT
            // (in queue mode) or give up (in signal mode), and exiting stops the guest.
            self.loading.outcome.abandon();
            let _ = self.vm.ram().object().abort();
            return Err(e);
        }
        let times = LoadTimes {
            load_all: self.at.elapsed(),
            total: accepted.elapsed(),
        };
        self.loading.send(&Control::Done)?;
        self.loading.outcome.finish();
        Ok(times)
    }

    /// Lets the guest make `sweeps` complete checks of its memory here, within `timeout`,
    /// then stops it.
    pub fn check(self, sweeps: u64, timeout: Duration) -> Result<Stopped, ReceiveError> {
        // A sweep under way at the switch began before it: the first complete one here is
        // the second to end. 0: stop once every page is loaded.
        let target = match sweeps {
            0 => self.before.sweeps,
            n => self.before.sweeps + n + 1,
        };
        let task = Task::Check {
            wanted: sweeps,
            target,
            timeout,
        };
        self.run(task, |r| r.sweeps >= target)
    }

    /// Lets the guest run until it powers off, within `timeout`, then stops it.
    pub fn run_until_power_off(self, timeout: Duration) -> Result<Stopped, ReceiveError> {
        self.run(Task::PowerOff { timeout }, |_| false)
    }

    /// Runs the guest until `done` holds for its report, it finds a page with wrong
    /// content, it powers off, or the time `task` gives is up; then stops it.
    fn run(self, task: Task, done: impl Fn(&TestReport) -> bool) -> Result<Stopped, ReceiveError> {
        let machine = &self.machine;
        let timeout = match task {
            Task::Check { timeout, .. } | Task::PowerOff { timeout } => timeout,
        };
        let after = self.vm.devices().wait_report(timeout, |r| {
            done(r) || r.mismatches > 0 || machine.failure().is_some() || machine.powered_off()
        });
        if let Some(failure) = machine.failure() {
            return Err(failure.into());
        }
        let powered_off = machine.powered_off();
        if powered_off {
            eprintln!("muserload-loader: the guest powered off");
        }
        self.machine.stop()?;
        Ok(Stopped {
            vm: self.vm,
            loading: self.loading,
            summary: self.summary,
            before: self.before,
            after,
            task,
            powered_off,
        })
    }
}

impl Stopped {
    /// The report of the migration, given how long the loading took.
    pub fn report(&self, times: &LoadTimes) -> Result<DestinationReport, ReceiveError> {
        let arrival = &self.summary;
        let stats = self.vm.ram().object().stats()?;
        let source = *lock(&self.loading.source_times);
        let (recoveries, disconnected_ms) = {
            let link = lock(&self.loading.link);
            (link.recoveries, link.disconnected_ms)
        };
        let (p50, p99, max) = percentiles(&mut self.loading.timeline.waits_us());
        let (pages, counters) = (&self.loading.pages, &self.loading.counters);
        let reports = self.after.reports();
        Ok(DestinationReport {
            kind: arrival.kind,
            precopy_rounds: source.rounds,
            precopy_pages: arrival.precopy_pages,
            discarded_pages: arrival.discarded,
            mode: format!("{:?}", arrival.mode).to_lowercase(),
            total_ms: times.total.as_millis() as u64,
            downtime_us: source.downtime_us,
            setup_us: source.setup_us,
            load_all_ms: times.load_all.as_millis() as u64,
            bytes_received: counters.bytes.load(Ordering::Relaxed),
            zero_pages: pages.zero.count(),
            normal_pages: pages.len() - pages.zero.count(),
            pages_requested: pages.requested.count(),
            pages_streamed: counters.streamed.load(Ordering::Relaxed),
            pages_duplicate: counters.duplicates.load(Ordering::Relaxed),
            faults: counters.faults.load(Ordering::Relaxed),
            module_faults: stats.faults_queue_user
                + stats.faults_queue_kernel
                + stats.faults_signal_user
                + stats.faults_signal_kernel,
            fault_wait_p50_us: p50,
            fault_wait_p99_us: p99,
            fault_wait_max_us: max,
            guest_rounds_here: reports.then_some(self.after.rounds - self.before.rounds),
            guest_sweeps_here: reports.then_some(self.after.sweeps - self.before.sweeps),
            guest_mismatches: reports.then_some(self.after.mismatches),
            recoveries,
            disconnected_ms,
        })
    }

    /// Whether the guest passed: no page with wrong content, and every check made, or the
    /// power-off, in time.
    pub fn verdict(&self) -> Result<(), ReceiveError> {
        if self.after.mismatches > 0 {
            return Err(ReceiveError::Mismatch {
                count: self.after.mismatches,
                first: self.after.first_mismatch.unwrap_or(0),
            });
        }
        match self.task {
            Task::Check { target, .. } if self.after.sweeps >= target => Ok(()),
            Task::Check { wanted, .. } if self.powered_off => {
                Err(ReceiveError::PoweredOffUnchecked { sweeps: wanted })
            }
            Task::Check {
                wanted, timeout, ..
            } => Err(ReceiveError::Unchecked {
                sweeps: wanted,
                timeout,
            }),
            Task::PowerOff { .. } if self.powered_off => Ok(()),
            Task::PowerOff { timeout } => Err(ReceiveError::NotPoweredOff { timeout }),
        }
    }
}

/// What the report needs of what came before the guest resumed.
struct ArrivalSummary {
    /// The kind of migration.
    kind: Kind,
    /// The fault mode.
    mode: Mode,
    /// Pages pre-copy brought.
    precopy_pages: u64,
    /// Pages pre-copy brought that were stale at the switch.
    discarded: u64,
}

/// The median, 99th percentile and maximum of `samples`.
fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    if samples.is_empty() {
        return (0, 0, 0);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}
