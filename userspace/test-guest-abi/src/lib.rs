//! What `muserload-loader` and its built-in test guest agree on.
//!
//! The loader writes [`Params`] at [`PARAMS_ADDR`] in guest memory and enters the guest in
//! long mode with `rdi` pointing at them. The guest fills its data pages with
//! [`pattern_word`]s, leaving every page for which [`is_zero_page`] holds untouched, then
//! runs rounds: it checks and rewrites its working set, checks a slice of all its data (a
//! sweep through all of it takes several rounds), and reports on the `PORT_*` ports with
//! 32-bit `out`s.

#![no_std]

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
