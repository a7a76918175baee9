//! Page intake: batches from the source (pre-copy's, the stream's, the answers to
//! requests) read into staging slots and moved into guest memory, and the zero pages
//! loaded locally.

use std::{io::BufReader, net::TcpStream, sync::atomic::Ordering};

use muserload::{FaultMode, Staging, Wake, LOADV_MAX};
use nix::errno::Errno;

use super::{
    error::LoadError,
    loading::{Loading, SourceTimes},
    PAGE,
};
use crate::{
    bitmap::Bitmap,
    lock::lock,
    memory::{GuestRam, BATCH_PAGES},
    protocol::{self, Answer, Channel, LinkError, Pages},
    timeline::Cause,
};

/// The first staging slot of the requests channel's answers (a batch of them).
const ANSWER_SLOTS: usize = 0;
/// The first staging slot of the stream's batches (and pre-copy's), after the answers'.
const STREAM_SLOTS: usize = BATCH_PAGES;

impl Loading {
    /// Receives the stream of connections `generation`: batches of pages, moved into guest
    /// memory, until its end. A broken connection is not an error: the thread ends and the
    /// main thread waits for the source to reconnect.
    pub fn receive_stream(
        &self,
        conn: BufReader<TcpStream>,
        generation: u32,
    ) -> Result<(), LoadError> {
        let received = self.take_stream(conn);
        self.receiver_ended(generation, received)
    }

    /// Receives the requests channel of connections `generation`: the answers to requests,
    /// moved into guest memory, and the source's times; until the source hangs up after
    /// `Done`, or the connection breaks (as for [`Loading::receive_stream`]).
    pub fn receive_answers(
        &self,
        conn: BufReader<TcpStream>,
        generation: u32,
    ) -> Result<(), LoadError> {
        let received = self.take_answers(conn);
        self.receiver_ended(generation, received)
    }

    /// What the end of a receiving thread of connections `generation` with `received`
    /// means: nothing once every page is loaded (the source may hang up at any moment
    /// then), a break of the link if they broke, the failure of the migration otherwise.
    fn receiver_ended(
        &self,
        generation: u32,
        received: Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        match received {
            Err(_) if self.outcome.is_done() => Ok(()),
            Err(LoadError::Link(e @ LinkError::Disconnected { .. })) => {
                self.lost(generation, e);
                Ok(())
            }
            result => result,
        }
    }

    /// Takes the stream's batches until [`Control::StreamEnd`](crate::protocol::Control).
    fn take_stream(&self, mut conn: BufReader<TcpStream>) -> Result<(), LoadError> {
        let mut staging = self.ram().object().map_staging()?;
        while let Some(batch) = protocol::expect_stream(&mut conn, self.pages.len())? {
            let slot = STREAM_SLOTS;
            let pairs = stage(&batch, &mut conn, &mut staging, slot, Channel::Stream)?;
            self.counters
                .streamed
                .fetch_add(pairs.len() as u64, Ordering::Relaxed);
            self.take_batch(&batch, &mut staging, &pairs, Cause::Stream)?;
        }
        Ok(())
    }

    /// Takes the requests channel's answers and the source's times, until it fails.
    fn take_answers(&self, mut conn: BufReader<TcpStream>) -> Result<(), LoadError> {
        let mut staging = self.ram().object().map_staging()?;
        loop {
            match protocol::expect_answer(&mut conn, self.pages.len())? {
                Answer::Batch(batch) => {
                    let slot = ANSWER_SLOTS;
                    let pairs = stage(&batch, &mut conn, &mut staging, slot, Channel::Requests)?;
                    self.take_batch(&batch, &mut staging, &pairs, Cause::Request)?;
                }
                Answer::SourceTimes {
                    rounds,
                    setup,
                    downtime,
                } => {
                    *lock(&self.source_times) = SourceTimes {
                        rounds,
                        setup_us: setup,
                        downtime_us: downtime,
                    };
                }
            }
        }
    }

    /// Moves `batch`, staged as `pairs`, into guest memory, loaded for `cause`; counts it
    /// and wakes the waiters.
    fn take_batch(
        &self,
        batch: &Pages,
        staging: &mut Staging,
        pairs: &[(u64, usize)],
        cause: Cause,
    ) -> Result<(), LoadError> {
        self.counters
            .bytes
            .fetch_add(batch.wire_size(), Ordering::Relaxed);
        self.move_pages(staging, pairs, cause)?;
        self.outcome.notify();
        Ok(())
    }

    /// Moves staging slots into guest pages, `(offset, slot)` pairs; a page loaded
    /// meanwhile (`EEXIST`) is skipped and counted as a duplicate.
    fn move_pages(
        &self,
        staging: &mut Staging,
        pairs: &[(u64, usize)],
        cause: Cause,
    ) -> Result<(), LoadError> {
        let (object, guest) = (self.ram().object(), self.ram().guest());
        let mut rest = pairs;
        while !rest.is_empty() {
            let (moved, skip) = match object.load_move_vectored(guest, staging, rest, Wake::Now) {
                Ok(loaded) => ((loaded / PAGE) as usize, 0),
                Err(muserload::Error::Load {
                    loaded,
                    errno: Errno::EEXIST,
                    ..
                }) => ((loaded / PAGE) as usize, 1),
                Err(e) => return Err(e.into()),
            };
            self.timeline.loaded(cause, moved as u32);
            let taken = (moved + skip).min(rest.len());
            for &(offset, _) in &rest[..taken] {
                self.mark_loaded(offset / PAGE);
            }
            self.counters
                .duplicates
                .fetch_add(skip as u64, Ordering::Relaxed);
            rest = &rest[taken..];
        }
        Ok(())
    }

    /// Loads every zero page, in vectored calls (lazily: the module allocates a page only
    /// when the guest touches it).
    pub fn load_zero_pages(&self) -> Result<(), LoadError> {
        let zero = &self.pages.zero;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for page in (0..zero.len()).filter(|&p| zero.get(p)) {
            match ranges.last_mut() {
                Some((offset, len)) if *offset + *len == page * PAGE => *len += PAGE,
                _ => ranges.push((page * PAGE, PAGE)),
            }
        }
        for chunk in ranges.chunks(LOADV_MAX) {
            let mut rest = chunk.to_vec();
            while !rest.is_empty() {
                let object = self.ram().object();
                let (done, skip) =
                    match object.load_zero_vectored(self.ram().guest(), &rest, Wake::Now) {
                        Ok(loaded) => (loaded, false),
                        // A fault loaded that page first.
                        Err(muserload::Error::Load {
                            loaded,
                            errno: Errno::EEXIST,
                            ..
                        }) => (loaded, true),
                        Err(e) => return Err(e.into()),
                    };
                self.timeline.loaded(Cause::Zero, (done / PAGE) as u32);
                rest = self.consume(rest, done, skip);
            }
            self.outcome.notify();
        }
        Ok(())
    }

    /// Marks the first `bytes` of `ranges` loaded, and the page after them too if `skip`
    /// (it was already loaded); returns what is left.
    fn consume(&self, ranges: Vec<(u64, u64)>, bytes: u64, skip: bool) -> Vec<(u64, u64)> {
        let mut to_mark = bytes / PAGE + u64::from(skip);
        let mut left = Vec::new();
        for (offset, len) in ranges {
            let take = to_mark.min(len / PAGE);
            to_mark -= take;
            (offset / PAGE..offset / PAGE + take).for_each(|p| self.mark_loaded(p));
            if take < len / PAGE {
                left.push((offset + take * PAGE, len - take * PAGE));
            }
        }
        left
    }
}

/// Loads a pre-copy batch into guest memory. The guest is not running yet; a page sent
/// again (the guest wrote it after its last send) replaces the old copy: armed again first,
/// since loads only fill unloaded pages.
pub(super) fn load_precopy_batch(
    ram: &GuestRam,
    stream: &mut BufReader<TcpStream>,
    staging: &mut Staging,
    batch: &Pages,
    loaded: &Bitmap,
    mode: FaultMode,
) -> Result<(), LoadError> {
    let pairs = stage(batch, stream, staging, STREAM_SLOTS, Channel::Stream)?;
    for &page in batch.indices.iter().filter(|&&p| loaded.get(p)) {
        ram.object().arm(ram.guest(), page * PAGE, PAGE, mode)?;
    }
    ram.object()
        .load_move_vectored(ram.guest(), staging, &pairs, Wake::Now)?;
    batch.indices.iter().for_each(|&p| {
        loaded.set(p);
    });
    Ok(())
}

/// Reads a batch's data, which came on `channel`, into staging slots `first_slot..`, and
/// returns the `(guest offset, slot)` pairs to MOVE.
fn stage(
    batch: &Pages,
    conn: &mut BufReader<TcpStream>,
    staging: &mut Staging,
    first_slot: usize,
    channel: Channel,
) -> Result<Vec<(u64, usize)>, LoadError> {
    let n = batch.indices.len();
    batch.read_data(conn, staging.slots_mut(first_slot, n)?, channel)?;
    Ok(batch
        .indices
        .iter()
        .enumerate()
        .map(|(k, &page)| (page * PAGE, first_slot + k))
        .collect())
}
