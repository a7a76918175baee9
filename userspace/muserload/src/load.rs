//! What every load kind shares.

use crate::uapi::MUSERLOAD_LOAD_DONTWAKE;

/// When a load wakes the threads waiting for its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// As each call completes.
    Now,
    /// Not yet: the caller batches and wakes later with [`crate::Object::wake`]. A load
    /// refused with `EEXIST` still wakes the refused page's waiters.
    Later,
}

impl Wake {
    pub(crate) fn flag(self) -> u64 {
        match self {
            Self::Now => 0,
            Self::Later => u64::from(MUSERLOAD_LOAD_DONTWAKE),
        }
    }
}

/// One `MUSERLOAD_IOC_LOAD`.
pub(crate) struct Load {
    pub(crate) dst: u64,
    pub(crate) src: u64,
    pub(crate) len: u64,
    pub(crate) kind: u32,
    pub(crate) wake: Wake,
}
