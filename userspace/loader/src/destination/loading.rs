//! What the destination's threads share while the guest's pages come in: the page maps,
//! the counters, the link to the source, and the outcome that the main thread and signal
//! mode's vCPUs wait on.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use super::{
    error::{LoadError, ReceiveError},
    link::Link,
};
use crate::{
    bitmap::Bitmap,
    lock::{lock, unpoisoned},
    memory::GuestRam,
    timeline::Timeline,
    vcpu::Machine,
    vm::Vm,
};

/// How long a waiter sleeps at most before it looks again: a notification it missed (sent
/// between its look and its wait) costs no more than this.
pub(super) const RECHECK: Duration = Duration::from_millis(100);

/// What the loading threads share.
pub(super) struct Loading {
    /// The VM whose RAM the pages go into.
    pub vm: Arc<Vm>,
    /// Which pages are zero, loaded, requested.
    pub pages: PageMaps,
    /// What the report counts.
    pub counters: Counters,
    /// Loads by cause, fault waits, outages.
    pub timeline: Timeline,
    /// The connections to the source. Never taken with the outcome's lock held: breaking
    /// the link notifies the outcome's waiters under it.
    pub link: Mutex<Link>,
    /// What the source measured, for the report.
    pub source_times: Mutex<SourceTimes>,
    /// How the loading ends.
    pub outcome: Outcome,
}

/// Which pages are zero, loaded and requested, and since when a requested one waits.
pub(super) struct PageMaps {
    /// The source's zero pages: loaded here as zeros, never transferred.
    pub zero: Bitmap,
    /// Pages in guest memory, loaded by any thread (or found loaded: `EEXIST`).
    pub loaded: Bitmap,
    /// Pages asked of the source, each once.
    pub requested: Bitmap,
    /// When each page was requested: nanoseconds since `epoch`, plus one (0: never).
    requested_at: Vec<AtomicU64>,
    /// The start of `requested_at`'s clock.
    epoch: Instant,
}

/// What the destination counts for its report (beyond the page maps).
#[derive(Default)]
pub(super) struct Counters {
    /// Faults handled: events read or signals taken.
    pub faults: AtomicU64,
    /// Pages the stream brought.
    pub streamed: AtomicU64,
    /// Pages received when already loaded.
    pub duplicates: AtomicU64,
    /// Bytes received (and sent, on recovery) on both connections.
    pub bytes: AtomicU64,
}

/// What the source measured, as it sends it after the guest resumed here.
#[derive(Clone, Copy, Default)]
pub(super) struct SourceTimes {
    /// Pre-copy rounds.
    pub rounds: u32,
    /// Its connection setup, in microseconds.
    pub setup_us: u64,
    /// From its pause to our resumption, in microseconds.
    pub downtime_us: u64,
}

/// How the loading ends: a thread's failure, every page loaded, or the source gone; and
/// the wake-ups of those who wait for it.
pub(super) struct Outcome {
    /// The first failure of a loading thread, until a waiter takes it to report it.
    failure: Mutex<Option<LoadError>>,
    /// Notified, with `failure` locked, whenever pages are loaded, the connections break
    /// or a loading thread fails.
    changed: Condvar,
    /// Every page is loaded; the source may hang up.
    done: AtomicBool,
    /// The source is gone for good: pages not loaded never will be.
    abandoned: AtomicBool,
}

impl Loading {
    /// The state of a loading into `vm`'s RAM whose zero pages are `zero`, and of which
    /// `loaded` came in pre-copy.
    pub fn new(vm: Arc<Vm>, zero: Bitmap, loaded: Bitmap) -> Self {
        Self {
            vm,
            pages: PageMaps::new(zero, loaded),
            counters: Counters::default(),
            timeline: Timeline::new(),
            link: Mutex::new(Link::default()),
            source_times: Mutex::new(SourceTimes::default()),
            outcome: Outcome::new(),
        }
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        self.vm.ram()
    }

    /// Runs `work` in a thread; its error, if any, stops the migration.
    pub fn spawn(
        self: &Arc<Self>,
        name: &str,
        work: impl FnOnce(&Self) -> Result<(), LoadError> + Send + 'static,
    ) -> Result<(), LoadError> {
        let this = self.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(e) = work(&this) {
                    this.outcome.fail(e);
                }
            })
            .map(drop)
            .map_err(LoadError::Spawn)
    }

    /// Records that `page` is loaded (by us or, after `EEXIST`, by another thread), and
    /// how long a vCPU waited for it if it was requested.
    pub fn mark_loaded(&self, page: u64) {
        if let Some(wait_us) = self.pages.mark_loaded(page) {
            self.timeline.served(wait_us);
        }
    }

    /// Waits until every page is loaded, showing progress on a terminal; takes the
    /// source's reconnections on `listener` if the connections break.
    pub fn wait_all_loaded(
        self: &Arc<Self>,
        machine: &Machine,
        listener: &std::net::TcpListener,
        recover_timeout: Duration,
    ) -> Result<(), ReceiveError> {
        let total = self.pages.zero.len();
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} pages loaded, {elapsed} {msg}")
        {
            bar.set_style(style);
        }
        let waited = (|| loop {
            if lock(&self.link).is_broken() {
                bar.set_message("(reconnecting)");
                self.recover(listener, recover_timeout)?;
                bar.set_message("");
            }
            let loaded = self.pages.loaded.count();
            bar.set_position(loaded);
            if loaded == total {
                return Ok(());
            }
            self.outcome.check()?;
            if let Some(failure) = machine.failure() {
                return Err(failure.into());
            }
            // Not holding the outcome's lock while taking the link's above (see
            // `Loading::link`): a notification in between delays the next look by
            // `RECHECK` at most.
            self.outcome.wait(RECHECK, || false);
        })();
        match waited {
            Ok(()) => bar.finish_and_clear(),
            Err(_) => bar.abandon(),
        }
        waited
    }
}

impl PageMaps {
    /// The maps of a guest whose zero pages are `zero` and of which `loaded` is loaded.
    fn new(zero: Bitmap, loaded: Bitmap) -> Self {
        let pages = zero.len();
        Self {
            zero,
            loaded,
            requested: Bitmap::new(pages),
            requested_at: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    /// The guest's pages.
    pub fn len(&self) -> u64 {
        self.zero.len()
    }

    /// Notes that `page` is asked of the source now; false if it was asked before.
    pub fn request(&self, page: u64) -> bool {
        if !self.requested.set(page) {
            return false;
        }
        self.requested_at[page as usize].store(self.now(), Ordering::Relaxed);
        true
    }

    /// Marks `page` loaded; the first time, returns how long it had been requested, in
    /// microseconds, if it was.
    fn mark_loaded(&self, page: u64) -> Option<u64> {
        if !self.loaded.set(page) {
            return None;
        }
        let at = self.requested_at[page as usize].load(Ordering::Relaxed);
        (at != 0).then(|| self.now().saturating_sub(at) / 1000)
    }

    /// Now on `requested_at`'s clock (never 0).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }
}

impl Outcome {
    /// Nothing ended yet.
    fn new() -> Self {
        Self {
            failure: Mutex::new(None),
            changed: Condvar::new(),
            done: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
        }
    }

    /// A loading thread failed with `e` (only the first failure is kept: the others
    /// follow from it); wakes the waiters.
    fn fail(&self, e: LoadError) {
        lock(&self.failure).get_or_insert(e);
        self.changed.notify_all();
    }

    /// Wakes the waiters to look again: pages were loaded, or the connections broke.
    pub fn notify(&self) {
        let _failure = lock(&self.failure);
        self.changed.notify_all();
    }

    /// Fails with a loading thread's failure, if there is one; whoever gets it reports it.
    pub fn check(&self) -> Result<(), LoadError> {
        lock(&self.failure).take().map_or(Ok(()), Err)
    }

    /// Waits for the next [`Outcome::notify`] or failure, at most `timeout`, unless
    /// `ready` holds already or a failure waits to be taken. `ready` is looked at under the
    /// lock that notifications take: a change it sees cannot be missed.
    pub fn wait(&self, timeout: Duration, ready: impl FnOnce() -> bool) {
        let failure = lock(&self.failure);
        if failure.is_none() && !ready() {
            drop(unpoisoned(self.changed.wait_timeout(failure, timeout)));
        }
    }

    /// Every page is loaded: from now on the source may hang up.
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
    }

    /// Whether every page is loaded.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// The source is gone for good.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    /// Whether the source is gone for good.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }
}
