// SPDX-License-Identifier: GPL-2.0

//! Per-object statistics: `MUSERLOAD_IOC_STATS`.
//!
//! Plain relaxed atomics, updated where things happen and read without a lock: a snapshot
//! is not one instant, which counters do not need.

use crate::uapi::{
    muserload_stats,
    MUSERLOAD_WAIT_HIST_BUCKETS, //
};
use kernel::sync::atomic::{
    Atomic,
    Relaxed, //
};

const HIST: usize = MUSERLOAD_WAIT_HIST_BUCKETS as usize;

/// Declares [`Counter`] from one list of counters, and [`COUNTERS`], how many there are:
/// a counter added to the list is counted, so it always indexes inside `Stats::counters`.
macro_rules! counters {
    ($($name:ident),+ $(,)?) => {
        /// The kinds of events a counter counts.
        #[derive(Clone, Copy)]
        pub(crate) enum Counter {
            $($name),+
        }

        /// How many counters there are.
        const COUNTERS: usize = [$(Counter::$name),+].len();
    };
}

counters! {
    FaultSignalUser,
    FaultSignalKernel,
    FaultQueueUser,
    FaultQueueKernel,
    FaultWait,
    LoadMove,
    LoadCopy,
    LoadZero,
    Wake,
    Eexist,
    PagesLockTaken,
    PagesLockContended,
}

/// The statistics of one object.
pub(crate) struct Stats {
    counters: [Atomic<u64>; COUNTERS],
    unloaded: Atomic<u64>,
    waiters: Atomic<u64>,
    wait_ns_total: Atomic<u64>,
    wait_ns_max: Atomic<u64>,
    wait_hist: [Atomic<u64>; HIST],
    pages_lock_wait_ns: Atomic<u64>,
    pages_lock_held_ns: Atomic<u64>,
}

impl Stats {
    pub(crate) const fn new() -> Self {
        Self {
            counters: [const { Atomic::new(0) }; COUNTERS],
            unloaded: Atomic::new(0),
            waiters: Atomic::new(0),
            wait_ns_total: Atomic::new(0),
            wait_ns_max: Atomic::new(0),
            wait_hist: [const { Atomic::new(0) }; HIST],
            pages_lock_wait_ns: Atomic::new(0),
            pages_lock_held_ns: Atomic::new(0),
        }
    }

    /// Adds `n` to `counter`.
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].add(n, Relaxed);
    }

    /// Takes back `n` of `counter` (what it counted did not happen after all).
    pub(crate) fn sub(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_sub(n, Relaxed);
    }

    /// Pages armed and not loaded: `n` more.
    pub(crate) fn armed(&self, n: u64) {
        self.unloaded.add(n, Relaxed);
    }

    /// Pages armed and not loaded: `n` fewer.
    pub(crate) fn loaded(&self, n: u64) {
        self.unloaded.fetch_sub(n, Relaxed);
    }

    /// A thread starts waiting for a page.
    pub(crate) fn wait_begin(&self) {
        self.add(Counter::FaultWait, 1);
        self.waiters.add(1, Relaxed);
    }

    /// A thread stops waiting after `ns` nanoseconds.
    pub(crate) fn wait_end(&self, ns: u64) {
        self.waiters.fetch_sub(1, Relaxed);
        self.wait_ns_total.add(ns, Relaxed);
        let mut max = self.wait_ns_max.load(Relaxed);
        while ns > max {
            match self.wait_ns_max.cmpxchg(max, ns, Relaxed) {
                Ok(_) => break,
                Err(now) => max = now,
            }
        }
        let us = ns / 1000;
        let bucket = if us == 0 { 0 } else { us.ilog2() as usize };
        self.wait_hist[bucket.min(HIST - 1)].add(1, Relaxed);
    }

    /// A run of `taken` page slots was locked (`slots.rs`), `contended` of them held by
    /// another thread, which took `wait_ns` to wait for. Once per run: a fault's or a load's
    /// run pays one shared counter, not one per page.
    pub(crate) fn pages_locked(&self, taken: u64, contended: u64, wait_ns: u64) {
        self.add(Counter::PagesLockTaken, taken);
        if contended > 0 {
            self.add(Counter::PagesLockContended, contended);
            self.pages_lock_wait_ns.add(wait_ns, Relaxed);
        }
    }

    /// `pages` page slots were unlocked, each held for `held_ns`.
    pub(crate) fn pages_unlocked(&self, pages: u64, held_ns: u64) {
        self.pages_lock_held_ns.add(pages * held_ns, Relaxed);
    }

    /// A snapshot for userspace.
    pub(crate) fn snapshot(&self) -> muserload_stats {
        let c = |counter: Counter| self.counters[counter as usize].load(Relaxed);
        muserload_stats {
            faults_signal_user: c(Counter::FaultSignalUser),
            faults_signal_kernel: c(Counter::FaultSignalKernel),
            faults_queue_user: c(Counter::FaultQueueUser),
            faults_queue_kernel: c(Counter::FaultQueueKernel),
            fault_waits: c(Counter::FaultWait),
            loads_move: c(Counter::LoadMove),
            loads_copy: c(Counter::LoadCopy),
            loads_zero: c(Counter::LoadZero),
            wakes: c(Counter::Wake),
            eexist: c(Counter::Eexist),
            unloaded: self.unloaded.load(Relaxed),
            waiters: self.waiters.load(Relaxed),
            wait_ns_total: self.wait_ns_total.load(Relaxed),
            wait_ns_max: self.wait_ns_max.load(Relaxed),
            wait_hist: core::array::from_fn(|i| self.wait_hist[i].load(Relaxed)),
            pages_lock_taken: c(Counter::PagesLockTaken),
            pages_lock_contended: c(Counter::PagesLockContended),
            pages_lock_wait_ns: self.pages_lock_wait_ns.load(Relaxed),
            pages_lock_held_ns: self.pages_lock_held_ns.load(Relaxed),
        }
    }
}
