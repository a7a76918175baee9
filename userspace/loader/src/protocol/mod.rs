//! The migration protocol: what the source and destination say over TCP.
//!
//! Two connections from the source to the destination's listening address, each opened
//! with a [`Channel`] hello that names the protocol (magic, version) and the channel:
//!
//! - the stream: the guest's size and the kind of migration, pre-copy rounds of pages (if
//!   any), the machine state (vCPUs, VM, devices), the zero-page map, the pages pre-copy
//!   sent that are stale again, then every page still missing in batches, then
//!   [`Control::StreamEnd`];
//! - the requests channel: the destination says [`Control::Ready`] once it has set up its
//!   RAM (the source pauses the guest only then), asks for the pages its vCPUs wait for, the
//!   source answers with batches there, ahead of the stream; the destination also says
//!   [`Control::Resumed`] (the source answers with the times it measured) and
//!   [`Control::Done`] (every page loaded: the source may exit).
//!
//! If either connection breaks in post-copy, the source reconnects both: its stream then
//! starts with [`Control::Resume`], and the destination answers on the requests channel
//! with [`Control::Missing`], the pages it has not loaded; the source sends those, and the
//! destination asks again for the pages its vCPUs wait on.
//!
//! After the hello, a frame is a kind byte and a little-endian u32 body length. A control
//! frame's body is a postcard-encoded [`Control`]. A pages frame's body is a u32 page
//! count, the CRC-32 of what follows, the pages' indices (u64 each) and their data, which
//! the receiver reads straight into its staging slots before checking the CRC.
//!
//! # The order: one state machine per receiver
//!
//! Every receiver is in one [`Phase`] at a time, which says which frames it takes next (the
//! tables below). The receivers in `destination/` and `source/` take each frame through
//! the phase's `expect_*` function (`expect.rs`), which receives it, checks what it must
//! hold, and refuses any other frame. A frame its receiver's phase does not take is a
//! protocol error ([`LinkError::Protocol`], "protocol error: ...", naming the channel, what
//! the phase takes and what came: `CHANNEL: expected WHAT, got FRAME`): the receiver stops,
//! and the migration ends with that one line. A connection that closes or breaks instead,
//! mid-frame included, is [`LinkError::Disconnected`]: before post-copy that ends the
//! migration too; in post-copy (from the discard map on) both sides wait for the source
//! to reconnect (phases marked *reconnection*). The messages quoted follow "protocol
//! error: ".
//!
//! **Hello** (every connection, before any frame). The source sends 16 bytes: [`MAGIC`],
//! [`VERSION`] (u32 LE), the [`Channel`] (u32 LE). The destination ([`accept_hello`])
//! answers 16 bytes and a reason: [`MAGIC`], its [`VERSION`] (u32 LE), the reason's length
//! (u32 LE), the reason (UTF-8; empty: accepted). Refusals:
//!
//! | what came | destination | source, reading the answer ([`hello_answer`]) |
//! |---|---|---|
//! | fewer than 16 bytes | `receiving the hello: the peer closed the connection mid-stream` (a disconnection, not a protocol error; no answer; on reconnection the destination waits for another connection instead) | `receiving the answer to the hello: ...` |
//! | other magic | `the peer does not speak the muserload migration protocol` (no answer) | the same, for an answer without our magic |
//! | other version | answers with the reason; `the peer refused the migration: the source speaks protocol version N, this destination 3` | the reason, as `the peer refused the migration: ...`; an answer of another version without a reason: `... the destination speaks protocol version N, this source 3` |
//! | unknown channel | answers with the reason; `the peer refused the migration: unknown channel N` | the reason |
//! | a channel already open (not on reconnection) | `the source opened a channel twice` | |
//!
//! **The stream**, received by the destination (`destination/arrival.rs`, then its
//! "stream" thread, `Loading::receive_stream` in `destination/intake.rs`). The source
//! receives nothing on it but the answer to its hello. FRAME below is the name of the
//! message that came (`Machine`, ...) or `a batch of pages`.
//!
//! | phase | legal frames, and what they must hold | next phase | anything else |
//! |---|---|---|---|
//! | *Memory* ([`expect_memory`]) | [`Control::Memory`]: 1 page to 64 GiB, whole pages | *PreCopy* | `stream: expected the guest's size (Memory), got FRAME`; `a guest of N bytes` |
//! | *PreCopy* ([`expect_precopy`]) | a batch (indices below the guest's pages; CRC), loaded at once (armed again first if it came before) | *PreCopy* | `stream: expected a pre-copy batch or the machine state (Machine), got FRAME`; `stream: page N past RAM`; `stream: checksum mismatch in a batch of N pages` |
//! | | [`Control::Machine`]: the size [`Control::Memory`] gave, 1 to 256 vCPUs | *ZeroMap* | `a machine of N bytes and M vCPUs`; `a machine of M vCPUs, more than 256` |
//! | *ZeroMap* ([`expect_zero_map`]) | [`Control::ZeroMap`]: `pages` the guest's, a valid bitmap ([`Bitmap::from_words`]) | *Discard* | `stream: expected the zero-page map (ZeroMap), got FRAME`; `stream: no valid zero-page map` |
//! | *Discard* ([`expect_discard`]) | [`Control::Discard`]: a valid bitmap (all clear but in hybrid) | *PostCopy* | `stream: expected the stale pre-copied pages (Discard), got FRAME`; `stream: no valid discard map` |
//! | *PostCopy* ([`expect_stream`]) | a batch (as in pre-copy; a page loaded already is counted as a duplicate; none in pre-copy, which sent every page before `Machine`) | *PostCopy* | `stream: expected a batch of pages or the stream's end (StreamEnd), got FRAME` |
//! | | [`Control::StreamEnd`] | *Ended* | |
//! | *Ended* | nothing: the destination reads the stream no more | | |
//! | *Resume* ([`expect_resume`]; *reconnection*, after the hello) | [`Control::Resume`] | *PostCopy* | `stream: expected a reconnection's start (Resume), got FRAME`, and the destination gives up on the source (`the connection to the source broke (...) and ...: the guest ... was stopped`) |
//!
//! **The requests channel, destination to source**, received by the source (`migrate` in
//! `source/migrate.rs`, `serve_requests` in `source/serve.rs`, and `resume` in
//! `source/link.rs` after a reconnection).
//!
//! | phase | legal frames | next phase | anything else |
//! |---|---|---|---|
//! | *Ready* ([`expect_ready`]) | [`Control::Ready`]: the destination's RAM is created and armed | *Serving* | `requests channel: expected the destination to be ready (Ready), got FRAME` |
//! | *Serving* ([`expect_serving`]) | [`Control::Request`]: pages below the guest's, each answered at once in batches of [`BATCH_PAGES`] on this channel | *Serving* | `requests channel: expected a page request (Request), Resumed or Done, got FRAME`; `requests channel: request for page N past RAM` |
//! | | [`Control::Resumed`], answered with [`Control::SourceTimes`] (the downtime is the first `Resumed`'s) | *Serving* | |
//! | | [`Control::Done`]: every page is loaded | *Ended* | |
//! | *Ended* | nothing: the source stops serving and exits | | |
//! | *Missing* ([`expect_missing`]; *reconnection*, after the hello answer) | [`Control::Missing`]: a valid bitmap of the pages to send again | *Serving* | `requests channel: expected the destination's missing pages (Missing), got FRAME`; `requests channel: no valid missing-page map` |
//!
//! **The requests channel, source to destination**, received by the destination's
//! "request-replies" thread (`Loading::receive_answers`), which starts once the destination
//! has the discard map, and again after each reconnection.
//!
//! | phase | legal frames | next phase | anything else |
//! |---|---|---|---|
//! | *Answers* ([`expect_answer`]) | a batch answering a [`Control::Request`] (checked as on the stream) | *Answers* | `requests channel: expected a batch of pages or the source's times (SourceTimes), got FRAME` |
//! | | [`Control::SourceTimes`] | *Answers* | |
//!
//! Once the destination has sent [`Control::Done`] it takes any error on either channel
//! (the source hanging up, or anything else) as the end of that channel.
//!
//! Every batch, in any phase that takes one, holds 1 to [`BATCH_PAGES`] pages and a length
//! that agrees with its count (`CHANNEL: a batch of N pages in L bytes`), page indices
//! below the guest's pages (`CHANNEL: page N past RAM`) and a CRC-32 that matches its
//! indices and data (`CHANNEL: checksum mismatch in a batch of N pages`), all checked
//! before any of it is loaded. A control message is at most `CONTROL_MAX` (16 MiB:
//! `CHANNEL: a N-byte message is larger than 16777216`) and decodable (`CHANNEL:
//! undecodable message: ...`); another frame kind is `CHANNEL: unknown frame kind N`.
//!
//! **Across the channels**, the order of a whole migration:
//!
//! 1. hello and answer on the stream, then on the requests channel;
//! 2. the source sends [`Control::Memory`] on the stream and sends nothing more there until
//!    the destination's [`Control::Ready`] (so the destination sets up its RAM before the
//!    downtime);
//! 3. pre-copy and hybrid: batches on the stream while the guest still runs at the source;
//! 4. the source pauses the guest and sends [`Control::Machine`], [`Control::ZeroMap`] and
//!    [`Control::Discard`] (all clear but in hybrid; pre-copy's last batches, sent while
//!    paused, came before [`Control::Machine`]);
//! 5. the destination starts reading the requests channel, restores the vCPUs, which may
//!    already fault and send [`Control::Request`]s, and resumes them with
//!    [`Control::Resumed`]; the source answers requests on the requests channel and
//!    [`Control::Resumed`] with [`Control::SourceTimes`] there, and streams every page not
//!    sent yet on the stream, then [`Control::StreamEnd`] (answers to requests may still
//!    follow on the requests channel);
//! 6. once every page is loaded the destination sends [`Control::Done`]; the source stops
//!    streaming and exits.
//!
//! After a connection breaks in post-copy the source opens both again (hello, answer),
//! sends [`Control::Resume`] on the new stream and waits for [`Control::Missing`] on the new
//! requests channel; the destination answers [`Control::Resume`] with
//! [`Control::Missing`], [`Control::Resumed`] (again: the first may have been lost) and a
//! [`Control::Request`] for the pages requested but not loaded, then goes on as in step 5.
//!
//! [`Bitmap::from_words`]: crate::bitmap::Bitmap::from_words
//! [`BATCH_PAGES`]: crate::memory::BATCH_PAGES

mod error;
mod expect;
mod frame;
mod hello;
#[cfg(test)]
mod testing;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use self::{
    error::{LinkError, ProtocolError},
    expect::{
        expect_answer, expect_discard, expect_memory, expect_missing, expect_precopy, expect_ready,
        expect_resume, expect_serving, expect_stream, expect_zero_map, Answer, Phase, PreCopy,
        Serving,
    },
    frame::{flush, send_control, send_pages, Pages},
    hello::{accept_hello, hello_answer, send_hello, tune},
};
use crate::vm::MachineState;

/// Opens every connection.
pub const MAGIC: [u8; 8] = *b"MUSERLD\0";
/// The protocol version this loader speaks.
pub const VERSION: u32 = 3;

/// Which connection a hello opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// State, zero map, background pages.
    Stream = 1,
    /// Page requests and their answers.
    Requests = 2,
}

impl Channel {
    /// The channel a hello names, if it is one.
    fn from_wire(n: u32) -> Option<Self> {
        match n {
            1 => Some(Self::Stream),
            2 => Some(Self::Requests),
            _ => None,
        }
    }

    /// The channel's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Requests => "requests channel",
        }
    }
}

/// The channel's name in messages.
impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the source migrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Kind {
    /// The guest moves at once; its memory follows, on demand and streamed.
    PostCopy,
    /// Memory first, in rounds while the guest runs, until what is left fits the downtime
    /// target; then the guest, with all of it.
    PreCopy,
    /// Some pre-copy rounds, then post-copy for what they did not settle.
    Hybrid,
}

/// Control messages.
#[derive(Serialize, Deserialize)]
pub enum Control {
    /// Source to destination, stream, first: the guest's RAM size and the migration's kind.
    /// Pre-copy batches may follow, before [`Control::Machine`].
    Memory {
        /// Bytes.
        ram_size: u64,
        /// The kind of migration.
        kind: Kind,
    },
    /// Destination to source, requests, first: its RAM is ready (created and armed).
    Ready,
    /// Source to destination, stream: everything but RAM.
    Machine(Box<MachineState>),
    /// Source to destination, stream: bit `i` of word `i / 64` is set if page `i` is zero.
    ZeroMap {
        /// Pages of guest RAM.
        pages: u64,
        /// The bitmap.
        words: Vec<u64>,
    },
    /// Source to destination, stream, after the zero map: pages the destination received
    /// in pre-copy that the guest has written since (bitmap as in `ZeroMap`): stale.
    Discard {
        /// The bitmap.
        words: Vec<u64>,
    },
    /// Source to destination, stream: every page that is not zero has been sent.
    StreamEnd,
    /// Destination to source, requests: send these pages first.
    Request {
        /// Page indices.
        pages: Vec<u64>,
    },
    /// Destination to source, requests: the guest runs at the destination.
    Resumed,
    /// Source to destination, requests: what the source measured, in microseconds.
    SourceTimes {
        /// Pre-copy rounds.
        rounds: u32,
        /// From connecting to pausing the guest.
        setup: u64,
        /// From pausing the guest to the destination's `Resumed`.
        downtime: u64,
    },
    /// Destination to source, requests: every page is loaded; the source may go.
    Done,
    /// Source to destination, stream, first after a reconnection in post-copy.
    Resume,
    /// Destination to source, requests, the answer to [`Control::Resume`]: the pages not
    /// loaded yet (bitmap as in `ZeroMap`), which the source sends again.
    Missing {
        /// The bitmap.
        words: Vec<u64>,
    },
}

impl Control {
    /// The message's name, for errors (`Control` has no `Debug`: the machine state has
    /// none).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Memory { .. } => "Memory",
            Self::Ready => "Ready",
            Self::Machine(_) => "Machine",
            Self::ZeroMap { .. } => "ZeroMap",
            Self::Discard { .. } => "Discard",
            Self::StreamEnd => "StreamEnd",
            Self::Request { .. } => "Request",
            Self::Resumed => "Resumed",
            Self::SourceTimes { .. } => "SourceTimes",
            Self::Done => "Done",
            Self::Resume => "Resume",
            Self::Missing { .. } => "Missing",
        }
    }
}

/// The little-endian u32 at `at` in `bytes`.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
