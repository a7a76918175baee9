//! Fault round trips: a thread touches an unloaded page and waits until a resolver loads
//! it. Queue mode: one `MUSERLOAD_IOC_RESOLVE` per batch of faults (it loads the last
//! batch's pages and reads the next events) against `poll` + `read` + a `UFFDIO_COPY` (or
//! `UFFDIO_MOVE`) per fault; signal mode against `UFFD_FEATURE_SIGBUS` with `UFFDIO_COPY`
//! (or `UFFDIO_MOVE`) in the handler. Each faulter touches its pages once, in order; the
//! resolver runs on the same CPU.

use std::{
    cell::UnsafeCell,
    thread,
    time::{Duration, Instant},
};

use muserload::{
    features, signal, Event, FaultMode, GuestMemory, Loads, Object, Staging, Wake, PAGE_SIZE,
};
use nix::sys::signal::Signal;

use crate::{
    anon::Anon,
    handler_slot::HandlerSlot,
    pattern, pin,
    profile::Window,
    report::{Measurement, Work},
    uffd::{self, Userfaultfd},
    Error, Result, CPU,
};

/// How the resolver fills the page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Copy from the received buffer (`MUSERLOAD_LOAD_COPY`, `UFFDIO_COPY`).
    Copy,
    /// Write the received data into staging, then move it zero-copy (`MUSERLOAD_LOAD_MOVE`,
    /// `UFFDIO_MOVE`): what a loader that receives into staging does.
    Move,
}

/// Staging slots per serving thread (a moved slot is refilled by the next write to it).
pub const STAGING_SLOTS: usize = 64;

/// Touches every page of `[base, base + pages * PAGE_SIZE)` once, timing each touch:
/// thread `t` of `threads` takes pages `t`, `t + threads`, ..., so that their faults
/// overlap. Every thread runs on [`CPU`].
fn touch_all(base: *const u8, pages: usize, threads: usize) -> Result<Vec<Duration>> {
    let base = base as usize;
    let touch = move |first: usize| -> Result<Vec<Duration>> {
        pin(CPU)?;
        Ok((first..pages)
            .step_by(threads)
            .map(|page| {
                let start = Instant::now();
                // SAFETY: The page lies in the caller's mapping; reading it is the fault
                // measured.
                unsafe { std::ptr::read_volatile((base as *const u8).add(page * PAGE_SIZE)) };
                start.elapsed()
            })
            .collect())
    };
    if threads == 1 {
        return touch(0);
    }
    thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || touch(t))).collect();
        let mut samples = Vec::with_capacity(pages);
        for handle in handles {
            samples.extend(handle.join().map_err(|_| Error::Thread("faulter"))??);
        }
        Ok(samples)
    })
}

/// Checks every page of the region against the pattern.
fn verify(
    case: &'static str,
    implementation: &'static str,
    base: *const u8,
    pages: usize,
) -> Result<()> {
    for page in 0..pages {
        // SAFETY: The page lies in the caller's mapping and is loaded.
        if !unsafe { pattern::check(base.add(page * PAGE_SIZE), page, false) } {
            return Err(Error::Mismatch {
                case,
                implementation,
                page,
            });
        }
    }
    Ok(())
}

fn case_name(kind: Kind, threads: usize) -> &'static str {
    match (kind, threads) {
        (Kind::Copy, 1) => "queue round trip copy",
        (Kind::Move, 1) => "queue round trip move",
        (_, 2) => "queue, 2 faulters",
        (_, 4) => "queue, 4 faulters",
        _ => "queue, 8 faulters",
    }
}

fn work(kind: Kind) -> Work {
    match kind {
        Kind::Copy => Work::new(1.0, 0.0, 0.0),
        // The write into staging, the staging slot's refault, the staging unmap.
        Kind::Move => Work::new(1.0, 1.0, 1.0),
    }
}

/// Queue mode: the resolver reads events and loads each page for `threads` faulters.
pub fn queue_muserload(pages: usize, kind: Kind, threads: usize) -> Result<Measurement> {
    let source = pattern::source(pages);
    let object = Object::create(
        (pages * PAGE_SIZE) as u64,
        (STAGING_SLOTS * PAGE_SIZE) as u64,
        features::QUEUE | features::MOVE | features::RESOLVE,
    )?;
    let guest = object.map_guest()?;
    let mut staging = object.map_staging()?;
    object.arm(&guest, 0, guest.len() as u64, FaultMode::Queue)?;
    // Held for as long as the resolver runs: closing it would abort the object.
    let _events = object.events(false)?;
    let window = Window::open()?;
    let samples = thread::scope(|s| -> Result<Vec<Duration>> {
        let resolver = s.spawn(|| -> Result<()> {
            let served = serve_events(&object, &guest, &mut staging, &source, kind);
            // A resolver that stops early must not leave the faulter asleep: it gets SIGBUS.
            if served.is_err() {
                let _ = object.abort();
            }
            served
        });
        let samples = touch_all(guest.as_ptr(), pages, threads);
        join(resolver)?;
        let samples = samples?;
        Ok(samples)
    })?;
    let total = window.close()?;
    verify(case_name(kind, threads), "muserload", guest.as_ptr(), pages)?;
    Ok(Measurement::new(
        case_name(kind, threads),
        "muserload",
        "cpu0/cpu0",
        samples,
        1,
        total,
        work(kind),
    ))
}

/// A queue-mode resolver's replies to its last batch of events, which its next
/// `MUSERLOAD_IOC_RESOLVE` loads: each page copied from `source`, or written into a staging
/// slot (from `first_slot` on, round [`STAGING_SLOTS`] of them) and moved.
pub struct Replies<'a> {
    source: &'a [u8],
    first_slot: usize,
    copies: Vec<(u64, &'a [u8])>,
    moves: Vec<(u64, usize)>,
    /// Events answered so far.
    pub received: usize,
}

impl<'a> Replies<'a> {
    /// No replies yet, to a batch of up to `batch` events.
    pub fn new(source: &'a [u8], first_slot: usize, batch: usize) -> Self {
        Self {
            source,
            first_slot,
            copies: Vec::with_capacity(batch),
            moves: Vec::with_capacity(batch),
            received: 0,
        }
    }

    /// The loads that reply: moves from `staging` if given, else copies.
    pub fn loads<'s>(&'s self, staging: Option<&'s mut Staging>) -> Loads<'s> {
        match staging {
            Some(staging) => Loads::Move(staging, &self.moves),
            None => Loads::Copy(&self.copies),
        }
    }

    /// Replaces the replies with those to `events`: through `staging` if given.
    pub fn answer(&mut self, events: &[Event], mut staging: Option<&mut Staging>) -> Result<()> {
        self.copies.clear();
        self.moves.clear();
        for event in events {
            let start = event.offset as usize;
            let data = &self.source[start..start + PAGE_SIZE];
            match staging.as_deref_mut() {
                Some(staging) => {
                    let slot = self.first_slot + self.received % STAGING_SLOTS;
                    staging.slot_mut(slot)?.copy_from_slice(data);
                    self.moves.push((event.offset, slot));
                }
                None => self.copies.push((event.offset, data)),
            }
            self.received += 1;
        }
        Ok(())
    }
}

/// The muserload resolver: serves one event per page of `source`, loading each batch of
/// events it read in the call that reads the next batch.
fn serve_events(
    object: &Object,
    guest: &GuestMemory,
    staging: &mut Staging,
    source: &[u8],
    kind: Kind,
) -> Result<()> {
    pin(CPU)?;
    let pages = source.len() / PAGE_SIZE;
    let mut batch = [Event::default(); 16];
    let mut replies = Replies::new(source, 0, batch.len());
    let mut staging = match kind {
        Kind::Copy => None,
        Kind::Move => Some(staging),
    };
    loop {
        let loads = replies.loads(staging.as_deref_mut());
        // Once every page's event is in, the last loads wait for nothing after them.
        let wait = replies.received < pages;
        let n = object.resolve(guest, loads, Wake::Now, &mut batch, wait)?;
        if !wait {
            return Ok(());
        }
        if n == 0 {
            return Err(Error::Aborted);
        }
        replies.answer(&batch[..n], staging.as_deref_mut())?;
    }
}

/// Joins a resolver thread, passing on its error.
fn join(resolver: thread::ScopedJoinHandle<'_, Result<()>>) -> Result<()> {
    resolver.join().map_err(|_| Error::Thread("resolver"))?
}

/// userfaultfd: the resolver polls, reads faults and copies (or moves) the pages in, for
/// `threads` faulters.
pub fn queue_uffd(pages: usize, kind: Kind, threads: usize) -> Result<Measurement> {
    let source = pattern::source(pages);
    let region = Anon::new(pages * PAGE_SIZE)?;
    let staging = Anon::new(STAGING_SLOTS * PAGE_SIZE)?;
    let features = match kind {
        Kind::Copy => 0,
        Kind::Move => uffd::FEATURE_MOVE,
    };
    let uffd = Userfaultfd::new(features)?;
    uffd.register(region.addr(0), (pages * PAGE_SIZE) as u64)?;
    let window = Window::open()?;
    let samples = thread::scope(|s| -> Result<Vec<Duration>> {
        let resolver = s.spawn(|| -> Result<()> {
            let served = serve_faults(&uffd, &region, &staging, &source, kind);
            // A resolver that stops early must not leave the faulter asleep: unregistered,
            // its fault maps a zero page, which the verification then reports.
            if served.is_err() {
                let _ = uffd.unregister(region.addr(0), (pages * PAGE_SIZE) as u64);
            }
            served
        });
        let samples = touch_all(region.as_ptr(), pages, threads);
        join(resolver)?;
        let samples = samples?;
        Ok(samples)
    })?;
    let total = window.close()?;
    verify(
        case_name(kind, threads),
        "userfaultfd",
        region.as_ptr(),
        pages,
    )?;
    Ok(Measurement::new(
        case_name(kind, threads),
        "userfaultfd",
        "cpu0/cpu0",
        samples,
        1,
        total,
        work(kind),
    ))
}

/// The userfaultfd resolver: serves one fault per page of `source`.
fn serve_faults(
    uffd: &Userfaultfd,
    region: &Anon,
    staging: &Anon,
    source: &[u8],
    kind: Kind,
) -> Result<()> {
    pin(CPU)?;
    let pages = source.len() / PAGE_SIZE;
    let mut batch = [0u64; 16];
    let mut served = 0;
    while served < pages {
        let n = uffd.next_faults(&mut batch, None)?;
        for &fault in &batch[..n] {
            fill_fault(uffd, region, staging, source, fault, kind, served)?;
            served += 1;
        }
    }
    Ok(())
}

/// Fills the page of `region` that faulted at `fault` with its data in `source`:
/// `UFFDIO_COPY`, or a write into staging slot `served % STAGING_SLOTS` and `UFFDIO_MOVE`.
/// `staging` is only the calling thread's.
pub fn fill_fault(
    uffd: &Userfaultfd,
    region: &Anon,
    staging: &Anon,
    source: &[u8],
    fault: u64,
    kind: Kind,
    served: usize,
) -> Result<()> {
    let address = fault & !(PAGE_SIZE as u64 - 1);
    let start = (address - region.addr(0)) as usize;
    let data = &source[start..start + PAGE_SIZE];
    match kind {
        Kind::Copy => uffd.copy(address, data.as_ptr() as u64, PAGE_SIZE as u64),
        Kind::Move => {
            let slot = (served % STAGING_SLOTS) * PAGE_SIZE;
            // SAFETY: The slot lies in `staging`, which only the calling thread uses.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), staging.as_ptr().add(slot), PAGE_SIZE)
            };
            uffd.move_pages(address, staging.addr(slot), PAGE_SIZE as u64)
        }
    }
}

/// What the signal handlers load from and into.
struct SignalTarget<T> {
    target: T,
    base: u64,
    source: Vec<u8>,
}

/// Staging that only the faulting thread's signal handler touches.
struct HandlerStaging(UnsafeCell<Staging>);

// SAFETY: Only the one faulting thread's handler touches it, and a handler does not nest in
// itself: its signal is blocked while it runs.
unsafe impl Sync for HandlerStaging {}

/// muserload's handler targets: the object, its guest memory, and staging for MOVE.
type MuserloadTarget = SignalTarget<(Object, GuestMemory, Option<HandlerStaging>)>;
/// userfaultfd's: the descriptor, the registered region, and staging for `UFFDIO_MOVE`.
type UffdTarget = SignalTarget<(Userfaultfd, Anon, Anon)>;

static MUSERLOAD_TARGET: HandlerSlot<MuserloadTarget> = HandlerSlot::new();
static MUSERLOAD_MOVE_TARGET: HandlerSlot<MuserloadTarget> = HandlerSlot::new();
static UFFD_TARGET: HandlerSlot<UffdTarget> = HandlerSlot::new();
static UFFD_MOVE_TARGET: HandlerSlot<UffdTarget> = HandlerSlot::new();

fn page_of<T>(t: &SignalTarget<T>, address: u64) -> (u64, &[u8]) {
    let offset = (address - t.base) & !(PAGE_SIZE as u64 - 1);
    let start = offset as usize;
    (offset, &t.source[start..start + PAGE_SIZE])
}

/// The staging slot a page's data goes through.
fn slot_of(offset: u64) -> usize {
    (offset as usize / PAGE_SIZE) % STAGING_SLOTS
}

fn muserload_copy_handler(address: u64) {
    // SAFETY: A handler of a fault of the run that installed the target.
    if let Some(t) = unsafe { MUSERLOAD_TARGET.get() } {
        let (offset, data) = page_of(t, address);
        let _ = t.target.0.load_copy(&t.target.1, offset, data, Wake::Now);
    }
}

fn muserload_move_handler(address: u64) {
    // SAFETY: A handler of a fault of the run that installed the target.
    let Some(t) = (unsafe { MUSERLOAD_MOVE_TARGET.get() }) else {
        return;
    };
    let Some(staging) = &t.target.2 else {
        return;
    };
    let (offset, data) = page_of(t, address);
    // SAFETY: This handler is the staging's only user (see `HandlerStaging`).
    let staging = unsafe { &mut *staging.0.get() };
    let slot = slot_of(offset);
    if let Ok(buf) = staging.slot_mut(slot) {
        buf.copy_from_slice(data);
        let _ = t
            .target
            .0
            .load_move(&t.target.1, offset, staging, slot, 1, Wake::Now);
    }
}

fn uffd_copy_handler(address: u64) {
    // SAFETY: A handler of a fault of the run that installed the target.
    if let Some(t) = unsafe { UFFD_TARGET.get() } {
        let (offset, data) = page_of(t, address);
        let _ = t
            .target
            .0
            .copy(t.base + offset, data.as_ptr() as u64, PAGE_SIZE as u64);
    }
}

fn uffd_move_handler(address: u64) {
    // SAFETY: A handler of a fault of the run that installed the target.
    if let Some(t) = unsafe { UFFD_MOVE_TARGET.get() } {
        let (offset, data) = page_of(t, address);
        let slot = slot_of(offset) * PAGE_SIZE;
        // SAFETY: The slot lies in the staging region, which only this handler touches.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), t.target.2.as_ptr().add(slot), PAGE_SIZE)
        };
        let _ = t
            .target
            .0
            .move_pages(t.base + offset, t.target.2.addr(slot), PAGE_SIZE as u64);
    }
}

fn signal_case(kind: Kind) -> &'static str {
    match kind {
        Kind::Copy => "signal round trip copy",
        Kind::Move => "signal round trip move",
    }
}

/// Signal mode: the faulting thread's SIGUSR1 handler loads the page (copies it in, or
/// writes it into staging and moves it in).
pub fn signal_muserload(pages: usize, kind: Kind) -> Result<Measurement> {
    let (staging_pages, features, cell, handler): (_, _, _, fn(u64)) = match kind {
        Kind::Copy => (
            0,
            features::SIGNAL,
            &MUSERLOAD_TARGET,
            muserload_copy_handler,
        ),
        Kind::Move => (
            STAGING_SLOTS,
            features::SIGNAL | features::MOVE,
            &MUSERLOAD_MOVE_TARGET,
            muserload_move_handler,
        ),
    };
    let object = Object::create(
        (pages * PAGE_SIZE) as u64,
        (staging_pages * PAGE_SIZE) as u64,
        features,
    )?;
    let guest = object.map_guest()?;
    let staging = match kind {
        Kind::Copy => None,
        Kind::Move => Some(HandlerStaging(UnsafeCell::new(object.map_staging()?))),
    };
    object.arm(
        &guest,
        0,
        guest.len() as u64,
        FaultMode::Signal(Signal::SIGUSR1 as i32),
    )?;
    let base = guest.as_ptr() as u64;
    let installed = cell.install(SignalTarget {
        target: (object, guest, staging),
        base,
        source: pattern::source(pages),
    });
    let target = installed.target();
    signal::install(Signal::SIGUSR1, handler)?;
    let window = Window::open()?;
    let samples = touch_all(target.target.1.as_ptr(), pages, 1)?;
    let total = window.close()?;
    verify(
        signal_case(kind),
        "muserload",
        target.target.1.as_ptr(),
        pages,
    )?;
    Ok(Measurement::new(
        signal_case(kind),
        "muserload",
        "cpu0",
        samples,
        1,
        total,
        work(kind),
    ))
}

/// `UFFD_FEATURE_SIGBUS`: the faulting thread's SIGBUS handler does `UFFDIO_COPY`, or writes
/// the page into staging and does `UFFDIO_MOVE`.
pub fn signal_uffd(pages: usize, kind: Kind) -> Result<Measurement> {
    let region = Anon::new(pages * PAGE_SIZE)?;
    let staging = Anon::new(STAGING_SLOTS * PAGE_SIZE)?;
    let (features, cell, handler): (_, _, fn(u64)) = match kind {
        Kind::Copy => (uffd::FEATURE_SIGBUS, &UFFD_TARGET, uffd_copy_handler),
        Kind::Move => (
            uffd::FEATURE_SIGBUS | uffd::FEATURE_MOVE,
            &UFFD_MOVE_TARGET,
            uffd_move_handler,
        ),
    };
    let uffd = Userfaultfd::new(features)?;
    uffd.register(region.addr(0), (pages * PAGE_SIZE) as u64)?;
    let base = region.addr(0);
    let installed = cell.install(SignalTarget {
        target: (uffd, region, staging),
        base,
        source: pattern::source(pages),
    });
    let target = installed.target();
    signal::install(Signal::SIGBUS, handler)?;
    let window = Window::open()?;
    let samples = touch_all(target.target.1.as_ptr(), pages, 1)?;
    let total = window.close()?;
    verify(
        signal_case(kind),
        "userfaultfd",
        target.target.1.as_ptr(),
        pages,
    )?;
    Ok(Measurement::new(
        signal_case(kind),
        "userfaultfd",
        "cpu0",
        samples,
        1,
        total,
        work(kind),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_copy_each_events_page_and_count_it() {
        let source = pattern::source(4);
        let mut replies = Replies::new(&source, 0, 2);
        let event = |page: usize| Event {
            offset: (page * PAGE_SIZE) as u64,
            ..Event::default()
        };
        replies.answer(&[event(3), event(1)], None).expect("copies");
        replies.answer(&[event(2)], None).expect("copies");
        assert_eq!(replies.received, 3);
        let Loads::Copy(copies) = replies.loads(None) else {
            panic!("copies expected");
        };
        assert_eq!(copies.len(), 1, "only the last batch's");
        assert_eq!(copies[0].0, (2 * PAGE_SIZE) as u64);
        assert_eq!(copies[0].1, &source[2 * PAGE_SIZE..3 * PAGE_SIZE]);
    }
    #[test]
    fn uffd_queue_copy() {
        for threads in [1, 4] {
            let m = super::queue_uffd(64, super::Kind::Copy, threads).expect("uffd round trip");
            assert_eq!(m.pages, 64);
        }
    }
}
