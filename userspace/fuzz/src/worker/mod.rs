//! A worker thread: random operations on the round's object, each checked against what
//! the ABI promises, every load and arm logged for the round's checker (`round::check`,
//! which decides with the shadow model of `model` whether any page was lost, duplicated or
//! stale).
//!
//! The operations, by family, one module each:
//! - [`loads`]: COPY, ZERO and MOVE, ranged or vectored, with DONTWAKE and WAKE;
//! - [`arm`]: arms in queue or signal mode;
//! - [`access`]: user- and kernel-mode accesses to guest memory, and forked children that
//!   make them;
//! - [`mappings`]: the thread's own mappings of guest memory and staging, mapped, split,
//!   moved, shrunk and protected, and where the other operations find a page;
//! - [`events`]: the worker's `MUSERLOAD_IOC_RESOLVE`, and `poll()` of the events;
//! - [`object`]: the object as a whole: another descriptor, STATS, ABORT;
//! - [`invalid`]: calls the module must refuse.
//!
//! This module holds what they share: the round and process they work on, the thread's
//! state, the choice of operation by weight, and how a check that fails is reported.

mod access;
mod arm;
mod events;
mod invalid;
mod loads;
mod mappings;
mod object;

use std::os::fd::RawFd;

pub use arm::arm_flags;
use mappings::Extra;

use crate::{rng::Rng, shared::Shared, sys, target::EXTRAS};

/// What every worker of a round knows about it.
#[derive(Clone, Copy)]
pub struct Round {
    /// The round's number and seed.
    pub number: u64,
    /// See `number`.
    pub seed: u64,
    /// The object.
    pub fd: RawFd,
    /// Its events descriptor (this process's copy).
    pub events: RawFd,
    /// The main guest mapping, all of guest memory, mapped in every process.
    pub guest: usize,
    /// Guest pages.
    pub pages: usize,
    /// The staging mapping.
    pub staging: usize,
    /// Staging slots per thread (thread `i` owns slots `i * slots..(i + 1) * slots`).
    pub slots: usize,
    /// The signals of signal mode.
    pub signals: [i32; 2],
    /// Allocations may fail (fault injection is on): ENOMEM is a valid answer.
    pub inject: bool,
}

/// Resources a worker process shares among its threads.
pub struct Process {
    /// Held (read) from a DONTWAKE load to its WAKE, and (write) to exit the process: an
    /// exit in between would leave the load's waiters, in other processes, asleep for
    /// good, as the ABI says of a caller that never wakes.
    pub no_exit: std::sync::RwLock<()>,
    /// Another object, mapped: addresses in it are never this round's object's.
    pub other: usize,
    /// A page mapped PROT_NONE: an address nothing can be read from or written to.
    pub hole: usize,
}

/// A worker thread.
pub struct Worker<'a> {
    /// The run's shared state: the log, the tags, the counters.
    shared: &'static Shared,
    /// The round it works on.
    round: &'a Round,
    /// What its process's threads share.
    process: &'a Process,
    /// Its choices, from the round's seed and its number.
    rng: Rng,
    /// Its number across the round's processes, which also says which staging slots are
    /// its own.
    thread: usize,
    /// A pipe that kernel-mode reads of guest memory write into (read end, write end).
    pipe: (RawFd, RawFd),
    /// Its extra mappings of guest memory, by slot (as `target` knows them).
    extras: [Option<Extra>; EXTRAS],
    /// Its second mapping of some of its staging slots.
    staging_extra: Option<Extra>,
}

/// The operations, with their weights.
pub const OPS: &[(Op, u32)] = &[
    (Op::Copy, 14),
    (Op::Zero, 5),
    (Op::Move, 10),
    (Op::Loadv, 6),
    (Op::Resolve, 5),
    (Op::Wake, 3),
    (Op::Arm, 5),
    (Op::TouchRead, 8),
    (Op::TouchWrite, 6),
    (Op::KernelRead, 6),
    (Op::KernelWrite, 3),
    (Op::ForkToucher, 1),
    (Op::MapExtra, 3),
    (Op::UnmapExtra, 2),
    (Op::RemapExtra, 2),
    (Op::ProtectExtra, 2),
    (Op::MapStaging, 1),
    (Op::DupClose, 1),
    (Op::Stats, 2),
    (Op::PollEvents, 1),
    (Op::Invalid, 8),
    (Op::Yield, 1),
];

/// An operation of a worker thread (its family's module says what it checks).
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// A ranged COPY of new tags ([`loads`]).
    Copy,
    /// A ranged ZERO ([`loads`]).
    Zero,
    /// A ranged MOVE from the thread's staging slots ([`loads`]).
    Move,
    /// A vectored COPY, ZERO or MOVE ([`loads`]).
    Loadv,
    /// A RESOLVE that never waits, and the events it reads served ([`events`]).
    Resolve,
    /// A WAKE of random pages ([`loads`]).
    Wake,
    /// An arm in queue or signal mode ([`arm`]).
    Arm,
    /// A user-mode read ([`access`]).
    TouchRead,
    /// A user-mode write that changes nothing ([`access`]).
    TouchWrite,
    /// A kernel-mode read: `write()` from guest memory ([`access`]).
    KernelRead,
    /// A kernel-mode write that cannot wait: `FUTEX_WAKE_OP` ([`access`]).
    KernelWrite,
    /// A forked child that touches pages and exits, or is killed ([`access`]).
    ForkToucher,
    /// A new extra mapping of guest pages ([`mappings`]).
    MapExtra,
    /// munmap of an extra mapping, whole or in part ([`mappings`]).
    UnmapExtra,
    /// mremap of an extra mapping: moved, shrunk, or grown (refused) ([`mappings`]).
    RemapExtra,
    /// mprotect of an extra mapping ([`mappings`]).
    ProtectExtra,
    /// A second mapping of staging slots, or its munmap ([`mappings`]).
    MapStaging,
    /// A second descriptor of the object, used and closed ([`object`]).
    DupClose,
    /// STATS ([`object`]).
    Stats,
    /// `poll()` of the events descriptor ([`events`]).
    PollEvents,
    /// A call the module must refuse ([`invalid`]).
    Invalid,
    /// Gives the CPU to another thread, so that the others' calls interleave differently.
    Yield,
}

impl<'a> Worker<'a> {
    /// Worker `thread` (numbered across the round's processes) of `round`.
    pub fn new(
        shared: &'static Shared,
        round: &'a Round,
        process: &'a Process,
        thread: usize,
    ) -> Result<Self, i32> {
        Ok(Self {
            shared,
            round,
            process,
            rng: Rng::new(round.seed, thread as u64 + 1),
            thread,
            pipe: sys::pipe()?,
            extras: [None; EXTRAS],
            staging_extra: None,
        })
    }

    /// Runs up to `ops` operations (fewer if the run stops, the log fills or the
    /// process is told to exit).
    pub fn run(mut self, ops: u64) {
        let weights: Vec<u32> = OPS.iter().map(|&(_, w)| w).collect();
        for _ in 0..ops {
            if !self.shared.op() || self.shared.log_full() {
                break;
            }
            // Rare events that end a post-copy, or this process, at a random moment.
            if self.rng.one_in(4000) {
                self.abort();
            }
            if self.rng.one_in(20000) {
                let _all = self.process.no_exit.write();
                sys::exit_now(0);
            }
            let op = OPS[self.rng.pick(&weights)].0;
            let start = std::time::Instant::now();
            self.step(op);
            let nanos = start.elapsed().as_nanos() as u64;
            self.shared.op_count[op as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.shared.op_nanos[op as usize]
                .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        }
        self.unmap_all();
        sys::close(self.pipe.0);
        sys::close(self.pipe.1);
    }

    /// Does `op`.
    fn step(&mut self, op: Op) {
        crate::shared::set_context(op as u8 + 1);
        match op {
            Op::Copy => self.copy(),
            Op::Zero => self.zero(),
            Op::Move => self.move_pages(),
            Op::Loadv => self.loadv(),
            Op::Resolve => self.resolve(),
            Op::Wake => self.wake_random(),
            Op::Arm => self.arm(),
            Op::TouchRead => self.touch(false),
            Op::TouchWrite => self.touch(true),
            Op::KernelRead => self.kernel_read(),
            Op::KernelWrite => self.kernel_write(),
            Op::ForkToucher => self.fork_toucher(),
            Op::MapExtra => self.map_extra(),
            Op::UnmapExtra => self.unmap_random_extra(),
            Op::RemapExtra => self.remap_extra(),
            Op::ProtectExtra => self.protect_extra(),
            Op::MapStaging => self.map_staging(),
            Op::DupClose => self.dup_close(),
            Op::Stats => self.stats(),
            Op::PollEvents => self.poll_events(),
            Op::Invalid => self.invalid(),
            Op::Yield => std::thread::yield_now(),
        }
    }

    /// Reports a failed check, with what it takes to run the round again.
    fn fail(&self, what: std::fmt::Arguments<'_>) {
        self.shared.fail(format_args!(
            "round {} (seed {:#x}) thread {}: {what}",
            self.round.number, self.round.seed, self.thread
        ));
    }

    /// Whether `errno` is one of `expected`, or ENOMEM while allocations may fail.
    fn allowed(&self, errno: i32, expected: &[i32]) -> bool {
        if self.round.inject && errno == libc::ENOMEM {
            self.shared
                .enomem
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        expected.contains(&errno)
    }
}
