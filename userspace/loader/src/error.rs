//! The loader's error: what `muserload-loader` reports, as one line on stderr and a
//! non-zero exit status. Each operation has an error type of its own, next to it; this
//! one only says which operation failed.

use crate::{cli::ArgsError, destination::ReceiveError, source::RunError};

/// Why `muserload-loader` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line asks for what the loader cannot do.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// Running (and migrating) a guest failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Receiving a guest failed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
}
