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
    /// An ioctl failed.
    #[error("{op} failed: {errno}")]
    Ioctl {
        /// The ioctl's name.
        op: &'static str,
        /// The errno the module returned.
        errno: Errno,
    },
}

/// The result of a muserload operation.
pub type Result<T> = std::result::Result<T, Error>;
