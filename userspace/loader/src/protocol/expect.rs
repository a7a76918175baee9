//! The order of the frames, enforced where they are received: one function per receiver
//! [`Phase`] (the tables of the module's documentation) receives the next frame, checks
//! what it must hold, and refuses any frame the phase does not take, naming what the phase
//! expected and what came.

use std::io::Read;

use muserload::PAGE_SIZE;

use super::{
    error::{LinkError, ProtocolError},
    frame::{recv_frame, Frame},
    Channel, Control, Kind, Pages,
};
use crate::{bitmap::Bitmap, vm::MachineState};

/// The largest guest a destination takes.
const RAM_MAX: u64 = 64 << 30;
/// A page's size, as guest sizes count it.
const PAGE: u64 = PAGE_SIZE as u64;
/// The most vCPUs a machine has: a vCPU's id is a byte.
const MAX_VCPUS: usize = u8::MAX as usize + 1;

/// A receiver's phase: which frames it takes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The stream, first: the guest's size.
    Memory,
    /// The stream: pre-copy's batches, until the machine state.
    PreCopy,
    /// The stream: the zero-page map.
    ZeroMap,
    /// The stream: the pre-copied pages that are stale.
    Discard,
    /// The stream: post-copy's batches, until its end.
    PostCopy,
    /// The stream, first after a reconnection.
    Resume,
    /// The requests channel at the source, first: the destination is ready.
    Ready,
    /// The requests channel at the source: requests, `Resumed`, `Done`.
    Serving,
    /// The requests channel at the source, first after a reconnection.
    Missing,
    /// The requests channel at the destination: answers to requests, the source's times.
    Answers,
}

impl Phase {
    /// The channel its frames come on.
    pub fn channel(self) -> Channel {
        match self {
            Self::Memory
            | Self::PreCopy
            | Self::ZeroMap
            | Self::Discard
            | Self::PostCopy
            | Self::Resume => Channel::Stream,
            Self::Ready | Self::Serving | Self::Missing | Self::Answers => Channel::Requests,
        }
    }

    /// What it takes, in words, for errors.
    pub fn expects(self) -> &'static str {
        match self {
            Self::Memory => "the guest's size (Memory)",
            Self::PreCopy => "a pre-copy batch or the machine state (Machine)",
            Self::ZeroMap => "the zero-page map (ZeroMap)",
            Self::Discard => "the stale pre-copied pages (Discard)",
            Self::PostCopy => "a batch of pages or the stream's end (StreamEnd)",
            Self::Resume => "a reconnection's start (Resume)",
            Self::Ready => "the destination to be ready (Ready)",
            Self::Serving => "a page request (Request), Resumed or Done",
            Self::Missing => "the destination's missing pages (Missing)",
            Self::Answers => "a batch of pages or the source's times (SourceTimes)",
        }
    }
}

/// What the stream brings in [`Phase::PreCopy`].
pub enum PreCopy {
    /// A batch of pages, whose data follows.
    Batch(Pages),
    /// The machine state, which ends the phase.
    Machine(Box<MachineState>),
}

/// What the requests channel brings the source in [`Phase::Serving`].
pub enum Serving {
    /// Send these pages first.
    Request(Vec<u64>),
    /// The guest runs at the destination.
    Resumed,
    /// Every page is loaded, which ends the phase.
    Done,
}

/// What the requests channel brings the destination in [`Phase::Answers`].
pub enum Answer {
    /// A batch of requested pages, whose data follows.
    Batch(Pages),
    /// What the source measured, in microseconds.
    SourceTimes {
        /// Pre-copy rounds.
        rounds: u32,
        /// From connecting to pausing the guest.
        setup: u64,
        /// From pausing the guest to the destination's `Resumed`.
        downtime: u64,
    },
}

/// Receives the next frame in `phase`: `take` makes of it what the phase takes, or gives
/// it back if the phase does not take it.
fn receive<T>(
    r: &mut impl Read,
    phase: Phase,
    take: impl FnOnce(Frame) -> Result<T, Frame>,
) -> Result<T, LinkError> {
    take(recv_frame(r, phase.channel())?).map_err(|frame| {
        ProtocolError::Unexpected {
            phase,
            came: frame.name(),
        }
        .into()
    })
}

/// A bitmap of `pages` from `words`, or the error of a phase whose `map` it is.
fn bitmap(pages: u64, words: &[u64], phase: Phase, map: &'static str) -> Result<Bitmap, LinkError> {
    Bitmap::from_words(pages, words).ok_or_else(|| ProtocolError::InvalidMap { phase, map }.into())
}

/// [`Phase::Memory`]: the guest's size (whole pages, 1 page to 64 GiB) and the kind of
/// migration.
pub fn expect_memory(r: &mut impl Read) -> Result<(u64, Kind), LinkError> {
    let (ram_size, kind) = receive(r, Phase::Memory, |frame| match frame {
        Frame::Control(Control::Memory { ram_size, kind }) => Ok((ram_size, kind)),
        other => Err(other),
    })?;
    if ram_size == 0 || ram_size % PAGE != 0 || ram_size > RAM_MAX {
        return Err(ProtocolError::GuestSize { ram_size }.into());
    }
    Ok((ram_size, kind))
}

/// [`Phase::PreCopy`] of a guest of `ram_size` bytes: a batch (its pages checked against
/// the guest's), or the machine state (of that size, with 1 to [`MAX_VCPUS`] vCPUs).
pub fn expect_precopy(r: &mut impl Read, ram_size: u64) -> Result<PreCopy, LinkError> {
    let frame = receive(r, Phase::PreCopy, |frame| match frame {
        Frame::Pages(batch) => Ok(PreCopy::Batch(batch)),
        Frame::Control(Control::Machine(machine)) => Ok(PreCopy::Machine(machine)),
        other => Err(other),
    })?;
    match &frame {
        PreCopy::Batch(batch) => batch.check_indices(ram_size / PAGE, Channel::Stream)?,
        PreCopy::Machine(machine) => {
            if machine.ram_size != ram_size || machine.vcpus.is_empty() {
                return Err(ProtocolError::Machine {
                    ram_size: machine.ram_size,
                    vcpus: machine.vcpus.len(),
                }
                .into());
            }
            if machine.vcpus.len() > MAX_VCPUS {
                return Err(ProtocolError::TooManyVcpus {
                    vcpus: machine.vcpus.len(),
                    max: MAX_VCPUS,
                }
                .into());
            }
        }
    }
    Ok(frame)
}

/// [`Phase::ZeroMap`] of a guest of `pages`: its zero pages.
pub fn expect_zero_map(r: &mut impl Read, pages: u64) -> Result<Bitmap, LinkError> {
    let (n, words) = receive(r, Phase::ZeroMap, |frame| match frame {
        Frame::Control(Control::ZeroMap { pages, words }) => Ok((pages, words)),
        other => Err(other),
    })?;
    // A map of another guest's size is no map of this one, even if its words would fit.
    let words = if n == pages { words } else { Vec::new() };
    bitmap(pages, &words, Phase::ZeroMap, "zero-page")
}

/// [`Phase::Discard`] of a guest of `pages`: the pre-copied pages that are stale.
pub fn expect_discard(r: &mut impl Read, pages: u64) -> Result<Bitmap, LinkError> {
    let words = receive(r, Phase::Discard, |frame| match frame {
        Frame::Control(Control::Discard { words }) => Ok(words),
        other => Err(other),
    })?;
    bitmap(pages, &words, Phase::Discard, "discard")
}

/// [`Phase::PostCopy`] of a guest of `pages`: a batch (its pages checked), or `None` at
/// the stream's end.
pub fn expect_stream(r: &mut impl Read, pages: u64) -> Result<Option<Pages>, LinkError> {
    let batch = receive(r, Phase::PostCopy, |frame| match frame {
        Frame::Pages(batch) => Ok(Some(batch)),
        Frame::Control(Control::StreamEnd) => Ok(None),
        other => Err(other),
    })?;
    if let Some(batch) = &batch {
        batch.check_indices(pages, Channel::Stream)?;
    }
    Ok(batch)
}

/// [`Phase::Resume`]: a reconnected stream's first frame.
pub fn expect_resume(r: &mut impl Read) -> Result<(), LinkError> {
    receive(r, Phase::Resume, |frame| match frame {
        Frame::Control(Control::Resume) => Ok(()),
        other => Err(other),
    })
}

/// [`Phase::Ready`]: the destination has set up its RAM.
pub fn expect_ready(r: &mut impl Read) -> Result<(), LinkError> {
    receive(r, Phase::Ready, |frame| match frame {
        Frame::Control(Control::Ready) => Ok(()),
        other => Err(other),
    })
}

/// [`Phase::Serving`] of a guest of `pages`: a request (for pages of the guest's),
/// `Resumed` or `Done`.
pub fn expect_serving(r: &mut impl Read, pages: u64) -> Result<Serving, LinkError> {
    let serving = receive(r, Phase::Serving, |frame| match frame {
        Frame::Control(Control::Request { pages }) => Ok(Serving::Request(pages)),
        Frame::Control(Control::Resumed) => Ok(Serving::Resumed),
        Frame::Control(Control::Done) => Ok(Serving::Done),
        other => Err(other),
    })?;
    if let Serving::Request(wanted) = &serving {
        if let Some(&page) = wanted.iter().find(|&&p| p >= pages) {
            return Err(ProtocolError::RequestPastRam { page }.into());
        }
    }
    Ok(serving)
}

/// [`Phase::Missing`] of a guest of `pages`: the pages the destination has not loaded.
pub fn expect_missing(r: &mut impl Read, pages: u64) -> Result<Bitmap, LinkError> {
    let words = receive(r, Phase::Missing, |frame| match frame {
        Frame::Control(Control::Missing { words }) => Ok(words),
        other => Err(other),
    })?;
    bitmap(pages, &words, Phase::Missing, "missing-page")
}

/// [`Phase::Answers`] of a guest of `pages`: a batch (its pages checked), or the source's
/// times.
pub fn expect_answer(r: &mut impl Read, pages: u64) -> Result<Answer, LinkError> {
    let answer = receive(r, Phase::Answers, |frame| match frame {
        Frame::Pages(batch) => Ok(Answer::Batch(batch)),
        Frame::Control(Control::SourceTimes {
            rounds,
            setup,
            downtime,
        }) => Ok(Answer::SourceTimes {
            rounds,
            setup,
            downtime,
        }),
        other => Err(other),
    })?;
    if let Answer::Batch(batch) = &answer {
        batch.check_indices(pages, Channel::Requests)?;
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::{super::testing::*, *};

    /// A guest of 4 pages.
    const PAGES: u64 = 4;
    const RAM: u64 = PAGES * PAGE;

    /// `frames`, one after the other, to receive.
    fn wire(frames: &[Vec<u8>]) -> Cursor<Vec<u8>> {
        Cursor::new(frames.concat())
    }

    fn memory(ram_size: u64) -> Vec<u8> {
        frame_of(&Control::Memory {
            ram_size,
            kind: Kind::Hybrid,
        })
    }

    fn zero_map(pages: u64, words: Vec<u64>) -> Vec<u8> {
        frame_of(&Control::ZeroMap { pages, words })
    }

    fn discard(words: Vec<u64>) -> Vec<u8> {
        frame_of(&Control::Discard { words })
    }

    /// A batch of page `page`, and its data.
    fn batch(page: u64) -> (Vec<u8>, Vec<u8>) {
        pages_frame(&[(page, 0x5a)])
    }

    /// Reads `batch`'s data from `r` and returns its pages.
    fn pages_of(batch: &Pages, r: &mut Cursor<Vec<u8>>, channel: Channel) -> Vec<u64> {
        let mut data = vec![0; batch.indices.len() * PAGE_SIZE];
        batch.read_data(r, &mut data, channel).expect("its data");
        batch.indices.clone()
    }

    #[test]
    fn the_stream_in_order_is_taken() {
        let (pages, _) = batch(1);
        let mut r = wire(&[
            memory(RAM),
            pages.clone(),
            zero_map(PAGES, vec![0b1000]),
            discard(vec![0b10]),
            pages,
            frame_of(&Control::StreamEnd),
        ]);
        assert_eq!(expect_memory(&mut r).expect("Memory"), (RAM, Kind::Hybrid));
        match expect_precopy(&mut r, RAM).expect("a batch") {
            PreCopy::Batch(batch) => assert_eq!(pages_of(&batch, &mut r, Channel::Stream), [1]),
            PreCopy::Machine(_) => panic!("a machine"),
        }
        let zero = expect_zero_map(&mut r, PAGES).expect("ZeroMap");
        assert_eq!(zero.ones().collect::<Vec<_>>(), [3]);
        let stale = expect_discard(&mut r, PAGES).expect("Discard");
        assert_eq!(stale.ones().collect::<Vec<_>>(), [1]);
        let batch = expect_stream(&mut r, PAGES)
            .expect("a batch")
            .expect("not the end");
        assert_eq!(pages_of(&batch, &mut r, Channel::Stream), [1]);
        assert!(expect_stream(&mut r, PAGES).expect("StreamEnd").is_none());
        expect_resume(&mut wire(&[frame_of(&Control::Resume)])).expect("Resume");
    }

    #[test]
    fn the_requests_channel_in_order_is_taken() {
        let mut r = wire(&[
            frame_of(&Control::Ready),
            frame_of(&Control::Request { pages: vec![3, 0] }),
            frame_of(&Control::Resumed),
            frame_of(&Control::Done),
            frame_of(&Control::Missing { words: vec![0b110] }),
        ]);
        expect_ready(&mut r).expect("Ready");
        match expect_serving(&mut r, PAGES).expect("Request") {
            Serving::Request(pages) => assert_eq!(pages, [3, 0]),
            _ => panic!("not the request"),
        }
        assert!(matches!(
            expect_serving(&mut r, PAGES),
            Ok(Serving::Resumed)
        ));
        assert!(matches!(expect_serving(&mut r, PAGES), Ok(Serving::Done)));
        let missing = expect_missing(&mut r, PAGES).expect("Missing");
        assert_eq!(missing.ones().collect::<Vec<_>>(), [1, 2]);

        let (pages, _) = batch(2);
        let times = Control::SourceTimes {
            rounds: 2,
            setup: 30,
            downtime: 400,
        };
        let mut r = wire(&[pages, frame_of(&times)]);
        match expect_answer(&mut r, PAGES).expect("a batch") {
            Answer::Batch(batch) => assert_eq!(pages_of(&batch, &mut r, Channel::Requests), [2]),
            Answer::SourceTimes { .. } => panic!("not the batch"),
        }
        match expect_answer(&mut r, PAGES).expect("SourceTimes") {
            Answer::SourceTimes {
                rounds,
                setup,
                downtime,
            } => assert_eq!((rounds, setup, downtime), (2, 30, 400)),
            Answer::Batch(_) => panic!("not the times"),
        }
    }

    /// Receives `frame` in phase `phase` (of a guest of [`PAGES`]) and returns the error.
    fn refused(phase: Phase, frame: Vec<u8>) -> String {
        let r = &mut Cursor::new(frame);
        match phase {
            Phase::Memory => err(expect_memory(r).map(drop)),
            Phase::PreCopy => err(expect_precopy(r, RAM).map(drop)),
            Phase::ZeroMap => err(expect_zero_map(r, PAGES).map(drop)),
            Phase::Discard => err(expect_discard(r, PAGES).map(drop)),
            Phase::PostCopy => err(expect_stream(r, PAGES).map(drop)),
            Phase::Resume => err(expect_resume(r)),
            Phase::Ready => err(expect_ready(r)),
            Phase::Serving => err(expect_serving(r, PAGES).map(drop)),
            Phase::Missing => err(expect_missing(r, PAGES).map(drop)),
            Phase::Answers => err(expect_answer(r, PAGES).map(drop)),
        }
    }

    #[test]
    fn a_frame_out_of_order_is_refused_naming_what_was_expected_and_what_came() {
        let (pages, _) = batch(0);
        for (phase, frame, message) in [
            (
                Phase::Memory,
                frame_of(&Control::Ready),
                "stream: expected the guest's size (Memory), got Ready",
            ),
            (
                Phase::Memory,
                pages.clone(),
                "stream: expected the guest's size (Memory), got a batch of pages",
            ),
            (
                Phase::PreCopy,
                zero_map(PAGES, vec![0]),
                "stream: expected a pre-copy batch or the machine state (Machine), got ZeroMap",
            ),
            (
                Phase::ZeroMap,
                discard(vec![0]),
                "stream: expected the zero-page map (ZeroMap), got Discard",
            ),
            (
                Phase::ZeroMap,
                pages.clone(),
                "stream: expected the zero-page map (ZeroMap), got a batch of pages",
            ),
            (
                Phase::Discard,
                zero_map(PAGES, vec![0]),
                "stream: expected the stale pre-copied pages (Discard), got ZeroMap",
            ),
            (
                Phase::PostCopy,
                memory(RAM),
                "stream: expected a batch of pages or the stream's end (StreamEnd), got Memory",
            ),
            (
                Phase::Resume,
                pages.clone(),
                "stream: expected a reconnection's start (Resume), got a batch of pages",
            ),
            (
                Phase::Ready,
                frame_of(&Control::Request { pages: vec![1] }),
                "requests channel: expected the destination to be ready (Ready), got Request",
            ),
            (
                Phase::Serving,
                frame_of(&Control::StreamEnd),
                "requests channel: expected a page request (Request), Resumed or Done, got \
                 StreamEnd",
            ),
            (
                Phase::Serving,
                pages,
                "requests channel: expected a page request (Request), Resumed or Done, got a \
                 batch of pages",
            ),
            (
                Phase::Missing,
                frame_of(&Control::Resumed),
                "requests channel: expected the destination's missing pages (Missing), got \
                 Resumed",
            ),
            (
                Phase::Answers,
                frame_of(&Control::Done),
                "requests channel: expected a batch of pages or the source's times \
                 (SourceTimes), got Done",
            ),
        ] {
            assert_eq!(
                refused(phase, frame),
                format!("protocol error: {message}"),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn what_a_frame_holds_is_checked() {
        for ram_size in [0, PAGE - 1, PAGE + 1, RAM_MAX + PAGE] {
            assert_eq!(
                err(expect_memory(&mut wire(&[memory(ram_size)]))),
                format!("protocol error: a guest of {ram_size} bytes")
            );
        }
        for ram_size in [PAGE, RAM_MAX] {
            let taken = expect_memory(&mut wire(&[memory(ram_size)])).expect("a size");
            assert_eq!(taken, (ram_size, Kind::Hybrid));
        }
        // Another guest's size; bits past the guest's pages; too many words.
        for frame in [
            zero_map(PAGES + 1, vec![0]),
            zero_map(PAGES, vec![1 << PAGES]),
            zero_map(PAGES, vec![0, 0]),
        ] {
            assert_eq!(
                refused(Phase::ZeroMap, frame),
                "protocol error: stream: no valid zero-page map"
            );
        }
        assert_eq!(
            refused(Phase::Discard, discard(vec![])),
            "protocol error: stream: no valid discard map"
        );
        assert_eq!(
            refused(
                Phase::Missing,
                frame_of(&Control::Missing {
                    words: vec![u64::MAX]
                })
            ),
            "protocol error: requests channel: no valid missing-page map"
        );
        let (past, _) = batch(PAGES);
        for (phase, channel) in [
            (Phase::PreCopy, "stream"),
            (Phase::PostCopy, "stream"),
            (Phase::Answers, "requests channel"),
        ] {
            assert_eq!(
                refused(phase, past.clone()),
                format!("protocol error: {channel}: page {PAGES} past RAM")
            );
        }
        assert_eq!(
            refused(
                Phase::Serving,
                frame_of(&Control::Request {
                    pages: vec![0, PAGES]
                })
            ),
            format!("protocol error: requests channel: request for page {PAGES} past RAM")
        );
    }

    #[test]
    fn a_connection_closed_in_any_phase_is_a_disconnection() {
        for phase in [
            Phase::Memory,
            Phase::PreCopy,
            Phase::ZeroMap,
            Phase::Discard,
            Phase::PostCopy,
            Phase::Resume,
            Phase::Ready,
            Phase::Serving,
            Phase::Missing,
            Phase::Answers,
        ] {
            assert_eq!(
                refused(phase, Vec::new()),
                format!("{}: {CLOSED}", phase.channel())
            );
        }
        assert!(matches!(
            expect_serving(&mut wire(&[]), PAGES),
            Err(LinkError::Disconnected { .. })
        ));
    }
}
