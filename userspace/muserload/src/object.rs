//! A load object: one open of `/dev/muserload`, set up with its two regions.

use std::{
    fs::OpenOptions,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::Path,
};

use nix::errno::Errno;

use crate::{
    events::{self, Event, Events},
    ioctls::*,
    load::{Load, Loads, Wake},
    mapping::{GuestMemory, Mapping, Staging, PAGE_SIZE},
    uapi::*,
    Error, Result,
};

/// The device node the module creates.
pub const DEVICE_PATH: &str = "/dev/muserload";

/// The ABI version this crate speaks.
pub const API_VERSION: u64 = MUSERLOAD_API as u64;

/// Where staging starts in the object's file offsets.
pub const STAGING_OFFSET: u64 = MUSERLOAD_STAGING_OFFSET;

/// The most staging one object may have.
pub const STAGING_MAX: u64 = MUSERLOAD_STAGING_MAX as u64;

/// The most vectors one vectored load takes.
pub const LOADV_MAX: usize = MUSERLOAD_LOADV_MAX as usize;

/// The most events one read of events returns.
pub const READ_MAX: usize = MUSERLOAD_READ_MAX as usize;

/// How a fault on an armed page is told to userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The faulting thread waits; the resolver reads an event from [`Events`].
    Queue,
    /// The faulting thread gets this signal, with `si_addr` the faulting address.
    Signal(i32),
    /// As [`FaultMode::Signal`], except that a kernel-mode access that the signal cannot
    /// end (a `copy_from_user()` in the kernel, rather than `KVM_RUN`'s GUP, which returns
    /// `EINTR`) waits as in queue mode, with an event on [`Events`], instead of failing
    /// with `EFAULT` (`MUSERLOAD_ARM_KERNEL_WAITS`). For VMMs: KVM turns such an `EFAULT`
    /// of its own guest-memory accesses (shadow paging, instruction emulation, kvmclock)
    /// into a fault in the guest. Read events too, or the access waits until the page is
    /// loaded otherwise.
    SignalKernelWaits(i32),
}

/// Statistics of an object, as `MUSERLOAD_IOC_STATS` returns them (see the uapi header).
pub type Stats = muserload_stats;

/// An open, handshaken and set-up load object.
#[derive(Debug)]
pub struct Object {
    fd: OwnedFd,
    features: u64,
    size: u64,
    staging_size: u64,
}

impl Object {
    /// Opens [`DEVICE_PATH`], handshakes requiring `features`, and sizes the object:
    /// `size` bytes of guest memory and `staging_size` bytes of staging (page multiples).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use muserload::{features, FaultMode, Object};
    ///
    /// let object = Object::create(64 << 20, 1 << 20, features::QUEUE)?;
    /// let guest = object.map_guest()?;
    /// object.arm(&guest, 0, guest.len() as u64, FaultMode::Queue)?;
    /// # Ok::<(), muserload::Error>(())
    /// ```
    pub fn create(size: u64, staging_size: u64, features: u64) -> Result<Self> {
        Self::create_at(DEVICE_PATH, size, staging_size, features)
    }

    /// As [`Object::create`], with the device at `path`.
    pub fn create_at(
        path: impl AsRef<Path>,
        size: u64,
        staging_size: u64,
        features: u64,
    ) -> Result<Self> {
        let (fd, features) = open(path.as_ref(), features)?;
        let setup = muserload_setup {
            size,
            staging_size,
            flags: 0,
        };
        // SAFETY: `fd` is a muserload object; `setup` is a valid struct the module reads.
        unsafe { muserload_ioc_setup(fd.as_raw_fd(), &setup) }.map_err(|errno| Error::Ioctl {
            op: "MUSERLOAD_IOC_SETUP",
            errno,
        })?;
        Ok(Self {
            fd,
            features,
            size,
            staging_size,
        })
    }

    /// Every feature bit the module supports.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Guest memory's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Maps all of guest memory.
    pub fn map_guest(&self) -> Result<GuestMemory> {
        let len = usize::try_from(self.size).map_err(|_| Error::Map {
            what: "guest memory",
            errno: Errno::ENOMEM,
        })?;
        Mapping::new(self.fd.as_fd(), 0, len, "guest memory").map(GuestMemory)
    }

    /// Maps all of staging.
    pub fn map_staging(&self) -> Result<Staging> {
        Mapping::new(
            self.fd.as_fd(),
            STAGING_OFFSET,
            self.staging_size as usize,
            "staging",
        )
        .map(Staging)
    }

    /// `set_muserload()`: arms `[offset, offset + len)` of `guest`, discarding what was
    /// there, so that touching it faults as `mode` says.
    pub fn arm(&self, guest: &GuestMemory, offset: u64, len: u64, mode: FaultMode) -> Result<()> {
        let (signal, flags) = match mode {
            FaultMode::Queue => (0, 0),
            FaultMode::Signal(signal) => (signal, 0),
            FaultMode::SignalKernelWaits(signal) => (signal, MUSERLOAD_ARM_KERNEL_WAITS),
        };
        let arm = muserload_arm {
            start: guest.0.addr("arm", offset, len)?,
            len,
            signal: u32::try_from(signal).map_err(|_| Error::Ioctl {
                op: "MUSERLOAD_IOC_ARM",
                errno: Errno::EINVAL,
            })?,
            flags,
        };
        // SAFETY: `arm` is a valid struct the module reads.
        unsafe { muserload_ioc_arm(self.fd.as_raw_fd(), &arm) }.map_err(|errno| Error::Ioctl {
            op: "MUSERLOAD_IOC_ARM",
            errno,
        })?;
        Ok(())
    }

    /// Copies `src` (a page multiple) into guest memory at `offset`, each page only if it
    /// is not loaded yet. Returns the bytes loaded.
    pub fn load_copy(
        &self,
        guest: &GuestMemory,
        offset: u64,
        src: &[u8],
        wake: Wake,
    ) -> Result<u64> {
        let len = src.len() as u64;
        self.load(Load {
            dst: guest.0.addr("load destination", offset, len)?,
            src: src.as_ptr() as u64,
            len,
            kind: MUSERLOAD_LOAD_COPY,
            wake,
        })
    }

    /// Loads zero pages at `[offset, offset + len)`.
    pub fn load_zero(&self, guest: &GuestMemory, offset: u64, len: u64, wake: Wake) -> Result<u64> {
        self.load(Load {
            dst: guest.0.addr("load destination", offset, len)?,
            src: 0,
            len,
            kind: MUSERLOAD_LOAD_ZERO,
            wake,
        })
    }

    /// Moves `pages` staging slots from `slot` on into guest memory at `offset`, without a
    /// copy. Slots whose page moved read as zeros afterwards; on `EEXIST` the refused
    /// slot and those after it keep their pages.
    pub fn load_move(
        &self,
        guest: &GuestMemory,
        offset: u64,
        staging: &mut Staging,
        slot: usize,
        pages: usize,
        wake: Wake,
    ) -> Result<u64> {
        let len = (pages * PAGE_SIZE) as u64;
        self.load(Load {
            dst: guest.0.addr("load destination", offset, len)?,
            src: staging
                .0
                .addr("staging slots", (slot * PAGE_SIZE) as u64, len)?,
            len,
            kind: MUSERLOAD_LOAD_MOVE,
            wake,
        })
    }

    /// Wakes the threads waiting on `[offset, offset + len)` (after loads with
    /// [`Wake::Later`]).
    pub fn wake(&self, guest: &GuestMemory, offset: u64, len: u64) -> Result<u64> {
        self.load(Load {
            dst: guest.0.addr("wake", offset, len)?,
            src: 0,
            len,
            kind: MUSERLOAD_LOAD_WAKE,
            wake: Wake::Now,
        })
    }

    /// Moves staging slot `pairs[i].1` to guest page offset `pairs[i].0`, for every pair,
    /// in one call. Returns the bytes loaded; stops at the first failure.
    pub fn load_move_vectored(
        &self,
        guest: &GuestMemory,
        staging: &mut Staging,
        pairs: &[(u64, usize)],
        wake: Wake,
    ) -> Result<u64> {
        let loads = Loads::Move(staging, pairs);
        let vec = (0..loads.len())
            .map(|i| loads.vec(guest, i))
            .collect::<Result<Vec<_>>>()?;
        self.loadv(&vec, loads.kind(), wake)
    }

    /// Loads zero pages at every `(offset, len)` range of `ranges` in one call (as
    /// [`Object::load_zero`] does for one). Returns the bytes loaded; stops at the first
    /// failure.
    pub fn load_zero_vectored(
        &self,
        guest: &GuestMemory,
        ranges: &[(u64, u64)],
        wake: Wake,
    ) -> Result<u64> {
        let vec = ranges
            .iter()
            .map(|&(offset, len)| {
                Ok(muserload_vec {
                    dst: guest.0.addr("load destination", offset, len)?,
                    src: 0,
                    len,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.loadv(&vec, MUSERLOAD_LOAD_ZERO, wake)
    }

    /// A queue-mode resolver's step in one system call: does `loads` (each page only if it
    /// is not loaded yet, waking its waiters as `wake` says), then reads the next events
    /// into `events`, waiting for one if `wait`. Returns how many it read, at most
    /// [`READ_MAX`]: 0 after a wait means the object was aborted. A load that fails ends
    /// the call before any event is read, with [`Error::Load`] saying how far it got; so
    /// does a signal that interrupts the wait after loads, with `EINTR`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use muserload::{features, Event, FaultMode, Loads, Object, Wake, PAGE_SIZE};
    ///
    /// let object = Object::create(1 << 20, 0, features::QUEUE | features::RESOLVE)?;
    /// let guest = object.map_guest()?;
    /// object.arm(&guest, 0, guest.len() as u64, FaultMode::Queue)?;
    /// let _events = object.events(false)?;
    /// let page = vec![0u8; PAGE_SIZE];
    /// let mut batch = [Event::default(); 16];
    /// let mut replies = Vec::new();
    /// loop {
    ///     let n = object.resolve(&guest, Loads::Copy(&replies), Wake::Now, &mut batch, true)?;
    ///     if n == 0 {
    ///         break; // Aborted.
    ///     }
    ///     // ... fetch each page from the source ...
    ///     replies = batch[..n].iter().map(|e| (e.offset, &page[..])).collect();
    /// }
    /// # Ok::<(), muserload::Error>(())
    /// ```
    pub fn resolve(
        &self,
        guest: &GuestMemory,
        loads: Loads<'_>,
        wake: Wake,
        events: &mut [Event],
        wait: bool,
    ) -> Result<usize> {
        // A batch of up to `READ_MAX` pairs, a batch of faults' replies, needs no allocation.
        let count = loads.len();
        let mut stack = [muserload_vec::default(); READ_MAX];
        let heap: Vec<muserload_vec>;
        let pairs = if count <= READ_MAX {
            for (i, pair) in stack[..count].iter_mut().enumerate() {
                *pair = loads.vec(guest, i)?;
            }
            &stack[..count]
        } else {
            heap = (0..count)
                .map(|i| loads.vec(guest, i))
                .collect::<Result<_>>()?;
            &heap
        };
        let mut raw = [muserload_event::default(); READ_MAX];
        let room = events.len().min(READ_MAX);
        let mut resolve = muserload_resolve {
            load: muserload_loadv {
                vec: pairs.as_ptr() as u64,
                count: pairs.len() as u64,
                mode: u64::from(loads.kind()) | wake.flag(),
                loaded: 0,
            },
            events: raw.as_mut_ptr() as u64,
            nr_events: room as u32,
            flags: if wait { 0 } else { MUSERLOAD_RESOLVE_NONBLOCK },
        };
        // SAFETY: `resolve` is a valid struct the module reads and writes; `pairs` and
        // `raw` (room for `nr_events` events) outlive the call.
        let ret = unsafe { muserload_ioc_resolve(self.fd.as_raw_fd(), &mut resolve) };
        ret.map_err(|errno| Error::Load {
            op: "MUSERLOAD_IOC_RESOLVE",
            loaded: resolve.load.loaded,
            errno,
        })?;
        let read = (resolve.nr_events as usize).min(room);
        Ok(events::convert(&raw[..read], events))
    }

    fn loadv(&self, vec: &[muserload_vec], kind: u32, wake: Wake) -> Result<u64> {
        let mut loadv = muserload_loadv {
            vec: vec.as_ptr() as u64,
            count: vec.len() as u64,
            mode: u64::from(kind) | wake.flag(),
            loaded: 0,
        };
        // SAFETY: `loadv` is a valid struct the module reads and writes; `vec` outlives
        // the call.
        let ret = unsafe { muserload_ioc_loadv(self.fd.as_raw_fd(), &mut loadv) };
        ret.map(|_| loadv.loaded).map_err(|errno| Error::Load {
            op: "MUSERLOAD_IOC_LOADV",
            loaded: loadv.loaded,
            errno,
        })
    }

    fn load(&self, load: Load) -> Result<u64> {
        let mut raw = muserload_load {
            dst: load.dst,
            src: load.src,
            len: load.len,
            mode: u64::from(load.kind) | load.wake.flag(),
            loaded: 0,
        };
        // SAFETY: `raw` is a valid struct the module reads and writes; the addresses in it
        // were checked against this crate's mappings, and the module checks them again.
        let ret = unsafe { muserload_ioc_load(self.fd.as_raw_fd(), &mut raw) };
        ret.map(|_| raw.loaded).map_err(|errno| Error::Load {
            op: "MUSERLOAD_IOC_LOAD",
            loaded: raw.loaded,
            errno,
        })
    }

    /// The object's events descriptor (one per object). Closing it aborts the object.
    pub fn events(&self, nonblocking: bool) -> Result<Events> {
        let mut flags = MUSERLOAD_EVENTS_CLOEXEC;
        if nonblocking {
            flags |= MUSERLOAD_EVENTS_NONBLOCK;
        }
        // SAFETY: The argument is a flags word, not a pointer.
        let fd = unsafe { muserload_ioc_events(self.fd.as_raw_fd(), flags as i32) }.map_err(
            |errno| Error::Ioctl {
                op: "MUSERLOAD_IOC_EVENTS",
                errno,
            },
        )?;
        // SAFETY: The module returned a new descriptor that nothing else owns.
        Ok(Events::from_owned(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    /// Aborts: waiters and later faults on armed pages get SIGBUS.
    pub fn abort(&self) -> Result<()> {
        // SAFETY: `MUSERLOAD_IOC_ABORT` takes no argument.
        unsafe { muserload_ioc_abort(self.fd.as_raw_fd()) }.map_err(|errno| Error::Ioctl {
            op: "MUSERLOAD_IOC_ABORT",
            errno,
        })?;
        Ok(())
    }

    /// The object's statistics.
    pub fn stats(&self) -> Result<Stats> {
        let mut stats = Stats::default();
        // SAFETY: `stats` is a valid struct the module writes.
        unsafe { muserload_ioc_stats(self.fd.as_raw_fd(), &mut stats) }.map_err(|errno| {
            Error::Ioctl {
                op: "MUSERLOAD_IOC_STATS",
                errno,
            }
        })?;
        Ok(stats)
    }
}

/// Opens the device at `path` and handshakes requiring `wanted`; returns the descriptor
/// and every feature bit the module supports.
fn open(path: &Path, wanted: u64) -> Result<(OwnedFd, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::Open {
            path: path.to_owned(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
    let fd = OwnedFd::from(file);
    let mut api = muserload_api {
        api: API_VERSION,
        features: wanted,
    };
    // SAFETY: `fd` is an open muserload object and `api` a valid `struct muserload_api`
    // that the module reads and writes back.
    match unsafe { muserload_ioc_api(fd.as_raw_fd(), &mut api) } {
        Ok(_) => Ok((fd, api.features)),
        // The module writes back its version and features on EINVAL: say which part failed.
        Err(Errno::EINVAL) if api.api != API_VERSION => Err(Error::Version {
            module: api.api,
            ours: API_VERSION,
        }),
        Err(Errno::EINVAL) if wanted & !api.features != 0 => Err(Error::Features {
            missing: wanted & !api.features,
            supported: api.features,
        }),
        Err(errno) => Err(Error::Ioctl {
            op: "MUSERLOAD_IOC_API",
            errno,
        }),
    }
}

impl AsFd for Object {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Object {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
