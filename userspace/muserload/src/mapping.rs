//! Mappings of an object's two regions: guest memory and staging.

use std::{num::NonZeroUsize, os::fd::BorrowedFd, ptr::NonNull};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::{Error, Result};

/// The page size the module works in.
pub const PAGE_SIZE: usize = 4096;

/// A shared mapping of part of an object, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: A mapping is plain memory; the owner decides who writes it.
unsafe impl Send for Mapping {}
// SAFETY: As above: `&Mapping` gives out only raw pointers and copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, read-write and shared.
    pub(crate) fn new(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        what: &'static str,
    ) -> Result<Self> {
        let length = NonZeroUsize::new(len).ok_or(Error::Range {
            what,
            offset,
            len: 0,
            limit: 0,
        })?;
        let offset_arg = i64::try_from(offset).map_err(|_| Error::Range {
            what,
            offset,
            len: len as u64,
            limit: i64::MAX as u64,
        })?;
        // SAFETY: A new mapping at an address the kernel picks overlaps nothing of ours.
        let ptr = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                offset_arg,
            )
        }
        .map_err(|errno| Error::Map { what, errno })?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The address of `[offset, offset + len)`, checked to lie in the mapping.
    pub(crate) fn addr(&self, what: &'static str, offset: u64, len: u64) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len as u64 => Ok(self.ptr.as_ptr() as u64 + offset),
            _ => Err(Error::Range {
                what,
                offset,
                len,
                limit: self.len as u64,
            }),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are a mapping made by `new` and unmapped only here.
        // Nothing useful can be done if it fails.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// A mapping of an object's guest memory: what a VMM gives its guest as RAM.
///
/// The guest (through KVM), other threads and the module change this memory concurrently,
/// so it is accessed through raw pointers and copies, as `vm-memory` does, never through
/// Rust references.
#[derive(Debug)]
pub struct GuestMemory(pub(crate) Mapping);

impl GuestMemory {
    /// The first byte, for `KVM_SET_USER_MEMORY_REGION` and the like.
    pub fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the mapping is empty (never: the module refuses empty objects).
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`. Touching an armed page faults as
    /// any access does (waits in queue mode, signals in signal mode).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let addr = self.0.addr("guest read", offset, buf.len() as u64)?;
        // SAFETY: `addr..addr + buf.len()` lies in the mapping (checked above), which lives
        // as long as `self`; `buf` is a distinct Rust buffer.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` to `offset`.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let addr = self.0.addr("guest write", offset, buf.len() as u64)?;
        // SAFETY: As in `read`.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), addr as *mut u8, buf.len()) };
        Ok(())
    }
}

/// A mapping of an object's staging: page slots to receive data into (for example with
/// `recv()`) before moving them into guest memory without a copy.
///
/// A slot's page leaves with a MOVE; its next touch finds a fresh zeroed page. Slots are
/// borrowed mutably, so no Rust reference to a slot can outlive a MOVE of it.
#[derive(Debug)]
pub struct Staging(pub(crate) Mapping);

impl Staging {
    /// How many page slots there are.
    pub fn slots(&self) -> usize {
        self.0.len() / PAGE_SIZE
    }

    /// Slots `first..first + count` as one buffer.
    pub fn slots_mut(&mut self, first: usize, count: usize) -> Result<&mut [u8]> {
        let addr = self.0.addr(
            "staging slots",
            (first * PAGE_SIZE) as u64,
            (count * PAGE_SIZE) as u64,
        )?;
        // SAFETY: The range lies in the mapping, which lives as long as `self`; `&mut self`
        // makes the slice the only reference to it, and only a MOVE (which needs `&mut
        // Staging` too) changes what is mapped there.
        Ok(unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, count * PAGE_SIZE) })
    }

    /// Slot `index`.
    pub fn slot_mut(&mut self, index: usize) -> Result<&mut [u8]> {
        self.slots_mut(index, 1)
    }
}
