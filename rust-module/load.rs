// SPDX-License-Identifier: GPL-2.0

//! Loads, the proposal's `muserload()`: `MUSERLOAD_IOC_LOAD` and `MUSERLOAD_IOC_LOADV`.
//!
//! Each target page is loaded only if the object has no page there yet, atomically under
//! `Object::pages`: a load and a fault, or two loads, never both see the slot empty. A page
//! that is there stops the call with EEXIST after the pages before it, and its waiters are
//! woken even so, so that a racing load never leaves a thread asleep (the bug that bites
//! userfaultfd users who forget `UFFDIO_WAKE` after `EEXIST`).
//!
//! MOVE takes the staging page itself: under `pages` it leaves the staging slot, every
//! mapping of the staging range is zapped (one TLB flush for the whole range), and only then
//! does it enter the guest slot, where the next fault maps it. COPY fills a new page before
//! taking the lock, since its source may be a page of this very object.

use crate::{
    object::{
        zeroed_page,
        Object,
        STATE_ARMED, //
    },
    stats::Counter,
    uapi::*,
};
use kernel::{
    alloc::flags::GFP_KERNEL_ACCOUNT,
    page::{
        Page,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::atomic::{
        Relaxed,
        Release, //
    },
    uaccess::{
        UserPtr,
        UserSlice,
        UserSliceReader, //
    },
};

/// A load's kind and flags, from `mode`.
#[derive(Clone, Copy)]
struct Mode {
    kind: Kind,
    wake: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Move,
    Copy,
    Zero,
    Wake,
}

impl Mode {
    /// EINVAL for an unknown kind or flag.
    fn parse(mode: u64) -> Result<Self> {
        let kind_bits = mode & u64::from(MUSERLOAD_LOAD_KIND_MASK);
        let flags = mode & !u64::from(MUSERLOAD_LOAD_KIND_MASK);
        if flags & !u64::from(MUSERLOAD_LOAD_DONTWAKE) != 0 {
            return Err(EINVAL);
        }
        let kind = match kind_bits as u32 {
            MUSERLOAD_LOAD_MOVE => Kind::Move,
            MUSERLOAD_LOAD_COPY => Kind::Copy,
            MUSERLOAD_LOAD_ZERO => Kind::Zero,
            MUSERLOAD_LOAD_WAKE => Kind::Wake,
            _ => return Err(EINVAL),
        };
        Ok(Self {
            kind,
            wake: flags & u64::from(MUSERLOAD_LOAD_DONTWAKE) == 0,
        })
    }
}

/// What a load did so far, and whom to wake.
struct Progress {
    /// Bytes loaded (WAKE: woken).
    done: u64,
    /// Wait queue buckets of the pages loaded, see `Object::wake_buckets`.
    buckets: u64,
}

/// `MUSERLOAD_IOC_LOAD`.
pub(crate) fn load(object: &Object, arg: UserSlice) -> Result<isize> {
    let (mut reader, mut writer) = arg.reader_writer();
    let mut req: muserload_load = reader.read()?;
    let mode = Mode::parse(req.mode)?;
    let mut progress = Progress {
        done: 0,
        buckets: 0,
    };
    let result = load_range(object, mode, req.dst, req.src, req.len, &mut progress);
    finish(object, mode, &progress);
    req.loaded = progress.done;
    writer.write(&req)?;
    result.map(|()| 0)
}

/// `MUSERLOAD_IOC_LOADV`.
pub(crate) fn loadv(object: &Object, arg: UserSlice) -> Result<isize> {
    let (mut reader, mut writer) = arg.reader_writer();
    let mut req: muserload_loadv = reader.read()?;
    let mode = Mode::parse(req.mode)?;
    if req.count == 0 || req.count > u64::from(MUSERLOAD_LOADV_MAX) {
        return Err(EINVAL);
    }
    let count = req.count as usize;
    let mut vec = KVec::<muserload_vec>::with_capacity(count, GFP_KERNEL)?;
    let mut vec_reader = UserSlice::new(
        UserPtr::from_addr(req.vec as usize),
        count * size_of::<muserload_vec>(),
    )
    .reader();
    for _ in 0..count {
        vec.push_within_capacity(vec_reader.read()?)
            .map_err(|_| ENOMEM)?;
    }
    let mut progress = Progress {
        done: 0,
        buckets: 0,
    };
    let result = vec
        .iter()
        .try_for_each(|v| load_range(object, mode, v.dst, v.src, v.len, &mut progress));
    finish(object, mode, &progress);
    req.loaded = progress.done;
    writer.write(&req)?;
    result.map(|()| 0)
}

fn finish(object: &Object, mode: Mode, progress: &Progress) {
    if mode.wake || mode.kind == Kind::Wake {
        object.wake_buckets(progress.buckets);
    }
}

/// Loads `[dst, dst + len)` from `src` as `mode` says.
fn load_range(
    object: &Object,
    mode: Mode,
    dst: u64,
    src: u64,
    len: u64,
    progress: &mut Progress,
) -> Result {
    let (layout, dst_offset) = object.range(dst, len)?;
    let first = layout.guest_range(dst_offset, len)?;
    let count = (len >> PAGE_SHIFT) as usize;
    match mode.kind {
        Kind::Move => {
            let (layout, src_offset) = object.range(src, len)?;
            let staging = layout.staging_range(src_offset, len)?;
            move_pages(object, first, staging, src_offset, count, progress)
        }
        Kind::Copy => {
            let mut reader =
                UserSlice::new(UserPtr::from_addr(src as usize), len as usize).reader();
            for index in first..first + count {
                let page = copied_page(&mut reader)?;
                install(object, index, page, Counter::LoadCopy, progress)?;
            }
            Ok(())
        }
        Kind::Zero | Kind::Wake if src != 0 => Err(EINVAL),
        Kind::Zero => {
            for index in first..first + count {
                install(object, index, zeroed_page()?, Counter::LoadZero, progress)?;
            }
            Ok(())
        }
        Kind::Wake => {
            for index in first..first + count {
                progress.buckets |= Object::bucket_bit(index);
            }
            object.stats.add(Counter::Wake, count as u64);
            progress.done += len;
            Ok(())
        }
    }
}

/// A new page holding the next page of `reader`.
fn copied_page(reader: &mut UserSliceReader) -> Result<Page> {
    let page = Page::alloc_page(GFP_KERNEL_ACCOUNT)?;
    // SAFETY: The page is new: nobody else reads or writes it.
    unsafe { page.copy_from_user_slice_raw(reader, 0, PAGE_SIZE)? };
    Ok(page)
}

/// Marks guest page `index`, which just got a page, as loaded.
fn loaded(object: &Object, index: usize, counter: Counter, progress: &mut Progress) {
    // `install` and `move_pages` hold `pages`, and the layout exists once a page was found.
    if let Some(layout) = object.layout() {
        let state = layout.state(index);
        if state.load(Relaxed) & STATE_ARMED != 0 {
            object.stats.loaded(1);
        }
        state.store(0, Release);
    }
    object.stats.add(counter, 1);
    progress.done += PAGE_SIZE as u64;
    progress.buckets |= Object::bucket_bit(index);
}

/// EEXIST for guest page `index`: counted, and its waiters woken whatever the flags say.
fn eexist(object: &Object, index: usize) -> Error {
    object.stats.add(Counter::Eexist, 1);
    object.wake_buckets(Object::bucket_bit(index));
    EEXIST
}

/// Puts `page` in guest slot `index` if the slot is empty.
fn install(
    object: &Object,
    index: usize,
    page: Page,
    counter: Counter,
    progress: &mut Progress,
) -> Result {
    let mut pages = object.pages.lock();
    let slot = &mut pages.guest[index];
    if slot.is_some() {
        drop(pages);
        return Err(eexist(object, index));
    }
    *slot = Some(page);
    loaded(object, index, counter, progress);
    Ok(())
}

/// Moves staging pages `staging..staging + count` (at object offset `staging_offset`) to
/// guest pages `first..first + count`, up to the first guest page that is already there.
fn move_pages(
    object: &Object,
    first: usize,
    staging: usize,
    staging_offset: u64,
    count: usize,
    progress: &mut Progress,
) -> Result {
    let mut guard = object.pages.lock();
    let pages = &mut *guard;
    let movable = pages.guest[first..first + count]
        .iter()
        .take_while(|slot| slot.is_none())
        .count();
    // A staging page never touched reads as zeros: move a zeroed one. Allocate before taking
    // anything, so that a failure leaves every staging page where it was.
    for slot in &mut pages.staging[staging..staging + movable] {
        if slot.is_none() {
            *slot = Some(zeroed_page()?);
        }
    }
    if movable > 0 {
        // The staging ptes go before the pages are anywhere else: after this, no mapping of
        // staging can read or write them.
        object
            .mapping
            .unmap(staging_offset, (movable as u64) << PAGE_SHIFT);
    }
    for i in 0..movable {
        let page = pages.staging[staging + i].take();
        pages.guest[first + i] = page;
        loaded(object, first + i, Counter::LoadMove, progress);
    }
    drop(guard);
    if movable < count {
        return Err(eexist(object, first + movable));
    }
    Ok(())
}
