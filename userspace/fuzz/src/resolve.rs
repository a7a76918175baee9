//! Reading events, and `MUSERLOAD_IOC_RESOLVE`, which reads them after its loads.
//!
//! Events come from queue-mode pages (any access that waits) and from signal-mode pages armed
//! with `MUSERLOAD_ARM_KERNEL_WAITS` (a kernel-mode access, on its retry after the signal):
//! whoever reads one must load its page, or the access waits until the object is aborted.
//! Each event goes to one reader, so every reader here serves what it reads:
//!
//! - the round's resolver, a thread of the round's process, reads with `poll()` and
//!   `read()`, or with `MUSERLOAD_IOC_RESOLVE`, blocking or not, whose loads are its replies
//!   to the events before (a VMM's resolver: one call per batch of faults);
//! - a worker's RESOLVE loads as a `MUSERLOAD_IOC_LOADV` would (or nothing, or what the
//!   module must refuse), then reads events without waiting: nothing would end a worker's
//!   wait if it took the last event of the round.

use std::{
    os::{fd::RawFd, unix::thread::JoinHandleExt},
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    abi::{self, muserload_event, muserload_loadv, muserload_resolve, muserload_vec},
    rng::Rng,
    shared::{fill, Shared, PAGE},
    sys,
    target::{load_logged, logged, vector, Outcome, Piece},
    worker::{Round, Worker},
};

/// The most events one call returns.
const READ_MAX: usize = abi::MUSERLOAD_READ_MAX as usize;

/// Ends the resolver's waits when the round stops it: blocked in `poll()`, `read()` or
/// `MUSERLOAD_IOC_RESOLVE`, it gets EINTR (see `main`, which installs it so).
pub const STOP_SIGNAL: i32 = libc::SIGALRM;

/// How soon the resolver must see the round's ABORT, which ends every wait for events.
const ABORT_SEEN: Duration = Duration::from_secs(10);

/// The resolver's random stream (the round's is 0, the workers' 1 and up).
const RESOLVER_STREAM: u64 = 1 << 32;

/// What a worker's events buffer holds where the module wrote no event.
const UNREAD: muserload_event = muserload_event {
    address: u64::MAX,
    offset: u64::MAX,
    tid: u32::MAX,
    flags: u32::MAX,
};

/// Whether the module left `ev` as the worker filled it.
fn unread(ev: &muserload_event) -> bool {
    ev.address == UNREAD.address
        && ev.offset == UNREAD.offset
        && ev.tid == UNREAD.tid
        && ev.flags == UNREAD.flags
}

/// The guest page of event `ev`, if the round can have it: a page of the object, page
/// aligned, from a thread, with known flags, armed earlier in a mode whose accesses queue
/// such an event (queue mode; for a kernel-mode access, also signal mode with
/// `MUSERLOAD_ARM_KERNEL_WAITS`). Reported otherwise.
fn page_of(shared: &Shared, pages: usize, ev: &muserload_event) -> Option<usize> {
    let page = usize::try_from(ev.offset / PAGE as u64).unwrap_or(usize::MAX);
    let kernel = ev.flags & abi::MUSERLOAD_EVENT_KERNEL != 0;
    let known = abi::MUSERLOAD_EVENT_WRITE | abi::MUSERLOAD_EVENT_KERNEL;
    if page < pages
        && (ev.offset | ev.address) % PAGE as u64 == 0
        && ev.tid != 0
        && ev.flags & !known == 0
        && shared.may_report(page, kernel)
    {
        return Some(page);
    }
    shared.fail(format_args!("an event the round cannot have: {ev:x?}"));
    None
}

/// Replies to events: a COPY of a new tag into each event's page. The calls that carry them
/// (`MUSERLOAD_IOC_LOADV`, or the loads of the resolver's next `MUSERLOAD_IOC_RESOLVE`) load
/// them in order, each until it is loaded or refused (EEXIST: its page was loaded already,
/// and its waiters are woken then too).
struct Replies {
    /// One source page per reply.
    sources: Vec<u64>,
    /// The replies not loaded yet, in order, from `sources`.
    pieces: Vec<Piece>,
}

impl Replies {
    /// Room for `n` replies.
    fn new(n: usize) -> Self {
        Self {
            sources: vec![0; n * PAGE / 8],
            pieces: Vec::with_capacity(n),
        }
    }

    /// The replies to `events` (as many as there is room for), once every earlier reply is
    /// out: their sources are reused.
    fn prepare(&mut self, shared: &Shared, guest: usize, pages: usize, events: &[muserload_event]) {
        debug_assert!(self.pieces.is_empty(), "replies would be lost");
        for (ev, source) in events.iter().zip(self.sources.chunks_mut(PAGE / 8)) {
            let Some(page) = page_of(shared, pages, ev) else {
                continue;
            };
            let tag = shared.tags(1);
            fill(source, tag);
            self.pieces.push(Piece {
                page,
                dst: guest + page * PAGE,
                src: source.as_ptr() as usize,
                tag,
            });
        }
    }

    /// Drops the replies that a call carrying them loaded, and the one it found loaded
    /// already; the rest go with the next call. False, reported, if the call failed as no
    /// call of replies may: they are given up.
    fn settle(&mut self, shared: &Shared, outcome: &Outcome) -> bool {
        let done = match outcome.result {
            // A RESOLVE interrupted while it waited for events had done its loads.
            Ok(()) | Err(libc::EINTR) if outcome.pages == self.pieces.len() => outcome.pages,
            Err(libc::EEXIST) if outcome.pages < self.pieces.len() => outcome.pages + 1,
            // Allocations fail (fault injection): the waiters still need their pages.
            Err(libc::ENOMEM) => {
                sys::sleep_us(100);
                outcome.pages
            }
            _ => {
                shared.fail(format_args!(
                    "replies to {} events: {:?} after {} pages",
                    self.pieces.len(),
                    outcome.result,
                    outcome.pages
                ));
                self.pieces.clear();
                return false;
            }
        };
        self.pieces.drain(..done);
        true
    }

    /// Loads every reply, with as many `MUSERLOAD_IOC_LOADV` as it takes.
    fn flush(&mut self, shared: &Shared, fd: RawFd) {
        let copy = u64::from(abi::MUSERLOAD_LOAD_COPY);
        while !self.pieces.is_empty() {
            match load_logged(fd, shared, &self.pieces, copy, false) {
                Some(outcome) if self.settle(shared, &outcome) => {}
                Some(_) => return,
                // The log is full, so the round ends: loads that cannot be logged are
                // given up, as nothing could check them.
                None => self.pieces.clear(),
            }
        }
    }
}

/// The round's resolver: serves every event it reads until the object is aborted or the
/// round stops it.
pub struct Resolver {
    thread: JoinHandle<()>,
    stopping: Arc<AtomicBool>,
}

impl Resolver {
    /// Starts the resolver of `round` in the round's process (after the workers' forks).
    pub fn spawn(shared: &'static Shared, round: Round) -> Self {
        let stopping = Arc::new(AtomicBool::new(false));
        let serving = Serving {
            shared,
            round,
            rng: Rng::new(round.seed, RESOLVER_STREAM),
            replies: Replies::new(READ_MAX),
            batch: [muserload_event::default(); READ_MAX],
            stopping: stopping.clone(),
        };
        Self {
            thread: std::thread::spawn(move || serving.run()),
            stopping,
        }
    }

    /// After the round's ABORT, which ends every wait for events with none: the resolver
    /// returns by itself. Reported if it does not soon, and stopped.
    pub fn after_abort(self, fail: &dyn Fn(std::fmt::Arguments<'_>)) {
        let start = Instant::now();
        while !self.thread.is_finished() && start.elapsed() < ABORT_SEEN {
            sys::sleep_us(1000);
        }
        if !self.thread.is_finished() {
            fail(format_args!(
                "the resolver still waits for events {ABORT_SEEN:?} after ABORT"
            ));
        }
        self.stop(fail);
    }

    /// Stops the resolver (its waits end with EINTR) and joins it.
    pub fn stop(self, fail: &dyn Fn(std::fmt::Arguments<'_>)) {
        self.stopping.store(true, SeqCst);
        // Sent until it has returned: one that comes just before it waits is not seen.
        while !self.thread.is_finished() {
            // SAFETY: The thread is joined only below.
            unsafe { sys::signal_thread(self.thread.as_pthread_t(), STOP_SIGNAL) };
            sys::sleep_us(1000);
        }
        if self.thread.join().is_err() {
            fail(format_args!("the resolver panicked"));
        }
    }
}

/// What the resolver's step got.
enum Step {
    /// This many events, at the start of its batch.
    Events(usize),
    /// Nothing yet.
    Idle,
    /// The end: the object was aborted, or a call failed (reported).
    End,
}

/// The resolver, on its thread.
struct Serving {
    shared: &'static Shared,
    round: Round,
    rng: Rng,
    /// Replies to the events of its last step.
    replies: Replies,
    /// Where its calls put the events they read.
    batch: [muserload_event; READ_MAX],
    stopping: Arc<AtomicBool>,
}

impl Serving {
    fn run(mut self) {
        while !self.stopping.load(SeqCst) {
            let step = match self.rng.below(3) {
                0 => {
                    self.replies.flush(self.shared, self.round.fd);
                    self.read()
                }
                1 => self.resolve(0),
                _ => self.resolve(abi::MUSERLOAD_RESOLVE_NONBLOCK),
            };
            match step {
                Step::Events(n) => self.replies.prepare(
                    self.shared,
                    self.round.guest,
                    self.round.pages,
                    &self.batch[..n],
                ),
                Step::Idle => {}
                Step::End => return,
            }
        }
    }

    /// `poll()` for events a while (the round may be stopping), then `read()`, which waits if
    /// a worker took them first (unless the descriptor is non-blocking).
    fn read(&mut self) -> Step {
        match sys::poll(self.round.events, libc::POLLIN, 20) {
            Ok(0) | Err(libc::EINTR) => return Step::Idle,
            Ok(_) => {}
            Err(e) => return self.failed(format_args!("poll of events: errno {e}")),
        }
        let room = self.rng.range(1, READ_MAX);
        let size = size_of::<muserload_event>();
        // SAFETY: `batch` is writable for `room` records.
        let n = unsafe {
            libc::read(
                self.round.events,
                self.batch.as_mut_ptr().cast(),
                room * size,
            )
        };
        match usize::try_from(n) {
            Ok(0) => self.end("read()"),
            Ok(n) if n % size == 0 && n / size <= room => Step::Events(n / size),
            Ok(n) => self.failed(format_args!("read() of {room} events returned {n} bytes")),
            Err(_) => match abi::errno() {
                // The round stops the resolver; a worker took the events (a descriptor
                // made with MUSERLOAD_EVENTS_NONBLOCK).
                libc::EINTR | libc::EAGAIN => Step::Idle,
                e => self.failed(format_args!("read of events: errno {e}")),
            },
        }
    }

    /// `MUSERLOAD_IOC_RESOLVE` with `flags`: the replies to the last events as its loads, then
    /// the next events.
    fn resolve(&mut self, flags: u32) -> Step {
        let vec = vector(&self.replies.pieces);
        let mut req = muserload_resolve {
            load: muserload_loadv {
                vec: vec.as_ptr() as u64,
                count: vec.len() as u64,
                mode: u64::from(abi::MUSERLOAD_LOAD_COPY),
                loaded: 0,
            },
            flags,
            ..Default::default()
        };
        let room = self.rng.range(1, READ_MAX);
        let (fd, events) = (self.round.fd, &mut self.batch[..room]);
        let Some(outcome) = logged(self.shared, &self.replies.pieces, || {
            let result = abi::resolve(fd, &mut req, events);
            (req.load.loaded, result)
        }) else {
            // The log is full: see `Replies::flush`.
            self.replies.pieces.clear();
            return Step::Idle;
        };
        if !self.replies.settle(self.shared, &outcome) {
            return Step::End;
        }
        let n = req.nr_events as usize;
        match outcome.result {
            Ok(()) if n > room => {
                self.failed(format_args!("RESOLVE with room for {room} read {n} events"))
            }
            Ok(()) if n > 0 => Step::Events(n),
            Ok(()) if flags & abi::MUSERLOAD_RESOLVE_NONBLOCK != 0 => self.wait(),
            Ok(()) => self.end("a RESOLVE that waited"),
            // Replies it left (EEXIST, ENOMEM) go with the next call; EINTR: the round is
            // stopping the resolver.
            Err(_) => Step::Idle,
        }
    }

    /// After a call that could not wait found no events: `poll()` for some a while, so as not
    /// to spin. EPOLLHUP alone says the object was aborted and nothing is queued.
    fn wait(&self) -> Step {
        match sys::poll(self.round.events, libc::POLLIN, 20) {
            Ok(r) if r & libc::POLLIN == 0 && r & libc::POLLHUP != 0 => self.end("poll()"),
            Ok(_) | Err(libc::EINTR) => Step::Idle,
            Err(e) => self.failed(format_args!("poll of events: errno {e}")),
        }
    }

    /// No more events (end of file, a wait that got none): only an abort may say so.
    fn end(&self, what: &str) -> Step {
        if !self.shared.aborted.load(SeqCst) {
            self.failed(format_args!(
                "{what}: no more events, but the object was not aborted"
            ));
        }
        Step::End
    }

    fn failed(&self, what: std::fmt::Arguments<'_>) -> Step {
        self.shared.fail(format_args!("resolver: {what}"));
        Step::End
    }
}

/// How a worker's RESOLVE is wrong, if it is. The module refuses it whole (EINVAL, before
/// it loads or reads anything) for an unknown flag, no room for events, too many loads, an
/// unknown load mode or a pair of a bad shape (anywhere: every pair's shape is checked
/// first); a pair in the wrong region stops the loads where it is (EINVAL, the pairs before
/// it loaded); an events buffer nothing can write fails the call after its loads (EFAULT)
/// if an event was queued, and that event stays queued.
#[derive(Clone, Copy, Debug)]
enum Bad {
    Flag(u32),
    NoRoom,
    TooMany,
    Mode(u64),
    /// A pair not page aligned, at this index.
    Shape(usize),
    /// A pair into staging, at this index.
    Region(usize),
    Unwritable,
}

impl Bad {
    /// Refused before anything is loaded or read.
    fn whole(self) -> bool {
        !matches!(self, Self::Region(_) | Self::Unwritable)
    }
}

impl Worker<'_> {
    /// `MUSERLOAD_IOC_RESOLVE` that never waits: loads as a `MUSERLOAD_IOC_LOADV` makes them
    /// (any kind, with DONTWAKE or not), none, or a bad request; then the events, which this
    /// thread serves. Its process does not exit meanwhile: an event read and not served would
    /// leave its waiter asleep.
    pub(crate) fn resolve(&mut self) {
        let kind = [
            abi::MUSERLOAD_LOAD_COPY,
            abi::MUSERLOAD_LOAD_ZERO,
            abi::MUSERLOAD_LOAD_MOVE,
            abi::MUSERLOAD_LOAD_WAKE,
        ][self.rng.below(4)];
        let loads = if self.rng.one_in(4) {
            None
        } else {
            self.vectored(kind)
        };
        let pieces = loads.as_ref().map_or(&[][..], |l| &l.pieces[..]);
        let (mode, later) = self.load_mode(kind);
        let bad = self.rng.one_in(4).then(|| self.bad(pieces.len()));
        // Room for more than a call returns, or none (an unwritable buffer has none either).
        let room = match bad {
            Some(Bad::NoRoom | Bad::Unwritable) => 0,
            _ => self.rng.range(1, READ_MAX + 4),
        };
        let process = self.process;
        let _no_exit = process.no_exit.read();
        let mut events = [UNREAD; READ_MAX + 4];
        let Some((outcome, read)) = self.resolve_call(kind, mode, pieces, bad, &mut events[..room])
        else {
            return;
        };
        self.check_resolve(kind, pieces.len(), bad, &outcome);
        if later {
            self.wake_pieces(pieces);
        }
        if let Some(loads) = &loads {
            self.check_slots(&loads.slots, outcome.pages);
        }
        let read = self.check_events(&outcome, read, &events[..room]);
        let mut replies = Replies::new(read);
        let round = self.round;
        replies.prepare(self.shared, round.guest, round.pages, &events[..read]);
        replies.flush(self.shared, round.fd);
    }

    /// A bad request for a RESOLVE of `n` loads (an unknown mode only matters with loads).
    fn bad(&mut self, n: usize) -> Bad {
        match self.rng.below(7) {
            0 => Bad::Flag(1 << self.rng.range(1, 31)),
            1 => Bad::NoRoom,
            2 => Bad::TooMany,
            3 if n > 0 => Bad::Mode(match self.rng.below(3) {
                0 => 0,
                1 => u64::from(abi::MUSERLOAD_LOAD_WAKE) + 1,
                _ => u64::from(abi::MUSERLOAD_LOAD_COPY) | 1 << self.rng.range(9, 63),
            }),
            4 => Bad::Unwritable,
            5 => Bad::Shape(self.rng.below(n + 1)),
            _ => Bad::Region(self.rng.below(n + 1)),
        }
    }

    /// The RESOLVE call: `pieces` loaded with `mode` (logged, unless WAKE loads nothing),
    /// then events into `events`, as `bad` spoils it. How the loads went and how many events
    /// it says it read; None if the log is full (nothing was called).
    fn resolve_call(
        &self,
        kind: u32,
        mode: u64,
        pieces: &[Piece],
        bad: Option<Bad>,
        events: &mut [muserload_event],
    ) -> Option<(Outcome, usize)> {
        let hole = self.process.hole as u64;
        let mut vec = vector(pieces);
        // What a bad pair's COPY copies before it finds where the pair lies.
        let zeros = [0u64; PAGE / 8];
        let src = if kind == abi::MUSERLOAD_LOAD_COPY {
            zeros.as_ptr() as u64
        } else {
            0
        };
        let len = PAGE as u64;
        match bad {
            Some(Bad::Shape(b)) => {
                let dst = (self.round.guest + PAGE / 2) as u64;
                vec.insert(b, muserload_vec { dst, src, len });
            }
            Some(Bad::Region(b)) => {
                let dst = self.round.staging as u64;
                vec.insert(b, muserload_vec { dst, src, len });
            }
            _ => {}
        }
        let mut req = muserload_resolve {
            load: muserload_loadv {
                // Read only up to `count` pairs (none, or too many: the count is refused).
                vec: if vec.is_empty() {
                    hole
                } else {
                    vec.as_ptr() as u64
                },
                count: vec.len() as u64,
                mode,
                loaded: 0,
            },
            flags: abi::MUSERLOAD_RESOLVE_NONBLOCK,
            ..Default::default()
        };
        match bad {
            Some(Bad::Flag(flag)) => req.flags |= flag,
            Some(Bad::TooMany) => req.load.count = u64::from(abi::MUSERLOAD_LOADV_MAX) + 1,
            Some(Bad::Mode(mode)) => req.load.mode = mode,
            _ => {}
        }
        if req.load.count == 0 {
            // Not read without loads.
            req.load.mode = u64::MAX;
        }
        let fd = self.round.fd;
        let unwritable = matches!(bad, Some(Bad::Unwritable));
        let mut call = || {
            let result = if unwritable {
                req.events = hole;
                req.nr_events = READ_MAX as u32;
                // SAFETY: `req` is a live `struct muserload_resolve`, which the command reads
                // and writes; it only reads `load.vec`; it can write nothing at `hole`
                // (PROT_NONE).
                unsafe { abi::ioctl(fd, abi::IOC_RESOLVE, &mut req as *mut _ as usize) }.map(drop)
            } else {
                abi::resolve(fd, &mut req, events)
            };
            (req.load.loaded, result)
        };
        let outcome = if kind == abi::MUSERLOAD_LOAD_WAKE {
            let (woken, result) = call();
            let pages = (woken as usize / PAGE).min(pieces.len());
            Outcome { pages, result }
        } else {
            logged(self.shared, pieces, call)?
        };
        Some((outcome, req.nr_events as usize))
    }

    /// Checks how a RESOLVE of `n` loads of `kind`, spoilt by `bad`, ended: as a LOADV of
    /// them would (WAKE: with nothing to refuse), or refused as `bad` says.
    fn check_resolve(&self, kind: u32, n: usize, bad: Option<Bad>, outcome: &Outcome) {
        let pages = outcome.pages;
        let stop = match bad {
            Some(Bad::Region(b)) => b,
            _ => n,
        };
        // A page loaded already stops the loads (WAKE loads nothing).
        let refusable: &[i32] = if kind == abi::MUSERLOAD_LOAD_WAKE {
            &[]
        } else {
            &[libc::EEXIST]
        };
        let ok = match (outcome.result, bad) {
            (Err(libc::EINVAL), Some(b)) if b.whole() => pages == 0,
            // The vector is copied in (allocated) before its pairs are looked at.
            (Err(libc::ENOMEM), Some(Bad::Shape(_))) => {
                pages == 0 && self.allowed(libc::ENOMEM, &[])
            }
            (_, Some(b)) if b.whole() => false,
            (Ok(()), None | Some(Bad::Unwritable)) => pages == n,
            (Err(libc::EINVAL), Some(Bad::Region(b))) => pages == b,
            // An event was queued, and the buffer cannot take it.
            (Err(libc::EFAULT), Some(Bad::Unwritable)) => pages == n,
            // The vector's copy, or a page, could not be allocated.
            (Err(libc::ENOMEM), _) => pages <= stop && self.allowed(libc::ENOMEM, &[]),
            (Err(e), _) => pages < stop && refusable.contains(&e),
            (Ok(()), _) => false,
        };
        if !ok {
            self.fail(format_args!(
                "RESOLVE ({bad:?}) of {n} loads (kind {kind}): {:?} after {pages} pages",
                outcome.result
            ));
        }
    }

    /// How many events a RESOLVE that says it read `read` of them into `events` (with room for
    /// all of them) delivered: none if it failed, and it wrote no more than that.
    fn check_events(&self, outcome: &Outcome, read: usize, events: &[muserload_event]) -> usize {
        let read = if outcome.result.is_ok() { read } else { 0 };
        let room = events.len();
        if read > room.min(READ_MAX) || !events[read.min(room)..].iter().all(unread) {
            self.fail(format_args!(
                "RESOLVE with room for {room} events, {:?}: said it read {read}, wrote {}",
                outcome.result,
                events.iter().filter(|ev| !unread(ev)).count()
            ));
        }
        read.min(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(n: usize) -> Replies {
        let mut replies = Replies::new(n);
        replies.pieces = (0..n)
            .map(|page| Piece {
                page,
                dst: 0,
                src: 0,
                tag: page as u64 + 1,
            })
            .collect();
        replies
    }

    fn left(replies: &Replies) -> Vec<usize> {
        replies.pieces.iter().map(|p| p.page).collect()
    }

    #[test]
    fn replies_go_until_loaded_or_refused() {
        let shared = Shared::new().expect("shared memory");
        let mut r = replies(4);
        let outcome = |pages, result| Outcome { pages, result };
        // The one loaded and the one found loaded already are done.
        assert!(r.settle(shared, &outcome(1, Err(libc::EEXIST))));
        assert_eq!(left(&r), [2, 3]);
        // The one that could not be allocated goes again.
        assert!(r.settle(shared, &outcome(0, Err(libc::ENOMEM))));
        assert_eq!(left(&r), [2, 3]);
        // RESOLVE's EINTR comes after its loads.
        assert!(r.settle(shared, &outcome(2, Err(libc::EINTR))));
        assert!(left(&r).is_empty());
        assert_eq!(shared.failures.load(SeqCst), 0);
        // Success without every load is a failure: the replies are given up.
        let mut r = replies(2);
        assert!(!r.settle(shared, &outcome(1, Ok(()))));
        assert!(left(&r).is_empty());
        assert_eq!(shared.failures.load(SeqCst), 1);
    }

    /// How the round stops its resolver, whose `read()` may wait for good once the workers
    /// are gone: the wait ends with EINTR.
    #[test]
    fn stop_signal_ends_a_blocked_read() {
        sys::interrupt_with(STOP_SIGNAL).expect("sigaction");
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let reader = std::thread::spawn(move || sys::read(fds[0], &mut [0; 8]));
        while !reader.is_finished() {
            // SAFETY: The thread is joined only below.
            unsafe { sys::signal_thread(reader.as_pthread_t(), STOP_SIGNAL) };
            sys::sleep_us(1000);
        }
        assert_eq!(reader.join().ok(), Some(Err(libc::EINTR)));
        sys::close(fds[0]);
        sys::close(fds[1]);
    }

    #[test]
    fn events_only_of_pages_armed_to_have_them() {
        let shared = Shared::new().expect("shared memory");
        shared.begin_round(1);
        shared.arming(0, 2, 0, 0);
        shared.arming(2, 1, libc::SIGUSR1, abi::MUSERLOAD_ARM_KERNEL_WAITS);
        shared.arming(3, 1, libc::SIGUSR1, 0);
        let event = |page: u64, flags| muserload_event {
            address: 0x7f00_0000_0000 + page * PAGE as u64,
            offset: page * PAGE as u64,
            tid: 7,
            flags,
        };
        let kernel = abi::MUSERLOAD_EVENT_KERNEL;
        let write = abi::MUSERLOAD_EVENT_WRITE;
        assert_eq!(page_of(shared, 8, &event(1, write)), Some(1));
        assert_eq!(page_of(shared, 8, &event(2, kernel | write)), Some(2));
        assert_eq!(shared.failures.load(SeqCst), 0);
        // A user-mode access in signal mode gets the signal, never an event; without
        // KERNEL_WAITS, neither does a kernel-mode one.
        assert_eq!(page_of(shared, 8, &event(2, 0)), None);
        assert_eq!(page_of(shared, 8, &event(3, kernel)), None);
        // Never armed, past the object, an unknown flag, an address inside a page.
        assert_eq!(page_of(shared, 8, &event(4, kernel)), None);
        assert_eq!(page_of(shared, 1, &event(1, 0)), None);
        assert_eq!(page_of(shared, 8, &event(0, 1 << 5)), None);
        let inside = muserload_event {
            address: event(0, 0).address + 8,
            ..event(0, 0)
        };
        assert_eq!(page_of(shared, 8, &inside), None);
        assert_eq!(shared.failures.load(SeqCst), 6);
    }
}
