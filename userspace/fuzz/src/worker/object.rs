//! The object as a whole: a second descriptor of it (dup, STATS through it, close), STATS,
//! and ABORT at a random moment, which ends the post-copy.
//!
//! Checked here: STATS answers through any descriptor of the object, with counters that
//! can be true (no more unloaded pages than the object has, a bounded number of waiters;
//! the round checks that both are 0 once every page is loaded), and ABORT succeeds. The
//! abort is flagged in the shared state before the call: from then on a SIGBUS of a worker
//! or a child is expected, and so is the end of the events.

use std::sync::atomic::Ordering::SeqCst;

use crate::{abi, sys};

use super::Worker;

impl Worker<'_> {
    /// dup of the object's descriptor, STATS through it, close.
    pub(super) fn dup_close(&mut self) {
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

    /// STATS, whose counters must be within the object's bounds.
    pub(super) fn stats(&mut self) {
        match abi::stats(self.round.fd) {
            Ok(s) if s.unloaded <= self.round.pages as u64 && s.waiters < 10_000 => {}
            Ok(s) => self.fail(format_args!(
                "STATS: unloaded {} waiters {}",
                s.unloaded, s.waiters
            )),
            Err(e) => self.fail(format_args!("STATS: errno {e}")),
        }
    }

    /// ABORT of the object, flagged first.
    pub(super) fn abort(&self) {
        self.shared.aborted.store(true, SeqCst);
        if let Err(e) = abi::ioctl_value(self.round.fd, abi::IOC_ABORT, 0) {
            self.fail(format_args!("ABORT: errno {e}"));
        }
    }
}
