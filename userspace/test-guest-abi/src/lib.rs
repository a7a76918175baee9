//! What `muserload-loader` and its test guests agree on, and the workload they run.
//!
//! The freestanding test guest gets [`Params`] at [`PARAMS_ADDR`] in guest memory (the
//! loader enters it in long mode with `rdi` pointing at them); the Linux guest's workload
//! gets them from its command line. Both run [`run`]: fill the data pages with
//! [`pattern_word`]s, leaving every page for which [`is_zero_page`] holds untouched, then
//! rounds: check and rewrite the working set, check a slice of all the data (a sweep
//! through all of it takes several rounds), and report on the `PORT_*` ports with 32-bit
//! `out`s, which the loader counts.

#![no_std]

use core::{fmt, time::Duration};

/// How a Linux guest's init ends a line that gives the guest's wall-clock time: `clock
/// SECONDS.NANOSECONDS` since the epoch (the loader's tests hold it against the host's).
pub struct ClockStamp(pub Duration);

impl fmt::Display for ClockStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "clock {}.{:09}", self.0.as_secs(), self.0.subsec_nanos())
    }
}

/// Guest-physical address of [`Params`].
pub const PARAMS_ADDR: u64 = 0x7000;

/// [`Params::magic`]: "MLTG" and a layout version.
pub const PARAMS_MAGIC: u64 = 0x4d4c_5447_0000_0001;

/// Port written once when every data page is filled (value: pages filled).
pub const PORT_FILLED: u16 = 0x510;
/// Port written after each round (value: the round number, from 1).
pub const PORT_ROUND: u16 = 0x514;
/// Port written after each complete sweep (value: sweeps completed, from 1).
pub const PORT_SWEEP: u16 = 0x518;
/// Port written for each data page that did not hold what it should (value: its index).
pub const PORT_MISMATCH: u16 = 0x51c;
/// The first and last of the ports above.
pub const PORTS: core::ops::RangeInclusive<u16> = PORT_FILLED..=PORT_MISMATCH;

/// Page size.
pub const PAGE_SIZE: u64 = 4096;
/// 64-bit words per page.
pub const PAGE_WORDS: usize = (PAGE_SIZE / 8) as usize;

/// The test guest's parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// [`PARAMS_MAGIC`].
    pub magic: u64,
    /// Guest-physical address of the first data page.
    pub data_start: u64,
    /// Data pages.
    pub data_pages: u64,
    /// Pages rewritten every round: the first `working_set_pages` data pages.
    pub working_set_pages: u64,
    /// Data pages checked per round.
    pub sweep_pages: u64,
}

impl Params {
    /// The parameters as the bytes the guest reads.
    pub fn to_bytes(&self) -> [u8; 40] {
        let mut out = [0; 40];
        for (chunk, word) in out.chunks_exact_mut(8).zip([
            self.magic,
            self.data_start,
            self.data_pages,
            self.working_set_pages,
            self.sweep_pages,
        ]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        out
    }
}

/// Whether data page `page` is one the guest never writes: one in four, so that a
/// migration has zero pages to skip among the others.
pub const fn is_zero_page(page: u64) -> bool {
    page % 4 == 3
}

/// Word `word` of data page `page` after round `round` (0: the fill). Never zero for a
/// whole page, and different for every (page, round).
pub const fn pattern_word(page: u64, round: u64, word: usize) -> u64 {
    ((page << 24) ^ round ^ 0x5a5a_0000_0000_0000)
        .wrapping_add((word as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Where the workload runs: how it reports.
pub trait Reporter {
    /// Writes `value` to the 32-bit I/O port `port`.
    fn report(&mut self, port: u16, value: u32);
}

/// The workload: fills `params.data_pages` pages at `data`, then runs rounds forever.
///
/// # Safety
///
/// `data` points at `params.data_pages` pages of memory that nothing else uses, aligned to
/// 8 bytes.
pub unsafe fn run(data: *mut u64, params: &Params, reporter: &mut impl Reporter) -> ! {
    let memory = Pages { data };
    let working_set = params.working_set_pages.min(params.data_pages);
    let sweep = params.sweep_pages.clamp(1, params.data_pages.max(1));
    for page in (0..params.data_pages).filter(|&page| !is_zero_page(page)) {
        memory.write(page, 0);
    }
    let (mut cursor, mut sweeps) = (0, 0u64);
    let mut round = 1u64;
    reporter.report(PORT_FILLED, params.data_pages as u32);
    loop {
        for page in (0..working_set).filter(|&page| !is_zero_page(page)) {
            if !memory.holds(page, round - 1) {
                reporter.report(PORT_MISMATCH, page as u32);
            }
            memory.write(page, round);
        }
        for _ in 0..sweep {
            let expected_round = if cursor < working_set { round } else { 0 };
            if !memory.holds(cursor, expected_round) {
                reporter.report(PORT_MISMATCH, cursor as u32);
            }
            cursor += 1;
            if cursor == params.data_pages {
                cursor = 0;
                sweeps += 1;
                reporter.report(PORT_SWEEP, sweeps as u32);
            }
        }
        reporter.report(PORT_ROUND, round as u32);
        round += 1;
    }
}

/// The workload's data pages.
///
/// # Invariants
///
/// `data` points at the pages [`run`]'s caller gave it.
struct Pages {
    data: *mut u64,
}

impl Pages {
    fn word(&self, page: u64, word: usize) -> *mut u64 {
        self.data.wrapping_add(page as usize * PAGE_WORDS + word)
    }

    /// Writes round `round`'s pattern into `page`.
    fn write(&self, page: u64, round: u64) {
        for word in 0..PAGE_WORDS {
            // SAFETY: By the type invariant the page is ours; volatile, because the memory
            // accesses are the point.
            unsafe {
                self.word(page, word)
                    .write_volatile(pattern_word(page, round, word))
            };
        }
    }

    /// Whether `page` holds round `round`'s pattern (zeros, for a zero page).
    fn holds(&self, page: u64, round: u64) -> bool {
        let zero = is_zero_page(page);
        (0..PAGE_WORDS).all(|word| {
            let want = if zero {
                0
            } else {
                pattern_word(page, round, word)
            };
            // SAFETY: As in `write`.
            unsafe { self.word(page, word).read_volatile() == want }
        })
    }
}
