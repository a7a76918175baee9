// SPDX-License-Identifier: GPL-2.0

//! Loads, the proposal's `muserload()`: `MUSERLOAD_IOC_LOAD`, `MUSERLOAD_IOC_LOADV`, and
//! `MUSERLOAD_IOC_RESOLVE`, which reads the next events after its loads.
//!
//! Each target page is loaded only if the object has no page there yet, atomically under
//! its slot's lock (`slots.rs`): a load and a fault, or two loads, never both see the slot
//! empty, and loads of other pages go on meanwhile. A page
//! that is there stops the call with EEXIST after the pages before it, and its waiters are
//! woken even so, so that a racing load never leaves a thread asleep (the bug that bites
//! userfaultfd users who forget `UFFDIO_WAKE` after `EEXIST`).
//!
//! MOVE takes the staging page itself: with its guest slot locked it leaves the staging
//! slot, every mapping of the staging range is zapped (one TLB flush for each run of
//! adjacent staging ranges in the call, however many pairs it has), and only then is it
//! mapped in the guest and its guest slot unlocked. COPY fills new pages before taking any
//! lock, since its source may be a page of this very object. Either maps the loaded pages
//! into the caller's mapping at once (with their slots locked, as the fault path maps), so
//! that a waiter of the same process finds its page mapped when it wakes instead of
//! faulting a second time. ZERO allocates nothing: the page is marked
//! loaded, and a touch zero-fills it.

use crate::{
    copy_chunk::{
        CopyChunk,
        COPY_CHUNK, //
    },
    layout::Layout,
    memcg::{
        charged_may_fail,
        zeroed_page_may_fail, //
    },
    object::Object,
    scratch::Scratch,
    slots::LockedPages,
    state::PageState,
    stats::Counter,
    uapi::*,
    vma::{
        check_shape,
        LockedRange, //
    },
};
use kernel::{
    page::{
        Page,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::ArcBorrow,
    transmute::{
        AsBytes,
        FromBytes, //
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

    /// EINVAL for a pair of a shape no load of this kind takes, whatever the mappings
    /// say: checked for every pair before any is loaded, so that a malformed request
    /// loads nothing. Where a pair lies (which mapping, which region) is checked as it is
    /// loaded, and stops the call there.
    fn check(self, v: &muserload_vec) -> Result {
        check_shape(v.dst, v.len)?;
        match self.kind {
            Kind::Move => check_shape(v.src, v.len).map(|_| ()),
            Kind::Copy => Ok(()),
            Kind::Zero | Kind::Wake if v.src == 0 => Ok(()),
            Kind::Zero | Kind::Wake => Err(EINVAL),
        }
    }
}

/// What a load did so far, and whom to wake.
struct Progress {
    /// Bytes loaded (WAKE: woken).
    done: u64,
    /// Wait queue buckets of the pages loaded, see `Object::wake_buckets`.
    buckets: u64,
}

/// The argument of a load ioctl, read at the start and written back at the end.
///
/// Written back unchanged first, so that an argument the caller cannot write fails with
/// EFAULT before anything is done: after the loads (a MOVE empties staging) or RESOLVE's
/// events (taken off the queue), that EFAULT would leave the caller unable to learn what
/// was done.
struct Request<T> {
    ptr: UserPtr,
    value: T,
}

impl<T: FromBytes + AsBytes> Request<T> {
    /// Runs `call` on the argument at `ptr` and writes the argument back with what it did,
    /// whatever the outcome, except for a call that restarts (`-ERESTARTSYS`): nothing was
    /// done, and the restart must find the argument as its caller made it.
    fn serve(ptr: UserPtr, call: impl FnOnce(&mut T) -> Result) -> Result<isize> {
        let mut req = Self::read(ptr)?;
        match call(&mut req.value) {
            Err(e) if e == ERESTARTSYS => Err(e),
            result => {
                req.reply()?;
                result.map(|()| 0)
            }
        }
    }

    /// Reads the argument at `ptr` and checks that it can be written back.
    fn read(ptr: UserPtr) -> Result<Self> {
        let value: T = UserSlice::new(ptr, size_of::<T>()).reader().read()?;
        UserSlice::new(ptr, size_of::<T>()).writer().write(&value)?;
        Ok(Self { ptr, value })
    }

    /// Writes the argument back, with what the call did.
    fn reply(self) -> Result {
        UserSlice::new(self.ptr, size_of::<T>())
            .writer()
            .write(&self.value)
    }
}

/// `MUSERLOAD_IOC_LOAD` of the `struct muserload_load` at `arg`.
pub(crate) fn load(object: ArcBorrow<'_, Object>, arg: UserPtr) -> Result<isize> {
    Request::serve(arg, |req| load_one(object, req))
}

/// The load `req` asks for; sets `req.loaded`.
fn load_one(object: ArcBorrow<'_, Object>, req: &mut muserload_load) -> Result {
    req.loaded = 0;
    // Before the source is read: an object not set up has nothing to load into, whatever
    // the source.
    object.layout().ok_or(EINVAL)?;
    let mode = Mode::parse(req.mode)?;
    let pair = muserload_vec {
        dst: req.dst,
        src: req.src,
        len: req.len,
    };
    let (loaded, result) = load_pairs(object, mode, &[pair]);
    req.loaded = loaded;
    result
}

/// `MUSERLOAD_IOC_LOADV` of the `struct muserload_loadv` at `arg`.
pub(crate) fn loadv(object: ArcBorrow<'_, Object>, arg: UserPtr) -> Result<isize> {
    Request::serve(arg, |req| load_many(object, req))
}

/// The loads `req` asks for; sets `req.loaded`.
fn load_many(object: ArcBorrow<'_, Object>, req: &mut muserload_loadv) -> Result {
    req.loaded = 0;
    object.layout().ok_or(EINVAL)?;
    let (loaded, result) = load_vectored(object, req)?;
    req.loaded = loaded;
    result
}

/// `MUSERLOAD_IOC_RESOLVE` of the `struct muserload_resolve` at `arg`: the loads, then the
/// next events.
pub(crate) fn resolve(object: ArcBorrow<'_, Object>, arg: UserPtr) -> Result<isize> {
    // A restart without loads is not written back: its `nr_events` of 0 would make the
    // restarted call fail with EINVAL.
    Request::serve(arg, |req| resolve_step(object, req))
}

/// The loads of `req`, then up to `req.nr_events` events; sets `req.load.loaded` and
/// `req.nr_events`.
fn resolve_step(object: ArcBorrow<'_, Object>, req: &mut muserload_resolve) -> Result {
    let room = req.nr_events as usize;
    req.load.loaded = 0;
    req.nr_events = 0;
    if req.flags & !MUSERLOAD_RESOLVE_NONBLOCK != 0 || room == 0 {
        return Err(EINVAL);
    }
    let loads = req.load.count != 0;
    if loads {
        load_many(object, &mut req.load)?;
    }
    match object.events.read(
        &object,
        UserPtr::from_addr(req.events as usize),
        room,
        req.flags & MUSERLOAD_RESOLVE_NONBLOCK != 0,
    ) {
        Ok(n) => req.nr_events = n as u32,
        Err(e) if e == EAGAIN => {}
        // The loads are done: restarting the call would load them again.
        Err(e) if e == ERESTARTSYS && loads => return Err(EINTR),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The loads of a `struct muserload_loadv`: reads its pairs from userspace and loads them.
/// Returns what [`load_pairs`] returns, or an error for a bad request (nothing loaded).
fn load_vectored(object: ArcBorrow<'_, Object>, req: &muserload_loadv) -> Result<(u64, Result)> {
    let mode = Mode::parse(req.mode)?;
    if req.count == 0 || req.count > u64::from(MUSERLOAD_LOADV_MAX) {
        return Err(EINVAL);
    }
    let count = req.count as usize;
    let mut vec_reader = UserSlice::new(
        UserPtr::from_addr(req.vec as usize),
        count * size_of::<muserload_vec>(),
    )
    .reader();
    if count == 1 {
        // A fault's reply: nothing to allocate.
        let pair = vec_reader.read()?;
        return Ok(load_pairs(object, mode, &[pair]));
    }
    let mut vec = KVec::<muserload_vec>::with_capacity(count, GFP_KERNEL)?;
    for _ in 0..count {
        vec.push_within_capacity(vec_reader.read()?)
            .map_err(|_| ENOMEM)?;
    }
    Ok(load_pairs(object, mode, &vec))
}

/// Loads `pairs` in order as `mode` says, up to the first failure; wakes the waiters of the
/// pages loaded (unless `DONTWAKE`), and after a MOVE refills the staging it emptied.
/// Returns the bytes loaded, and how the call ended.
fn load_pairs(object: ArcBorrow<'_, Object>, mode: Mode, pairs: &[muserload_vec]) -> (u64, Result) {
    if let Err(e) = pairs.iter().try_for_each(|v| mode.check(v)) {
        return (0, Err(e));
    }
    let mut progress = Progress {
        done: 0,
        buckets: 0,
    };
    // Only a MOVE empties staging: the other kinds do not even create the list.
    let mut emptied = None;
    let result = match mode.kind {
        Kind::Move => Scratch::with_capacity(pairs.len(), GFP_KERNEL)
            .and_then(|runs| move_pages(&object, pairs, &mut progress, emptied.insert(runs))),
        Kind::Copy => pairs
            .iter()
            .try_for_each(|v| copy_pages(&object, v, &mut progress)),
        Kind::Zero => pairs
            .iter()
            .try_for_each(|v| zero_pages(&object, v, &mut progress)),
        Kind::Wake => pairs
            .iter()
            .try_for_each(|v| wake_pages(&object, v, &mut progress)),
    };
    if mode.wake || mode.kind == Kind::Wake {
        object.wake_buckets(progress.buckets);
    }
    for run in emptied.iter().flat_map(Scratch::iter) {
        refill_staging(object, run.addr, run.len);
    }
    (progress.done, result)
}

/// After a MOVE has woken its waiters: gives the first `len` bytes of staging at `src`, which
/// it emptied, fresh zeroed pages mapped in the caller's staging mapping, so that the next
/// receive into them does not fault. The zeroing happens after the wake instead of in the
/// resolver's next write. Best effort: a slot left empty zero-fills on its next touch.
fn refill_staging(object: ArcBorrow<'_, Object>, src: u64, len: u64) {
    let count = (len >> PAGE_SHIFT) as usize;
    if count == 0 {
        return;
    }
    // Take the pages before taking any lock: faults of this object wait for none of it.
    let Ok(mut fresh) = Scratch::<Page, INLINE>::with_capacity(count, GFP_KERNEL) else {
        return;
    };
    // The pool's pages were zeroed by its worker, on whichever CPU is idle: off the
    // resolver's path, for single pages (a fault's reply) and batches alike. Measured under
    // TCG, where a page clear costs 4.5 us: a 64-page MOVE with its staging writes went from
    // 7.2 to 4.0-4.7 us a page once batches took from the pool too.
    object.pool.take(&mut fresh);
    object.refill_pool();
    // What the pool could not give is zeroed here.
    while fresh.len() < count {
        let Ok(page) = zeroed_page_may_fail() else {
            break;
        };
        // Cannot fail: `fresh` has room for `count` pages.
        let _ = fresh.push(page);
    }
    // Best effort: a range that no longer maps staging is simply not refilled.
    let _ = object.locked(src, len, Layout::staging_range, |source, first, layout| {
        let filled = fresh.len();
        let mut slots = layout.staging.lock(first, filled, object.lock_waits());
        for (i, page) in fresh.drain().enumerate() {
            let slot = slots.page_mut(i);
            if slot.is_none() {
                *slot = Some(page);
            }
        }
        // A slot that had a page already mapped keeps its pte (EBUSY, skipped).
        source.prefault_pages(0, &slots);
        Ok(())
    });
}

/// COPY of one pair: fills new pages from `v.src`, then installs them at `v.dst`.
fn copy_pages(object: &Object, v: &muserload_vec, progress: &mut Progress) -> Result {
    let (dst, src, len) = (v.dst, v.src, v.len);
    // Its mapping is checked as each chunk is installed: a bad one costs a wasted
    // copy rather than a second mmap lock and vma walk on every good one. Its shape was
    // checked before any pair was loaded (`Mode::check`).
    let mut reader = UserSlice::new(UserPtr::from_addr(src as usize), len as usize).reader();
    let total = (len >> PAGE_SHIFT) as usize;
    let mut done = 0;
    while done < total {
        // Fill the pages without locks: the source may be a page of this very object. Pages
        // the install does not take are freed with the chunk.
        let mut chunk = CopyChunk::new();
        let want = total - done;
        // A source that stops being readable stops the load after the pages before it.
        let mut copy_error = None;
        while chunk.filled() < want && !chunk.is_full() {
            match copied_page(&mut reader) {
                Ok(page) => chunk.push(page),
                Err(e) => {
                    copy_error = Some(e);
                    break;
                }
            }
        }
        let count = chunk.filled();
        if count == 0 {
            return Err(copy_error.unwrap_or(EFAULT));
        }
        let chunk_dst = dst + ((done as u64) << PAGE_SHIFT);
        let chunk_len = (count as u64) << PAGE_SHIFT;
        object.locked(
            chunk_dst,
            chunk_len,
            Layout::guest_range,
            |target, first, layout| {
                let mut slots = layout.guest.lock(first, count, object.lock_waits());
                let fresh = keep_unloaded(&mut slots);
                for i in 0..fresh {
                    *slots.page_mut(i) = chunk.take();
                }
                target.prefault_pages(0, &slots);
                loaded(
                    object,
                    &mut slots,
                    PageState::LOADED,
                    Counter::LoadCopy,
                    progress,
                );
                if fresh < count {
                    return Err(eexist(object, first + fresh));
                }
                Ok(())
            },
        )?;
        if let Some(e) = copy_error {
            return Err(e);
        }
        done += count;
    }
    Ok(())
}

/// ZERO of one pair: marks its pages loaded; a touch zero-fills them. A chunk of pages at a
/// time, as COPY installs them: one locking and its bookkeeping per chunk, not per page.
fn zero_pages(object: &Object, v: &muserload_vec, progress: &mut Progress) -> Result {
    object.locked(v.dst, v.len, Layout::guest_range, |_, first, layout| {
        let end = first + (v.len >> PAGE_SHIFT) as usize;
        for chunk in (first..end).step_by(COPY_CHUNK) {
            let count = (end - chunk).min(COPY_CHUNK);
            let mut slots = layout.guest.lock(chunk, count, object.lock_waits());
            let fresh = keep_unloaded(&mut slots);
            loaded(
                object,
                &mut slots,
                PageState::ZERO_LOADED,
                Counter::LoadZero,
                progress,
            );
            if fresh < count {
                return Err(eexist(object, chunk + fresh));
            }
        }
        Ok(())
    })
}

/// WAKE of one pair: loads nothing, wakes its pages' waiters.
fn wake_pages(object: &Object, v: &muserload_vec, progress: &mut Progress) -> Result {
    object.locked(v.dst, v.len, Layout::guest_range, |_, first, _| {
        let count = (v.len >> PAGE_SHIFT) as usize;
        for index in first..first + count {
            progress.buckets |= Object::bucket_bit(index);
        }
        object.stats.add(Counter::Wake, count as u64);
        progress.done += v.len;
        Ok(())
    })
}

/// Whether the guest page of the `i`th slot of `slots` is loaded already: it has a page,
/// or is a zero page not yet allocated.
fn present(slots: &LockedPages<'_>, i: usize) -> bool {
    slots.page(i).is_some() || slots.state(i).zero_loaded()
}

/// Keeps of the run `slots` holds the guest pages before its first one loaded already,
/// unlocking that one and those after it; returns how many it kept. A load stops there with
/// EEXIST.
fn keep_unloaded(slots: &mut LockedPages<'_>) -> usize {
    let kept = (0..slots.len()).take_while(|&i| !present(slots, i)).count();
    slots.truncate(kept);
    kept
}

/// A new page holding the next page of `reader`.
fn copied_page(reader: &mut UserSliceReader) -> Result<Page> {
    let page = Page::alloc_page(charged_may_fail())?;
    // SAFETY: The page is new: nobody else reads or writes it.
    unsafe { page.copy_from_user_slice_raw(reader, 0, PAGE_SIZE)? };
    Ok(page)
}

/// Marks the guest pages of every slot `slots` holds, which just got their content, as
/// loaded, with state `state` ([`PageState::LOADED`], or [`PageState::ZERO_LOADED`] for
/// zero pages not allocated). The shared counters are updated once for the run, not once a
/// page.
fn loaded(
    object: &Object,
    slots: &mut LockedPages<'_>,
    state: PageState,
    counter: Counter,
    progress: &mut Progress,
) {
    let mut armed = 0;
    for i in 0..slots.len() {
        if slots.state(i).armed().is_some() {
            armed += 1;
        }
        slots.set_state(i, state);
        progress.buckets |= Object::bucket_bit(slots.first() + i);
    }
    if armed > 0 {
        object.stats.loaded(armed);
    }
    let pages = slots.len() as u64;
    object.stats.add(counter, pages);
    progress.done += pages << PAGE_SHIFT;
}

/// EEXIST for guest page `index`: counted, and its waiters woken whatever the flags say.
fn eexist(object: &Object, index: usize) -> Error {
    object.stats.add(Counter::Eexist, 1);
    object.wake_buckets(Object::bucket_bit(index));
    EEXIST
}

/// How many pairs (or refilled pages) a MOVE keeps track of without allocating: a fault's
/// reply has one.
const INLINE: usize = 4;

/// A run of staging that a MOVE emptied: adjacent in the caller's address space and in the
/// object, so that one zap and one refill cover it.
struct StagingRun {
    /// Where it starts in the caller's mapping.
    addr: u64,
    /// Where it starts in the object.
    offset: u64,
    /// Its length in bytes.
    len: u64,
}

/// Pairs whose pages left staging for their guest slots, still to be mapped there: their
/// guest slots stay locked until then.
struct Moved<'a> {
    /// The guest range they go to.
    target: LockedRange<'a>,
    /// Their guest slots.
    slots: LockedPages<'a>,
}

/// A MOVE pair's ranges, and the first guest and staging page indices they name.
struct PairRanges<'a> {
    target: LockedRange<'a>,
    first: usize,
    source: LockedRange<'a>,
    staging: usize,
}

impl<'a> PairRanges<'a> {
    /// The ranges of a pair of `len` bytes that `target` and `source` find, with their page
    /// indices, checked in this order: a target outside guest memory is EINVAL whatever the
    /// source.
    fn find(
        layout: &Layout,
        len: u64,
        target: impl FnOnce() -> Result<LockedRange<'a>>,
        source: impl FnOnce() -> Result<LockedRange<'a>>,
    ) -> Result<Self> {
        let target = target()?;
        let first = layout.guest_range(target.offset, len)?;
        let source = source()?;
        let staging = layout.staging_range(source.offset, len)?;
        Ok(Self {
            target,
            first,
            source,
            staging,
        })
    }
}

/// Moves the staging pages of `pairs`, in order, to their guest pages, up to the first
/// guest page that is already loaded, and maps them there; adds the staging emptied to
/// `emptied`. A single pair (a fault's reply) runs under its two mappings' per-VMA locks
/// where the kernel gives them, any other under the mmap read lock.
fn move_pages(
    object: &Object,
    pairs: &[muserload_vec],
    progress: &mut Progress,
    emptied: &mut Scratch<StagingRun, INLINE>,
) -> Result {
    if let [v] = pairs {
        let moved = object.locked_pair(v.dst, v.src, v.len, |target, source, layout| {
            let mut ranges = Some(PairRanges::find(
                layout,
                v.len,
                || Ok(target),
                || Ok(source),
            ));
            move_batch(object, layout, pairs, progress, emptied, |_| {
                ranges.take().unwrap_or(Err(EINVAL))
            })
        });
        if let Some(result) = moved {
            return result;
        }
    }
    object.locked_mm(|guard, layout| {
        move_batch(object, layout, pairs, progress, emptied, |v| {
            PairRanges::find(
                layout,
                v.len,
                || LockedRange::find(guard, object, v.dst, v.len),
                || LockedRange::find(guard, object, v.src, v.len),
            )
        })
    })
}

/// The work of [`move_pages`], with each pair's ranges found by `ranges` under the locks
/// its caller holds.
///
/// Under one hold of the caller's locks, in three steps, so that staging's ptes are zapped
/// once per run of adjacent staging ranges (one TLB flush for a loader's batch, whose pages
/// sit in consecutive slots) instead of once per pair: each pair's pages leave their staging
/// slots for their guest slots, which stay locked (so a later pair naming the same page
/// finds it loaded, as if the pairs went one at a time); then every staging pte of them
/// goes; only then are they mapped into the guest, marked loaded and unlocked, so that no
/// fault or load sees them in between. A pair whose guest slots another thread holds may
/// not be waited for with slots held (the lock order): the pairs before it are finished
/// first, and the batch starts again from it.
fn move_batch<'a>(
    object: &Object,
    layout: &'a Layout,
    pairs: &[muserload_vec],
    progress: &mut Progress,
    emptied: &mut Scratch<StagingRun, INLINE>,
    mut ranges: impl FnMut(&muserload_vec) -> Result<PairRanges<'a>>,
) -> Result {
    let waits = object.lock_waits();
    // Its ranges borrow the caller's locks: allocated under them.
    let mut moved = Scratch::<Moved<'a>, INLINE>::with_capacity(pairs.len(), GFP_KERNEL)?;
    // The runs of `emptied` before this one are zapped already.
    let mut zapped = 0;
    let result = pairs.iter().try_for_each(|v| {
        let count = (v.len >> PAGE_SHIFT) as usize;
        let PairRanges {
            target,
            first,
            source,
            staging,
        } = ranges(v)?;
        let mut slots = match layout.guest.try_lock(first, count, waits) {
            Some(slots) => slots,
            None => {
                zapped = finish(object, emptied, zapped, &mut moved, progress);
                layout.guest.lock(first, count, waits)
            }
        };
        let movable = keep_unloaded(&mut slots);
        let mut sources = layout.staging.lock(staging, movable, waits);
        // A staging page never touched reads as zeros: move a zeroed one. Allocate before
        // taking anything, so that a failure leaves this pair's staging where it was.
        for i in 0..movable {
            if sources.page(i).is_none() {
                *sources.page_mut(i) = Some(zeroed_page_may_fail()?);
            }
        }
        for i in 0..movable {
            *slots.page_mut(i) = sources.page_mut(i).take();
        }
        drop(sources);
        let len = (movable as u64) << PAGE_SHIFT;
        let unzapped = emptied.len() > zapped;
        match emptied.last_mut() {
            Some(run)
                if unzapped
                    && run.addr + run.len == v.src
                    && run.offset + run.len == source.offset =>
            {
                run.len += len
            }
            _ if movable > 0 => {
                // Cannot fail: there is room for one run per pair.
                let _ = emptied.push(StagingRun {
                    addr: v.src,
                    offset: source.offset,
                    len,
                });
            }
            _ => {}
        }
        let next = Moved { target, slots };
        let next = match moved.last_mut() {
            // Guest pages that follow the last pair's: mapped with it, in one batch.
            Some(last)
                if last
                    .target
                    .is_followed_by(last.slots.len() * PAGE_SIZE, &next.target) =>
            {
                match last.slots.extend(next.slots) {
                    Ok(()) => None,
                    Err(slots) => Some(Moved {
                        target: next.target,
                        slots,
                    }),
                }
            }
            _ => Some(next),
        };
        if let Some(next) = next {
            // Cannot fail: room for every pair.
            let _ = moved.push(next);
        }
        if movable < count {
            return Err(eexist(object, first + movable));
        }
        Ok(())
    });
    finish(object, emptied, zapped, &mut moved, progress);
    result
}

/// The end of a batch of [`move_pages`]: zaps the staging runs of `emptied` from the
/// `zapped`th on, then maps the pages of `moved` in the guest, marks them loaded and unlocks
/// their slots. Returns how many runs of `emptied` are zapped now.
fn finish(
    object: &Object,
    emptied: &Scratch<StagingRun, INLINE>,
    zapped: usize,
    moved: &mut Scratch<Moved<'_>, INLINE>,
    progress: &mut Progress,
) -> usize {
    // The staging ptes go before the pages are mapped anywhere else: after this, no mapping
    // of staging can read or write them.
    for run in emptied.iter().skip(zapped) {
        object.mapping.unmap(run.offset, run.len);
    }
    for mut m in moved.drain() {
        m.target.prefault_pages(0, &m.slots);
        loaded(
            object,
            &mut m.slots,
            PageState::LOADED,
            Counter::LoadMove,
            progress,
        );
    }
    emptied.len()
}
