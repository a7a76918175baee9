// SPDX-License-Identifier: GPL-2.0

//! The clock that times fault waits: `local_clock()`, the scheduler's clock.
//!
//! A wait is timed twice (its start and its end) on the fault path, where `ktime_get()`
//! would read the clocksource: under emulation that is often the HPET, an MMIO read that
//! costs about a microsecond under QEMU TCG (`make bench-profile` showed two `read_hpet`
//! per fault). `local_clock()` reads the TSC; it is monotonic on one CPU and within a few
//! microseconds across CPUs, which is enough for a wait's length. It is reached through
//! the C helper in `clock_shim.c`.

extern "C" {
    fn muserload_local_clock() -> u64;
}

/// A time on the local clock.
#[derive(Clone, Copy)]
pub(crate) struct LocalInstant(u64);

impl LocalInstant {
    /// Now.
    pub(crate) fn now() -> Self {
        // SAFETY: `local_clock()` may be called in any context.
        Self(unsafe { muserload_local_clock() })
    }

    /// Nanoseconds since `self`; 0 if this CPU's clock is behind the one that took `self`.
    pub(crate) fn elapsed_ns(self) -> u64 {
        Self::now().0.saturating_sub(self.0)
    }
}
