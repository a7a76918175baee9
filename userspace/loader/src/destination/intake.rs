//! Page intake: batches from the source (pre-copy's, the stream's, the answers to
//! requests) read into staging slots and moved into guest memory, and the zero pages
//! loaded locally.

use std::{io::BufReader, net::TcpStream, sync::atomic::Ordering};

use muserload::{FaultMode, Staging, Wake, LOADV_MAX};
use nix::errno::Errno;

use super::{loading::Loading, PAGE};
use crate::{
    bitmap::Bitmap,
    error::{Error, Result},
    lock::lock,
    memory::{GuestRam, BATCH_PAGES},
    protocol::{self, Channel, Control, Frame, Pages},
    timeline::Cause,
};

impl Loading {
    /// Receives batches of pages on one channel into staging slots `first_slot..` and
    /// moves them into guest memory, until the stream ends (or, on the requests channel,
    /// the source hangs up after `Done`). A broken connection is not an error: the thread
    /// ends and the main thread waits for the source to reconnect.
    pub fn receive_batches(
        &self,
        conn: BufReader<TcpStream>,
        first_slot: usize,
        channel: Channel,
        generation: u32,
    ) -> Result<()> {
        match self.receive_frames(conn, first_slot, channel) {
            // After `Done` the source may hang up at any moment.
            Err(_) if self.outcome.is_done() => Ok(()),
            Err(e @ Error::Disconnected { .. }) => {
                self.lost(generation, &e);
                Ok(())
            }
            result => result,
        }
    }

    /// Receives frames on `channel` until the stream ends or the connection fails.
    fn receive_frames(
        &self,
        mut conn: BufReader<TcpStream>,
        first_slot: usize,
        channel: Channel,
    ) -> Result<()> {
        let what = match channel {
            Channel::Stream => "stream",
            Channel::Requests => "requests channel",
        };
        let mut staging = self.ram().object().map_staging()?;
        loop {
            match (protocol::recv_frame(&mut conn, what)?, channel) {
                (Frame::Pages(pages), _) => {
                    let pairs = stage(
                        &pages,
                        &mut conn,
                        &mut staging,
                        first_slot,
                        self.pages.len(),
                        what,
                    )?;
                    self.counters
                        .bytes
                        .fetch_add(pages.wire_size(), Ordering::Relaxed);
                    let cause = match channel {
                        Channel::Stream => {
                            self.counters
                                .streamed
                                .fetch_add(pairs.len() as u64, Ordering::Relaxed);
                            Cause::Stream
                        }
                        Channel::Requests => Cause::Request,
                    };
                    self.move_pages(&mut staging, &pairs, cause)?;
                    self.outcome.notify();
                }
                (Frame::Control(Control::StreamEnd), Channel::Stream) => return Ok(()),
                (
                    Frame::Control(Control::SourceTimes {
                        rounds,
                        setup,
                        downtime,
                    }),
                    Channel::Requests,
                ) => {
                    let times = &mut *lock(&self.source_times);
                    (times.rounds, times.setup_us, times.downtime_us) = (rounds, setup, downtime);
                }
                _ => return Err(Error::Protocol(format!("{what}: unexpected message"))),
            }
        }
    }

    /// Moves staging slots into guest pages, `(offset, slot)` pairs; a page loaded
    /// meanwhile (`EEXIST`) is skipped and counted as a duplicate.
    fn move_pages(
        &self,
        staging: &mut Staging,
        pairs: &[(u64, usize)],
        cause: Cause,
    ) -> Result<()> {
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
    pub fn load_zero_pages(&self) -> Result<()> {
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
) -> Result<()> {
    let pairs = stage(batch, stream, staging, BATCH_PAGES, loaded.len(), "stream")?;
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

/// Checks a batch's page indices against the guest's `pages`, reads its data into staging
/// slots `first_slot..`, and returns the `(guest offset, slot)` pairs to MOVE.
fn stage(
    batch: &Pages,
    conn: &mut BufReader<TcpStream>,
    staging: &mut Staging,
    first_slot: usize,
    pages: u64,
    what: &'static str,
) -> Result<Vec<(u64, usize)>> {
    if let Some(&bad) = batch.indices.iter().find(|&&p| p >= pages) {
        return Err(Error::Protocol(format!("{what}: page {bad} past RAM")));
    }
    let n = batch.indices.len();
    batch.read_data(conn, staging.slots_mut(first_slot, n)?, what)?;
    Ok(batch
        .indices
        .iter()
        .enumerate()
        .map(|(k, &page)| (page * PAGE, first_slot + k))
        .collect())
}
