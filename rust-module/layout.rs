// SPDX-License-Identifier: GPL-2.0

//! An object's layout: the sizes `MUSERLOAD_IOC_SETUP` gave it, the slots of its pages
//! (`slots.rs`), and which region (guest memory or staging) an object offset lies in.

use crate::{
    slots::Slots,
    uapi::MUSERLOAD_STAGING_OFFSET, //
};
use kernel::{
    page::PAGE_SHIFT,
    prelude::*, //
};

/// The sizes of an object and its page slots.
pub(crate) struct Layout {
    /// Guest memory pages.
    pub(crate) guest_pages: usize,
    /// Staging pages.
    pub(crate) staging_pages: usize,
    /// The guest pages, with their states.
    pub(crate) guest: Slots,
    /// The staging pages.
    pub(crate) staging: Slots,
}

/// Where an object offset lies.
pub(crate) enum Region {
    /// Guest page of this index.
    Guest(usize),
    /// Staging page of this index.
    Staging(usize),
}

impl Layout {
    /// The layout of `guest_pages` of guest memory and `staging_pages` of staging, all of
    /// them empty.
    pub(crate) fn new(guest_pages: usize, staging_pages: usize) -> Result<Self> {
        Ok(Self {
            guest_pages,
            staging_pages,
            guest: Slots::new(guest_pages)?,
            staging: Slots::new(staging_pages)?,
        })
    }

    /// The region and page index of byte offset `offset`, if it is in the object.
    pub(crate) fn region(&self, offset: u64) -> Option<Region> {
        if offset >= MUSERLOAD_STAGING_OFFSET {
            let index = usize::try_from((offset - MUSERLOAD_STAGING_OFFSET) >> PAGE_SHIFT).ok()?;
            (index < self.staging_pages).then_some(Region::Staging(index))
        } else {
            let index = usize::try_from(offset >> PAGE_SHIFT).ok()?;
            (index < self.guest_pages).then_some(Region::Guest(index))
        }
    }

    /// The first guest page index of `[offset, offset + len)`, if the whole range is guest
    /// memory; EINVAL otherwise.
    pub(crate) fn guest_range(&self, offset: u64, len: u64) -> Result<usize> {
        let end = offset.checked_add(len).ok_or(EINVAL)?;
        if end > (self.guest_pages as u64) << PAGE_SHIFT {
            return Err(EINVAL);
        }
        Ok((offset >> PAGE_SHIFT) as usize)
    }

    /// The first staging page index of `[offset, offset + len)`, if the whole range is
    /// staging; EINVAL otherwise.
    pub(crate) fn staging_range(&self, offset: u64, len: u64) -> Result<usize> {
        let start = offset.checked_sub(MUSERLOAD_STAGING_OFFSET).ok_or(EINVAL)?;
        let end = start.checked_add(len).ok_or(EINVAL)?;
        if end > (self.staging_pages as u64) << PAGE_SHIFT {
            return Err(EINVAL);
        }
        Ok((start >> PAGE_SHIFT) as usize)
    }
}
