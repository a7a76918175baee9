//! What makes a source fail: the command as a whole ([`RunError`]) and the migration
//! ([`SendError`]).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    address::AddressError, boot::BootError, memory::MemoryError, precopy::PrecopyError,
    protocol::LinkError, report::ReportError, vcpu::GuestStopped, vcpu::VcpuError, vm::VmError,
};

/// Why `muserload-loader run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The vCPUs could not be started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The guest stopped before it was migrated.
    #[error(transparent)]
    Guest(#[from] Arc<GuestStopped>),
    /// The migration failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// Why migrating the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The destination's address does not resolve.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The destination could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The VM's dirty log or state failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Reading guest RAM failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The pre-copy rounds failed.
    #[error(transparent)]
    Precopy(#[from] PrecopyError),
    /// The guest stopped on its own before it was paused.
    #[error(transparent)]
    Guest(#[from] Arc<GuestStopped>),
    /// The stream's thread could not be started.
    #[error("spawning the stream thread: {0}")]
    Spawn(#[source] io::Error),
    /// A socket could not be cloned for another thread.
    #[error("cloning {what}: {source}")]
    Clone {
        /// Which socket.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The stream's thread panicked.
    #[error("the stream thread panicked")]
    StreamPanicked,
    /// A connection broke in post-copy and the destination did not come back in time.
    #[error(
        "the destination did not come back within {timeout:?} ({cause}); the guest, which \
         runs there, cannot get its missing pages"
    )]
    Unrecovered {
        /// How long the source tried.
        timeout: Duration,
        /// Why the last attempt failed.
        #[source]
        cause: Box<SendError>,
    },
}

impl SendError {
    /// Whether the destination could not be reached, or the connection to it broke: what
    /// post-copy recovers from by reconnecting.
    pub(super) fn is_disconnection(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Link(LinkError::Disconnected { .. })
        )
    }
}

/// `map_err` helper for cloning `what`, a socket.
pub(super) fn clone_error(what: &'static str) -> impl FnOnce(io::Error) -> SendError {
    move |source| SendError::Clone { what, source }
}
