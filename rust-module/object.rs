// SPDX-License-Identifier: GPL-2.0

//! The load object: what each open of `/dev/muserload` creates.
//!
//! An object owns two arrays of page slots indexed by page offset, guest memory (with each
//! page's state, `state.rs`) and staging, sized once by `MUSERLOAD_IOC_SETUP`, in its
//! [`Layout`]. Each slot has a lock of its own (`slots.rs`): no lock covers the object, so
//! faults and loads of different pages do not wait for each other.
//!
//! # Lock order
//!
//! The module's one lock order, outermost first: a lock is taken only with locks above it
//! held, never one below it. Other files and `Documentation/muserload.rst` point here.
//!
//! 1. The per-VMA locks of the mappings a call names, or the mmap lock (read) where the
//!    kernel does not give them. The ioctls translate addresses under them and keep them
//!    while they hold slot locks ([`Object::locked`], [`Object::locked_pair`]), as a fault
//!    does. A thread holding a per-VMA lock never waits for the mmap lock (it would wait
//!    for a writer that waits for that VMA): it tries another VMA's lock, or gives up all
//!    it holds and takes the mmap lock.
//! 2. Guest slot locks, in ascending index order. A thread that holds some takes more only
//!    above them, or with `Slots::try_lock`, which never sleeps (a MOVE's later pairs).
//! 3. Staging slot locks, in ascending index order. A MOVE takes a pair's staging slots with
//!    its guest slots held, and releases them before it takes another pair's.
//! 4. `EventQueue::queue` (`events.rs`): a fault queues its event under its guest slot's
//!    lock; readers take it alone.
//! 5. `i_mmap_rwsem`, in `unmap_mapping_range()` under slot locks (an arm's discard, a
//!    MOVE's zap of staging).
//! 6. The page table locks, in `vm_insert_page()` and `vm_insert_pages()` under slot locks.
//!
//! Leaves, taken under any of these and taking nothing themselves: the wait-queue locks
//! (`wait.rs`: a load wakes its waiters after it released the slots, an `EEXIST` under
//! them; a slot's unlock wakes its lock's sleepers), the events condvar's, and the page
//! pool's spinlock (`pool.rs`, taken with none of the above held).
//!
//! Nothing that may fault on user memory (`copy_from_user()`, `copy_to_user()`) runs under
//! 1-4, since that fault may be one of this object's and wait for a slot or a load that
//! cannot come: a COPY fills its pages first, an events reader copies after dropping the
//! queue's lock.
//!
//! The page states are written under their slot's lock and read without it, with acquire
//! ordering, by sleeping faults (which may not sleep for a lock once their task state is
//! set).

use crate::{
    anon_file::PrivateMapping,
    events::EventQueue,
    layout::Layout,
    module_queue,
    pool::PagePool,
    slots::LockWaits,
    state::ArmMode,
    stats::Stats,
    uapi::*,
    vma::LockedRange,
    wait::{
        WaitQueue,
        WAIT_BUCKETS, //
    },
};
use kernel::{
    impl_has_work,
    mm::{
        MmWithUser,
        MmapReadGuard, //
    },
    new_work,
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::{
        atomic::{
            Acquire,
            AtomicFlag,
            Relaxed,
            Release, //
        },
        Arc,
        ArcBorrow,
        SetOnce, //
    },
    uaccess::UserSlice,
    workqueue::{
        Work,
        WorkItem, //
    },
};

/// One open of `/dev/muserload`.
#[pin_data]
pub(crate) struct Object {
    /// Set once, by `MUSERLOAD_IOC_SETUP`: the sizes and the page slots.
    layout: SetOnce<Layout>,
    /// Set by the first `MUSERLOAD_IOC_SETUP`, which the others then fail.
    set_up: AtomicFlag,
    /// Queue mode's fault events and their readers.
    #[pin]
    pub(crate) events: EventQueue,
    /// Threads waiting for guest pages or for slot locks, hashed by page index.
    #[pin]
    waitqs: [WaitQueue; WAIT_BUCKETS],
    /// Set by `MUSERLOAD_IOC_ABORT` or when the events descriptor is closed.
    aborted: AtomicFlag,
    /// Set when the events descriptor was created (there is one per object).
    events_created: AtomicFlag,
    pub(crate) stats: Stats,
    /// This object's own address space, which every mapping of it is linked into.
    pub(crate) mapping: PrivateMapping,
    /// Zeroed pages for the staging slots that MOVE loads empty.
    #[pin]
    pub(crate) pool: PagePool,
    /// Refills [`Object::pool`] on the module's workqueue.
    #[pin]
    refill_work: Work<Object>,
}

impl_has_work! {
    impl HasWork<Self> for Object { self.refill_work }
}

impl WorkItem for Object {
    type Pointer = Arc<Object>;

    fn run(this: Arc<Object>) {
        this.pool.refill();
    }
}

impl Object {
    /// A new object, not set up, whose mappings link into `mapping`.
    pub(crate) fn new(mapping: PrivateMapping) -> impl PinInit<Self, Error> {
        try_pin_init!(Object {
            layout: SetOnce::new(),
            set_up: AtomicFlag::new(false),
            events <- EventQueue::new(),
            waitqs <- pin_init::pin_init_array_from_fn(|_| {
                WaitQueue::new(c"muserload_page", kernel::static_lock_class!())
            }),
            aborted: AtomicFlag::new(false),
            events_created: AtomicFlag::new(false),
            stats: Stats::new(),
            mapping,
            pool <- PagePool::new(),
            refill_work <- new_work!("muserload::Object::refill_work"),
        })
    }

    /// Where the object's slot locks sleep and are counted.
    pub(crate) fn lock_waits(&self) -> LockWaits<'_> {
        LockWaits {
            queues: &self.waitqs,
            stats: &self.stats,
        }
    }

    /// The layout, once the object is set up.
    pub(crate) fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// The wait queue of guest page `index`.
    pub(crate) fn waitq(&self, index: usize) -> &WaitQueue {
        &self.waitqs[index % WAIT_BUCKETS]
    }

    /// Wakes every bucket whose bit is set in `buckets` (bit `i`: bucket `i`).
    pub(crate) fn wake_buckets(&self, mut buckets: u64) {
        while buckets != 0 {
            let i = buckets.trailing_zeros() as usize;
            self.waitqs[i].wake_all();
            buckets &= buckets - 1;
        }
    }

    /// The bucket bit of guest page `index`, for [`Object::wake_buckets`].
    pub(crate) fn bucket_bit(index: usize) -> u64 {
        1 << (index % WAIT_BUCKETS)
    }

    /// Refills the page pool in the background if it is below its target.
    pub(crate) fn refill_pool(self: ArcBorrow<'_, Self>) {
        if self.pool.needs_refill() {
            // Already queued: that run refills.
            let _ = module_queue::queue().enqueue(Arc::<Self>::from(self));
        }
    }

    /// Whether the object was aborted (explicitly or by its resolver going away).
    pub(crate) fn aborted(&self) -> bool {
        self.aborted.load(Acquire)
    }

    /// Aborts: every waiter and every later fault on an unloaded page gets SIGBUS, and
    /// readers of the events descriptor see end of file.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Release);
        self.wake_buckets(u64::MAX);
        self.events.wake_readers();
    }

    /// Runs `f` on `[addr, addr + len)` of the caller's mapping, given as its locked range
    /// and the first page index that `region` ([`Layout::guest_range`] or
    /// [`Layout::staging_range`]) finds for it, with the layout. The lock held is the
    /// mapping's own per-VMA lock, as userfaultfd's fill path takes it, or where the kernel
    /// does not give it (a writer waits for the mapping) or the range is not in the mapping
    /// of its first byte, the mmap read lock. See the lock order at the top of this file.
    pub(crate) fn locked(
        &self,
        addr: u64,
        len: u64,
        region: fn(&Layout, u64, u64) -> Result<usize>,
        f: impl FnOnce(&LockedRange<'_>, usize, &Layout) -> Result,
    ) -> Result {
        self.with_caller_mm(|layout, mm| {
            if let Some(vma) = usize::try_from(addr)
                .ok()
                .and_then(|start| mm.lock_vma_under_rcu(start))
            {
                if let Ok(range) = LockedRange::in_vma(&vma, self, addr, len) {
                    let first = region(layout, range.offset, len)?;
                    return f(&range, first, layout);
                }
            }
            let guard = mm.mmap_read_lock();
            let range = LockedRange::find(&guard, self, addr, len)?;
            let first = region(layout, range.offset, len)?;
            f(&range, first, layout)
        })
        .ok_or(EINVAL)?
    }

    /// Runs `f` on a pair of ranges of the caller's mappings, `[dst, dst + len)` and
    /// `[src, src + len)` (a MOVE's), with the per-VMA locks of their mappings held, if the
    /// kernel gives them and each range lies in the mapping of its first byte; `None` if not,
    /// and then the caller takes the mmap read lock ([`Object::locked_mm`]), which finds
    /// the ranges or their errors.
    pub(crate) fn locked_pair(
        &self,
        dst: u64,
        src: u64,
        len: u64,
        f: impl FnOnce(LockedRange<'_>, LockedRange<'_>, &Layout) -> Result,
    ) -> Option<Result> {
        self.with_caller_mm(|layout, mm| {
            let target_vma = mm.lock_vma_under_rcu(usize::try_from(dst).ok()?)?;
            let target = LockedRange::in_vma(&target_vma, self, dst, len).ok()?;
            // Both in one mapping: its lock is held once.
            if let Ok(source) = LockedRange::in_vma(&target_vma, self, src, len) {
                return Some(f(target, source, layout));
            }
            let source_vma = mm.lock_vma_under_rcu(usize::try_from(src).ok()?)?;
            let source = LockedRange::in_vma(&source_vma, self, src, len).ok()?;
            Some(f(target, source, layout))
        })
        .flatten()
    }

    /// Runs `f` with the caller's mmap read lock held, given the lock guard (to find the
    /// caller's ranges under it) and the layout: for calls that name several ranges. See
    /// the lock order at the top of this file.
    pub(crate) fn locked_mm(
        &self,
        f: impl FnOnce(&MmapReadGuard<'_>, &Layout) -> Result,
    ) -> Result {
        self.with_caller_mm(|layout, mm| f(&mm.mmap_read_lock(), layout))
            .ok_or(EINVAL)?
    }

    /// Runs `f` with the layout and the caller's address space; `None` before the object
    /// is set up, or in a kernel thread, which has no address space to name.
    fn with_caller_mm<R>(&self, f: impl FnOnce(&Layout, &MmWithUser) -> R) -> Option<R> {
        let layout = self.layout()?;
        let task = kernel::current!();
        Some(f(layout, task.mm()?))
    }

    /// `MUSERLOAD_IOC_SETUP`.
    pub(crate) fn setup(self: ArcBorrow<'_, Self>, arg: UserSlice) -> Result<isize> {
        let setup: muserload_setup = arg.reader().read()?;
        let page_mask = PAGE_SIZE as u64 - 1;
        if setup.flags != 0
            || setup.size == 0
            || setup.size & page_mask != 0
            || setup.size > MUSERLOAD_STAGING_OFFSET
            || setup.staging_size & page_mask != 0
            || setup.staging_size > u64::from(MUSERLOAD_STAGING_MAX)
        {
            return Err(EINVAL);
        }
        let guest_pages = usize::try_from(setup.size >> PAGE_SHIFT).map_err(|_| EINVAL)?;
        let staging_pages = (setup.staging_size >> PAGE_SHIFT) as usize;

        // The first setup is the one: the slots and the layout go in together.
        if self.set_up.xchg(true, Relaxed) {
            return Err(EBUSY);
        }
        let layout = Layout::new(guest_pages, staging_pages)
            .and_then(|layout| self.pool.set_target(staging_pages).map(|()| layout))
            .inspect_err(|_| self.set_up.store(false, Relaxed))?;
        // Cannot fail: only the setup that set `set_up` gets here.
        self.layout.populate(layout);
        self.refill_pool();
        Ok(0)
    }

    /// `MUSERLOAD_IOC_ARM`.
    pub(crate) fn arm(&self, arg: UserSlice) -> Result<isize> {
        let arm: muserload_arm = arg.reader().read()?;
        if arm.flags & !MUSERLOAD_ARM_KERNEL_WAITS != 0 {
            return Err(EINVAL);
        }
        let mode = if arm.signal != 0 {
            crate::signal::check(arm.signal)?;
            ArmMode::Signal {
                // `check` allows 1..=SIGRTMAX only.
                signal: arm.signal as u8,
                kernel_waits: arm.flags & MUSERLOAD_ARM_KERNEL_WAITS != 0,
            }
        } else if arm.flags != 0 {
            // Queue mode: every access waits already.
            return Err(EINVAL);
        } else {
            ArmMode::Queue
        };
        let count = (arm.len >> PAGE_SHIFT) as usize;
        self.locked(
            arm.start,
            arm.len,
            Layout::guest_range,
            |range, first, layout| {
                // Every slot of the range stays locked until the unmap below, so that no fault
                // maps a discarded page again, and no load maps its page before the unmap
                // (which would take it away again) in between.
                let mut slots = layout.guest.lock(first, count, self.lock_waits());
                for i in 0..count {
                    // Mappings of the page hold references of their own until the unmap below.
                    drop(slots.page_mut(i).take());
                    let old = slots.state(i);
                    // Counted under the slot's lock: a load that follows the unlock counts its
                    // page out, and must find it counted in (the counter would wrap below zero).
                    if old.armed().is_none() {
                        self.stats.armed(1);
                    }
                    slots.set_state(i, old.arm(mode));
                }
                self.mapping.unmap(range.offset, arm.len);
                Ok(())
            },
        )?;
        Ok(0)
    }

    /// `MUSERLOAD_IOC_EVENTS`.
    pub(crate) fn create_events(self: ArcBorrow<'_, Self>, flags: usize) -> Result<isize> {
        let known = (MUSERLOAD_EVENTS_NONBLOCK | MUSERLOAD_EVENTS_CLOEXEC) as usize;
        if flags & !known != 0 {
            return Err(EINVAL);
        }
        if self.events_created.xchg(true, Relaxed) {
            return Err(EBUSY);
        }
        let fd = crate::events::create_fd(self.into(), flags as u32);
        if fd.is_err() {
            self.events_created.store(false, Relaxed);
        }
        Ok(fd? as isize)
    }
}
