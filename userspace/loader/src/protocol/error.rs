//! What goes wrong on a migration's connections: the connection breaks, the peer breaks
//! the protocol, or one side refuses the other.

use std::io;

use super::{Channel, Phase, VERSION};

/// A failure to send or receive on a connection of a migration.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection closed, was reset or timed out. In post-copy both sides then wait
    /// for the source to reconnect.
    #[error("{what}: {}", why_broken(.source))]
    Disconnected {
        /// What was being sent or received.
        what: &'static str,
        /// The socket's error.
        #[source]
        source: io::Error,
    },
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// A message could not be encoded.
    #[error("protocol error: encoding a message: {0}")]
    Encode(#[source] postcard::Error),
    /// One side refused the other in the hello.
    #[error("the peer refused the migration: {0}")]
    Refused(#[from] Refusal),
}

/// `map_err` helper for the sockets of a migration: a failure is a
/// [`LinkError::Disconnected`].
pub(super) fn broken(what: &'static str) -> impl FnOnce(io::Error) -> LinkError {
    move |source| LinkError::Disconnected { what, source }
}

/// Why a connection broke, in words: an unexpected end of file is the peer closing it.
fn why_broken(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "the peer closed the connection mid-stream".into()
    } else {
        e.to_string()
    }
}

/// How the peer broke the protocol (see the module's tables).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A hello, or the answer to one, without our magic.
    #[error("the peer does not speak the muserload migration protocol")]
    NotOurs,
    /// A channel opened twice (not on a reconnection).
    #[error("the source opened a channel twice")]
    ChannelTwice,
    /// A frame of a kind that does not exist.
    #[error("{channel}: unknown frame kind {kind}")]
    FrameKind {
        /// Where it came.
        channel: Channel,
        /// Its kind byte.
        kind: u8,
    },
    /// A control message larger than the protocol allows.
    #[error("{channel}: a {len}-byte message is larger than {max}")]
    TooLarge {
        /// Where it came.
        channel: Channel,
        /// Its length.
        len: u32,
        /// The largest allowed.
        max: u32,
    },
    /// A control message that does not decode.
    #[error("{channel}: undecodable message: {source}")]
    Undecodable {
        /// Where it came.
        channel: Channel,
        /// Why it does not decode.
        #[source]
        source: postcard::Error,
    },
    /// A batch whose page count or length is wrong.
    #[error("{channel}: a batch of {count} pages in {len} bytes")]
    BatchSize {
        /// Where it came.
        channel: Channel,
        /// The pages it announced.
        count: usize,
        /// Its length.
        len: u32,
    },
    /// A batch whose checksum does not match its indices and data.
    #[error("{channel}: checksum mismatch in a batch of {count} pages")]
    Checksum {
        /// Where it came.
        channel: Channel,
        /// Its pages.
        count: usize,
    },
    /// A batch with a page beyond the guest's RAM.
    #[error("{channel}: page {page} past RAM")]
    PagePastRam {
        /// Where it came.
        channel: Channel,
        /// The page.
        page: u64,
    },
    /// A request for a page beyond the guest's RAM.
    #[error("{}: request for page {page} past RAM", Channel::Requests)]
    RequestPastRam {
        /// The page.
        page: u64,
    },
    /// A frame its receiver's phase does not take.
    #[error("{}: expected {}, got {came}", .phase.channel(), .phase.expects())]
    Unexpected {
        /// The receiver's phase.
        phase: Phase,
        /// The name of what came (a message's, or "a batch of pages").
        came: &'static str,
    },
    /// A guest size the destination does not take.
    #[error("a guest of {ram_size} bytes")]
    GuestSize {
        /// Its size in bytes.
        ram_size: u64,
    },
    /// A machine state that does not fit the guest.
    #[error("a machine of {ram_size} bytes and {vcpus} vCPUs")]
    Machine {
        /// The RAM size it gives.
        ram_size: u64,
        /// Its vCPUs.
        vcpus: usize,
    },
    /// The destination said every page is loaded, but never that the guest runs there.
    #[error("the destination finished without resuming")]
    NeverResumed,
    /// A machine state with more vCPUs than vCPU ids go.
    #[error("a machine of {vcpus} vCPUs, more than {max}")]
    TooManyVcpus {
        /// Its vCPUs.
        vcpus: usize,
        /// The most there may be.
        max: usize,
    },
    /// A bitmap of pages that is not one of the guest's.
    #[error("{}: no valid {map} map", .phase.channel())]
    InvalidMap {
        /// The receiver's phase.
        phase: Phase,
        /// Which map ("zero-page", ...).
        map: &'static str,
    },
}

/// Why a hello was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The source speaks another version (the destination refuses it).
    #[error("the source speaks protocol version {0}, this destination {VERSION}")]
    SourceVersion(u32),
    /// The destination speaks another version and did not refuse us (the source does).
    #[error("the destination speaks protocol version {0}, this source {VERSION}")]
    DestinationVersion(u32),
    /// The hello named a channel that does not exist.
    #[error("unknown channel {0}")]
    UnknownChannel(u32),
    /// The destination refused us, in its words.
    #[error("{0}")]
    ByPeer(String),
}
