//! A worker thread: random operations on the round's object, each checked against what
//! the ABI promises, every load and arm logged for the round's checker.

use std::os::fd::RawFd;

use crate::{
    abi::{self, muserload_arm, muserload_load, muserload_loadv, muserload_setup},
    rng::Rng,
    shared::{self, fill, Kind, Shared, PAGE},
    sys::{self, Exit},
    target::{self, load_logged, Piece, EXTRAS},
};

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

/// One extra mapping of guest memory (or, for staging, of this thread's slots).
#[derive(Clone, Copy)]
struct Extra {
    addr: usize,
    pages: usize,
    /// Guest page (or slot) of its first page.
    first: usize,
    prot: i32,
}

/// The pieces of a vectored load ([`Worker::vectored`]), with the memory they name.
pub struct Vectored {
    /// One page each, in the load's order.
    pub pieces: Vec<Piece>,
    /// MOVE: the staging slots the pieces take, with their tags, in the same order.
    pub slots: Vec<(usize, u64)>,
    /// COPY: the pieces' sources, alive as long as the pieces.
    _sources: Vec<u64>,
}

/// The flags of an arm with `signal`: signal mode has kernel-mode accesses wait as in queue
/// mode (`MUSERLOAD_ARM_KERNEL_WAITS`) half the time, as a VMM arms it.
pub fn arm_flags(rng: &mut Rng, signal: i32) -> u32 {
    if signal != 0 && rng.one_in(2) {
        abi::MUSERLOAD_ARM_KERNEL_WAITS
    } else {
        0
    }
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
    pub(crate) shared: &'static Shared,
    pub(crate) round: &'a Round,
    pub(crate) process: &'a Process,
    pub(crate) rng: Rng,
    thread: usize,
    pipe: (RawFd, RawFd),
    extras: [Option<Extra>; EXTRAS],
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

/// An operation of a worker thread.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Copy,
    Zero,
    Move,
    Loadv,
    Resolve,
    Wake,
    Arm,
    TouchRead,
    TouchWrite,
    KernelRead,
    KernelWrite,
    ForkToucher,
    MapExtra,
    UnmapExtra,
    RemapExtra,
    ProtectExtra,
    MapStaging,
    DupClose,
    Stats,
    PollEvents,
    Invalid,
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
        for slot in 0..EXTRAS {
            self.unmap_extra(slot);
        }
        if let Some(extra) = self.staging_extra.take() {
            // SAFETY: Only this thread uses its staging extra mapping.
            let _ = unsafe { sys::munmap(extra.addr, extra.pages * PAGE) };
        }
        sys::close(self.pipe.0);
        sys::close(self.pipe.1);
    }

    fn step(&mut self, op: Op) {
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

    pub(crate) fn fail(&self, what: std::fmt::Arguments<'_>) {
        self.shared.fail(format_args!(
            "round {} (seed {:#x}) thread {}: {what}",
            self.round.number, self.round.seed, self.thread
        ));
    }

    /// Whether `errno` is one of `expected`, or ENOMEM while allocations may fail.
    pub(crate) fn allowed(&self, errno: i32, expected: &[i32]) -> bool {
        if self.round.inject && errno == libc::ENOMEM {
            self.shared
                .enomem
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        expected.contains(&errno)
    }

    fn check_errno(&self, what: &str, got: Result<(), i32>, expected: i32) {
        match got {
            Err(e) if e == expected => {}
            Err(libc::ENOMEM) if self.allowed(libc::ENOMEM, &[]) => {}
            other => self.fail(format_args!(
                "{what}: got {other:?}, expected errno {expected}"
            )),
        }
    }

    /// A range of `n` guest pages in the main mapping or an extra one: (first page, its
    /// address, whether the mapping is readable, writable).
    fn guest_range(&mut self, n: usize) -> (usize, usize, bool, bool) {
        let candidates: Vec<Extra> = self
            .extras
            .iter()
            .flatten()
            .filter(|e| e.pages >= n)
            .copied()
            .collect();
        if !candidates.is_empty() && self.rng.one_in(3) {
            let e = candidates[self.rng.below(candidates.len())];
            let i = self.rng.below(e.pages - n + 1);
            return (
                e.first + i,
                e.addr + i * PAGE,
                e.prot & libc::PROT_READ != 0,
                e.prot & libc::PROT_WRITE != 0,
            );
        }
        let page = self.rng.below(self.round.pages - n + 1);
        (page, self.round.guest + page * PAGE, true, true)
    }

    pub(crate) fn load_mode(&mut self, kind: u32) -> (u64, bool) {
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
    fn check_load(&self, what: &str, n: usize, outcome: &target::Outcome) {
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

    fn copy(&mut self) {
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

    fn zero(&mut self) {
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

    /// The address of this thread's staging slot `slot` in the main staging mapping, and
    /// in its extra staging mapping if that maps it.
    fn slot_addrs(&self, slot: usize) -> (usize, Option<usize>) {
        let main = self.round.staging + (self.thread * self.round.slots + slot) * PAGE;
        let extra = self
            .staging_extra
            .filter(|e| slot >= e.first && slot < e.first + e.pages)
            .map(|e| e.addr + (slot - e.first) * PAGE);
        (main, extra)
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
    pub(crate) fn check_slots(&self, slots: &[(usize, u64)], moved: usize) {
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

    fn move_pages(&mut self) {
        if self.round.slots == 0 {
            return;
        }
        let n = self.rng.range(1, self.round.slots.min(8));
        let first_slot = self.rng.below(self.round.slots - n + 1);
        let (page, dst, _, _) = self.guest_range(n);
        let tag = self.shared.tags(n as u64);
        // The source: the main staging mapping, or the extra one if it maps every slot.
        let use_extra = self
            .staging_extra
            .is_some_and(|e| first_slot >= e.first && first_slot + n <= e.first + e.pages)
            && self.rng.one_in(2);
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

    fn loadv(&mut self) {
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

    /// The pieces of a vectored load of `kind`: 1 to 8 pages in any order, repeats included
    /// (the second one stops the load with EEXIST). None for a MOVE without staging.
    pub(crate) fn vectored(&mut self, kind: u32) -> Option<Vectored> {
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

    /// Wakes the page of each of `pieces` (after a DONTWAKE load of them).
    pub(crate) fn wake_pieces(&self, pieces: &[Piece]) {
        for p in pieces {
            self.wake(p.dst, 1);
        }
    }

    fn wake_random(&mut self) {
        let n = self.rng.range(1, 16.min(self.round.pages));
        let (_, dst, _, _) = self.guest_range(n);
        self.wake(dst, n);
    }

    fn arm(&mut self) {
        let n = self.rng.range(1, 8);
        let (page, start, _, _) = self.guest_range(n);
        let signal = if self.rng.one_in(2) {
            0
        } else {
            self.round.signals[self.rng.below(2)]
        };
        let flags = arm_flags(&mut self.rng, signal);
        let arm = muserload_arm {
            start: start as u64,
            len: (n * PAGE) as u64,
            signal: signal as u32,
            flags,
        };
        let Some(record) = self.shared.reserve(1) else {
            return;
        };
        self.shared.arming(page, n, signal, flags);
        self.shared
            .write(record, Kind::ArmAttempt, page, n, 0, self.shared.seq());
        let result = abi::arm(self.round.fd, &arm);
        let after = self.shared.seq();
        match result {
            Ok(()) => self.shared.complete(record, Kind::Armed, after),
            Err(e) => {
                self.shared.complete(record, Kind::NotArmed, after);
                if !self.allowed(e, &[]) {
                    self.fail(format_args!("ARM of {n} pages: errno {e}"));
                }
            }
        }
    }

    /// A user-mode access (this process may die of SIGBUS if the object is aborted).
    fn touch(&mut self, write: bool) {
        let (_, addr, readable, writable) = self.guest_range(1);
        let addr = addr + self.rng.below(PAGE / 8) * 8;
        if write && writable {
            // SAFETY: A guest page mapped read-write in this process.
            unsafe { sys::touch_write(addr) };
        } else if readable {
            // SAFETY: A guest page mapped readable in this process.
            unsafe { sys::touch_read(addr) };
        }
    }

    /// A kernel-mode read of guest memory: `write()` from it into a pipe. Its fault on an
    /// armed page waits for the page in queue mode, and so does its retry in signal mode
    /// with `MUSERLOAD_ARM_KERNEL_WAITS` (an event for the resolver, after the signal);
    /// otherwise, in signal mode, the call fails with EFAULT, and the handler loads the page
    /// on its return.
    fn kernel_read(&mut self) {
        let (_, addr, readable, _) = self.guest_range(1);
        if !readable {
            return;
        }
        let len = self.rng.range(1, 64) * 8;
        match sys::write_from(self.pipe.1, addr, len) {
            Ok(n) => {
                let mut buf = [0u8; 512];
                let _ = sys::read(self.pipe.0, &mut buf[..n]);
            }
            // Signal mode (without MUSERLOAD_ARM_KERNEL_WAITS, or re-armed so between the
            // fault's tries), or an aborted object.
            Err(libc::EFAULT) => {}
            Err(e) => self.fail(format_args!("write() from guest memory: errno {e}")),
        }
    }

    /// A kernel-mode write that cannot wait: `FUTEX_WAKE_OP` adding 0.
    fn kernel_write(&mut self) {
        let (_, addr, _, writable) = self.guest_range(1);
        if !writable {
            return;
        }
        match sys::futex_add_zero(addr) {
            Ok(_) | Err(libc::EFAULT) => {}
            // The fault's page could not be allocated (fixup_user_fault() says so).
            Err(e) if self.allowed(e, &[]) => {}
            Err(e) => self.fail(format_args!("FUTEX_WAKE_OP on guest memory: errno {e}")),
        }
    }

    /// A child touches guest pages and exits, or is killed while it waits.
    fn fork_toucher(&mut self) {
        let addrs: Vec<usize> = (0..4)
            .map(|_| self.round.guest + self.rng.below(self.round.pages) * PAGE)
            .collect();
        let write = self.rng.one_in(2);
        let kill = self.rng.one_in(2);
        let delay = self.rng.below(2000) as u64;
        // SAFETY: The child only touches memory and exits.
        match unsafe { sys::fork() } {
            Ok(0) => {
                for &a in &addrs {
                    if write {
                        // SAFETY: The main guest mapping, read-write in every worker.
                        unsafe { sys::touch_write(a) };
                    } else {
                        // SAFETY: As above.
                        unsafe { sys::touch_read(a) };
                    }
                }
                sys::exit_now(0);
            }
            Ok(pid) => {
                if kill {
                    sys::sleep_us(delay);
                    sys::kill(pid, libc::SIGKILL);
                }
                match sys::wait(pid, false) {
                    Ok(Some(Exit::Code(0))) => {}
                    Ok(Some(Exit::Signal(libc::SIGKILL))) if kill => {}
                    Ok(Some(Exit::Signal(libc::SIGBUS)))
                        if self
                            .shared
                            .aborted
                            .load(std::sync::atomic::Ordering::SeqCst) => {}
                    other => self.fail(format_args!("forked toucher: {other:?}")),
                }
            }
            Err(libc::EAGAIN) => {}
            Err(e) => self.fail(format_args!("fork: errno {e}")),
        }
    }

    fn map_extra(&mut self) {
        let Some(slot) = self.extras.iter().position(Option::is_none) else {
            return;
        };
        let n = self.rng.range(1, 8.min(self.round.pages));
        let first = self.rng.below(self.round.pages - n + 1);
        match sys::mmap(
            n * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            self.round.fd,
            (first * PAGE) as u64,
        ) {
            Ok(addr) => {
                self.extras[slot] = Some(Extra {
                    addr,
                    pages: n,
                    first,
                    prot: libc::PROT_READ | libc::PROT_WRITE,
                });
                target::set_extra(slot, addr, n, first);
            }
            Err(e) if self.allowed(e, &[]) => {}
            Err(e) => self.fail(format_args!(
                "mmap of {n} guest pages at {first}: errno {e}"
            )),
        }
    }

    fn unmap_extra(&mut self, slot: usize) {
        if let Some(e) = self.extras[slot].take() {
            target::set_extra(slot, 0, 0, 0);
            // SAFETY: Only this thread uses its extra mappings, and it forgot this one.
            if let Err(errno) = unsafe { sys::munmap(e.addr, e.pages * PAGE) } {
                self.fail(format_args!("munmap: errno {errno}"));
            }
        }
    }

    fn random_extra(&mut self) -> Option<usize> {
        let used: Vec<usize> = (0..EXTRAS).filter(|&i| self.extras[i].is_some()).collect();
        (!used.is_empty()).then(|| used[self.rng.below(used.len())])
    }

    /// munmap of a whole extra mapping, or of its head or tail (a split).
    fn unmap_random_extra(&mut self) {
        let Some(slot) = self.random_extra() else {
            return;
        };
        let Some(mut e) = self.extras[slot] else {
            return;
        };
        if e.pages == 1 || self.rng.one_in(3) {
            self.unmap_extra(slot);
            return;
        }
        let k = self.rng.range(1, e.pages - 1);
        let head = self.rng.one_in(2);
        let (addr, rest_addr, rest_first) = if head {
            (e.addr, e.addr + k * PAGE, e.first + k)
        } else {
            (e.addr + (e.pages - k) * PAGE, e.addr, e.first)
        };
        e = Extra {
            addr: rest_addr,
            pages: e.pages - k,
            first: rest_first,
            prot: e.prot,
        };
        self.extras[slot] = Some(e);
        target::set_extra(slot, e.addr, e.pages, e.first);
        // SAFETY: The part unmapped is no longer in the thread's table.
        if let Err(errno) = unsafe { sys::munmap(addr, k * PAGE) } {
            self.fail(format_args!("partial munmap: errno {errno}"));
        }
    }

    /// mremap of an extra mapping: moved, shrunk, or grown (refused: VM_DONTEXPAND).
    fn remap_extra(&mut self) {
        let Some(slot) = self.random_extra() else {
            return;
        };
        let Some(e) = self.extras[slot] else { return };
        let len = e.pages * PAGE;
        match self.rng.below(3) {
            0 => {
                let Ok(to) = sys::mmap(
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                ) else {
                    return;
                };
                target::set_extra(slot, 0, 0, 0);
                // SAFETY: Both ranges are this thread's: its extra mapping, forgotten above,
                // and the reservation it just made.
                match unsafe {
                    sys::mremap(
                        e.addr,
                        len,
                        len,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        to,
                    )
                } {
                    Ok(addr) => {
                        self.extras[slot] = Some(Extra { addr, ..e });
                        target::set_extra(slot, addr, e.pages, e.first);
                    }
                    Err(errno) => {
                        target::set_extra(slot, e.addr, e.pages, e.first);
                        // SAFETY: The reservation is unused.
                        let _ = unsafe { sys::munmap(to, len) };
                        if !self.allowed(errno, &[]) {
                            self.fail(format_args!("mremap move: errno {errno}"));
                        }
                    }
                }
            }
            1 if e.pages > 1 => {
                let pages = e.pages - 1;
                self.extras[slot] = Some(Extra { pages, ..e });
                target::set_extra(slot, e.addr, pages, e.first);
                // SAFETY: The tail given up is no longer in the thread's table.
                match unsafe { sys::mremap(e.addr, len, len - PAGE, 0, 0) } {
                    Ok(addr) if addr == e.addr => {}
                    other => self.fail(format_args!("mremap shrink: {other:?}")),
                }
            }
            _ => {
                // SAFETY: Growing is refused; were it not, the mapping would still be ours.
                match unsafe { sys::mremap(e.addr, len, len + PAGE, libc::MREMAP_MAYMOVE, 0) } {
                    Err(libc::EFAULT) => {}
                    other => self.fail(format_args!("mremap grow: {other:?}, expected EFAULT")),
                }
            }
        }
    }

    fn protect_extra(&mut self) {
        let Some(slot) = self.random_extra() else {
            return;
        };
        let Some(e) = self.extras[slot] else { return };
        let prot = [
            libc::PROT_NONE,
            libc::PROT_READ,
            libc::PROT_READ | libc::PROT_WRITE,
        ][self.rng.below(3)];
        match sys::mprotect(e.addr, e.pages * PAGE, prot) {
            Ok(()) => self.extras[slot] = Some(Extra { prot, ..e }),
            Err(errno) if self.allowed(errno, &[]) => {}
            Err(errno) => self.fail(format_args!("mprotect: errno {errno}")),
        }
    }

    /// A second mapping of some of this thread's staging slots.
    fn map_staging(&mut self) {
        if self.round.slots == 0 {
            return;
        }
        if let Some(e) = self.staging_extra.take() {
            // SAFETY: Only this thread uses its staging extra mapping, forgotten above.
            let _ = unsafe { sys::munmap(e.addr, e.pages * PAGE) };
            return;
        }
        let n = self.rng.range(1, self.round.slots);
        let first = self.rng.below(self.round.slots - n + 1);
        let offset = abi::MUSERLOAD_STAGING_OFFSET
            + ((self.thread * self.round.slots + first) * PAGE) as u64;
        match sys::mmap(
            n * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            self.round.fd,
            offset,
        ) {
            Ok(addr) => {
                self.staging_extra = Some(Extra {
                    addr,
                    pages: n,
                    first,
                    prot: libc::PROT_READ | libc::PROT_WRITE,
                })
            }
            Err(e) if self.allowed(e, &[]) => {}
            Err(e) => self.fail(format_args!("mmap of staging: errno {e}")),
        }
    }

    fn dup_close(&mut self) {
        match sys::dup(self.round.fd) {
            Ok(fd) => {
                if let Err(e) = abi::stats(fd) {
                    self.fail(format_args!("STATS on a dup: errno {e}"));
                }
                sys::close(fd);
            }
            Err(libc::EMFILE) => {}
            Err(e) => self.fail(format_args!("dup: errno {e}")),
        }
    }

    fn stats(&mut self) {
        match abi::stats(self.round.fd) {
            Ok(s) if s.unloaded <= self.round.pages as u64 && s.waiters < 10_000 => {}
            Ok(s) => self.fail(format_args!(
                "STATS: unloaded {} waiters {}",
                s.unloaded, s.waiters
            )),
            Err(e) => self.fail(format_args!("STATS: errno {e}")),
        }
    }

    fn poll_events(&mut self) {
        if let Err(e) = sys::poll(self.round.events, libc::POLLIN, 0) {
            self.fail(format_args!("poll of the events descriptor: errno {e}"));
        }
    }

    fn abort(&self) {
        self.shared
            .aborted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = abi::ioctl_value(self.round.fd, abi::IOC_ABORT, 0) {
            self.fail(format_args!("ABORT: errno {e}"));
        }
    }

    /// A call with an invalid argument: it must fail with the documented errno and change
    /// nothing.
    fn invalid(&mut self) {
        let fd = self.round.fd;
        let guest = self.round.guest;
        let hole = self.process.hole;
        let valid_src = [0u64; PAGE / 8];
        let src = valid_src.as_ptr() as usize;
        let load = |dst: usize, src: usize, len: u64, mode: u32| {
            let mut l = muserload_load {
                dst: dst as u64,
                src: src as u64,
                len,
                mode: u64::from(mode),
                loaded: 0,
            };
            let r = abi::load(fd, &mut l);
            if r.is_err() && l.loaded != 0 {
                return Err(-1);
            }
            r
        };
        let copy = abi::MUSERLOAD_LOAD_COPY;
        let zero = abi::MUSERLOAD_LOAD_ZERO;
        let page = PAGE as u64;
        match self.rng.below(24) {
            0 => self.check_errno("LOAD kind 0", load(guest, 0, page, 0), libc::EINVAL),
            1 => self.check_errno("LOAD kind 5", load(guest, 0, page, 5), libc::EINVAL),
            2 => self.check_errno(
                "LOAD unknown flag",
                load(guest, 0, page, zero | 1 << 9),
                libc::EINVAL,
            ),
            3 => {
                let off = self.rng.range(1, PAGE - 1);
                self.check_errno(
                    "COPY to a misaligned dst",
                    load(guest + off, src, page, copy),
                    libc::EINVAL,
                )
            }
            4 => self.check_errno("COPY of length 0", load(guest, src, 0, copy), libc::EINVAL),
            5 => {
                let len = page + self.rng.range(1, PAGE - 1) as u64;
                self.check_errno(
                    "COPY of a misaligned length",
                    load(guest, src, len, copy),
                    libc::EINVAL,
                )
            }
            6 => self.check_errno(
                "ZERO into staging",
                load(self.round.staging, 0, page, zero),
                libc::EINVAL,
            ),
            7 => self.check_errno(
                "MOVE from guest memory",
                load(guest, guest + page as usize, page, abi::MUSERLOAD_LOAD_MOVE),
                libc::EINVAL,
            ),
            8 => self.check_errno(
                "ZERO with a src",
                load(guest, src, page, zero),
                libc::EINVAL,
            ),
            9 => self.check_errno(
                "WAKE with a src",
                load(guest, src, page, abi::MUSERLOAD_LOAD_WAKE),
                libc::EINVAL,
            ),
            10 => self.check_errno(
                "ZERO to unmapped memory",
                load(hole, 0, page, zero),
                libc::EFAULT,
            ),
            11 => self.check_errno(
                "ZERO to another object",
                load(self.process.other, 0, page, zero),
                libc::EFAULT,
            ),
            12 => self.check_errno(
                "COPY from unreadable memory",
                load(guest, hole, page, copy),
                libc::EFAULT,
            ),
            13 => {
                let len = (u64::MAX - guest as u64 + 1) & !(page - 1);
                self.check_errno(
                    "COPY of a wrapping range",
                    load(guest, src, len, copy),
                    libc::EINVAL,
                )
            }
            14 => {
                // SAFETY: `hole` is mapped PROT_NONE: the kernel can neither read nor write it.
                let r = unsafe { abi::ioctl(fd, abi::IOC_LOAD, hole) }.map(drop);
                self.check_errno("LOAD of an unreadable struct", r, libc::EFAULT)
            }
            15 => {
                let count = if self.rng.one_in(2) {
                    0
                } else {
                    u64::from(abi::MUSERLOAD_LOADV_MAX) + 1
                };
                let mut v = muserload_loadv {
                    vec: src as u64,
                    count,
                    mode: u64::from(zero),
                    loaded: 0,
                };
                self.check_errno("LOADV count", abi::loadv(fd, &mut v), libc::EINVAL)
            }
            16 => {
                let mut v = muserload_loadv {
                    vec: hole as u64,
                    count: 2,
                    mode: u64::from(zero),
                    loaded: 0,
                };
                self.check_errno(
                    "LOADV of an unreadable vector",
                    abi::loadv(fd, &mut v),
                    libc::EFAULT,
                )
            }
            17 => {
                let signal = [libc::SIGKILL, libc::SIGSTOP, 65, 1000][self.rng.below(4)];
                let arm = muserload_arm {
                    start: guest as u64,
                    len: page,
                    signal: signal as u32,
                    flags: 0,
                };
                self.check_errno("ARM with a bad signal", abi::arm(fd, &arm), libc::EINVAL)
            }
            18 => {
                // KERNEL_WAITS is for signal mode only; the other bits are unknown.
                let (signal, flags) = if self.rng.one_in(2) {
                    (0, abi::MUSERLOAD_ARM_KERNEL_WAITS)
                } else {
                    (self.round.signals[0], !abi::MUSERLOAD_ARM_KERNEL_WAITS)
                };
                let arm = muserload_arm {
                    start: guest as u64,
                    len: page,
                    signal: signal as u32,
                    flags,
                };
                self.check_errno("ARM with flags", abi::arm(fd, &arm), libc::EINVAL)
            }
            19 => {
                let arm = muserload_arm {
                    start: guest as u64,
                    len: ((self.round.pages + 1) * PAGE) as u64,
                    signal: 0,
                    flags: 0,
                };
                self.check_errno("ARM past the mapping", abi::arm(fd, &arm), libc::EFAULT)
            }
            20 => self.check_errno(
                "an unknown ioctl",
                abi::ioctl_value(fd, abi::IOC_UNKNOWN, 0).map(drop),
                libc::ENOTTY,
            ),
            21 => {
                let setup = muserload_setup {
                    size: page,
                    staging_size: 0,
                    flags: 0,
                };
                self.check_errno("a second SETUP", abi::setup(fd, &setup), libc::EBUSY)
            }
            22 => {
                let r = abi::ioctl_value(fd, abi::IOC_EVENTS, 0).map(drop);
                self.check_errno("a second EVENTS", r, libc::EBUSY)
            }
            _ => {
                let r = sys::mmap(PAGE, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0).map(drop);
                self.check_errno("a private mapping", r, libc::EINVAL)
            }
        }
    }
}
