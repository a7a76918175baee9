//! What makes a destination fail: the operation as a whole ([`ReceiveError`]), its loading
//! threads ([`LoadError`]), and taking the source's connections ([`AcceptError`]).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    address::AddressError, devices::DeviceError, memory::MemoryError, protocol::LinkError,
    report::ReportError, timeline::PlotError, vcpu::GuestStopped, vcpu::VcpuError, vm::VmError,
};

/// Why `muserload-loader receive` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The address to listen on does not resolve.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address to listen on.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The listening socket's address could not be read.
    #[error("listening: {0}")]
    LocalAddr(#[source] io::Error),
    /// The source's connections could not be taken.
    #[error(transparent)]
    Accept(#[from] AcceptError),
    /// Sending or receiving failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The muserload object failed.
    #[error(transparent)]
    Object(#[from] muserload::Error),
    /// The VM could not be built from the machine state.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The devices failed.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The vCPUs could not be started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The guest stopped on its own.
    #[error(transparent)]
    Guest(#[from] Arc<GuestStopped>),
    /// Loading the guest's pages failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The connections broke in post-copy and the source did not come back: the guest,
    /// missing pages only the source had, is stopped.
    #[error(
        "the connection to the source broke ({cause}) and {failure}: the guest, missing pages \
         only the source had, was stopped"
    )]
    Unrecovered {
        /// How the connections broke.
        cause: Arc<LinkError>,
        /// Why the source's reconnection did not come.
        #[source]
        failure: AcceptError,
    },
    /// The guest found memory that did not hold what it wrote.
    #[error("the guest found {count} page(s) with wrong content (first: data page {first})")]
    Mismatch {
        /// How many.
        count: u64,
        /// The first data page it reported.
        first: u64,
    },
    /// The guest did not make the checks of its memory it was given time for.
    #[error(
        "the destination stopped the guest: it did not check all its memory {sweeps} time(s) \
         within {timeout:?}"
    )]
    Unchecked {
        /// The complete checks asked for.
        sweeps: u64,
        /// The time given.
        timeout: Duration,
    },
    /// The guest powered off before it made the checks of its memory asked for.
    #[error("the guest powered off before it checked all its memory {sweeps} time(s)")]
    PoweredOffUnchecked {
        /// The complete checks asked for.
        sweeps: u64,
    },
    /// The guest did not power off in the time it was given.
    #[error("the destination stopped the guest: it did not power off within {timeout:?}")]
    NotPoweredOff {
        /// The time given.
        timeout: Duration,
    },
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The timeline could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// Why a loading thread failed, or could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The muserload object failed (a load, an event, the staging area).
    #[error(transparent)]
    Object(#[from] muserload::Error),
    /// Sending or receiving failed (other than the connections breaking, which is waited
    /// out).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A thread could not be started.
    #[error("spawning a thread: {0}")]
    Spawn(#[source] io::Error),
    /// A socket could not be cloned for a receiving thread.
    #[error("cloning a socket: {0}")]
    Clone(#[source] io::Error),
    /// A vCPU waits for a page that will not come: the source is gone.
    #[error("page {page} will not come")]
    Abandoned {
        /// The page.
        page: u64,
    },
    /// Signal mode's signal for an address outside guest RAM.
    #[error("fault signal for {address:#x}, not guest RAM")]
    StrayFault {
        /// The address.
        address: u64,
    },
}

/// Why the source's connections could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The listening socket failed.
    #[error("listening: {0}")]
    Listen(#[source] io::Error),
    /// Accepting a connection failed.
    #[error("accepting the source: {0}")]
    Accept(#[source] io::Error),
    /// A connection's hello, or a reconnected stream's first frame, failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The source did not reconnect in time.
    #[error("it did not reconnect within {0:?}")]
    TimedOut(Duration),
}
