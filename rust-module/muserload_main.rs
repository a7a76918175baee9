// SPDX-License-Identifier: GPL-2.0

//! muserload: post-copy memory loading for userspace.
//!
//! `/dev/muserload` is a misc device whose every open is a load object: the memory a
//! post-copy VMM maps as guest RAM, plus the control channel that loads pages into it.
//! Documentation/muserload.rst describes the model and the ABI; the ABI itself is
//! `include/uapi/linux/muserload.h`.
//!
//! Files, one concept each:
//! - [`misc`]: the misc device registration, with the node mode the kernel crate lacks.
//! - [`device`]: `/dev/muserload`'s open, mmap and ioctl dispatch.
//! - [`object`]: the per-open object and its pages; setup, arm, abort, the events
//!   descriptor's creation.
//! - [`layout`]: an object's sizes and regions, and its page slots.
//! - [`slots`]: the page slots, each with its page, its state and its own lock.
//! - [`state`]: a guest page's state (armed, reported, zero-loaded) and its transitions.
//! - [`vma`]: `vm_operations_struct`, `struct vm_fault` and the vma fields the module
//!   reads, behind a safe API (the only file that touches vmas through raw bindings).
//! - [`fault`]: what a fault does: map, zero-fill, signal, or queue and wait.
//! - [`load`]: the loads (MOVE, COPY, ZERO, WAKE; ranged and vectored; RESOLVE's).
//! - [`scratch`]: a load's short lists, inline up to a few items.
//! - [`events`]: queue mode's events and the events descriptor.
//! - [`wait`]: hashed wait queues for faults that wait for a page, and for slot locks.
//! - [`clock`]: the clock that times those waits (with `clock_shim.c`).
//! - [`signal`]: signal mode's signal with `si_addr`.
//! - [`anon_file`]: anonymous-inode files (the events descriptor, the object's mapping).
//! - [`pool`]: pre-zeroed pages for staging, refilled in the background.
//! - [`memcg`]: the memory cgroup that background allocations are charged to (with
//!   `memcg_shim.c`), and the allocations of pages and page arrays.
//! - [`sched`]: long loops' rescheduling and kill checks (with `sched_shim.c`).
//! - [`module_queue`]: the module's workqueue, drained before the module unloads.
//! - [`stats`]: per-object counters.
//! - [`api`]: the handshake ioctl.
//! - [`uapi`]: the ABI, generated from the uapi header.
//! - [`sync_table`]: the one wrapper that makes the static C operation tables `Sync`.
//!
//! The C shims are the module's only C: inline kernel helpers the Rust code cannot call.

use kernel::prelude::*;

mod anon_file;
mod api;
mod clock;
mod copy_chunk;
mod device;
mod events;
mod fault;
mod layout;
mod load;
mod memcg;
mod misc;
mod module_queue;
mod object;
mod pool;
mod sched;
mod scratch;
mod signal;
mod slots;
mod state;
mod stats;
mod sync_table;
mod uapi;
mod vma;
mod wait;

module! {
    type: MuserloadModule,
    name: "muserload",
    authors: ["The muserload developers"],
    description: "Post-copy memory loading for userspace",
    license: "GPL",
    params: {
        pool_pages: u32 {
            default: 256,
            description: "Zeroed pages each object keeps ready for staging refills (0: none, \
                          refills zero in the loader's thread)",
        },
    },
}

/// The module: owns the registration of `/dev/muserload`.
#[pin_data]
struct MuserloadModule {
    /// Declared first: created before the device can be opened, and dropped (draining it)
    /// once unloading has made opening it impossible.
    _queue: module_queue::ModuleQueue,
    #[pin]
    _device: misc::MiscDeviceWithMode<object::Object>,
}

impl kernel::InPlaceModule for MuserloadModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            _queue: module_queue::ModuleQueue::new()?,
            // 0666: every open is a separate object, so the node's mode is not what isolates
            // users (as for /dev/kvm); no root is needed to migrate a VM.
            _device <- misc::MiscDeviceWithMode::register(c"muserload", 0o666),
        })
    }
}
