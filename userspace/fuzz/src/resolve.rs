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
//! - a worker's RESOLVE (`worker::events`) loads as a `MUSERLOAD_IOC_LOADV` would (or
//!   nothing, or what the module must refuse), then reads events without waiting: nothing
//!   would end a worker's wait if it took the last event of the round.
//!
//! Both load their replies with [`Replies`].

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
    abi::{self, muserload_event, muserload_loadv, muserload_resolve},
    rng::Rng,
    shared::{fill, Shared, PAGE},
    sys,
    target::{load_logged, logged, vector, Outcome, Piece},
    worker::Round,
};

/// The most events one call returns.
pub(crate) const READ_MAX: usize = abi::MUSERLOAD_READ_MAX as usize;

/// Ends the resolver's waits when the round stops it: blocked in `poll()`, `read()` or
/// `MUSERLOAD_IOC_RESOLVE`, it gets EINTR (see `main`, which installs it so).
pub const STOP_SIGNAL: i32 = libc::SIGALRM;

/// How soon the resolver must see the round's ABORT, which ends every wait for events.
const ABORT_SEEN: Duration = Duration::from_secs(10);

/// The resolver's random stream (the round's is 0, the workers' 1 and up).
const RESOLVER_STREAM: u64 = 1 << 32;

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
pub(crate) struct Replies {
    /// One source page per reply.
    sources: Vec<u64>,
    /// The replies not loaded yet, in order, from `sources`.
    pieces: Vec<Piece>,
}

impl Replies {
    /// Room for `n` replies.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            sources: vec![0; n * PAGE / 8],
            pieces: Vec::with_capacity(n),
        }
    }

    /// The replies to `events` (as many as there is room for), once every earlier reply is
    /// out: their sources are reused.
    pub(crate) fn prepare(
        &mut self,
        shared: &Shared,
        guest: usize,
        pages: usize,
        events: &[muserload_event],
    ) {
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
    pub(crate) fn flush(&mut self, shared: &Shared, fd: RawFd) {
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
        crate::shared::set_context(crate::shared::context::RESOLVER);
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
