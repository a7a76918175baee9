//! Safe Rust interface to `/dev/muserload`: post-copy memory loading for userspace.
//!
//! An [`Object`] is one open of the device: guest memory that a VMM maps as guest RAM,
//! staging that received pages land in, and the control that arms pages (so that touching
//! them faults to userspace) and loads them. The ABI is `include/uapi/linux/muserload.h`,
//! from which this crate generates its definitions; `Documentation/muserload.rst`
//! describes it.
//!
//! A post-copy destination, in queue mode:
//!
//! ```no_run
//! use muserload::{features, Event, FaultMode, Object, Wake};
//!
//! let object = Object::create(256 << 20, 1 << 20, features::QUEUE | features::MOVE)?;
//! let guest = object.map_guest()?;
//! let mut staging = object.map_staging()?;
//! object.arm(&guest, 0, guest.len() as u64, FaultMode::Queue)?;
//! let events = object.events(false)?;
//! let mut batch = [Event::default(); 16];
//! // One read and one load per fault here; `Object::resolve` does both in one call.
//! while let n @ 1.. = events.read(&mut batch)? {
//!     for event in &batch[..n] {
//!         let slot = staging.slot_mut(0)?;
//!         // ... receive the page at `event.offset` from the source into `slot` ...
//!         match object.load_move(&guest, event.offset, &mut staging, 0, 1, Wake::Now) {
//!             Ok(_) => {}
//!             // Loaded meanwhile (by the background stream): harmless.
//!             Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST) => {}
//!             Err(e) => return Err(e),
//!         }
//!     }
//! }
//! # Ok::<(), muserload::Error>(())
//! ```

mod error;
mod events;
mod ioctls;
mod load;
mod mapping;
mod object;
pub mod signal;
pub mod uapi;
pub mod vcpu_signal;

pub use error::{Error, Result};
pub use events::{Event, Events};
pub use load::{Loads, Wake};
pub use mapping::{GuestMemory, Staging, PAGE_SIZE};
pub use object::{
    FaultMode, Object, Stats, API_VERSION, DEVICE_PATH, LOADV_MAX, READ_MAX, STAGING_MAX,
    STAGING_OFFSET,
};

/// Feature bits of the handshake ([`Object::features`]).
pub mod features {
    use crate::uapi;

    /// Signal mode.
    pub const SIGNAL: u64 = uapi::MUSERLOAD_FEATURE_SIGNAL as u64;
    /// Queue mode and the events descriptor.
    pub const QUEUE: u64 = uapi::MUSERLOAD_FEATURE_QUEUE as u64;
    /// Zero-copy loads from staging.
    pub const MOVE: u64 = uapi::MUSERLOAD_FEATURE_MOVE as u64;
    /// Vectored loads.
    pub const LOADV: u64 = uapi::MUSERLOAD_FEATURE_LOADV as u64;
    /// Statistics.
    pub const STATS: u64 = uapi::MUSERLOAD_FEATURE_STATS as u64;
    /// Loads and the next events in one call ([`crate::Object::resolve`]).
    pub const RESOLVE: u64 = uapi::MUSERLOAD_FEATURE_RESOLVE as u64;
}
