//! The errors of this crate: each carries the errno the module returned, if any.

use std::path::PathBuf;

use nix::errno::Errno;

/// An error of a muserload operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device could not be opened (is the module loaded?).
    #[error("cannot open {path}: {errno}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// Why `open(2)` failed.
        errno: Errno,
    },
    /// The module does not speak this crate's ABI version.
    #[error("the module speaks ABI version {module}, this crate version {ours}")]
    Version {
        /// The version the module speaks.
        module: u64,
        /// The version this crate was built for.
        ours: u64,
    },
    /// The module lacks features the caller asked for.
    #[error("the module lacks features {missing:#x} (it supports {supported:#x})")]
    Features {
        /// The requested bits the module does not support.
        missing: u64,
        /// Every bit the module supports.
        supported: u64,
    },
    /// A mapping failed.
    #[error("mmap of {what} failed: {errno}")]
    Map {
        /// Which region.
        what: &'static str,
        /// Why `mmap(2)` failed.
        errno: Errno,
    },
    /// An argument lies outside the mapping or object it refers to.
    #[error("{what} out of range: offset {offset:#x} + {len:#x} > {limit:#x}")]
    Range {
        /// What was out of range.
        what: &'static str,
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The size of what it refers to.
        limit: u64,
    },
    /// A load stopped: `loaded` bytes were loaded before it. `EEXIST` means a target page
    /// was already loaded (its waiters were woken; a MOVE's staging page stays in place).
    #[error("{op} stopped after {loaded} bytes: {errno}")]
    Load {
        /// The ioctl's name.
        op: &'static str,
        /// Bytes loaded before the failure.
        loaded: u64,
        /// Why it stopped.
        errno: Errno,
    },
    /// An ioctl or read failed.
    #[error("{op} failed: {errno}")]
    Ioctl {
        /// The operation's name.
        op: &'static str,
        /// The errno the module returned.
        errno: Errno,
    },
}

impl Error {
    /// The errno behind this error, if the kernel returned one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Open { errno, .. }
            | Self::Map { errno, .. }
            | Self::Load { errno, .. }
            | Self::Ioctl { errno, .. } => Some(*errno),
            Self::Version { .. } | Self::Features { .. } | Self::Range { .. } => None,
        }
    }
}

/// The result of a muserload operation.
pub type Result<T> = std::result::Result<T, Error>;
