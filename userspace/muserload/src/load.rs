//! What every load kind shares.

use crate::{
    mapping::{GuestMemory, Staging, PAGE_SIZE},
    uapi::{muserload_vec, MUSERLOAD_LOAD_COPY, MUSERLOAD_LOAD_DONTWAKE, MUSERLOAD_LOAD_MOVE},
    Result,
};

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

/// What [`crate::Object::resolve`] loads before it reads the next events.
#[derive(Debug)]
pub enum Loads<'a> {
    /// Nothing: it only reads events.
    Nothing,
    /// Copies each `(offset, data)`: `data`, a page multiple, into guest memory at `offset`.
    Copy(&'a [(u64, &'a [u8])]),
    /// Moves each `(offset, slot)`: the page in staging slot `slot` to guest page offset
    /// `offset`, without a copy.
    Move(&'a mut Staging, &'a [(u64, usize)]),
}

impl Loads<'_> {
    /// How many pairs.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Nothing => 0,
            Self::Copy(pairs) => pairs.len(),
            Self::Move(_, pairs) => pairs.len(),
        }
    }

    /// The `MUSERLOAD_LOAD_*` kind (0 for nothing).
    pub(crate) fn kind(&self) -> u32 {
        match self {
            Self::Nothing => 0,
            Self::Copy(_) => MUSERLOAD_LOAD_COPY,
            Self::Move(..) => MUSERLOAD_LOAD_MOVE,
        }
    }

    /// Pair `i` as the module reads it, its addresses checked against the mappings.
    pub(crate) fn vec(&self, guest: &GuestMemory, i: usize) -> Result<muserload_vec> {
        let page = PAGE_SIZE as u64;
        let (dst, src, len) = match self {
            Self::Nothing => (0, 0, 0),
            Self::Copy(pairs) => {
                let (offset, data) = pairs[i];
                let len = data.len() as u64;
                (
                    guest.0.addr("load destination", offset, len)?,
                    data.as_ptr() as u64,
                    len,
                )
            }
            Self::Move(staging, pairs) => {
                let (offset, slot) = pairs[i];
                (
                    guest.0.addr("load destination", offset, page)?,
                    staging.0.addr("staging slots", slot as u64 * page, page)?,
                    page,
                )
            }
        };
        Ok(muserload_vec { dst, src, len })
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
