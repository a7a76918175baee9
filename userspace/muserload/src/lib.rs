//! Safe Rust interface to `/dev/muserload`: post-copy memory loading for userspace.
//!
//! Each [`Object`] is one open of the device: the memory a post-copy VMM maps as guest RAM
//! and the control channel that loads pages into it. The ABI is
//! `include/uapi/linux/muserload.h`, from which this crate generates its definitions;
//! `Documentation/muserload.rst` describes it.

mod error;
mod object;
mod uapi;

pub use error::{Error, Result};

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
}
pub use object::{Object, API_VERSION, DEVICE_PATH};
