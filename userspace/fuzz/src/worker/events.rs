//! A worker's reads of the events: `MUSERLOAD_IOC_RESOLVE` that never waits, with loads of
//! any kind (or none, or a request the module must refuse), whose events the worker then
//! serves as the round's resolver would; and `poll()` of the events descriptor.
//!
//! The RESOLVE's loads are logged as a LOADV's are, and so are the replies to its events
//! (`resolve::Replies`): the shadow model checks the pages they load. Checked here: the call
//! loads as a LOADV of its pairs would (every pair, or a stop with EEXIST), or is refused as
//! its bad request says, with the pairs before a bad one loaded; a MOVE leaves its staging
//! slots as it must; it reads no more events than it had room for and writes none past
//! them; each event is one the round can have (`resolve`'s checks); `poll()` succeeds.

use crate::{
    abi::{self, muserload_event, muserload_loadv, muserload_resolve, muserload_vec},
    resolve::{Replies, READ_MAX},
    shared::PAGE,
    sys,
    target::{logged, vector, Outcome, Piece},
};

use super::Worker;

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

/// How a worker's RESOLVE is wrong, if it is. The module refuses it whole (EINVAL, before
/// it loads or reads anything) for an unknown flag, no room for events, too many loads, an
/// unknown load mode or a pair of a bad shape (anywhere: every pair's shape is checked
/// first); a pair in the wrong region stops the loads where it is (EINVAL, the pairs before
/// it loaded); an events buffer nothing can write fails the call after its loads (EFAULT)
/// if an event was queued, and that event stays queued.
#[derive(Clone, Copy, Debug)]
enum Bad {
    /// This unknown flag.
    Flag(u32),
    /// No room for events.
    NoRoom,
    /// One load more than `MUSERLOAD_LOADV_MAX`.
    TooMany,
    /// This load mode, unknown.
    Mode(u64),
    /// A pair not page aligned, at this index.
    Shape(usize),
    /// A pair into staging, at this index.
    Region(usize),
    /// An events buffer nothing can write.
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
    pub(super) fn resolve(&mut self) {
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

    /// `poll()` of the events descriptor, without waiting.
    pub(super) fn poll_events(&mut self) {
        if let Err(e) = sys::poll(self.round.events, libc::POLLIN, 0) {
            self.fail(format_args!("poll of the events descriptor: errno {e}"));
        }
    }
}
