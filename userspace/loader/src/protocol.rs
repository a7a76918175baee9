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
//! Every receiver is in one phase at a time, which says which frames it takes next (the
//! tables below; the receivers in `destination/` and `source.rs` follow them in their
//! code, not yet through a type). A frame its receiver's phase does not take is a protocol
//! error ([`Error::Protocol`], "protocol error: ..."): the receiver stops, and the
//! migration ends with that one line. A connection that closes or breaks instead,
//! mid-frame included, is [`Error::Disconnected`]: before post-copy that ends the
//! migration too; in post-copy (from the discard map on) both sides wait for the source
//! to reconnect (phases marked *reconnection*). The messages quoted are the
//! ones `destination/` and `source.rs` give.
//!
//! **Hello** (every connection, before any frame). The source sends 16 bytes: [`MAGIC`],
//! [`VERSION`] (u32 LE), the [`Channel`] (u32 LE). The destination ([`accept_hello`])
//! answers 16 bytes and a reason: [`MAGIC`], its [`VERSION`] (u32 LE), the reason's length
//! (u32 LE), the reason (UTF-8; empty: accepted). Refusals:
//!
//! | what came | destination | source, reading the answer ([`hello_answer`]) |
//! |---|---|---|
//! | fewer than 16 bytes | `receiving the hello: the peer closed the connection mid-stream` (no answer; on reconnection the destination waits for another connection instead) | `receiving the answer to the hello: ...` |
//! | other magic | `the peer does not speak the muserload migration protocol` (no answer) | the same, for an answer without our magic |
//! | other version | answers with the reason; `the peer refused the migration: the source speaks protocol version N, this destination 2` | the reason, as `the peer refused the migration: ...`; an answer of another version without a reason: `... the destination speaks protocol version N, this source 2` |
//! | unknown channel | answers with the reason; `the peer refused the migration: unknown channel N` | the reason |
//! | a channel already open (not on reconnection) | `the source opened a channel twice` | |
//!
//! **The stream**, received by the destination (`destination/arrival.rs`, then its
//! "stream" thread, `Loading::receive_frames` in `destination/intake.rs`). The source
//! receives nothing on it but the answer to its hello.
//!
//! | phase | legal frames, and what they must hold | next phase | anything else |
//! |---|---|---|---|
//! | *Memory* | [`Control::Memory`]: 1 page to 64 GiB, whole pages | *PreCopy* | `the stream did not start with the guest's size`; `a guest of N bytes` |
//! | *PreCopy* | a batch (indices below the guest's pages; CRC), loaded at once (armed again first if it came before) | *PreCopy* | `stream: expected the machine` (a control message); `stream: page N past RAM`; `stream: checksum mismatch in a batch of N pages` |
//! | | [`Control::Machine`]: the size [`Control::Memory`] gave, at least one vCPU | *ZeroMap* | `a machine of N bytes and M vCPUs` |
//! | *ZeroMap* | [`Control::ZeroMap`]: `pages` the guest's, a valid bitmap ([`Bitmap::from_words`]) | *Discard* | `stream: no valid zero-page map` |
//! | *Discard* | [`Control::Discard`]: a valid bitmap (all clear but in hybrid) | *PostCopy* | `stream: no valid discard map` |
//! | *PostCopy* | a batch (as in pre-copy; a page loaded already is counted as a duplicate; none in pre-copy, which sent every page before `Machine`) | *PostCopy* | `stream: unexpected message` |
//! | | [`Control::StreamEnd`] | *Ended* | |
//! | *Ended* | nothing: the destination reads the stream no more | | |
//! | *Resume* (*reconnection*, after the hello) | [`Control::Resume`] | *PostCopy* | `a reconnected stream did not start with Resume`, and the destination gives up on the source (`the connection to the source broke (...) and ...: the guest ... was stopped`) |
//!
//! **The requests channel, destination to source**, received by the source (`source.rs`:
//! `migrate`, `serve_requests`, and `resume` after a reconnection).
//!
//! | phase | legal frames | next phase | anything else |
//! |---|---|---|---|
//! | *Ready* | [`Control::Ready`]: the destination's RAM is created and armed | *Serving* | `expected the destination to be ready` |
//! | *Serving* | [`Control::Request`]: pages below the guest's, each answered at once in batches of [`BATCH_PAGES`] on this channel | *Serving* | `unexpected message on the requests channel`; `request for page N past RAM` |
//! | | [`Control::Resumed`], answered with [`Control::SourceTimes`] (the downtime is the first `Resumed`'s) | *Serving* | |
//! | | [`Control::Done`]: every page is loaded | *Ended* | |
//! | *Ended* | nothing: the source stops serving and exits | | |
//! | *Missing* (*reconnection*, after the hello answer) | [`Control::Missing`]: a valid bitmap of the pages to send again | *Serving* | `expected the destination's missing pages` |
//!
//! **The requests channel, source to destination**, received by the destination's
//! "request-replies" thread (`Loading::receive_frames`), which starts once the destination
//! has the discard map, and again after each reconnection.
//!
//! | phase | legal frames | next phase | anything else |
//! |---|---|---|---|
//! | *Answers* | a batch answering a [`Control::Request`] (checked as on the stream) | *Answers* | `requests channel: unexpected message` |
//! | | [`Control::SourceTimes`] | *Answers* | |
//!
//! Once the destination has sent [`Control::Done`] it takes any error on either channel
//! (the source hanging up, or anything else) as the end of that channel.
//!
//! Every batch, in any phase that takes one, holds 1 to [`BATCH_PAGES`] pages and a length
//! that agrees with its count (`WHAT: a batch of N pages in L bytes`), page indices below
//! the guest's pages and a CRC-32 that matches its indices and data (`WHAT: checksum
//! mismatch in a batch of N pages`), all checked before any of it is loaded. A control
//! message is at most `CONTROL_MAX` (16 MiB: `WHAT: a N-byte message is larger than
//! 16777216`) and decodable (`WHAT: undecodable message: ...`); another frame kind is
//! `WHAT: unknown frame kind N`.
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

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use muserload::PAGE_SIZE;
use nix::sys::socket::{setsockopt, sockopt};
use serde::{Deserialize, Serialize};

use crate::{
    error::{net, Error, Result},
    memory::BATCH_PAGES,
    vm::MachineState,
};

/// Opens every connection.
pub const MAGIC: [u8; 8] = *b"MUSERLD\0";
/// The protocol version this loader speaks.
pub const VERSION: u32 = 2;

const KIND_CONTROL: u8 = 1;
const KIND_PAGES: u8 = 2;
/// The largest control frame (the machine state is the largest, some tens of KiB).
const CONTROL_MAX: u32 = 16 << 20;

/// Which connection a hello opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// State, zero map, background pages.
    Stream = 1,
    /// Page requests and their answers.
    Requests = 2,
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

/// A received frame.
pub enum Frame {
    /// A control message.
    Control(Control),
    /// A batch of pages whose data follows: read it with [`Pages::read_data`].
    Pages(Pages),
}

/// The head of a pages frame.
pub struct Pages {
    /// The pages' indices, in the order their data follows.
    pub indices: Vec<u64>,
    crc: u32,
}

/// Readies a connection of a migration: no Nagle delay (requests are small and urgent),
/// and a dead peer noticed within seconds (keepalive probes while idle, a timeout on
/// unacknowledged data) rather than after the system's default of minutes to hours.
pub fn tune(stream: &TcpStream) -> Result<()> {
    stream.set_nodelay(true).map_err(net("TCP_NODELAY"))?;
    let set = |result: nix::Result<()>, what| result.map_err(|e| net(what)(e.into()));
    set(
        setsockopt(stream, sockopt::KeepAlive, &true),
        "SO_KEEPALIVE",
    )?;
    set(setsockopt(stream, sockopt::TcpKeepIdle, &2), "TCP_KEEPIDLE")?;
    set(
        setsockopt(stream, sockopt::TcpKeepInterval, &1),
        "TCP_KEEPINTVL",
    )?;
    set(setsockopt(stream, sockopt::TcpKeepCount, &3), "TCP_KEEPCNT")?;
    set(
        setsockopt(stream, sockopt::TcpUserTimeout, &DEAD_PEER_MS),
        "TCP_USER_TIMEOUT",
    )
}

/// How long sent data may stay unacknowledged before the connection counts as broken.
const DEAD_PEER_MS: u32 = 5000;

/// The hello that opens a connection: magic, version, channel.
pub fn send_hello(w: &mut impl Write, channel: Channel) -> Result<()> {
    let mut hello = [0u8; 16];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8..12].copy_from_slice(&VERSION.to_le_bytes());
    hello[12..].copy_from_slice(&(channel as u32).to_le_bytes());
    w.write_all(&hello).map_err(net("sending the hello"))
}

/// Reads a hello and answers it: accepts our version, refuses any other (telling the
/// peer why) and returns an error.
pub fn accept_hello(stream: &mut (impl Read + Write)) -> Result<Channel> {
    let mut hello = [0u8; 16];
    stream
        .read_exact(&mut hello)
        .map_err(net("receiving the hello"))?;
    if hello[..8] != MAGIC {
        return Err(Error::Protocol(
            "the peer does not speak the muserload migration protocol".into(),
        ));
    }
    let version = u32_at(&hello, 8);
    let channel = match u32_at(&hello, 12) {
        1 => Ok(Channel::Stream),
        2 => Ok(Channel::Requests),
        other => Err(format!("unknown channel {other}")),
    };
    let refusal = if version != VERSION {
        Some(format!(
            "the source speaks protocol version {version}, this destination {VERSION}"
        ))
    } else {
        channel.as_ref().err().cloned()
    };
    let mut answer = Vec::with_capacity(16);
    answer.extend_from_slice(&MAGIC);
    answer.extend_from_slice(&VERSION.to_le_bytes());
    let reason = refusal.clone().unwrap_or_default();
    answer.extend_from_slice(&(reason.len() as u32).to_le_bytes());
    answer.extend_from_slice(reason.as_bytes());
    stream
        .write_all(&answer)
        .map_err(net("answering the hello"))?;
    match refusal {
        Some(reason) => Err(Error::Refused(reason)),
        None => channel.map_err(Error::Protocol),
    }
}

/// Reads the answer to our hello.
pub fn hello_answer(r: &mut impl Read) -> Result<()> {
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(net("receiving the answer to the hello"))?;
    if head[..8] != MAGIC {
        return Err(Error::Protocol(
            "the peer does not speak the muserload migration protocol".into(),
        ));
    }
    let (version, len) = (u32_at(&head, 8), u32_at(&head, 12));
    if len == 0 && version != VERSION {
        return Err(Error::Refused(format!(
            "the destination speaks protocol version {version}, this source {VERSION}"
        )));
    }
    if len == 0 {
        return Ok(());
    }
    let mut reason = vec![0; len.min(4096) as usize];
    r.read_exact(&mut reason)
        .map_err(net("receiving the answer to the hello"))?;
    Err(Error::Refused(
        String::from_utf8_lossy(&reason).into_owned(),
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Sends a control message; returns the bytes sent.
pub fn send_control(w: &mut impl Write, control: &Control) -> Result<u64> {
    let body = postcard::to_stdvec(control)
        .map_err(|e| Error::Protocol(format!("encoding a message: {e}")))?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(KIND_CONTROL);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).map_err(net("sending a message"))?;
    Ok(frame.len() as u64)
}

/// Sends a batch of pages, given as (index, data) pairs; returns the bytes sent.
pub fn send_pages(w: &mut impl Write, pages: &[(u64, &[u8])]) -> Result<u64> {
    debug_assert!(pages.len() <= BATCH_PAGES);
    let mut head = Vec::with_capacity(13 + pages.len() * 8);
    head.push(KIND_PAGES);
    head.extend_from_slice(&((8 + pages.len() * (8 + PAGE_SIZE)) as u32).to_le_bytes());
    head.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    let indices: Vec<u8> = pages.iter().flat_map(|(i, _)| i.to_le_bytes()).collect();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&indices);
    for (_, data) in pages {
        crc.update(data);
    }
    head.extend_from_slice(&crc.finalize().to_le_bytes());
    head.extend_from_slice(&indices);
    w.write_all(&head).map_err(net("sending pages"))?;
    for (_, data) in pages {
        w.write_all(data).map_err(net("sending pages"))?;
    }
    Ok((head.len() + pages.len() * PAGE_SIZE) as u64)
}

/// Receives the next frame (for pages, up to their data). `what` names the channel for
/// errors.
pub fn recv_frame(r: &mut impl Read, what: &'static str) -> Result<Frame> {
    let mut head = [0u8; 5];
    read_exact(r, &mut head, what)?;
    let len = u32_at(&head, 1);
    match head[0] {
        KIND_CONTROL => {
            if len > CONTROL_MAX {
                return Err(Error::Protocol(format!(
                    "{what}: a {len}-byte message is larger than {CONTROL_MAX}"
                )));
            }
            let mut body = vec![0; len as usize];
            read_exact(r, &mut body, what)?;
            postcard::from_bytes(&body)
                .map(Frame::Control)
                .map_err(|e| Error::Protocol(format!("{what}: undecodable message: {e}")))
        }
        KIND_PAGES => {
            let mut counts = [0u8; 8];
            read_exact(r, &mut counts, what)?;
            let count = u32_at(&counts, 0) as usize;
            if count == 0 || count > BATCH_PAGES || len as usize != 8 + count * (8 + PAGE_SIZE) {
                return Err(Error::Protocol(format!(
                    "{what}: a batch of {count} pages in {len} bytes"
                )));
            }
            let mut raw = vec![0u8; count * 8];
            read_exact(r, &mut raw, what)?;
            let indices = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            Ok(Frame::Pages(Pages {
                indices,
                crc: u32_at(&counts, 4),
            }))
        }
        kind => Err(Error::Protocol(format!(
            "{what}: unknown frame kind {kind}"
        ))),
    }
}

impl Pages {
    /// Reads the batch's data into `data` (exactly one page per index) and checks the CRC.
    pub fn read_data(&self, r: &mut impl Read, data: &mut [u8], what: &'static str) -> Result<()> {
        read_exact(r, data, what)?;
        let mut crc = crc32fast::Hasher::new();
        for index in &self.indices {
            crc.update(&index.to_le_bytes());
        }
        crc.update(data);
        if crc.finalize() != self.crc {
            return Err(Error::Protocol(format!(
                "{what}: checksum mismatch in a batch of {} pages",
                self.indices.len()
            )));
        }
        Ok(())
    }

    /// The bytes this frame took on the wire.
    pub fn wire_size(&self) -> u64 {
        (13 + self.indices.len() * (8 + PAGE_SIZE)) as u64
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<()> {
    r.read_exact(buf).map_err(net(what))
}

/// Flushes what `w` buffered onto the connection.
pub fn flush(w: &mut impl Write, what: &'static str) -> Result<()> {
    w.flush().map_err(net(what))
}

#[cfg(test)]
mod tests {
    use std::io::{self, Cursor};

    /// The name of a control message: `Control` has neither `Debug` nor `PartialEq` (the
    /// machine state has none).
    fn name(control: &Control) -> &'static str {
        match control {
            Control::Memory { .. } => "Memory",
            Control::Ready => "Ready",
            Control::Machine(_) => "Machine",
            Control::ZeroMap { .. } => "ZeroMap",
            Control::Discard { .. } => "Discard",
            Control::StreamEnd => "StreamEnd",
            Control::Request { .. } => "Request",
            Control::Resumed => "Resumed",
            Control::SourceTimes { .. } => "SourceTimes",
            Control::Done => "Done",
            Control::Resume => "Resume",
            Control::Missing { .. } => "Missing",
        }
    }

    use super::*;
    use crate::bitmap::Bitmap;

    /// A connection's far end: what the peer sent, and what we answer.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        fn new(input: Vec<u8>) -> Self {
            Self {
                input: Cursor::new(input),
                output: Vec::new(),
            }
        }
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn hello(magic: &[u8; 8], version: u32, channel: u32) -> Vec<u8> {
        [&magic[..], &version.to_le_bytes(), &channel.to_le_bytes()].concat()
    }

    fn answer(version: u32, reason: &str) -> Vec<u8> {
        [
            &MAGIC[..],
            &version.to_le_bytes(),
            &(reason.len() as u32).to_le_bytes(),
            reason.as_bytes(),
        ]
        .concat()
    }

    /// The error's line, as the loader prints it.
    fn err<T>(result: Result<T>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    const CLOSED: &str = "the peer closed the connection mid-stream";

    #[test]
    fn hello_is_magic_version_channel() {
        for (channel, n) in [(Channel::Stream, 1u32), (Channel::Requests, 2)] {
            let mut sent = Vec::new();
            send_hello(&mut sent, channel).expect("hello");
            assert_eq!(sent, hello(b"MUSERLD\0", 2, n));
        }
    }

    #[test]
    fn hello_accepted_for_each_channel() {
        for channel in [Channel::Stream, Channel::Requests] {
            let mut sent = Vec::new();
            send_hello(&mut sent, channel).expect("hello");
            let mut conn = Duplex::new(sent);
            assert_eq!(accept_hello(&mut conn).expect("accepted"), channel);
            // Our magic and version, no reason: accepted.
            assert_eq!(conn.output, answer(VERSION, ""));
            hello_answer(&mut Cursor::new(conn.output)).expect("an accepting answer");
        }
    }

    #[test]
    fn hello_with_other_magic_is_refused_without_an_answer() {
        let mut conn = Duplex::new(hello(b"GET / HT", VERSION, 1));
        assert_eq!(
            err(accept_hello(&mut conn)),
            "protocol error: the peer does not speak the muserload migration protocol"
        );
        assert!(conn.output.is_empty());
    }

    #[test]
    fn hello_of_other_version_is_refused_and_told_why() {
        let mut conn = Duplex::new(hello(&MAGIC, 3, 1));
        let why = "the source speaks protocol version 3, this destination 2";
        let refused = accept_hello(&mut conn);
        assert!(matches!(refused, Err(Error::Refused(_))));
        assert_eq!(
            err(refused),
            format!("the peer refused the migration: {why}")
        );
        assert_eq!(conn.output, answer(VERSION, why));
        // The source reads the reason and fails with it.
        assert_eq!(
            err(hello_answer(&mut Cursor::new(conn.output))),
            format!("the peer refused the migration: {why}")
        );
    }

    #[test]
    fn hello_for_unknown_channel_is_refused_and_told_why() {
        for n in [0, 3, u32::MAX] {
            let mut conn = Duplex::new(hello(&MAGIC, VERSION, n));
            let why = format!("unknown channel {n}");
            assert_eq!(
                err(accept_hello(&mut conn)),
                format!("the peer refused the migration: {why}")
            );
            assert_eq!(conn.output, answer(VERSION, &why));
            assert_eq!(
                err(hello_answer(&mut Cursor::new(conn.output))),
                format!("the peer refused the migration: {why}")
            );
        }
    }

    #[test]
    fn hello_of_other_version_and_channel_names_the_version() {
        let mut conn = Duplex::new(hello(&MAGIC, 1, 9));
        assert_eq!(
            err(accept_hello(&mut conn)),
            "the peer refused the migration: the source speaks protocol version 1, this \
             destination 2"
        );
    }

    #[test]
    fn truncated_hello_is_a_disconnection_without_an_answer() {
        for len in [0, 8, 15] {
            let mut conn = Duplex::new(hello(&MAGIC, VERSION, 1)[..len].to_vec());
            let refused = accept_hello(&mut conn);
            assert!(matches!(refused, Err(Error::Disconnected { .. })));
            assert_eq!(err(refused), format!("receiving the hello: {CLOSED}"));
            assert!(conn.output.is_empty());
        }
    }

    #[test]
    fn answer_to_the_hello_refusals() {
        let read = |bytes: Vec<u8>| err(hello_answer(&mut Cursor::new(bytes)));
        // Not ours at all.
        let mut foreign = answer(VERSION, "");
        foreign[0] = b'X';
        assert_eq!(
            read(foreign),
            "protocol error: the peer does not speak the muserload migration protocol"
        );
        // Another version that accepted us anyway: the source refuses.
        assert_eq!(
            read(answer(7, "")),
            "the peer refused the migration: the destination speaks protocol version 7, this \
             source 2"
        );
        // Cut short in the head, or in the reason.
        assert_eq!(
            read(answer(VERSION, "")[..12].to_vec()),
            format!("receiving the answer to the hello: {CLOSED}")
        );
        let mut cut = answer(VERSION, "unknown channel 3");
        cut.truncate(20);
        assert_eq!(
            read(cut),
            format!("receiving the answer to the hello: {CLOSED}")
        );
    }

    fn encode(control: &Control) -> Vec<u8> {
        postcard::to_stdvec(control).expect("encodable")
    }

    fn recv_control(bytes: &[u8]) -> Control {
        match recv_frame(&mut Cursor::new(bytes), "stream") {
            Ok(Frame::Control(control)) => control,
            Ok(Frame::Pages(_)) => panic!("pages instead of a message"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Every message but `Machine` (whose state needs a VM), with content.
    fn controls() -> Vec<Control> {
        vec![
            Control::Memory {
                ram_size: 256 << 20,
                kind: Kind::Hybrid,
            },
            Control::Ready,
            Control::ZeroMap {
                pages: 130,
                words: vec![u64::MAX, 0x8000_0000_0000_0001, 0b11],
            },
            Control::Discard {
                words: vec![0, 1 << 63],
            },
            Control::StreamEnd,
            Control::Request {
                pages: vec![0, 7, u64::MAX],
            },
            Control::Resumed,
            Control::SourceTimes {
                rounds: 3,
                setup: 1234,
                downtime: u64::MAX,
            },
            Control::Done,
            Control::Resume,
            Control::Missing { words: vec![5; 4] },
        ]
    }

    #[test]
    fn control_frames_round_trip() {
        let mut wire = Vec::new();
        let mut sent = 0;
        for control in controls() {
            let bytes = send_control(&mut wire, &control).expect("sent");
            let body = encode(&control);
            assert_eq!(bytes, 5 + body.len() as u64);
            sent += bytes;
        }
        assert_eq!(sent, wire.len() as u64);
        let mut r = Cursor::new(wire);
        for control in controls() {
            match recv_frame(&mut r, "stream") {
                Ok(Frame::Control(back)) => {
                    assert_eq!(name(&back), name(&control));
                    assert_eq!(encode(&back), encode(&control));
                }
                Ok(Frame::Pages(_)) => panic!("pages instead of {}", name(&control)),
                Err(e) => panic!("{e}"),
            }
        }
        // Nothing left: the next read is a clean end.
        assert_eq!(
            err(recv_frame(&mut r, "stream")),
            format!("stream: {CLOSED}")
        );
    }

    #[test]
    fn control_frames_keep_their_fields() {
        match recv_control(&frame_of(&controls()[0])) {
            Control::Memory { ram_size, kind } => {
                assert_eq!(ram_size, 256 << 20);
                assert_eq!(kind, Kind::Hybrid);
            }
            other => panic!("{}", name(&other)),
        }
        match recv_control(&frame_of(&controls()[7])) {
            Control::SourceTimes {
                rounds,
                setup,
                downtime,
            } => assert_eq!((rounds, setup, downtime), (3, 1234, u64::MAX)),
            other => panic!("{}", name(&other)),
        }
    }

    fn frame_of(control: &Control) -> Vec<u8> {
        let mut wire = Vec::new();
        send_control(&mut wire, control).expect("sent");
        wire
    }

    /// Version 2's bytes: a change here needs a new [`VERSION`].
    #[test]
    fn control_frames_on_the_wire() {
        assert_eq!(frame_of(&Control::Ready), [1, 1, 0, 0, 0, 1]);
        assert_eq!(frame_of(&Control::Done), [1, 1, 0, 0, 0, 9]);
        assert_eq!(
            frame_of(&Control::Memory {
                ram_size: 4096,
                kind: Kind::PreCopy
            }),
            // Variant 0, varint 4096, variant 1.
            [1, 4, 0, 0, 0, 0, 0x80, 0x20, 1]
        );
        assert_eq!(
            frame_of(&Control::Missing { words: vec![1, 0] }),
            [1, 4, 0, 0, 0, 11, 2, 1, 0]
        );
    }

    #[test]
    fn bitmaps_round_trip_through_control_frames() {
        let map = Bitmap::new(1000);
        for page in [0, 1, 63, 64, 500, 998, 999] {
            map.set(page);
        }
        let sent = Control::ZeroMap {
            pages: map.len(),
            words: map.words(),
        };
        let Control::ZeroMap { pages, words } = recv_control(&frame_of(&sent)) else {
            panic!("not a zero map");
        };
        let back = Bitmap::from_words(pages, &words).expect("a valid map");
        assert_eq!(
            back.ones().collect::<Vec<_>>(),
            [0, 1, 63, 64, 500, 998, 999]
        );
        for sent in [
            Control::Discard { words: map.words() },
            Control::Missing { words: map.words() },
        ] {
            let words = match recv_control(&frame_of(&sent)) {
                Control::Discard { words } | Control::Missing { words } => words,
                other => panic!("{}", name(&other)),
            };
            assert_eq!(words, map.words());
        }
    }

    /// `(index, byte)`: page `index` filled with `byte`.
    fn pages_frame(pages: &[(u64, u8)]) -> (Vec<u8>, Vec<u8>) {
        let data: Vec<Vec<u8>> = pages.iter().map(|&(_, b)| vec![b; PAGE_SIZE]).collect();
        let pairs: Vec<(u64, &[u8])> = pages
            .iter()
            .zip(&data)
            .map(|(&(i, _), d)| (i, &d[..]))
            .collect();
        let mut wire = Vec::new();
        let bytes = send_pages(&mut wire, &pairs).expect("sent");
        assert_eq!(bytes, wire.len() as u64);
        (wire, data.concat())
    }

    fn recv_pages(r: &mut impl Read, what: &'static str) -> Result<Pages> {
        match recv_frame(r, what)? {
            Frame::Pages(pages) => Ok(pages),
            Frame::Control(control) => panic!("{} instead of pages", name(&control)),
        }
    }

    #[test]
    fn pages_frames_round_trip() {
        let sent = [(5, 0xa5), (0, 0), (1 << 40, 0xff)];
        let (wire, data) = pages_frame(&sent);
        let len = wire.len();
        let mut r = Cursor::new(wire);
        let pages = recv_pages(&mut r, "stream").expect("a batch");
        assert_eq!(pages.indices, [5, 0, 1 << 40]);
        assert_eq!(pages.wire_size(), len as u64);
        // Only the head is read: the data goes straight where the receiver wants it.
        assert_eq!(r.position(), 13 + 3 * 8);
        let mut back = vec![1u8; 3 * PAGE_SIZE];
        pages
            .read_data(&mut r, &mut back, "stream")
            .expect("checked");
        assert_eq!(back, data);
        assert_eq!(r.position(), len as u64);
    }

    #[test]
    fn pages_frame_on_the_wire() {
        let (wire, data) = pages_frame(&[(2, 7), (9, 8)]);
        let indices = [2u64.to_le_bytes(), 9u64.to_le_bytes()].concat();
        assert_eq!(wire[0], 2);
        assert_eq!(u32_at(&wire, 1) as usize, 8 + 2 * (8 + PAGE_SIZE));
        assert_eq!(u32_at(&wire, 5), 2);
        assert_eq!(
            u32_at(&wire, 9),
            crc32fast::hash(&[&indices[..], &data].concat())
        );
        assert_eq!(wire[13..29], indices);
        assert_eq!(wire[29..], data);
    }

    #[test]
    fn a_full_batch_is_accepted() {
        let sent: Vec<(u64, u8)> = (0..BATCH_PAGES as u64).map(|i| (i, i as u8)).collect();
        let (wire, data) = pages_frame(&sent);
        let mut r = Cursor::new(wire);
        let pages = recv_pages(&mut r, "stream").expect("a batch");
        assert_eq!(pages.indices.len(), BATCH_PAGES);
        let mut back = vec![0u8; BATCH_PAGES * PAGE_SIZE];
        pages
            .read_data(&mut r, &mut back, "stream")
            .expect("checked");
        assert_eq!(back, data);
    }

    /// Receives a batch of pages 3, 4 and 10 whose bit `bit` of byte `at` was flipped on
    /// the way, if any.
    fn recv_batch(flip: Option<(usize, u8)>) -> Result<Vec<u64>> {
        let (mut wire, _) = pages_frame(&[(3, 0x11), (4, 0x22), (10, 0x33)]);
        if let Some((at, bit)) = flip {
            wire[at] ^= 1 << bit;
        }
        let mut r = Cursor::new(wire);
        let pages = recv_pages(&mut r, "requests channel")?;
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        pages.read_data(&mut r, &mut data, "requests channel")?;
        Ok(pages.indices)
    }

    fn recv_flipped(at: usize, bit: u8) -> Result<Vec<u64>> {
        recv_batch(Some((at, bit)))
    }

    const MISMATCH: &str =
        "protocol error: requests channel: checksum mismatch in a batch of 3 pages";

    #[test]
    fn a_flipped_bit_in_the_data_is_refused() {
        for at in [37, 37 + PAGE_SIZE + 100, 37 + 3 * PAGE_SIZE - 1] {
            for bit in [0, 7] {
                assert_eq!(err(recv_flipped(at, bit)), MISMATCH, "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn a_flipped_bit_in_the_indices_or_the_checksum_is_refused() {
        // Indices at 13..37 (page 3 becomes 2, page 10 becomes 10 + 2^63), CRC at 9..13.
        for (at, bit) in [(13, 0), (36, 7), (9, 0), (12, 7)] {
            assert_eq!(err(recv_flipped(at, bit)), MISMATCH, "byte {at} bit {bit}");
        }
        // Unflipped, the same batch passes.
        assert_eq!(recv_batch(None).expect("intact"), [3, 4, 10]);
        // A flipped bit in the head: another kind, or a length that disagrees.
        assert_eq!(
            err(recv_flipped(0, 0)),
            "protocol error: requests channel: unknown frame kind 3"
        );
        assert_eq!(
            err(recv_flipped(1, 0)),
            "protocol error: requests channel: a batch of 3 pages in 12321 bytes"
        );
        assert_eq!(
            err(recv_flipped(5, 2)),
            "protocol error: requests channel: a batch of 7 pages in 12320 bytes"
        );
    }

    fn pages_head(len: u32, count: u32) -> Vec<u8> {
        [
            &[KIND_PAGES][..],
            &len.to_le_bytes(),
            &count.to_le_bytes(),
            &[0; 4],
        ]
        .concat()
    }

    #[test]
    fn batch_sizes_are_checked() {
        let len_of = |count: u32| 8 + count * (8 + PAGE_SIZE as u32);
        for (len, count) in [
            (len_of(65), 65),
            (len_of(1000), 1000),
            (len_of(0), 0),
            (len_of(3), 2),
            (len_of(2), 3),
            (len_of(64) + 1, 64),
            (u32::MAX, u32::MAX),
        ] {
            let mut wire = pages_head(len, count);
            wire.resize(wire.len() + 64 * (8 + PAGE_SIZE), 0);
            assert_eq!(
                err(recv_frame(&mut Cursor::new(wire), "stream")),
                format!("protocol error: stream: a batch of {count} pages in {len} bytes")
            );
        }
    }

    #[test]
    fn control_size_is_checked() {
        let mut wire = vec![KIND_CONTROL];
        wire.extend_from_slice(&(CONTROL_MAX + 1).to_le_bytes());
        assert_eq!(
            err(recv_frame(&mut Cursor::new(wire), "stream")),
            "protocol error: stream: a 16777217-byte message is larger than 16777216"
        );
        let mut wire = vec![KIND_CONTROL];
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            err(recv_frame(&mut Cursor::new(wire), "stream")),
            "protocol error: stream: a 4294967295-byte message is larger than 16777216"
        );
    }

    #[test]
    fn a_message_of_control_max_bytes_is_accepted() {
        // A zero map of `n` words, `k` of them all ones (10 bytes each as varints, the
        // others 1), encoding into exactly CONTROL_MAX bytes.
        let target = CONTROL_MAX as usize;
        let varint = |n: usize| (usize::BITS - n.leading_zeros()).div_ceil(7).max(1) as usize;
        let (n, k) = (target / 10..)
            .find_map(|n| {
                let rest = target.checked_sub(2 + varint(n) + n)?;
                (rest % 9 == 0 && rest / 9 <= n).then_some((n, rest / 9))
            })
            .expect("a size");
        let mut words = vec![u64::MAX; k];
        words.resize(n, 0);
        let control = Control::ZeroMap { pages: 0, words };
        assert_eq!(encode(&control).len(), target);
        let mut wire = Vec::new();
        send_control(&mut wire, &control).expect("sent");
        match recv_control(&wire) {
            Control::ZeroMap { pages, words } => {
                assert_eq!(pages, 0);
                assert_eq!(words.len(), n);
                assert_eq!(words.iter().filter(|&&w| w == u64::MAX).count(), k);
            }
            other => panic!("{}", name(&other)),
        }
    }

    #[test]
    fn undecodable_messages_are_refused() {
        let frame = |body: &[u8]| {
            let mut wire = vec![KIND_CONTROL];
            wire.extend_from_slice(&(body.len() as u32).to_le_bytes());
            wire.extend_from_slice(body);
            err(recv_frame(&mut Cursor::new(wire), "stream"))
        };
        // No such message (12 is one past `Missing`).
        assert_eq!(
            frame(&[12]),
            "protocol error: stream: undecodable message: Serde Deserialization Error"
        );
        // Empty, or cut in a field: a zero map whose bitmap claims 3 words and has 1.
        let short = "protocol error: stream: undecodable message: Hit the end of buffer, expected \
                     more data";
        assert_eq!(frame(&[]), short);
        assert_eq!(frame(&[3, 130, 1, 3, 0]), short);
        // An unfinished varint.
        assert_eq!(frame(&[0, 0x80]), short);
        // A migration kind that does not exist.
        assert_eq!(
            frame(&[0, 1, 3]),
            "protocol error: stream: undecodable message: Serde Deserialization Error"
        );
    }

    #[test]
    fn unknown_frame_kinds_are_refused() {
        for kind in [0u8, 3, 255] {
            let wire = [kind, 1, 0, 0, 0, 1];
            assert_eq!(
                err(recv_frame(&mut Cursor::new(&wire[..]), "requests channel")),
                format!("protocol error: requests channel: unknown frame kind {kind}")
            );
        }
    }

    #[test]
    fn truncated_frames_are_disconnections() {
        let closed = format!("stream: {CLOSED}");
        // In the head.
        for wire in [&[][..], &[KIND_CONTROL, 1, 0][..]] {
            let result = recv_frame(&mut Cursor::new(wire), "stream");
            assert!(matches!(result, Err(Error::Disconnected { .. })));
            assert_eq!(err(result), closed);
        }
        // In a message's body.
        let mut wire = frame_of(&Control::Request {
            pages: vec![1, 2, 3],
        });
        wire.pop();
        assert_eq!(err(recv_frame(&mut Cursor::new(wire), "stream")), closed);
        // In a batch's count and checksum, in its indices, in its data.
        let (wire, _) = pages_frame(&[(1, 1), (2, 2)]);
        for cut in [8, 20] {
            assert_eq!(
                err(recv_frame(&mut Cursor::new(&wire[..cut]), "stream")),
                closed
            );
        }
        let mut r = Cursor::new(&wire[..wire.len() - 1]);
        let pages = recv_pages(&mut r, "stream").expect("the head");
        let mut data = vec![0u8; 2 * PAGE_SIZE];
        let result = pages.read_data(&mut r, &mut data, "stream");
        assert!(matches!(result, Err(Error::Disconnected { .. })));
        assert_eq!(err(result), closed);
    }
}
