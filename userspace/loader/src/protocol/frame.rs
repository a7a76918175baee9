//! Frames after the hello: a kind byte, a little-endian u32 body length, and the body: a
//! postcard-encoded [`Control`], or a batch of pages (count, CRC-32, indices, data) whose
//! data the receiver reads straight into where it wants it.

use std::io::{Read, Write};

use muserload::PAGE_SIZE;

use super::{
    error::{broken, LinkError, ProtocolError},
    u32_at, Channel, Control,
};
use crate::memory::BATCH_PAGES;

/// A control frame's kind byte.
const KIND_CONTROL: u8 = 1;
/// A pages frame's kind byte.
const KIND_PAGES: u8 = 2;
/// The largest control frame (the machine state is the largest, some tens of KiB).
const CONTROL_MAX: u32 = 16 << 20;

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
    /// The CRC-32 of the indices and the data.
    crc: u32,
}

impl Frame {
    /// The frame's name, for errors: the message's, or "a batch of pages".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Control(control) => control.name(),
            Self::Pages(_) => "a batch of pages",
        }
    }
}

/// Sends a control message; returns the bytes sent.
pub fn send_control(w: &mut impl Write, control: &Control) -> Result<u64, LinkError> {
    let body = postcard::to_stdvec(control).map_err(LinkError::Encode)?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(KIND_CONTROL);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).map_err(broken("sending a message"))?;
    Ok(frame.len() as u64)
}

/// Sends a batch of pages, given as (index, data) pairs; returns the bytes sent.
pub fn send_pages(w: &mut impl Write, pages: &[(u64, &[u8])]) -> Result<u64, LinkError> {
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
    w.write_all(&head).map_err(broken("sending pages"))?;
    for (_, data) in pages {
        w.write_all(data).map_err(broken("sending pages"))?;
    }
    Ok((head.len() + pages.len() * PAGE_SIZE) as u64)
}

/// Receives the next frame on `channel` (for pages, up to their data).
pub fn recv_frame(r: &mut impl Read, channel: Channel) -> Result<Frame, LinkError> {
    let mut head = [0u8; 5];
    read_exact(r, &mut head, channel)?;
    let len = u32_at(&head, 1);
    match head[0] {
        KIND_CONTROL => {
            if len > CONTROL_MAX {
                return Err(ProtocolError::TooLarge {
                    channel,
                    len,
                    max: CONTROL_MAX,
                }
                .into());
            }
            let mut body = vec![0; len as usize];
            read_exact(r, &mut body, channel)?;
            let control = postcard::from_bytes(&body)
                .map_err(|source| ProtocolError::Undecodable { channel, source })?;
            Ok(Frame::Control(control))
        }
        KIND_PAGES => {
            let mut counts = [0u8; 8];
            read_exact(r, &mut counts, channel)?;
            let count = u32_at(&counts, 0) as usize;
            if count == 0 || count > BATCH_PAGES || len as usize != 8 + count * (8 + PAGE_SIZE) {
                return Err(ProtocolError::BatchSize {
                    channel,
                    count,
                    len,
                }
                .into());
            }
            let mut raw = vec![0u8; count * 8];
            read_exact(r, &mut raw, channel)?;
            let indices = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            Ok(Frame::Pages(Pages {
                indices,
                crc: u32_at(&counts, 4),
            }))
        }
        kind => Err(ProtocolError::FrameKind { channel, kind }.into()),
    }
}

impl Pages {
    /// Reads the batch's data, which came on `channel`, into `data` (exactly one page per
    /// index) and checks the CRC.
    pub fn read_data(
        &self,
        r: &mut impl Read,
        data: &mut [u8],
        channel: Channel,
    ) -> Result<(), LinkError> {
        read_exact(r, data, channel)?;
        let mut crc = crc32fast::Hasher::new();
        for index in &self.indices {
            crc.update(&index.to_le_bytes());
        }
        crc.update(data);
        if crc.finalize() != self.crc {
            return Err(ProtocolError::Checksum {
                channel,
                count: self.indices.len(),
            }
            .into());
        }
        Ok(())
    }

    /// Fails unless every page of the batch, which came on `channel`, is below `pages`.
    pub fn check_indices(&self, pages: u64, channel: Channel) -> Result<(), ProtocolError> {
        match self.indices.iter().find(|&&p| p >= pages) {
            Some(&page) => Err(ProtocolError::PagePastRam { channel, page }),
            None => Ok(()),
        }
    }

    /// The bytes this frame took on the wire.
    pub fn wire_size(&self) -> u64 {
        (13 + self.indices.len() * (8 + PAGE_SIZE)) as u64
    }
}

/// Reads exactly `buf` from `channel`.
fn read_exact(r: &mut impl Read, buf: &mut [u8], channel: Channel) -> Result<(), LinkError> {
    r.read_exact(buf).map_err(|source| LinkError::Disconnected {
        what: channel.name(),
        source,
    })
}

/// Flushes what `w` buffered onto the connection; `what` was being sent.
pub fn flush(w: &mut impl Write, what: &'static str) -> Result<(), LinkError> {
    w.flush().map_err(broken(what))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::{
        super::{testing::*, Kind},
        *,
    };
    use crate::bitmap::Bitmap;

    fn encode(control: &Control) -> Vec<u8> {
        postcard::to_stdvec(control).expect("encodable")
    }

    fn recv_control(bytes: &[u8]) -> Control {
        match recv_frame(&mut Cursor::new(bytes), Channel::Stream) {
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
            match recv_frame(&mut r, Channel::Stream) {
                Ok(Frame::Control(back)) => {
                    assert_eq!(back.name(), control.name());
                    assert_eq!(encode(&back), encode(&control));
                }
                Ok(Frame::Pages(_)) => panic!("pages instead of {}", control.name()),
                Err(e) => panic!("{e}"),
            }
        }
        // Nothing left: the next read is a clean end.
        assert_eq!(
            err(recv_frame(&mut r, Channel::Stream)),
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
            other => panic!("{}", other.name()),
        }
        match recv_control(&frame_of(&controls()[7])) {
            Control::SourceTimes {
                rounds,
                setup,
                downtime,
            } => assert_eq!((rounds, setup, downtime), (3, 1234, u64::MAX)),
            other => panic!("{}", other.name()),
        }
    }

    /// Version 3's bytes: a change here needs a new [`VERSION`].
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
                other => panic!("{}", other.name()),
            };
            assert_eq!(words, map.words());
        }
    }

    fn recv_pages(r: &mut impl Read, channel: Channel) -> Result<Pages, LinkError> {
        match recv_frame(r, channel)? {
            Frame::Pages(pages) => Ok(pages),
            Frame::Control(control) => panic!("{} instead of pages", control.name()),
        }
    }

    #[test]
    fn pages_frames_round_trip() {
        let sent = [(5, 0xa5), (0, 0), (1 << 40, 0xff)];
        let (wire, data) = pages_frame(&sent);
        let len = wire.len();
        let mut r = Cursor::new(wire);
        let pages = recv_pages(&mut r, Channel::Stream).expect("a batch");
        assert_eq!(pages.indices, [5, 0, 1 << 40]);
        assert_eq!(pages.wire_size(), len as u64);
        // Only the head is read: the data goes straight where the receiver wants it.
        assert_eq!(r.position(), 13 + 3 * 8);
        let mut back = vec![1u8; 3 * PAGE_SIZE];
        pages
            .read_data(&mut r, &mut back, Channel::Stream)
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
        let pages = recv_pages(&mut r, Channel::Stream).expect("a batch");
        assert_eq!(pages.indices.len(), BATCH_PAGES);
        let mut back = vec![0u8; BATCH_PAGES * PAGE_SIZE];
        pages
            .read_data(&mut r, &mut back, Channel::Stream)
            .expect("checked");
        assert_eq!(back, data);
    }

    /// Receives a batch of pages 3, 4 and 10 whose bit `bit` of byte `at` was flipped on
    /// the way, if any.
    fn recv_batch(flip: Option<(usize, u8)>) -> Result<Vec<u64>, LinkError> {
        let (mut wire, _) = pages_frame(&[(3, 0x11), (4, 0x22), (10, 0x33)]);
        if let Some((at, bit)) = flip {
            wire[at] ^= 1 << bit;
        }
        let mut r = Cursor::new(wire);
        let pages = recv_pages(&mut r, Channel::Requests)?;
        let mut data = vec![0u8; 3 * PAGE_SIZE];
        pages.read_data(&mut r, &mut data, Channel::Requests)?;
        Ok(pages.indices)
    }

    fn recv_flipped(at: usize, bit: u8) -> Result<Vec<u64>, LinkError> {
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
                err(recv_frame(&mut Cursor::new(wire), Channel::Stream)),
                format!("protocol error: stream: a batch of {count} pages in {len} bytes")
            );
        }
    }

    #[test]
    fn control_size_is_checked() {
        let mut wire = vec![KIND_CONTROL];
        wire.extend_from_slice(&(CONTROL_MAX + 1).to_le_bytes());
        assert_eq!(
            err(recv_frame(&mut Cursor::new(wire), Channel::Stream)),
            "protocol error: stream: a 16777217-byte message is larger than 16777216"
        );
        let mut wire = vec![KIND_CONTROL];
        wire.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            err(recv_frame(&mut Cursor::new(wire), Channel::Stream)),
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
            other => panic!("{}", other.name()),
        }
    }

    #[test]
    fn undecodable_messages_are_refused() {
        let frame = |body: &[u8]| {
            let mut wire = vec![KIND_CONTROL];
            wire.extend_from_slice(&(body.len() as u32).to_le_bytes());
            wire.extend_from_slice(body);
            err(recv_frame(&mut Cursor::new(wire), Channel::Stream))
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
                err(recv_frame(&mut Cursor::new(&wire[..]), Channel::Requests)),
                format!("protocol error: requests channel: unknown frame kind {kind}")
            );
        }
    }

    #[test]
    fn truncated_frames_are_disconnections() {
        let closed = format!("stream: {CLOSED}");
        // In the head.
        for wire in [&[][..], &[KIND_CONTROL, 1, 0][..]] {
            let result = recv_frame(&mut Cursor::new(wire), Channel::Stream);
            assert!(matches!(result, Err(LinkError::Disconnected { .. })));
            assert_eq!(err(result), closed);
        }
        // In a message's body.
        let mut wire = frame_of(&Control::Request {
            pages: vec![1, 2, 3],
        });
        wire.pop();
        assert_eq!(
            err(recv_frame(&mut Cursor::new(wire), Channel::Stream)),
            closed
        );
        // In a batch's count and checksum, in its indices, in its data.
        let (wire, _) = pages_frame(&[(1, 1), (2, 2)]);
        for cut in [8, 20] {
            assert_eq!(
                err(recv_frame(&mut Cursor::new(&wire[..cut]), Channel::Stream)),
                closed
            );
        }
        let mut r = Cursor::new(&wire[..wire.len() - 1]);
        let pages = recv_pages(&mut r, Channel::Stream).expect("the head");
        let mut data = vec![0u8; 2 * PAGE_SIZE];
        let result = pages.read_data(&mut r, &mut data, Channel::Stream);
        assert!(matches!(result, Err(LinkError::Disconnected { .. })));
        assert_eq!(err(result), closed);
    }
}
