//! Guest RAM: one muserload object, mapped once for KVM and the loader, with a `vm-memory`
//! view of the same mapping for the image loaders.

use std::io;

use muserload::{features, GuestMemory, Object, PAGE_SIZE};
use vm_memory::{
    mmap::MmapRegionError, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
    GuestRegionCollectionError, GuestRegionMmap, MmapRegion,
};

/// Staging slots of a destination: one batch for fault replies, one for the stream.
pub const STAGING_SLOTS: usize = 2 * BATCH_PAGES;

/// The most pages one batch on the wire carries (and one vectored MOVE loads).
pub const BATCH_PAGES: usize = 64;

/// The 64-bit words of a page.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;

/// A failure to set up guest RAM, or to read it.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A size that is not a whole number of pages.
    #[error("guest RAM of {size} bytes is not a whole number of pages")]
    Size {
        /// The size asked for.
        size: u64,
    },
    /// The muserload object failed.
    #[error(transparent)]
    Object(#[from] muserload::Error),
    /// `vm-memory` refused the mapping as a region.
    #[error("vm-memory region: {0}")]
    Region(#[source] MmapRegionError),
    /// The region does not fit the guest's address space.
    #[error("vm-memory region overflows")]
    RegionOverflow,
    /// `vm-memory` refused the region as guest memory.
    #[error("vm-memory: {0}")]
    Memory(#[source] GuestRegionCollectionError),
    /// A page that is not one of the guest's.
    #[error("guest page {index}: {source}")]
    Page {
        /// The page.
        index: u64,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// A page copied only in part.
    #[error("guest page {index}: copied {words} words of {PAGE_WORDS}")]
    ShortCopy {
        /// The page.
        index: u64,
        /// The words copied.
        words: usize,
    },
    /// `mincore(2)` failed.
    #[error("mincore on guest RAM: {0}")]
    Mincore(#[source] io::Error),
}

/// Guest RAM.
pub struct GuestRam {
    // Fields drop in this order: the view of the mapping, the mapping, the object.
    /// The mapping as `vm-memory` guest memory.
    view: GuestMemoryMmap,
    /// The mapping.
    guest: GuestMemory,
    /// The object.
    object: Object,
}

impl GuestRam {
    /// RAM of `size` bytes (a page multiple), zero-filled on first touch.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size == 0 || size % PAGE_SIZE as u64 != 0 {
            return Err(MemoryError::Size { size });
        }
        let wanted = features::QUEUE | features::SIGNAL | features::MOVE | features::LOADV;
        let object = Object::create(size, (STAGING_SLOTS * PAGE_SIZE) as u64, wanted)?;
        let guest = object.map_guest()?;
        let len = guest.len();
        // SAFETY: `guest` is a shared read-write mapping of `len` bytes, and it outlives
        // `view`: both end up in `Self`, which drops `view` first. A raw region never
        // unmaps what it was given.
        let region = unsafe {
            MmapRegion::build_raw(
                guest.as_ptr(),
                len,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED,
            )
        }
        .map_err(MemoryError::Region)?;
        let region =
            GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemoryError::RegionOverflow)?;
        let view = GuestMemoryMmap::from_regions(vec![region]).map_err(MemoryError::Memory)?;
        Ok(Self {
            view,
            guest,
            object,
        })
    }

    /// The muserload object.
    pub fn object(&self) -> &Object {
        &self.object
    }

    /// The mapping KVM and the loader use.
    pub fn guest(&self) -> &GuestMemory {
        &self.guest
    }

    /// The same mapping as `vm-memory` guest memory.
    pub fn view(&self) -> &GuestMemoryMmap {
        &self.view
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.guest.len() as u64
    }

    /// The number of pages.
    pub fn pages(&self) -> u64 {
        self.size() / PAGE_SIZE as u64
    }
}

impl GuestRam {
    /// Page `index` as bytes.
    ///
    /// # Safety
    ///
    /// Nothing may write the page while the slice lives: no vCPU runs, no load targets it.
    pub unsafe fn page(&self, index: u64) -> &[u8] {
        let offset = index as usize * PAGE_SIZE;
        assert!(
            offset + PAGE_SIZE <= self.guest.len(),
            "page {index} out of range"
        );
        // SAFETY: The page lies in the mapping (asserted), which lives as long as `self`;
        // the caller guarantees that nothing writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.guest.as_ptr().add(offset), PAGE_SIZE) }
    }

    /// Whether page `index` holds only zeros, reading a word at a time and stopping at the
    /// first that is not (so a page with data costs one read). The guest may be running:
    /// the reads are volatile, and the answer is that of some moment during the call.
    pub fn is_zero(&self, index: u64) -> bool {
        let offset = index as usize * PAGE_SIZE;
        if offset + PAGE_SIZE > self.guest.len() {
            return false;
        }
        // SAFETY: The page lies in the mapping, which lives as long as `self`, and is
        // 8-byte aligned.
        let words = unsafe { self.guest.as_ptr().add(offset) }.cast::<u64>();
        // SAFETY: As above; volatile, since the guest may write the page meanwhile.
        (0..PAGE_SIZE / 8).all(|i| unsafe { words.add(i).read_volatile() } == 0)
    }

    /// Copies page `index` into `to` (a page of words) while the guest may be writing it.
    /// See [`copy_page`].
    pub fn copy_page(&self, index: u64, to: &mut [u64]) -> Result<(), MemoryError> {
        copy_page(&self.view, index, to)
    }

    /// Which pages are present in this process's mapping (`mincore(2)`); the others have
    /// never been touched, so they are zero.
    pub fn resident(&self) -> Result<Vec<bool>, MemoryError> {
        // SAFETY: The range is our mapping.
        unsafe { resident_pages(self.guest.as_ptr(), self.guest.len()) }
            .map_err(MemoryError::Mincore)
    }
}

/// Which pages of the mapping of `len` bytes at `start` are resident (`mincore(2)`), a
/// `bool` a page.
///
/// # Safety
///
/// `start` and `len` are a mapping of this process, page-aligned.
pub unsafe fn resident_pages(start: *const u8, len: usize) -> io::Result<Vec<bool>> {
    let mut vec = vec![0u8; len.div_ceil(PAGE_SIZE)];
    // SAFETY: The range is a mapping (the caller's promise), and `vec` has a byte per page
    // of it.
    if unsafe { nix::libc::mincore(start.cast_mut().cast(), len, vec.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.into_iter().map(|b| b & 1 != 0).collect())
}

/// Copies page `index` of `memory` into `to` (a page of words) with volatile reads, a word
/// at a time: the guest may be writing the page meanwhile, and a plain copy (a `memcpy`)
/// of memory that something else writes is a data race in Rust's memory model. It is
/// `vm-memory`'s `VolatileSlice::copy_to` of `u64`s; its copies of bytes are no such
/// thing: above 8 bytes they are `copy_nonoverlapping`. A page written during the copy
/// comes out torn (word by word, each word whole), as any copy of memory in use does.
pub fn copy_page(memory: &GuestMemoryMmap, index: u64, to: &mut [u64]) -> Result<(), MemoryError> {
    let page = memory
        .get_slice(GuestAddress(index * PAGE_SIZE as u64), PAGE_SIZE)
        .map_err(|source| MemoryError::Page { index, source })?;
    let words = page.copy_to(to);
    if words != PAGE_WORDS {
        return Err(MemoryError::ShortCopy { index, words });
    }
    Ok(())
}

/// Words as their bytes (in memory order), for sending pages copied with [`copy_page`].
pub fn as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: The bytes of `words` are initialised and live as long as the borrow; `u8`
    // has no alignment, and every value of it is valid.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), size_of_val(words)) }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    /// Three pages of anonymous memory: the first and the last all ones, the middle one
    /// numbered byte by byte.
    fn memory() -> (GuestMemoryMmap, Vec<u8>) {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 3 * PAGE_SIZE)])
            .expect("anonymous guest memory");
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 % 251) as u8).collect();
        memory
            .write_slice(&[0xff; PAGE_SIZE], GuestAddress(0))
            .and_then(|()| memory.write_slice(&page, GuestAddress(PAGE_SIZE as u64)))
            .and_then(|()| {
                memory.write_slice(&[0xff; PAGE_SIZE], GuestAddress(2 * PAGE_SIZE as u64))
            })
            .expect("writing guest memory");
        (memory, page)
    }

    #[test]
    fn copy_page_copies_exactly_that_page() {
        let (memory, page) = memory();
        let mut words = vec![0u64; 2 * PAGE_WORDS];
        copy_page(&memory, 1, &mut words[..PAGE_WORDS]).expect("page 1");
        assert_eq!(as_bytes(&words[..PAGE_WORDS]), &page[..]);
        // Nothing beyond the page it was given.
        assert!(words[PAGE_WORDS..].iter().all(|&w| w == 0));
        copy_page(&memory, 2, &mut words[PAGE_WORDS..]).expect("page 2");
        assert_eq!(as_bytes(&words[PAGE_WORDS..]), &[0xff; PAGE_SIZE][..]);
    }

    #[test]
    fn copy_page_refuses_what_is_not_a_guest_page() {
        let (memory, _) = memory();
        let mut words = vec![0u64; PAGE_WORDS];
        assert!(copy_page(&memory, 3, &mut words).is_err());
        assert!(copy_page(&memory, 0, &mut words[..PAGE_WORDS - 1]).is_err());
    }

    #[test]
    fn as_bytes_is_memory_order() {
        let words = [u64::from_ne_bytes([1, 2, 3, 4, 5, 6, 7, 8]), 0];
        assert_eq!(
            as_bytes(&words),
            &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
