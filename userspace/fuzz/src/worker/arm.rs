//! Arming: `MUSERLOAD_IOC_ARM` of 1 to 8 pages, through any mapping of them, in queue mode
//! or in signal mode (either signal, with `MUSERLOAD_ARM_KERNEL_WAITS` half the time), as the
//! round arms its object at the start.
//!
//! An arm discards what its pages held: the next load of each must succeed, and the page
//! must then hold what that load brought. So each arm is logged before the call (and the
//! pages' modes noted, which say what events they may have from then on) and completed
//! after it, Armed or NotArmed, for the shadow model to know which loads it cut off.
//! Checked here: the call succeeds, or fails with ENOMEM while allocations may fail.

use crate::{
    abi::{self, muserload_arm},
    rng::Rng,
    shared::{Kind, PAGE},
};

use super::Worker;

/// The flags of an arm with `signal`: signal mode has kernel-mode accesses wait as in queue
/// mode (`MUSERLOAD_ARM_KERNEL_WAITS`) half the time, as a VMM arms it.
pub fn arm_flags(rng: &mut Rng, signal: i32) -> u32 {
    if signal != 0 && rng.one_in(2) {
        abi::MUSERLOAD_ARM_KERNEL_WAITS
    } else {
        0
    }
}

impl Worker<'_> {
    /// An arm of 1 to 8 pages, queue mode half the time, logged.
    pub(super) fn arm(&mut self) {
        let n = self.rng.range(1, 8);
        let (page, start, _, _) = self.guest_range(n);
        let signal = if self.rng.one_in(2) {
            0
        } else {
            self.round.signals[self.rng.below(2)]
        };
        let flags = arm_flags(&mut self.rng, signal);
        let arm = muserload_arm {
            start: start as u64,
            len: (n * PAGE) as u64,
            signal: signal as u32,
            flags,
        };
        let Some(record) = self.shared.reserve(1) else {
            return;
        };
        self.shared.arming(page, n, signal, flags);
        self.shared
            .write(record, Kind::ArmAttempt, page, n, 0, self.shared.seq());
        let result = abi::arm(self.round.fd, &arm);
        let after = self.shared.seq();
        match result {
            Ok(()) => self.shared.complete(record, Kind::Armed, after),
            Err(e) => {
                self.shared.complete_errno(record, Kind::NotArmed, after, e);
                if !self.allowed(e, &[]) {
                    self.fail(format_args!("ARM of {n} pages: errno {e}"));
                }
            }
        }
    }
}
