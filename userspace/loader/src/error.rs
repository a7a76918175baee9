//! The loader's errors. Each becomes one line on stderr and a non-zero exit status.

use std::{io, net::SocketAddr};

use crate::protocol::LinkError;

/// An error of the loader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What was asked of KVM.
        op: &'static str,
        /// Its errno.
        source: kvm_ioctls::Error,
    },
    /// The muserload object failed.
    #[error(transparent)]
    Muserload(#[from] muserload::Error),
    /// Loading the guest image failed.
    #[error("cannot load {path}: {reason}")]
    Image {
        /// The image file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A configuration the loader cannot run.
    #[error("{0}")]
    Config(String),
    /// Connecting to the destination failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The destination's address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Listening for the source failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address to listen on.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// Sending or receiving on a connection of the migration failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The connection broke in post-copy and did not come back in time.
    #[error("{0}")]
    Unrecovered(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The guest stopped in a way it should not have.
    #[error("the guest stopped: {0}")]
    Guest(String),
    /// The guest found memory that did not hold what it wrote.
    #[error("the guest found {count} page(s) with wrong content (first: data page {first})")]
    Mismatch {
        /// How many.
        count: u64,
        /// The first data page it reported.
        first: u64,
    },
}

/// The loader's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// `map_err` helper for KVM calls.
pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { op, source }
}

/// `map_err` helper for other I/O.
pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}
