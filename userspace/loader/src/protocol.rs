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
