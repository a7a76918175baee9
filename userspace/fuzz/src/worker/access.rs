//! Accesses to guest memory, which fault on pages that are armed: user-mode reads and
//! writes, kernel-mode reads (`write()` from guest memory) and kernel-mode writes that
//! cannot wait (`FUTEX_WAKE_OP`), through any mapping; and forked children that touch
//! pages of the main mapping and exit, or are killed while they wait.
//!
//! A fault is served by whoever the page's mode sends it to: the signal handler of the
//! faulting thread (signal mode), or a reader of the events (queue mode; in signal mode
//! with `MUSERLOAD_ARM_KERNEL_WAITS`, a kernel-mode access's retry after the signal). Their
//! loads are logged; an access changes no content (a user-mode write adds 0 atomically),
//! so the shadow model needs nothing from it. Checked here: the calls succeed or fail
//! only as signal mode or an abort makes them (EFAULT; ENOMEM while allocations may fail),
//! and a child exits with 0, or dies of the SIGKILL it was sent or of the SIGBUS of an
//! aborted object. An access that waits for good hangs the round, which reports it.

use crate::{
    shared::PAGE,
    sys::{self, Exit},
};

use super::Worker;

impl Worker<'_> {
    /// A user-mode access (this process may die of SIGBUS if the object is aborted).
    pub(super) fn touch(&mut self, write: bool) {
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
    pub(super) fn kernel_read(&mut self) {
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
    pub(super) fn kernel_write(&mut self) {
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
    pub(super) fn fork_toucher(&mut self) {
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
}
