//! Loads: COPY of new tags, ZERO and MOVE from the thread's staging slots, of a run of
//! pages (`MUSERLOAD_IOC_LOAD`) or of pages in any order, repeats included
//! (`MUSERLOAD_IOC_LOADV`); one in four with `MUSERLOAD_LOAD_DONTWAKE` and its WAKE after;
//! and WAKE of random pages.
//!
//! Every load is logged, page by page, before the call and with its outcome after it
//! (`target::load_logged`): whether the page then holds the content of the right load is
//! the shadow model's to decide at the end of the round. Checked here, per call: every
//! page loaded, or a stop with EEXIST (a page loaded already, by this load or another)
//! after the pages before it; ENOMEM too while allocations may fail; a MOVE leaves the
//! staging slots it moved reading zeros and the others their content, through every
//! mapping of them; a WAKE succeeds.

use crate::{
    abi::{self, muserload_load},
    shared::{self, fill, PAGE},
    target::{load_logged, Outcome, Piece},
};

use super::Worker;

/// The pieces of a vectored load ([`Worker::vectored`]), with the memory they name.
pub(super) struct Vectored {
    /// One page each, in the load's order.
    pub(super) pieces: Vec<Piece>,
    /// MOVE: the staging slots the pieces take, with their tags, in the same order.
    pub(super) slots: Vec<(usize, u64)>,
    /// COPY: the pieces' sources, alive as long as the pieces.
    _sources: Vec<u64>,
}

impl Worker<'_> {
    /// A ranged COPY of 1 to 8 pages, each with a new tag.
    pub(super) fn copy(&mut self) {
        let n = self.rng.range(1, 8);
        let (page, dst, _, _) = self.guest_range(n);
        let tag = self.shared.tags(n as u64);
        let mut buf = vec![0u64; n * PAGE / 8];
        for (i, chunk) in buf.chunks_mut(PAGE / 8).enumerate() {
            fill(chunk, tag + i as u64);
        }
        let pieces: Vec<Piece> = (0..n)
            .map(|i| Piece {
                page: page + i,
                dst: dst + i * PAGE,
                src: buf.as_ptr() as usize + i * PAGE,
                tag: tag + i as u64,
            })
            .collect();
        let (mode, later) = self.load_mode(abi::MUSERLOAD_LOAD_COPY);
        let _pending = later.then(|| self.process.no_exit.read());
        if let Some(outcome) = load_logged(self.round.fd, self.shared, &pieces, mode, true) {
            self.check_load("COPY", n, &outcome);
        }
        if later {
            self.wake(dst, n);
        }
    }

    /// A ranged ZERO of 1 to 16 pages.
    pub(super) fn zero(&mut self) {
        let n = self.rng.range(1, 16.min(self.round.pages));
        let (page, dst, _, _) = self.guest_range(n);
        let pieces: Vec<Piece> = (0..n)
            .map(|i| Piece {
                page: page + i,
                dst: dst + i * PAGE,
                src: 0,
                tag: 0,
            })
            .collect();
        let (mode, later) = self.load_mode(abi::MUSERLOAD_LOAD_ZERO);
        let _pending = later.then(|| self.process.no_exit.read());
        if let Some(outcome) = load_logged(self.round.fd, self.shared, &pieces, mode, true) {
            self.check_load("ZERO", n, &outcome);
        }
        if later {
            self.wake(dst, n);
        }
    }

    /// A ranged MOVE of 1 to 8 of the thread's staging slots, filled with new tags, through
    /// either staging mapping.
    pub(super) fn move_pages(&mut self) {
        if self.round.slots == 0 {
            return;
        }
        let n = self.rng.range(1, self.round.slots.min(8));
        let first_slot = self.rng.below(self.round.slots - n + 1);
        let (page, dst, _, _) = self.guest_range(n);
        let tag = self.shared.tags(n as u64);
        // The source: the main staging mapping, or the extra one if it maps every slot.
        let use_extra = self.staging_extra_maps(first_slot, n) && self.rng.one_in(2);
        let mut slots = Vec::with_capacity(n);
        let mut pieces = Vec::with_capacity(n);
        for i in 0..n {
            let slot = first_slot + i;
            let (main, extra) = self.slot_addrs(slot);
            let src = if use_extra {
                extra.unwrap_or(main)
            } else {
                main
            };
            Self::fill_slot(src, tag + i as u64);
            slots.push((slot, tag + i as u64));
            pieces.push(Piece {
                page: page + i,
                dst: dst + i * PAGE,
                src,
                tag: tag + i as u64,
            });
        }
        let (mode, later) = self.load_mode(abi::MUSERLOAD_LOAD_MOVE);
        let _pending = later.then(|| self.process.no_exit.read());
        if let Some(outcome) = load_logged(self.round.fd, self.shared, &pieces, mode, true) {
            self.check_load("MOVE", n, &outcome);
            self.check_slots(&slots, outcome.pages);
        }
        if later {
            self.wake(dst, n);
        }
    }

    /// A vectored COPY, ZERO or MOVE ([`Worker::vectored`]).
    pub(super) fn loadv(&mut self) {
        let kind = [
            abi::MUSERLOAD_LOAD_COPY,
            abi::MUSERLOAD_LOAD_ZERO,
            abi::MUSERLOAD_LOAD_MOVE,
        ][self.rng.below(3)];
        let Some(loads) = self.vectored(kind) else {
            return;
        };
        let n = loads.pieces.len();
        let (mode, later) = self.load_mode(kind);
        let _pending = later.then(|| self.process.no_exit.read());
        if let Some(outcome) = load_logged(self.round.fd, self.shared, &loads.pieces, mode, false) {
            self.check_load("LOADV", n, &outcome);
            self.check_slots(&loads.slots, outcome.pages);
        }
        if later {
            self.wake_pieces(&loads.pieces);
        }
    }

    /// A WAKE of 1 to 16 pages, loaded or not: it wakes whoever waits for them.
    pub(super) fn wake_random(&mut self) {
        let n = self.rng.range(1, 16.min(self.round.pages));
        let (_, dst, _, _) = self.guest_range(n);
        self.wake(dst, n);
    }

    /// The mode of a load of `kind`: DONTWAKE one time in four; then (true) the caller
    /// wakes its pages after it, holding `Process::no_exit` from before the load.
    pub(super) fn load_mode(&mut self, kind: u32) -> (u64, bool) {
        let later = self.rng.one_in(4);
        let flag = if later {
            u64::from(abi::MUSERLOAD_LOAD_DONTWAKE)
        } else {
            0
        };
        (u64::from(kind) | flag, later)
    }

    /// Checks a logged load's outcome: all `n` pages loaded, or a stop with one of the
    /// errnos a load of pages that others may load too can give.
    fn check_load(&self, what: &str, n: usize, outcome: &Outcome) {
        match outcome.result {
            Ok(()) if outcome.pages == n => {}
            Err(e) if outcome.pages < n && self.allowed(e, &[libc::EEXIST]) => {}
            _ => self.fail(format_args!(
                "{what} of {n} pages: {:?} after {} pages",
                outcome.result, outcome.pages
            )),
        }
    }

    /// Wakes `[addr, addr + n pages)` (after a DONTWAKE load, whose waiters would
    /// otherwise sleep on).
    fn wake(&self, addr: usize, n: usize) {
        let mut load = muserload_load {
            dst: addr as u64,
            src: 0,
            len: (n * PAGE) as u64,
            mode: u64::from(abi::MUSERLOAD_LOAD_WAKE),
            loaded: 0,
        };
        if let Err(e) = abi::load(self.round.fd, &mut load) {
            self.fail(format_args!("WAKE of {n} pages: errno {e}"));
        }
    }

    /// Wakes the page of each of `pieces` (after a DONTWAKE load of them).
    pub(super) fn wake_pieces(&self, pieces: &[Piece]) {
        for p in pieces {
            self.wake(p.dst, 1);
        }
    }

    /// The pieces of a vectored load of `kind`: 1 to 8 pages in any order, repeats included
    /// (the second one stops the load with EEXIST). None for a MOVE without staging.
    pub(super) fn vectored(&mut self, kind: u32) -> Option<Vectored> {
        let max = if kind == abi::MUSERLOAD_LOAD_MOVE {
            self.round.slots.min(8)
        } else {
            8
        };
        if max == 0 {
            return None;
        }
        let n = self.rng.range(1, max);
        let tag = self.shared.tags(n as u64);
        let mut sources = vec![0u64; n * PAGE / 8];
        let mut pieces = Vec::with_capacity(n);
        let mut slots = Vec::new();
        let first_slot = self.rng.below(self.round.slots.max(n) - n + 1);
        for i in 0..n {
            let (page, dst, _, _) = self.guest_range(1);
            let t = match kind {
                abi::MUSERLOAD_LOAD_COPY | abi::MUSERLOAD_LOAD_MOVE => tag + i as u64,
                _ => 0,
            };
            let src = match kind {
                abi::MUSERLOAD_LOAD_COPY => {
                    let chunk = &mut sources[i * PAGE / 8..(i + 1) * PAGE / 8];
                    fill(chunk, t);
                    chunk.as_ptr() as usize
                }
                abi::MUSERLOAD_LOAD_MOVE => {
                    let slot = first_slot + i;
                    let (main, _) = self.slot_addrs(slot);
                    Self::fill_slot(main, t);
                    slots.push((slot, t));
                    main
                }
                _ => 0,
            };
            pieces.push(Piece {
                page,
                dst,
                src,
                tag: t,
            });
        }
        Some(Vectored {
            pieces,
            slots,
            _sources: sources,
        })
    }

    /// Fills slot `slot` with `tag`'s content through `addr`.
    fn fill_slot(addr: usize, tag: u64) {
        let mut buf = [0u64; PAGE / 8];
        fill(&mut buf, tag);
        for (i, w) in buf.iter().enumerate() {
            // SAFETY: `addr` is a page of this thread's staging slot, mapped read-write; no
            // other thread touches it, and staging pages are never armed.
            unsafe { ((addr + i * 8) as *mut u64).write_volatile(*w) };
        }
    }

    /// After a MOVE of `slots` (the first `moved` of them moved): moved slots read zeros
    /// in every mapping, the others still hold their tags.
    pub(super) fn check_slots(&self, slots: &[(usize, u64)], moved: usize) {
        for (i, &(slot, tag)) in slots.iter().enumerate() {
            let (main, extra) = self.slot_addrs(slot);
            let want = if i < moved { 0 } else { tag };
            for addr in [Some(main), extra].into_iter().flatten() {
                // SAFETY: A staging slot of this thread, mapped readable.
                if !unsafe { shared::holds(addr, want) } {
                    // SAFETY: As above.
                    let got = unsafe { shared::content(addr) };
                    self.fail(format_args!(
                        "staging slot {slot} after MOVE (moved: {}): {got:?}, expected tag {want:#x}",
                        i < moved
                    ));
                }
            }
        }
    }
}
