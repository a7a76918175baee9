//! What comes before the guest runs here, on the stream: the guest's size (its RAM is
//! created and armed, and the source told so), pre-copy's rounds of pages, the machine
//! state, the zero-page map and the pre-copied pages that are stale again.

use std::{io::BufReader, net::TcpStream};

use muserload::FaultMode;

use super::{error::ReceiveError, intake::load_precopy_batch, PAGE};
use crate::{
    bitmap::Bitmap,
    memory::GuestRam,
    protocol::{self, Control, Kind, PreCopy},
    vm::MachineState,
};

/// What the source sent before the guest resumes here.
pub(super) struct Arrival {
    /// The stream, read up to the discard map.
    pub stream: BufReader<TcpStream>,
    /// The requests channel.
    pub requests: TcpStream,
    /// The kind of migration.
    pub kind: Kind,
    /// Guest RAM: armed, but for the pages in `loaded`.
    pub ram: GuestRam,
    /// Pages pre-copy loaded that the guest has not written since.
    pub loaded: Bitmap,
    /// What pre-copy brought.
    pub precopy: Precopy,
    /// Everything but RAM.
    pub machine: MachineState,
    /// The source's zero pages.
    pub zero: Bitmap,
    /// Pages pre-copy loaded that were stale at the switch (armed again).
    pub discarded: u64,
}

/// What pre-copy brought.
#[derive(Clone, Copy, Default)]
pub(super) struct Precopy {
    /// Pages received (a page sent twice counts twice).
    pub pages: u64,
    /// Bytes their batches took on the wire.
    pub bytes: u64,
}

impl Arrival {
    /// Receives what the source sends before the guest resumes, on the connections it
    /// just opened; faults on guest RAM are to come in `fault_mode`.
    pub fn receive(
        stream: TcpStream,
        mut requests: TcpStream,
        fault_mode: FaultMode,
    ) -> Result<Self, ReceiveError> {
        let mut stream = BufReader::with_capacity(1 << 16, stream);
        let (ram_size, kind) = protocol::expect_memory(&mut stream)?;
        let ram = GuestRam::new(ram_size)?;
        ram.object().arm(ram.guest(), 0, ram_size, fault_mode)?;
        // The source pauses the guest only now: setting up RAM is not downtime.
        protocol::send_control(&mut requests, &Control::Ready)?;
        let loaded = Bitmap::new(ram.pages());
        let (machine, precopy) = receive_precopy(&mut stream, &ram, &loaded, fault_mode)?;
        let zero = protocol::expect_zero_map(&mut stream, ram.pages())?;
        let discard = protocol::expect_discard(&mut stream, ram.pages())?;
        let discarded = rearm(&discard, &ram, &loaded, fault_mode)?;
        Ok(Self {
            stream,
            requests,
            kind,
            ram,
            loaded,
            precopy,
            machine,
            zero,
            discarded,
        })
    }
}

/// Receives pre-copy's batches, if any, into `ram` (noting them in `loaded`), until the
/// machine state.
fn receive_precopy(
    stream: &mut BufReader<TcpStream>,
    ram: &GuestRam,
    loaded: &Bitmap,
    fault_mode: FaultMode,
) -> Result<(MachineState, Precopy), ReceiveError> {
    let mut precopy = Precopy::default();
    let mut staging = ram.object().map_staging()?;
    loop {
        match protocol::expect_precopy(stream, ram.size())? {
            PreCopy::Batch(batch) => {
                precopy.pages += batch.indices.len() as u64;
                precopy.bytes += batch.wire_size();
                load_precopy_batch(ram, stream, &mut staging, &batch, loaded, fault_mode)?;
            }
            PreCopy::Machine(machine) => return Ok((*machine, precopy)),
        }
    }
}

/// Arms the pages pre-copy sent that the guest wrote since again in `ram` (clearing them
/// in `loaded`): they come post-copy. Returns how many there were.
fn rearm(
    discard: &Bitmap,
    ram: &GuestRam,
    loaded: &Bitmap,
    fault_mode: FaultMode,
) -> Result<u64, ReceiveError> {
    for page in discard.ones() {
        ram.object()
            .arm(ram.guest(), page * PAGE, PAGE, fault_mode)?;
        loaded.clear(page);
    }
    Ok(discard.count())
}
