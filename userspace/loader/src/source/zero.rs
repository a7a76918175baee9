//! Telling zero pages apart without touching the ones the guest never touched: a page that
//! is not resident in the source's mapping (`mincore(2)`) was never touched, so it is zero;
//! only a resident page is read. Reading an untouched page would fault it in, the module
//! allocating a zeroed page for it: at the pause, most of a mostly idle guest's RAM.

use crate::bitmap::Bitmap;

/// The zero pages among some candidates, and what it took to find them.
pub(super) struct ZeroScan {
    /// The candidates that are zero.
    pub zero: Bitmap,
    /// The candidates.
    pub checked: u64,
    /// Candidates read to decide: the resident ones.
    pub read: u64,
}

/// Which `candidate` pages are zero, given which pages are `resident` (one entry a page):
/// those that are not, and those that are and that `is_zero` (which reads the page) says
/// hold only zeros.
pub(super) fn scan(
    resident: &[bool],
    candidate: impl Fn(u64) -> bool,
    is_zero: impl Fn(u64) -> bool,
) -> ZeroScan {
    let mut found = ZeroScan {
        zero: Bitmap::new(resident.len() as u64),
        checked: 0,
        read: 0,
    };
    for (page, &resident) in resident.iter().enumerate() {
        let page = page as u64;
        if !candidate(page) {
            continue;
        }
        found.checked += 1;
        found.read += u64::from(resident);
        if !resident || is_zero(page) {
            found.zero.set(page);
        }
    }
    found
}
