//! Private anonymous memory: what userfaultfd registers and moves.

use std::{num::NonZeroUsize, ptr::NonNull};

use nix::{
    errno::Errno,
    sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags},
};

use crate::{Error, Result};

/// A private anonymous mapping, unmapped on drop.
pub struct Anon {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: Plain memory; the benchmark's threads coordinate through the kernel.
unsafe impl Send for Anon {}
// SAFETY: As above.
unsafe impl Sync for Anon {}

impl Anon {
    /// Maps `len` bytes (nonzero).
    pub fn new(len: usize) -> Result<Self> {
        let length = NonZeroUsize::new(len).ok_or(Error::Sys {
            op: "mmap",
            errno: nix::errno::Errno::EINVAL,
        })?;
        // SAFETY: A new mapping at an address the kernel picks.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(|errno| Error::Sys { op: "mmap", errno })?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Keeps transparent huge pages out, so that every 4 KiB page faults on its own (KVM's
    /// `demand_paging_test` runs with THP off too). A kernel without THP has none to keep
    /// out (`EINVAL`).
    pub fn no_huge_pages(&self) -> Result<()> {
        // SAFETY: Advice on this mapping only; it changes no contents.
        match unsafe { madvise(self.ptr.cast(), self.len, MmapAdvise::MADV_NOHUGEPAGE) } {
            Ok(()) | Err(Errno::EINVAL) => Ok(()),
            Err(errno) => Err(Error::Sys {
                op: "madvise",
                errno,
            }),
        }
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The address of byte `offset`.
    pub fn addr(&self, offset: usize) -> u64 {
        self.ptr.as_ptr() as u64 + offset as u64
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: The mapping made by `new`, unmapped only here.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
