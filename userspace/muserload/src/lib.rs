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
pub use object::{Object, API_VERSION, DEVICE_PATH};
