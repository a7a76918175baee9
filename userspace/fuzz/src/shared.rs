//! What every process of a run shares: counters, the log of loads and arms that the
//! shadow model is built from, and the modes each page was armed in, which say what events
//! it may have.
//!
//! The log lives in one anonymous shared mapping made before any fork, so that worker
//! processes, their forked children and signal handlers all append to it with atomics and
//! no allocation (a handler may run at any point of its thread). The checker reads it
//! once every writer has exited.

use std::{
    cell::Cell,
    ptr::NonNull,
    sync::atomic::{
        AtomicBool, AtomicU64, AtomicU8,
        Ordering::{Relaxed, SeqCst},
    },
};

use crate::{abi::MUSERLOAD_ARM_KERNEL_WAITS, sys};

/// How many kinds of operation the statistics tell apart.
pub const OP_KINDS: usize = 32;

/// How many log records one round may write.
pub const RECORDS: usize = 1 << 17;

/// The most guest pages a round's object has.
pub const MAX_PAGES: usize = 96;

/// Bits of a page's arming modes (`Shared::arming`): armed in queue mode, or in signal mode
/// with `MUSERLOAD_ARM_KERNEL_WAITS`.
const QUEUE_MODE: u8 = 1 << 0;
const KERNEL_WAITS: u8 = 1 << 1;

/// A page's content: word 0 is its tag, the others derive from it.
pub const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

/// What a log record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A load of one page was asked for; whether it loaded is not known (yet): its
    /// process may have died in the call.
    LoadAttempt = 1,
    /// The page was loaded with this record's tag (0: zeros).
    Loaded = 2,
    /// The load of this page did not happen.
    NotLoaded = 3,
    /// An arm of `count` pages from `page` was asked for; not known to have succeeded.
    ArmAttempt = 4,
    /// The arm succeeded.
    Armed = 5,
    /// The arm failed: it changed nothing.
    NotArmed = 6,
}

impl Kind {
    fn from_raw(raw: u64) -> Option<Self> {
        Some(match raw {
            1 => Self::LoadAttempt,
            2 => Self::Loaded,
            3 => Self::NotLoaded,
            4 => Self::ArmAttempt,
            5 => Self::Armed,
            6 => Self::NotArmed,
            _ => return None,
        })
    }
}

/// What the thread that writes a record is doing: its worker operation (`Op` + 1), or one
/// of the contexts below, with [`HANDLER`] set in its signal handler. Goes into the
/// records it writes, so that a failed check can tell who made each call.
pub mod context {
    /// The round's own setup (its first arms).
    pub const ROUND: u8 = 0x40;
    /// The round's resolver thread.
    pub const RESOLVER: u8 = 0x41;
    /// Set while the thread runs its fault signal handler.
    pub const HANDLER: u8 = 0x80;
}

thread_local! {
    static CONTEXT: Cell<u8> = const { Cell::new(0) };
}

/// Sets this thread's context (see [`context`]); returns the one before. Async-signal-safe.
pub fn set_context(c: u8) -> u8 {
    CONTEXT.with(|cell| cell.replace(c))
}

/// Who writes a record: its thread id (bits 0-31), context (32-39), the record's place in
/// its call and the call's size (40-47, 48-55), and the call's errno once it returned
/// (56-63). Async-signal-safe.
fn who(place: usize, of: usize) -> u64 {
    // SAFETY: gettid() has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    u64::from(tid)
        | u64::from(CONTEXT.with(Cell::get)) << 32
        | (place.min(255) as u64) << 40
        | (of.min(255) as u64) << 48
}

/// One log entry, written by one thread; `what` last (0 until then).
#[repr(C)]
pub struct Record {
    /// `Kind` | first page << 8 | page count << 36.
    what: AtomicU64,
    /// See [`who`].
    who: AtomicU64,
    tag: AtomicU64,
    /// The sequence number taken just before the call, and just after it returned.
    before: AtomicU64,
    after: AtomicU64,
}

/// A log entry as the checker reads it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// What it says.
    pub kind: Kind,
    /// The first page.
    pub page: usize,
    /// How many pages (arms; loads log one entry per page).
    pub count: usize,
    /// The content's tag (loads).
    pub tag: u64,
    /// Sequence numbers around the call (`after` is `u64::MAX` if it never returned).
    pub before: u64,
    /// See `before`.
    pub after: u64,
    /// Who wrote it (see [`who`]).
    pub who: u64,
    /// Its place in the log.
    pub index: usize,
}

impl Entry {
    /// The entry for a failure report: kind, pages, tag, sequence numbers, and who.
    pub fn describe(&self) -> String {
        let after = if self.after == u64::MAX {
            "never".to_string()
        } else {
            self.after.to_string()
        };
        let ctx = (self.who >> 32) as u8;
        let base = ctx & !context::HANDLER;
        let what = match base {
            0 => "?".to_string(),
            context::ROUND => "round".to_string(),
            context::RESOLVER => "resolver".to_string(),
            op => crate::worker::OPS
                .get(usize::from(op) - 1)
                .map_or(format!("op {op}"), |(o, _)| format!("{o:?}")),
        };
        let handler = if ctx & context::HANDLER != 0 {
            " (signal handler)"
        } else {
            ""
        };
        format!(
            "#{} {:?} page {}+{} tag {:#x} seq {}..{} tid {} in {what}{handler}, piece {}/{} errno {}",
            self.index,
            self.kind,
            self.page,
            self.count,
            self.tag,
            self.before,
            after,
            self.who as u32,
            (self.who >> 40) as u8,
            (self.who >> 48) as u8,
            (self.who >> 56) as u8,
        )
    }
}

/// The shared state of a run.
#[repr(C)]
pub struct Shared {
    /// Orders calls: taken before and after each logged call.
    seq: AtomicU64,
    /// The last tag handed out.
    tag: AtomicU64,
    /// Operations done (all processes).
    pub ops: AtomicU64,
    /// Failed checks (all processes).
    pub failures: AtomicU64,
    /// Calls that failed with ENOMEM while allocations were made to fail.
    pub enomem: AtomicU64,
    /// Log records reserved and never written (their writer died first), all rounds.
    pub unwritten: AtomicU64,
    /// Set before the object is aborted: from then on a SIGBUS is expected.
    pub aborted: AtomicBool,
    /// Set when the run's time or operation budget is spent.
    pub stop: AtomicBool,
    /// The round, in the high bits of every tag, so that no round sees another's data.
    round: AtomicU64,
    next: AtomicU64,
    /// Per operation kind: how many, and their total time in nanoseconds.
    pub op_count: [AtomicU64; OP_KINDS],
    /// See `op_count`.
    pub op_nanos: [AtomicU64; OP_KINDS],
    /// Per guest page, the modes of the round's arms of it (attempted or done).
    modes: [AtomicU8; MAX_PAGES],
    records: [Record; RECORDS],
}

impl Shared {
    /// Maps the shared state (zeroed) for the whole run.
    pub fn new() -> std::io::Result<&'static Self> {
        let ptr: NonNull<u8> = sys::map_shared_anonymous(size_of::<Self>())?;
        // SAFETY: The mapping is zeroed, page aligned, big enough, never unmapped, and an
        // all-zero `Shared` (atomics) is valid.
        Ok(unsafe { ptr.cast::<Self>().as_ref() })
    }

    /// Starts round `round`: an empty log.
    ///
    /// The last round's records are cleared, not only forgotten: a record this round
    /// reserves is written only after its reservation, and a writer killed in between (a
    /// forked toucher's SIGKILL in its signal handler, a process that exits or dies of
    /// SIGBUS while another of its threads logs) would leave the last round's record
    /// there, or one half overwritten, for the checker to read as this round's: a load
    /// of another round's page, with this round's tag, or a ZERO load (tag 0), which no
    /// round's tag filters out. A record left cleared says nothing: its call was never
    /// made.
    pub fn begin_round(&self, round: u64) {
        let used = (self.next.load(SeqCst) as usize).min(RECORDS);
        for r in &self.records[..used] {
            r.what.store(0, SeqCst);
        }
        self.next.store(0, SeqCst);
        self.aborted.store(false, SeqCst);
        self.round.store(round, SeqCst);
        self.tag.store(0, SeqCst);
        for mode in &self.modes {
            mode.store(0, SeqCst);
        }
    }

    /// Notes, before the call, that guest pages `page..page + count` are being armed with
    /// `signal` and `flags`: from then on an access may queue an event for them (queue mode:
    /// any access; signal mode with `MUSERLOAD_ARM_KERNEL_WAITS`: a kernel-mode one, which
    /// then waits for the page as in queue mode).
    pub fn arming(&self, page: usize, count: usize, signal: i32, flags: u32) {
        let mode = if signal == 0 {
            QUEUE_MODE
        } else if flags & MUSERLOAD_ARM_KERNEL_WAITS != 0 {
            KERNEL_WAITS
        } else {
            return;
        };
        for m in &self.modes[page..page + count] {
            m.fetch_or(mode, SeqCst);
        }
    }

    /// Whether guest page `page` can have an event of a kernel-mode (`kernel`) or user-mode
    /// access: an arm of it in a mode that queues such events began earlier in the round.
    pub fn may_report(&self, page: usize, kernel: bool) -> bool {
        let mode = self.modes.get(page).map_or(0, |m| m.load(SeqCst));
        mode & QUEUE_MODE != 0 || kernel && mode & KERNEL_WAITS != 0
    }

    /// A new sequence number.
    pub fn seq(&self) -> u64 {
        self.seq.fetch_add(1, SeqCst)
    }

    /// `count` new tags, consecutive, never 0 and never used before in this run.
    pub fn tags(&self, count: u64) -> u64 {
        (self.round.load(Relaxed) << 40) | (self.tag.fetch_add(count, SeqCst) + 1)
    }

    /// Reserves `count` records (none always fit), or None if the round's log is full.
    pub fn reserve(&self, count: usize) -> Option<usize> {
        let first = self.next.fetch_add(count as u64, SeqCst) as usize;
        (count == 0 || first + count <= RECORDS).then_some(first)
    }

    /// Whether the round's log is (nearly) full: time to end the round.
    pub fn log_full(&self) -> bool {
        self.next.load(Relaxed) as usize + 4096 > RECORDS
    }

    /// Writes record `index`.
    pub fn write(
        &self,
        index: usize,
        kind: Kind,
        page: usize,
        count: usize,
        tag: u64,
        before: u64,
    ) {
        self.write_piece(index, kind, page, count, tag, before, 0, 1);
    }

    /// Writes record `index`, piece `place` of `of` in its call.
    #[allow(clippy::too_many_arguments)]
    pub fn write_piece(
        &self,
        index: usize,
        kind: Kind,
        page: usize,
        count: usize,
        tag: u64,
        before: u64,
        place: usize,
        of: usize,
    ) {
        let r = &self.records[index];
        r.who.store(who(place, of), Relaxed);
        r.tag.store(tag, Relaxed);
        r.before.store(before, Relaxed);
        r.after.store(u64::MAX, Relaxed);
        r.what.store(
            kind as u64 | (page as u64) << 8 | (count as u64) << 36,
            SeqCst,
        );
    }

    /// Completes record `index`: its call returned at `after` with `kind`.
    pub fn complete(&self, index: usize, kind: Kind, after: u64) {
        self.complete_errno(index, kind, after, 0);
    }

    /// Completes record `index`: its call returned at `after` with `kind` and `errno`.
    pub fn complete_errno(&self, index: usize, kind: Kind, after: u64, errno: i32) {
        let r = &self.records[index];
        let who = r.who.load(Relaxed) & !(0xff << 56);
        r.who.store(who | ((errno as u64) & 0xff) << 56, Relaxed);
        r.after.store(after, Relaxed);
        let what = r.what.load(Relaxed);
        r.what.store((what & !0xff) | kind as u64, SeqCst);
    }

    /// The round's log, once every writer is gone (loads of another round's tags, which
    /// only a straggler of that round could log, are left out).
    pub fn entries(&self) -> Vec<Entry> {
        let round = self.round.load(SeqCst);
        let n = (self.next.load(SeqCst) as usize).min(RECORDS);
        self.records[..n]
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                let what = r.what.load(SeqCst);
                if what == 0 {
                    self.unwritten.fetch_add(1, SeqCst);
                }
                Some(Entry {
                    who: r.who.load(SeqCst),
                    index,
                    kind: Kind::from_raw(what & 0xff)?,
                    page: ((what >> 8) & ((1 << 28) - 1)) as usize,
                    count: (what >> 36) as usize,
                    tag: r.tag.load(SeqCst),
                    before: r.before.load(SeqCst),
                    after: r.after.load(SeqCst),
                })
            })
            .filter(|e| e.tag == 0 || e.tag >> 40 == round)
            .collect()
    }

    /// Counts one operation; false once the run should stop.
    pub fn op(&self) -> bool {
        self.ops.fetch_add(1, Relaxed);
        !self.stop.load(Relaxed)
    }

    /// Reports a failed check (not from a signal handler: it prints).
    pub fn fail(&self, what: std::fmt::Arguments<'_>) {
        self.failures.fetch_add(1, SeqCst);
        eprintln!("FAIL [pid {}]: {what}", std::process::id());
    }
}

/// Word `i` of the content with tag `tag`.
fn word(tag: u64, i: usize) -> u64 {
    if i == 0 {
        return tag;
    }
    let mut z = tag ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `page` with the content of `tag`.
pub fn fill(page: &mut [u64], tag: u64) {
    for (i, w) in page.iter_mut().enumerate().take(WORDS) {
        *w = word(tag, i);
    }
}

/// What a page holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// Zeros.
    Zero,
    /// The content of this tag.
    Tag(u64),
    /// Neither: torn, or foreign data.
    Corrupt {
        /// Word 0.
        first: u64,
        /// The first word that differs from what word 0 promises.
        at: usize,
    },
}

/// Reads the page at `addr`, which must be mapped readable and not fault for long.
///
/// # Safety
///
/// `addr` must be a page of a live mapping.
pub unsafe fn content(addr: usize) -> Content {
    let p = addr as *const u64;
    // SAFETY: The caller vouches that the page is mapped; other threads may write it, so
    // every word is read volatile.
    let first = unsafe { p.read_volatile() };
    for i in 1..WORDS {
        // SAFETY: As above, within the page.
        let w = unsafe { p.add(i).read_volatile() };
        let expected = if first == 0 { 0 } else { word(first, i) };
        if w != expected {
            return Content::Corrupt { first, at: i };
        }
    }
    if first == 0 {
        Content::Zero
    } else {
        Content::Tag(first)
    }
}

/// Whether the page at `addr` holds `tag`'s content (0: zeros).
///
/// # Safety
///
/// As for [`content`].
pub unsafe fn holds(addr: usize, tag: u64) -> bool {
    // SAFETY: Passed on.
    let c = unsafe { content(addr) };
    c == if tag == 0 {
        Content::Zero
    } else {
        Content::Tag(tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record reserved and never written kept the last round's entry, which the checker
    /// counted as this round's: a ZERO load (tag 0) that no tag filter drops. The likely
    /// cause of "page 39: 3 loads succeeded across 2 arms" (leak-check guest, run seed
    /// 0x18ee27559b8bc540, round 78).
    #[test]
    fn a_record_never_written_is_not_the_last_rounds() {
        let shared = Shared::new().expect("shared memory");
        shared.begin_round(1);
        let first = shared.reserve(2).expect("room");
        for (i, tag) in [(0, 0), (1, 1 << 40 | 1)] {
            shared.write(first + i, Kind::LoadAttempt, 39, 1, tag, shared.seq());
            shared.complete(first + i, Kind::Loaded, shared.seq());
        }
        assert_eq!(shared.entries().len(), 2);
        shared.begin_round(2);
        // Reserved, then its writer died: before any store, or after the tag's.
        let first = shared.reserve(2).expect("room");
        shared.records[first + 1].tag.store(2 << 40 | 1, SeqCst);
        assert!(shared.entries().is_empty());
    }
}
