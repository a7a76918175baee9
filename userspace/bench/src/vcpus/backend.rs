//! What backs the nested VM's memory, and who serves its faults: the ways `--vcpus`
//! compares. Each sets its memory up, serves faults while the vCPUs run, stops its
//! serving threads once they are done, and checks every page afterwards.

use std::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use muserload::{
    features, signal, Event, FaultMode, GuestMemory, Object, Staging, Wake, PAGE_SIZE,
};
use nix::{errno::Errno, sys::signal::Signal};
use serde::{Deserialize, Serialize};

use super::{
    guest,
    machine::{Machine, TakenFaults, VcpuRun},
};
use crate::{
    anon::Anon,
    handler_slot::HandlerSlot,
    roundtrip::{fill_fault, Kind, Replies, STAGING_SLOTS},
    uffd::{self, Userfaultfd},
    Error, Result,
};

/// The page locks over a run (muserload's `STATS`): each fault and load takes the locks of
/// the pages it touches.
#[derive(Clone, Copy, Serialize, Deserialize, Debug, Default)]
pub struct PagesLock {
    /// Times taken.
    pub taken: u64,
    /// Times found held by another thread.
    pub contended: u64,
    /// Time those waited, in nanoseconds.
    pub wait_ns: u64,
    /// Time the locks were held, in nanoseconds, over all takings.
    #[serde(default)]
    pub held_ns: u64,
}

impl PagesLock {
    fn of(object: &Object) -> Result<Self> {
        let stats = object.stats()?;
        Ok(Self {
            taken: stats.pages_lock_taken,
            contended: stats.pages_lock_contended,
            wait_ns: stats.pages_lock_wait_ns,
            held_ns: stats.pages_lock_held_ns,
        })
    }
}

/// A backend's run: each vCPU's, the vCPUs' TSC rate, and muserload's page locks.
pub struct Outcome {
    /// Each vCPU's run.
    pub runs: Vec<VcpuRun>,
    /// The vCPUs' TSC rate, in kHz.
    pub tsc_khz: u32,
    /// The page locks (muserload only).
    pub pages_lock: Option<PagesLock>,
}

/// The VM a case runs: its vCPUs, each one's slice, and how long they may take.
#[derive(Clone, Copy)]
pub struct Shape {
    /// The vCPUs.
    pub vcpus: usize,
    /// Pages per vCPU.
    pub slice_pages: usize,
    /// How long the vCPUs may take before those not done count as stuck.
    pub deadline: Duration,
}

impl Shape {
    fn pages(self) -> usize {
        self.vcpus * self.slice_pages
    }
}

/// Who reads the faults: one thread for the whole VM, or one per vCPU.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Readers {
    /// One thread.
    One,
    /// One thread per vCPU (userfaultfd: a descriptor per vCPU's slice, as
    /// `demand_paging_test` has them; muserload: threads resolving one object's faults).
    PerVcpu,
}

/// A way of backing the VM's memory.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Backend {
    /// Anonymous memory, no userfault: every page's first touch (the ceiling).
    FirstTouch,
    /// userfaultfd MISSING: `UFFDIO_COPY`, or `UFFDIO_MOVE` from staging.
    Userfaultfd(Readers, Kind),
    /// muserload queue mode: `MUSERLOAD_IOC_RESOLVE` loads each batch and reads the next.
    Queue(Readers, Kind),
    /// muserload signal mode: each vCPU thread loads its own page (`KVM_RUN` returns
    /// `EINTR`, entering again completes the access), the signal taken as [`Taking`] says.
    Signal(Kind, Taking),
}

/// How signal mode's vCPU thread takes its fault signal.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Taking {
    /// A handler runs and loads the page, on the thread's way out of `KVM_RUN`.
    Handler,
    /// Blocked outside `KVM_RUN`, taken by the vCPU loop with `sigtimedwait()` once
    /// `KVM_RUN` returned ([`muserload::vcpu_signal`]): no signal frame.
    InLoop,
    /// As [`Taking::InLoop`], and the loop maps the page it loaded into the VM before it
    /// enters again (`KVM_PRE_FAULT_MEMORY`): no second exit for the access.
    InLoopPreFault,
}

impl Backend {
    /// Every backend, in the order of the table.
    pub const ALL: [Backend; 11] = [
        Backend::FirstTouch,
        Backend::Userfaultfd(Readers::One, Kind::Copy),
        Backend::Userfaultfd(Readers::PerVcpu, Kind::Copy),
        Backend::Queue(Readers::One, Kind::Copy),
        Backend::Queue(Readers::PerVcpu, Kind::Copy),
        Backend::Signal(Kind::Copy, Taking::Handler),
        Backend::Signal(Kind::Copy, Taking::InLoop),
        Backend::Signal(Kind::Copy, Taking::InLoopPreFault),
        Backend::Userfaultfd(Readers::One, Kind::Move),
        Backend::Queue(Readers::One, Kind::Move),
        Backend::Signal(Kind::Move, Taking::InLoopPreFault),
    ];

    /// Its name in the table.
    pub fn name(self) -> String {
        let readers = |r: Readers, who: &str| match r {
            Readers::One => format!("1 {who}"),
            Readers::PerVcpu => format!("{who} per vCPU"),
        };
        let kind = |k: Kind| match k {
            Kind::Copy => "",
            Kind::Move => ", move",
        };
        match self {
            Backend::FirstTouch => "first touch (no userfault)".to_owned(),
            Backend::Userfaultfd(r, k) => {
                format!("userfaultfd, {}{}", readers(r, "reader"), kind(k))
            }
            Backend::Queue(r, k) => {
                format!("muserload queue, {}{}", readers(r, "resolver"), kind(k))
            }
            Backend::Signal(k, t) => format!(
                "muserload signal{}{}",
                match t {
                    Taking::Handler => ", handler",
                    Taking::InLoop => "",
                    Taking::InLoopPreFault => ", pre-fault",
                },
                kind(k)
            ),
        }
    }

    /// Whether it is muserload.
    pub fn is_muserload(self) -> bool {
        matches!(self, Backend::Queue(..) | Backend::Signal(..))
    }

    /// Runs the VM `shape` says on this backend; checks every page afterwards.
    pub fn run(self, shape: Shape) -> Result<Outcome> {
        let pages = shape.pages();
        match self {
            Backend::FirstTouch => {
                let memory = Anon::new(pages * PAGE_SIZE)?;
                memory.no_huge_pages()?;
                let (runs, tsc_khz) = run_machine(memory.as_ptr(), shape, false, None, || Ok(()))?;
                verify(self, memory.as_ptr(), pages, false)?;
                Ok(Outcome {
                    runs,
                    tsc_khz,
                    pages_lock: None,
                })
            }
            Backend::Userfaultfd(readers, kind) => userfaultfd(self, readers, kind, shape),
            Backend::Queue(readers, kind) => queue(self, readers, kind, shape),
            Backend::Signal(kind, taking) => signal_mode(self, kind, taking, shape),
        }
    }
}

/// Runs the machine over `memory`; `stop` ends the serving threads once the vCPUs are done
/// (or failed).
fn run_machine(
    memory: *mut u8,
    shape: Shape,
    loaded: bool,
    taken: Option<&TakenFaults<'_>>,
    stop: impl FnOnce() -> Result<()>,
) -> Result<(Vec<VcpuRun>, u32)> {
    let ran =
        Machine::new(memory, shape.vcpus, shape.slice_pages, loaded).and_then(|mut machine| {
            let runs = machine.run(shape.deadline, taken)?;
            Ok((runs, machine.tsc_khz()))
        });
    stop()?;
    ran
}

/// Checks every page of the VM's memory (`pages` pages at `memory`).
fn verify(backend: Backend, memory: *const u8, pages: usize, loaded: bool) -> Result<()> {
    for page in 0..pages {
        // SAFETY: The page lies in the backend's mapping, present after the run.
        let data = unsafe { std::slice::from_raw_parts(memory.add(page * PAGE_SIZE), PAGE_SIZE) };
        if !guest::page_holds((page * PAGE_SIZE) as u64, data, loaded) {
            return Err(Error::VcpusMismatch {
                backend: backend.name(),
                page,
            });
        }
    }
    Ok(())
}

/// How long a userfaultfd reader polls before it looks whether the vCPUs are done.
const POLL: Duration = Duration::from_millis(50);

fn userfaultfd(backend: Backend, readers: Readers, kind: Kind, shape: Shape) -> Result<Outcome> {
    let Shape {
        vcpus, slice_pages, ..
    } = shape;
    let pages = shape.pages();
    let source = guest::source(pages);
    let region = Anon::new(pages * PAGE_SIZE)?;
    region.no_huge_pages()?;
    let features = match kind {
        Kind::Copy => 0,
        Kind::Move => uffd::FEATURE_MOVE,
    };
    let ranges: Vec<(usize, usize)> = match readers {
        Readers::One => vec![(0, pages)],
        Readers::PerVcpu => (0..vcpus).map(|v| (v * slice_pages, slice_pages)).collect(),
    };
    let uffds = ranges
        .iter()
        .map(|&(first, count)| {
            let uffd = Userfaultfd::new(features)?;
            uffd.register(region.addr(first * PAGE_SIZE), (count * PAGE_SIZE) as u64)?;
            Ok(uffd)
        })
        .collect::<Result<Vec<_>>>()?;
    let done = AtomicBool::new(false);
    let (runs, tsc_khz) = thread::scope(|s| {
        let serving: Vec<_> = uffds
            .iter()
            .map(|uffd| {
                let (region, source, done) = (&region, &source, &done);
                s.spawn(move || serve_uffd(uffd, region, source, kind, done))
            })
            .collect();
        run_machine(region.as_ptr(), shape, true, None, || {
            done.store(true, Ordering::Release);
            for reader in serving {
                reader
                    .join()
                    .map_err(|_| Error::Thread("userfaultfd reader"))??;
            }
            Ok(())
        })
    })?;
    verify(backend, region.as_ptr(), pages, true)?;
    Ok(Outcome {
        runs,
        tsc_khz,
        pages_lock: None,
    })
}

/// A userfaultfd reader: copies (or moves) in each faulting page until `done`.
fn serve_uffd(
    uffd: &Userfaultfd,
    region: &Anon,
    source: &[u8],
    kind: Kind,
    done: &AtomicBool,
) -> Result<()> {
    let staging = Anon::new(STAGING_SLOTS * PAGE_SIZE)?;
    let mut batch = [0u64; 16];
    let mut served = 0;
    while !done.load(Ordering::Acquire) {
        let n = uffd.next_faults(&mut batch, Some(POLL))?;
        for &fault in &batch[..n] {
            match fill_fault(uffd, region, &staging, source, fault, kind, served) {
                // Another fault on the page, read before the first one's fill: filled.
                Err(Error::Uffd {
                    errno: Errno::EEXIST,
                    ..
                }) => {}
                other => other?,
            }
            served += 1;
        }
    }
    Ok(())
}

fn queue(backend: Backend, readers: Readers, kind: Kind, shape: Shape) -> Result<Outcome> {
    let pages = shape.pages();
    let source = guest::source(pages);
    let resolvers = match readers {
        Readers::One => 1,
        Readers::PerVcpu => shape.vcpus,
    };
    let staging_pages = match kind {
        Kind::Copy => 0,
        Kind::Move => resolvers * STAGING_SLOTS,
    };
    let object = Object::create(
        (pages * PAGE_SIZE) as u64,
        (staging_pages * PAGE_SIZE) as u64,
        features::QUEUE | features::MOVE | features::RESOLVE,
    )?;
    let guest = object.map_guest()?;
    object.arm(&guest, 0, guest.len() as u64, FaultMode::Queue)?;
    // Held for as long as the resolvers run: closing it would abort the object.
    let _events = object.events(false)?;
    let (runs, tsc_khz) = thread::scope(|s| {
        let serving: Vec<_> = (0..resolvers)
            .map(|r| {
                let (object, guest, source) = (&object, &guest, &source);
                s.spawn(move || -> Result<()> {
                    let staging = match kind {
                        Kind::Copy => None,
                        Kind::Move => Some(object.map_staging()?),
                    };
                    resolve(object, guest, staging, r * STAGING_SLOTS, source)
                })
            })
            .collect();
        run_machine(guest.as_ptr(), shape, true, None, || {
            // The vCPUs are done (or failed): the resolvers, waiting for faults, end.
            object.abort()?;
            for resolver in serving {
                resolver.join().map_err(|_| Error::Thread("resolver"))??;
            }
            Ok(())
        })
    })?;
    verify(backend, guest.as_ptr(), pages, true)?;
    Ok(Outcome {
        runs,
        tsc_khz,
        pages_lock: Some(PagesLock::of(&object)?),
    })
}

/// A queue-mode resolver: loads each batch of faults it read in the call that reads the
/// next, until the object is aborted. Moves go through staging slots `first_slot..` of its
/// own mapping of staging.
fn resolve(
    object: &Object,
    guest: &GuestMemory,
    mut staging: Option<Staging>,
    first_slot: usize,
    source: &[u8],
) -> Result<()> {
    let mut batch = [Event::default(); 16];
    let mut replies = Replies::new(source, first_slot, batch.len());
    loop {
        let loads = replies.loads(staging.as_mut());
        let n = object.resolve(guest, loads, Wake::Now, &mut batch, true)?;
        if n == 0 {
            return Ok(());
        }
        replies.answer(&batch[..n], staging.as_mut())?;
    }
}

/// What signal mode's vCPU threads load from and into.
struct SignalTarget {
    object: Object,
    guest: GuestMemory,
    /// For MOVE: a mapping of staging per vCPU, slot `vcpu` of which only that vCPU's
    /// thread touches.
    staging: Vec<VcpuStaging>,
    source: Vec<u8>,
    slice_bytes: u64,
}

/// Staging that only one vCPU thread touches.
struct VcpuStaging(UnsafeCell<Staging>);

// SAFETY: Only one vCPU thread touches it (the vCPU whose slice faulted), one load at a
// time: a handler does not nest in itself (its signal is blocked while it runs), and the
// vCPU loop loads between its runs.
unsafe impl Sync for VcpuStaging {}

impl SignalTarget {
    /// Loads the page at `address`, in the thread of the vCPU whose slice holds it, and
    /// returns its guest physical address; an address outside this run's memory loads
    /// nothing (the access fails again, and the run with it).
    fn load(&self, address: u64) -> muserload::Result<Option<u64>> {
        let offset = address.wrapping_sub(self.guest.as_ptr() as u64) & !(PAGE_SIZE as u64 - 1);
        let Some(data) = self
            .source
            .get(offset as usize..offset as usize + PAGE_SIZE)
        else {
            return Ok(None);
        };
        let vcpu = (offset / self.slice_bytes) as usize;
        match self.staging.get(vcpu) {
            None => self
                .object
                .load_copy(&self.guest, offset, data, Wake::Now)?,
            Some(staging) => {
                // SAFETY: Only this vCPU's thread touches its staging (`VcpuStaging`).
                let staging = unsafe { &mut *staging.0.get() };
                staging.slot_mut(vcpu)?.copy_from_slice(data);
                self.object
                    .load_move(&self.guest, offset, staging, vcpu, 1, Wake::Now)?
            }
        };
        // The memory is the VM's from guest physical address 0 on.
        Ok(Some(offset))
    }
}

static SIGNAL_TARGET: HandlerSlot<SignalTarget> = HandlerSlot::new();
const SIGNAL: Signal = Signal::SIGUSR1;

/// Signal mode's handler ([`Taking::Handler`]), in the vCPU thread whose access faulted:
/// loads the page. A load that fails leaves it to fault again.
fn load_in_handler(address: u64) {
    // SAFETY: A handler of a fault of the run that installed the target.
    if let Some(target) = unsafe { SIGNAL_TARGET.get() } {
        let _ = target.load(address);
    }
}

fn signal_mode(backend: Backend, kind: Kind, taking: Taking, shape: Shape) -> Result<Outcome> {
    let Shape {
        vcpus, slice_pages, ..
    } = shape;
    let pages = shape.pages();
    let (staging_pages, features) = match kind {
        Kind::Copy => (0, features::SIGNAL),
        Kind::Move => (vcpus, features::SIGNAL | features::MOVE),
    };
    let object = Object::create(
        (pages * PAGE_SIZE) as u64,
        (staging_pages * PAGE_SIZE) as u64,
        features,
    )?;
    let guest = object.map_guest()?;
    let staging = match kind {
        Kind::Copy => Vec::new(),
        Kind::Move => (0..vcpus)
            .map(|_| Ok(VcpuStaging(UnsafeCell::new(object.map_staging()?))))
            .collect::<Result<_>>()?,
    };
    object.arm(
        &guest,
        0,
        guest.len() as u64,
        FaultMode::Signal(SIGNAL as i32),
    )?;
    let installed = SIGNAL_TARGET.install(SignalTarget {
        object,
        guest,
        staging,
        source: guest::source(pages),
        slice_bytes: (slice_pages * PAGE_SIZE) as u64,
    });
    let target = installed.target();
    let memory = target.guest.as_ptr();
    let load = |address| Ok(target.load(address)?);
    let (runs, tsc_khz) = match taking {
        Taking::Handler => {
            signal::install(SIGNAL, load_in_handler)?;
            run_machine(memory, shape, true, None, || Ok(()))?
        }
        Taking::InLoop | Taking::InLoopPreFault => {
            let taken = TakenFaults {
                signal: SIGNAL,
                load: &load,
                pre_fault: taking == Taking::InLoopPreFault,
            };
            run_machine(memory, shape, true, Some(&taken), || Ok(()))?
        }
    };
    verify(backend, memory, pages, true)?;
    Ok(Outcome {
        runs,
        tsc_khz,
        pages_lock: Some(PagesLock::of(&target.object)?),
    })
}
