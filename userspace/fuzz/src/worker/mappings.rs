//! The thread's own mappings of the object, and where the other operations find a page.
//!
//! Besides the round's mappings (all of guest memory in every process, and staging), each
//! thread has up to `EXTRAS` extra mappings of runs of guest pages, which it maps, splits
//! with a partial munmap, moves, shrinks, tries to grow and protects, and a second mapping
//! of some of its staging slots. Loads, arms and accesses go through any of them
//! ([`Worker::guest_range`]), and a page must be the same page through every mapping of
//! it. Only the owning thread touches an extra mapping, and `target` knows it, so that the
//! thread's signal handler finds the guest page of a fault in it.
//!
//! Checked here: mmap of guest pages or of the thread's staging slots, mremap that moves,
//! and mprotect succeed, or fail with ENOMEM while allocations may fail; munmap, whole or
//! partial, and mremap that shrinks in place succeed; mremap that grows is refused with
//! EFAULT (`VM_DONTEXPAND`). What the pages hold through these mappings is the shadow
//! model's to check: the loads through them are logged with their guest pages; and a
//! MOVE's staging slots are checked through both staging mappings (`Worker::check_slots`).

use crate::{
    abi,
    shared::PAGE,
    sys,
    target::{self, EXTRAS},
};

use super::Worker;

/// One extra mapping of guest memory (or, for staging, of this thread's slots).
#[derive(Clone, Copy)]
pub(super) struct Extra {
    /// Where it is mapped.
    addr: usize,
    /// How many pages it maps.
    pages: usize,
    /// Guest page (or slot) of its first page.
    first: usize,
    /// Its protection, as last set.
    prot: i32,
}

impl Worker<'_> {
    /// A range of `n` guest pages in the main mapping or an extra one: (first page, its
    /// address, whether the mapping is readable, writable).
    pub(super) fn guest_range(&mut self, n: usize) -> (usize, usize, bool, bool) {
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

    /// The address of this thread's staging slot `slot` in the main staging mapping, and
    /// in its extra staging mapping if that maps it.
    pub(super) fn slot_addrs(&self, slot: usize) -> (usize, Option<usize>) {
        let main = self.round.staging + (self.thread * self.round.slots + slot) * PAGE;
        let extra = self
            .staging_extra
            .filter(|e| slot >= e.first && slot < e.first + e.pages)
            .map(|e| e.addr + (slot - e.first) * PAGE);
        (main, extra)
    }

    /// Whether the extra staging mapping maps every one of slots `first..first + n`.
    pub(super) fn staging_extra_maps(&self, first: usize, n: usize) -> bool {
        self.staging_extra
            .is_some_and(|e| first >= e.first && first + n <= e.first + e.pages)
    }

    /// A new extra mapping of 1 to 8 guest pages, if a slot for it is free.
    pub(super) fn map_extra(&mut self) {
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

    /// munmap of extra mapping `slot` (if it is there), forgotten first.
    fn unmap_extra(&mut self, slot: usize) {
        if let Some(e) = self.extras[slot].take() {
            target::set_extra(slot, 0, 0, 0);
            // SAFETY: Only this thread uses its extra mappings, and it forgot this one.
            if let Err(errno) = unsafe { sys::munmap(e.addr, e.pages * PAGE) } {
                self.fail(format_args!("munmap: errno {errno}"));
            }
        }
    }

    /// The slot of one of the extra mappings, if there are any.
    fn random_extra(&mut self) -> Option<usize> {
        let used: Vec<usize> = (0..EXTRAS).filter(|&i| self.extras[i].is_some()).collect();
        (!used.is_empty()).then(|| used[self.rng.below(used.len())])
    }

    /// munmap of a whole extra mapping, or of its head or tail (a split).
    pub(super) fn unmap_random_extra(&mut self) {
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
    pub(super) fn remap_extra(&mut self) {
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

    /// mprotect of an extra mapping to no access, read only or read-write.
    pub(super) fn protect_extra(&mut self) {
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

    /// A second mapping of some of this thread's staging slots, or, if it has one, its
    /// munmap.
    pub(super) fn map_staging(&mut self) {
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

    /// Unmaps every mapping of the thread's own, at its end.
    pub(super) fn unmap_all(&mut self) {
        for slot in 0..EXTRAS {
            self.unmap_extra(slot);
        }
        if let Some(extra) = self.staging_extra.take() {
            // SAFETY: Only this thread uses its staging extra mapping.
            let _ = unsafe { sys::munmap(extra.addr, extra.pages * PAGE) };
        }
    }
}
