//! The source's pre-copy rounds: pages go to the destination while the guest runs, KVM's
//! dirty log says which ones the guest wrote since, and those go again, until what is left
//! is small enough to switch over (pre-copy: sendable within the downtime target, or Xen's
//! limits for a guest that never gets there; hybrid: after a fixed number of rounds).
//!
//! Each round ends when the destination has acknowledged all of it (`backlog`): the rate
//! is then the rate pages reach the destination, not the rate they fill the socket's
//! buffers (megabytes, at first sent in no time), and the pause does not begin with those
//! megabytes still on their way, ahead of the machine state.

use std::{
    io::{self, BufWriter, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use muserload::PAGE_SIZE;

use crate::{
    backlog,
    bitmap::Bitmap,
    memory::{as_bytes, GuestRam, MemoryError, BATCH_PAGES, PAGE_WORDS},
    protocol::{self, LinkError},
    vm::{Vm, VmError},
};

/// A failure of the pre-copy rounds.
#[derive(Debug, thiserror::Error)]
pub enum PrecopyError {
    /// KVM's dirty log failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Reading guest RAM failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Sending failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Waiting for the destination to acknowledge a round failed.
    #[error("waiting for the destination to receive a pre-copy round: {0}")]
    Drain(#[source] io::Error),
}

/// When to stop the rounds.
#[derive(Clone, Copy, Debug)]
pub enum Plan {
    /// Hybrid: after exactly this many rounds after the first full pass; post-copy fetches
    /// what the guest writes after them.
    Rounds(u32),
    /// Pre-copy: once the dirty pages could be sent within `downtime` at the rate measured
    /// so far. A guest that dirties pages faster than that never gets there: then, as Xen
    /// does, after `max_rounds` rounds or once the rounds have sent [`MAX_TRAFFIC`] times
    /// RAM, whatever the downtime.
    Converge {
        /// The downtime target.
        downtime: Duration,
        /// The most rounds after the first full pass.
        max_rounds: u32,
    },
}

/// Pre-copy gives up waiting for convergence once it has sent this many times guest RAM
/// (Xen's limit).
pub const MAX_TRAFFIC: u64 = 3;

/// The longest a round waits for the destination to acknowledge it; what is still on its
/// way then counts as pages left.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What the rounds did.
pub struct Rounds {
    /// Pages whose content the destination has and the guest has not written since.
    pub valid: Bitmap,
    /// Pages sent at least once.
    pub sent: Bitmap,
    /// Rounds run (the first full pass included).
    pub rounds: u32,
    /// Pages sent, all rounds together.
    pub pages: u64,
    /// Bytes sent.
    pub bytes: u64,
}

/// Runs the rounds with the guest running; dirty logging must be on.
pub fn run(vm: &Vm, stream: &mut BufWriter<TcpStream>, plan: Plan) -> Result<Rounds, PrecopyError> {
    let ram = vm.ram();
    let mut rounds = Rounds {
        valid: Bitmap::new(ram.pages()),
        sent: Bitmap::new(ram.pages()),
        rounds: 0,
        pages: 0,
        bytes: 0,
    };
    // Forget what was dirtied before: the first pass reads every page anyway.
    vm.dirty_pages()?;
    let start = Instant::now();
    let resident = ram.resident()?;
    let first: Vec<u64> = (0..ram.pages())
        .filter(|&p| resident[p as usize] && !ram.is_zero(p))
        .collect();
    send(ram, stream, &first, &mut rounds)?;
    loop {
        let on_its_way = drain(stream)?;
        rounds.rounds += 1;
        let dirty = vm.dirty_pages()?;
        dirty.ones().for_each(|p| rounds.valid.clear(p));
        let left = dirty.count() * PAGE_SIZE as u64 + on_its_way;
        let switch_over = match plan {
            Plan::Rounds(n) => rounds.rounds > n,
            Plan::Converge {
                downtime,
                max_rounds,
            } => {
                let delivered = rounds.bytes - on_its_way.min(rounds.bytes);
                let rate = delivered as f64 / start.elapsed().as_secs_f64().max(1e-6);
                left as f64 <= rate * downtime.as_secs_f64()
                    || rounds.rounds > max_rounds
                    || rounds.bytes >= MAX_TRAFFIC * ram.size()
            }
        };
        if switch_over {
            return Ok(rounds);
        }
        // A page never sent that reads as zero goes in the zero map at the switch instead
        // (KVM's log also lists pages the guest only faulted in, reading them).
        let pages: Vec<u64> = dirty
            .ones()
            .filter(|&p| rounds.sent.get(p) || !ram.is_zero(p))
            .collect();
        send(ram, stream, &pages, &mut rounds)?;
    }
}

/// Flushes `stream` and waits until the destination has acknowledged everything sent, or
/// [`DRAIN_LIMIT`] has passed; returns the bytes still on their way.
pub fn drain(stream: &mut BufWriter<TcpStream>) -> Result<u64, PrecopyError> {
    backlog::drain(stream, DRAIN_LIMIT).map_err(PrecopyError::Drain)
}

/// Sends `pages` (in batches), marking them sent and valid.
pub fn send(
    ram: &GuestRam,
    stream: &mut impl Write,
    pages: &[u64],
    rounds: &mut Rounds,
) -> Result<(), PrecopyError> {
    // Words: the guest runs, so its pages are read with volatile reads of words
    // (`GuestRam::copy_page`).
    let mut buf = vec![0u64; BATCH_PAGES * PAGE_WORDS];
    for chunk in pages.chunks(BATCH_PAGES) {
        for (&page, words) in chunk.iter().zip(buf.chunks_exact_mut(PAGE_WORDS)) {
            // The guest may be writing the page: the dirty log will say so, and it goes again.
            ram.copy_page(page, words)?;
            rounds.valid.set(page);
            rounds.sent.set(page);
        }
        let batch: Vec<(u64, &[u8])> = chunk
            .iter()
            .copied()
            .zip(as_bytes(&buf).chunks_exact(PAGE_SIZE))
            .collect();
        rounds.bytes += protocol::send_pages(stream, &batch)?;
        rounds.pages += chunk.len() as u64;
    }
    Ok(())
}
