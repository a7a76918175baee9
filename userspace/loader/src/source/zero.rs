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

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, num::NonZeroUsize, ptr::NonNull};

    use muserload::PAGE_SIZE;
    use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};

    use super::*;
    use crate::memory::resident_pages;

    /// Shared anonymous memory standing in for guest RAM (a shared mapping too): a read
    /// of an untouched page faults it in, as in the module's mapping.
    struct Ram {
        /// The mapping.
        at: NonNull<u8>,
        /// Its pages.
        pages: usize,
    }

    impl Ram {
        fn new(pages: usize) -> Self {
            let len = NonZeroUsize::new(pages * PAGE_SIZE).expect("some pages");
            // SAFETY: A new anonymous mapping overlaps nothing.
            let at = unsafe {
                mmap_anonymous(
                    None,
                    len,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_SHARED,
                )
            }
            .expect("anonymous memory");
            Self {
                at: at.cast(),
                pages,
            }
        }

        fn word(&self, page: u64, word: usize) -> *mut u64 {
            // SAFETY: Tests pass pages of the mapping and words of a page.
            unsafe {
                self.at
                    .as_ptr()
                    .add(page as usize * PAGE_SIZE)
                    .cast::<u64>()
                    .add(word)
            }
        }

        /// Writes `value` into the last word of `page`.
        fn write(&self, page: u64, value: u64) {
            // SAFETY: The word lies in the mapping, which only this test uses.
            unsafe { self.word(page, PAGE_SIZE / 8 - 1).write_volatile(value) };
        }

        fn is_zero(&self, page: u64) -> bool {
            // SAFETY: As in `write`.
            (0..PAGE_SIZE / 8).all(|w| unsafe { self.word(page, w).read_volatile() } == 0)
        }

        /// Which pages are resident (`mincore(2)`).
        fn resident(&self) -> Vec<bool> {
            // SAFETY: The range is the mapping.
            unsafe { resident_pages(self.at.as_ptr(), self.pages * PAGE_SIZE) }.expect("mincore")
        }
    }

    impl Drop for Ram {
        fn drop(&mut self) {
            // SAFETY: The mapping is this value's, and nothing refers to it any more.
            let _ = unsafe { munmap(self.at.cast(), self.pages * PAGE_SIZE) };
        }
    }

    #[test]
    fn untouched_pages_are_zero_and_never_read() {
        let ram = Ram::new(512);
        // Data in three pages, zeros written into two (touched, yet zero).
        for page in [3, 64, 300] {
            ram.write(page, 0x5a);
        }
        for page in [5, 100] {
            ram.write(page, 0);
        }
        let resident = ram.resident();
        let touched: Vec<u64> = (0..512).filter(|&p| resident[p as usize]).collect();
        assert_eq!(touched, [3, 5, 64, 100, 300]);
        // Every page but 300 and 301 is a candidate.
        let reads = RefCell::new(Vec::new());
        let found = scan(
            &resident,
            |page| !(300..302).contains(&page),
            |page| {
                reads.borrow_mut().push(page);
                ram.is_zero(page)
            },
        );
        // None of the untouched pages was read: none is resident now.
        assert_eq!(ram.resident(), resident);
        assert_eq!(reads.into_inner(), [3, 5, 64, 100]);
        assert_eq!((found.checked, found.read), (510, 4));
        let zero: Vec<u64> = found.zero.ones().collect();
        let want: Vec<u64> = (0..512)
            .filter(|p| ![3, 64, 300, 301].contains(p))
            .collect();
        assert_eq!(zero, want);
    }
}
