// SPDX-License-Identifier: GPL-2.0

//! The state of a guest page: armed or not, in which mode, and whether its fault was
//! reported.
//!
//! ```text
//!                  ARM (discards the page)             a waiter queues the event
//!   empty ───────────────────────────────▶ armed ───────────────────────────▶ armed,
//!   present  ◀─── COPY / MOVE ─────────────  │                                reported
//!   zero-loaded ◀─ ZERO ─────────────────────┘◀──── ARM again (keeps the event) ──┘
//!        ▲                                                                       │
//!        └──────────────────────── COPY / MOVE / ZERO ───────────────────────────┘
//! ```
//!
//! Empty and present differ only in whether the object has a page in the slot
//! (`slots.rs`); the word says the rest. A page is armed from `MUSERLOAD_IOC_ARM` until a
//! load; in queue mode (and for signal-mode kernel accesses with
//! `MUSERLOAD_ARM_KERNEL_WAITS`) the first fault that waits queues one event and marks the
//! page reported, so that later waiters do not queue another. A load makes it present or
//! zero-loaded (a ZERO load allocates nothing: a touch zero-fills the page), and a load of a
//! page that is present or zero-loaded fails with EEXIST.
//!
//! # Locking
//!
//! A state changes under its slot's lock, together with the page it describes
//! (`LockedPages::set_state`). Faults that sleep read it without the lock
//! (`Slots::awaits_load`, acquire ordering, pairing with the writers' release), since a
//! task that has set its sleeping state may not sleep for a lock.

/// Bits 0-7: the signal of signal mode (0: queue mode).
const SIGNAL_MASK: u32 = 0xff;
/// The page is armed: not loaded.
const ARMED: u32 = 1 << 8;
/// The page's fault event was queued (once per arming).
const REPORTED: u32 = 1 << 9;
/// Loaded as a zero page that is not allocated yet.
const ZERO: u32 = 1 << 10;
/// Signal mode with `MUSERLOAD_ARM_KERNEL_WAITS`.
const KERNEL_WAITS: u32 = 1 << 11;

/// How an armed page tells that it is wanted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArmMode {
    /// An event for the resolver; the faulting thread waits.
    Queue,
    /// `signal` to the faulting thread; with `kernel_waits`, a kernel-mode access that the
    /// signal cannot end waits as in queue mode.
    Signal { signal: u8, kernel_waits: bool },
}

/// One guest page's state, as read from its word.
#[derive(Clone, Copy)]
pub(crate) struct PageState(u32);

impl PageState {
    /// Not armed, and not loaded as zeros: present if the object has a page, else empty.
    pub(crate) const LOADED: Self = Self(0);
    /// Loaded as zeros, with no page allocated yet.
    pub(crate) const ZERO_LOADED: Self = Self(ZERO);

    /// How the page is armed, if it is.
    pub(crate) fn armed(self) -> Option<ArmMode> {
        if self.0 & ARMED == 0 {
            return None;
        }
        Some(match (self.0 & SIGNAL_MASK) as u8 {
            0 => ArmMode::Queue,
            signal => ArmMode::Signal {
                signal,
                kernel_waits: self.0 & KERNEL_WAITS != 0,
            },
        })
    }

    /// The state's word, as a slot keeps it (`slots.rs`).
    pub(crate) fn bits(self) -> u32 {
        self.0
    }

    /// The state a slot's word holds.
    pub(crate) fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// Whether the page is loaded as zeros not allocated yet.
    pub(crate) fn zero_loaded(self) -> bool {
        self.0 & ZERO != 0
    }

    /// Whether the armed page's event was queued.
    pub(crate) fn reported(self) -> bool {
        self.0 & REPORTED != 0
    }

    /// The page armed with `mode`, after this state: an event already queued stays
    /// queued (the page has not been loaded since), anything else starts afresh.
    pub(crate) fn arm(self, mode: ArmMode) -> Self {
        let reported = if self.0 & ARMED != 0 {
            self.0 & REPORTED
        } else {
            0
        };
        let mode = match mode {
            ArmMode::Queue => 0,
            ArmMode::Signal {
                signal,
                kernel_waits,
            } => u32::from(signal) | if kernel_waits { KERNEL_WAITS } else { 0 },
        };
        Self(ARMED | reported | mode)
    }

    /// The armed page with its event queued.
    pub(crate) fn report(self) -> Self {
        Self(self.0 | REPORTED)
    }

    /// Whether a fault may sleep for the page: it is armed and its event is queued (or
    /// being served), so a load will come and wake it. Armed alone is not enough: a page
    /// loaded and armed again before the faulting thread slept has no event, and would
    /// never be loaded for it; that thread retries, and its next fault queues the event.
    pub(crate) fn awaits_load(self) -> bool {
        self.0 & ARMED != 0 && self.0 & REPORTED != 0
    }
}
