// SPDX-License-Identifier: GPL-2.0

//! The load object: what each open of `/dev/muserload` creates.
//!
//! An object owns two arrays of pages indexed by page offset, guest memory and staging,
//! sized once by `MUSERLOAD_IOC_SETUP`, and one state word per guest page saying whether
//! it is armed (not loaded), in which mode, and whether its fault event was queued.
//!
//! # Locking
//!
//! Lock order: the mmap lock (or a per-VMA lock, in a fault) → [`Object::pages`] →
//! `i_mmap_rwsem` (in `unmap_mapping_range()`) → page table locks (in `vm_insert_page()`).
//! The ioctls take the mmap read lock to translate addresses and keep it while they hold
//! `pages` ([`Object::locked`]), as a fault does. Nothing that may fault on user memory
//! (`copy_from_user`) runs under either, since that fault may be one of this object's.
//!
//! The state words are written under `pages` and read without it, with acquire ordering,
//! by sleeping faults (which may not take a mutex once their task state is set).

use crate::{
    anon_file::PrivateMapping,
    api,
    events::EventQueue,
    memcg::charged_may_fail,
    module_queue,
    pool::PagePool,
    sched,
    stats::Stats,
    uapi::*,
    vma::{
        self,
        LockedRange, //
    },
    wait::{
        WaitQueue,
        WAIT_BUCKETS, //
    },
};
use kernel::{
    alloc::flags::{
        __GFP_NOWARN,
        __GFP_ZERO, //
        GFP_KERNEL_ACCOUNT,
    },
    fs::File,
    impl_has_work,
    miscdevice::{
        MiscDevice,
        MiscDeviceRegistration, //
    },
    mm::{
        virt::VmaNew,
        MmapReadGuard, //
    },
    new_mutex, new_work,
    page::{
        Page,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::{
        atomic::{
            Acquire,
            Atomic,
            AtomicFlag,
            Relaxed,
            Release, //
        },
        Arc,
        ArcBorrow,
        Mutex,
        SetOnce, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
    workqueue::{
        Work,
        WorkItem, //
    },
};

/// State word bits of a guest page. Bits 0-7 hold the signal of signal mode (0: queue mode).
pub(crate) const STATE_SIGNAL_MASK: u32 = 0xff;
/// The page is armed: not loaded.
pub(crate) const STATE_ARMED: u32 = 1 << 8;
/// Queue mode: the page's fault event was queued (one per page per arming).
pub(crate) const STATE_REPORTED: u32 = 1 << 9;
/// Loaded as a zero page that is not allocated yet: a touch zero-fills it, a load gets
/// EEXIST. ZERO loads cost no page and no zeroing until the guest touches the page.
pub(crate) const STATE_ZERO: u32 = 1 << 10;
/// Signal mode with `MUSERLOAD_ARM_KERNEL_WAITS`: a kernel-mode access that the signal
/// cannot end waits as in queue mode.
pub(crate) const STATE_KERNEL_WAITS: u32 = 1 << 11;

/// The sizes of an object and the state words of its guest pages.
pub(crate) struct Layout {
    /// Guest memory pages.
    pub(crate) guest_pages: usize,
    /// Staging pages.
    pub(crate) staging_pages: usize,
    /// One state word per guest page.
    states: VVec<Atomic<u32>>,
}

impl Layout {
    /// The state word of guest page `index`.
    pub(crate) fn state(&self, index: usize) -> &Atomic<u32> {
        &self.states[index]
    }

    /// Whether a fault on guest page `index` may keep sleeping: the page is armed and its
    /// event is queued or being served, so a load will come (and wake it).
    ///
    /// Armed alone is not enough: a page loaded and armed again before the faulting thread
    /// went to sleep has no event, and would never be loaded for it. That thread must
    /// retry, and its next fault queues the event.
    pub(crate) fn awaits_load(&self, index: usize) -> bool {
        let state = self.states[index].load(Acquire);
        state & STATE_ARMED != 0 && state & STATE_REPORTED != 0
    }
}

/// Where an object offset lies.
pub(crate) enum Region {
    /// Guest page of this index.
    Guest(usize),
    /// Staging page of this index.
    Staging(usize),
}

impl Layout {
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

/// The pages an object owns. A slot without a page reads as zeros (if not armed).
pub(crate) struct Pages {
    pub(crate) guest: VVec<Option<Page>>,
    pub(crate) staging: KVVec<Option<Page>>,
}

/// A new zeroed page for a fault, charged to the current task's memory cgroup (past its
/// limit, the cgroup's OOM killer runs, as for anonymous memory).
pub(crate) fn zeroed_page() -> Result<Page> {
    Ok(Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?)
}

/// A new zeroed page for a system call or background work, charged to the current (or
/// active) memory cgroup; past its limit, ENOMEM.
pub(crate) fn zeroed_page_may_fail() -> Result<Page> {
    Ok(Page::alloc_page(charged_may_fail() | __GFP_ZERO)?)
}

/// A guest page array of `n` slots made by `slot`: 12 bytes of bookkeeping per guest page
/// in all, so up to 48 GiB for the largest object the ABI allows (`MUSERLOAD_STAGING_OFFSET`
/// bytes). vmalloc'ed (kvmalloc refuses more than `INT_MAX` bytes, with a WARN), charged,
/// and `ENOMEM` without a warning when it does not fit; `EINTR` if the caller is killed
/// while the slots are filled.
fn page_array<T>(n: usize, slot: impl Fn() -> T) -> Result<VVec<T>> {
    let mut array = VVec::with_capacity(n, charged_may_fail() | __GFP_NOWARN)?;
    for i in 0..n {
        if i % sched::CHECKPOINT_EVERY == 0 {
            sched::checkpoint()?;
        }
        array.push_within_capacity(slot()).map_err(|_| ENOMEM)?;
    }
    Ok(array)
}

/// One open of `/dev/muserload`.
#[pin_data]
pub(crate) struct Object {
    /// The pages. See the lock order at the top of this file.
    #[pin]
    pub(crate) pages: Mutex<Pages>,
    /// Set once, by `MUSERLOAD_IOC_SETUP`.
    layout: SetOnce<Layout>,
    /// Queue mode's fault events and their readers.
    #[pin]
    pub(crate) events: EventQueue,
    /// Threads waiting for guest pages, hashed by page index.
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

    /// Runs `f` with the mmap read lock and [`Object::pages`] held, on `[addr, addr + len)`
    /// of the caller's mapping, given as its locked range and the first page index that
    /// `region` ([`Layout::guest_range`] or [`Layout::staging_range`]) finds for it. `f` also
    /// gets the lock guard, to find other ranges under the same lock. See the lock order at
    /// the top of this file.
    pub(crate) fn locked(
        &self,
        addr: u64,
        len: u64,
        region: fn(&Layout, u64, u64) -> Result<usize>,
        f: impl FnOnce(&MmapReadGuard<'_>, &LockedRange<'_>, usize, &mut Pages) -> Result,
    ) -> Result {
        self.locked_mm(|guard, layout, pages| {
            let range = LockedRange::find(guard, self, addr, len)?;
            let first = region(layout, range.offset, len)?;
            f(guard, &range, first, pages)
        })
    }

    /// Runs `f` with the caller's mmap read lock and [`Object::pages`] held, given the lock
    /// guard (to find the caller's ranges under it) and the layout: for calls that name
    /// several ranges. See the lock order at the top of this file.
    pub(crate) fn locked_mm(
        &self,
        f: impl FnOnce(&MmapReadGuard<'_>, &Layout, &mut Pages) -> Result,
    ) -> Result {
        let layout = self.layout().ok_or(EINVAL)?;
        let task = kernel::current!();
        // A kernel thread has no address space to name: nothing to translate.
        let mm = task.mm().ok_or(EINVAL)?;
        let guard = mm.mmap_read_lock();
        let mut pages = self.pages.lock();
        f(&guard, layout, &mut pages)
    }

    fn setup(self: ArcBorrow<'_, Self>, arg: UserSlice) -> Result<isize> {
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

        // Serialise setups on `pages`: the arrays and the layout go in together.
        let mut pages = self.pages.lock();
        if self.layout().is_some() {
            return Err(EBUSY);
        }
        let states = page_array(guest_pages, || Atomic::new(0))?;
        let guest = page_array(guest_pages, || None)?;
        let mut staging = KVVec::with_capacity(staging_pages, charged_may_fail())?;
        for _ in 0..staging_pages {
            staging.push_within_capacity(None).map_err(|_| ENOMEM)?;
        }
        self.pool.set_target(staging_pages)?;
        *pages = Pages { guest, staging };
        self.layout.populate(Layout {
            guest_pages,
            staging_pages,
            states,
        });
        drop(pages);
        self.refill_pool();
        Ok(0)
    }

    fn arm(&self, arg: UserSlice) -> Result<isize> {
        let arm: muserload_arm = arg.reader().read()?;
        if arm.flags & !MUSERLOAD_ARM_KERNEL_WAITS != 0 {
            return Err(EINVAL);
        }
        let mut mode = arm.signal;
        if arm.signal != 0 {
            crate::signal::check(arm.signal)?;
            if arm.flags & MUSERLOAD_ARM_KERNEL_WAITS != 0 {
                mode |= STATE_KERNEL_WAITS;
            }
        } else if arm.flags != 0 {
            // Queue mode: every access waits already.
            return Err(EINVAL);
        }
        let layout = self.layout().ok_or(EINVAL)?;
        let count = (arm.len >> PAGE_SHIFT) as usize;
        self.locked(
            arm.start,
            arm.len,
            Layout::guest_range,
            |_, range, first, pages| {
                let mut newly_armed = 0;
                for index in first..first + count {
                    // Mappings of the page hold references of their own until the unmap below.
                    drop(pages.guest[index].take());
                    let state = layout.state(index);
                    let old = state.load(Relaxed);
                    // Re-arming keeps an event already queued: its page has not been loaded.
                    let reported = if old & STATE_ARMED != 0 {
                        old & STATE_REPORTED
                    } else {
                        newly_armed += 1;
                        0
                    };
                    state.store(STATE_ARMED | reported | mode, Release);
                }
                // Unmap under `pages`, so that no fault maps a discarded page again in between.
                self.mapping.unmap(range.offset, arm.len);
                // Counted under `pages` too: a load that follows the unlock counts its page
                // out, and must find it counted in (the counter would wrap below zero).
                self.stats.armed(newly_armed);
                Ok(())
            },
        )?;
        Ok(0)
    }

    fn create_events(self: ArcBorrow<'_, Self>, flags: usize) -> Result<isize> {
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

#[vtable]
impl MiscDevice for Object {
    type Ptr = Arc<Self>;

    fn open(file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Self::Ptr> {
        let mapping = PrivateMapping::new()?;
        mapping.attach(file);
        Arc::pin_init(
            try_pin_init!(Object {
                pages <- new_mutex!(Pages {
                    guest: VVec::new(),
                    staging: KVVec::new(),
                }),
                layout: SetOnce::new(),
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
            }),
            GFP_KERNEL,
        )
    }

    fn mmap(me: ArcBorrow<'_, Self>, _file: &File, vma: &VmaNew) -> Result {
        let layout = me.layout().ok_or(EINVAL)?;
        // SAFETY: `vma` is being set up by `mmap`, so `vm_pgoff` is stable.
        let offset = (unsafe { (*vma.as_ptr()).vm_pgoff } as u64) << PAGE_SHIFT;
        let len = (vma.end() - vma.start()) as u64;
        if offset >= MUSERLOAD_STAGING_OFFSET {
            layout.staging_range(offset, len)?;
        } else {
            layout.guest_range(offset, len)?;
        }
        vma::install(vma)
    }

    fn ioctl(me: ArcBorrow<'_, Self>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let user = |size| UserSlice::new(UserPtr::from_addr(arg), size);
        match cmd {
            MUSERLOAD_IOC_API => api::handshake(user(size_of::<muserload_api>())),
            MUSERLOAD_IOC_SETUP => me.setup(user(size_of::<muserload_setup>())),
            MUSERLOAD_IOC_ARM => me.arm(user(size_of::<muserload_arm>())),
            MUSERLOAD_IOC_LOAD => crate::load::load(me, user(size_of::<muserload_load>())),
            MUSERLOAD_IOC_LOADV => crate::load::loadv(me, user(size_of::<muserload_loadv>())),
            MUSERLOAD_IOC_RESOLVE => crate::load::resolve(me, user(size_of::<muserload_resolve>())),
            MUSERLOAD_IOC_EVENTS => me.create_events(arg),
            MUSERLOAD_IOC_ABORT => {
                me.abort();
                Ok(0)
            }
            MUSERLOAD_IOC_STATS => {
                user(size_of::<muserload_stats>())
                    .writer()
                    .write(&me.stats.snapshot())?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

/// The current thread's id in its own pid namespace (`task_pid_vnr(current)`).
pub(crate) fn current_tid() -> u32 {
    // SAFETY: `current` is a valid task; a null namespace means its own active one.
    let tid = unsafe {
        kernel::bindings::__task_pid_nr_ns(
            kernel::bindings::get_current(),
            kernel::bindings::pid_type_PIDTYPE_PID,
            core::ptr::null_mut(),
        )
    };
    tid as u32
}
