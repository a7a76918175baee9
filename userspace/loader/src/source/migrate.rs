//! A migration, step by step: the guest's size announced (the destination sets up its RAM
//! meanwhile), pre-copy's rounds if any, the pause and the switch (the machine state, the
//! zero-page map, the stale pre-copied pages), then post-copy's serving until every page is
//! loaded, reconnecting if the connections break.

use std::{
    io::BufWriter,
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    error::SendError,
    link,
    serve::{self, Serving, Times},
    zero::{self, ZeroScan},
    Migration,
};
use crate::{
    address::resolve,
    bitmap::Bitmap,
    memory::{GuestRam, MemoryError},
    precopy::{self, Plan, Rounds},
    protocol::{self, Control, Kind, LinkError, ProtocolError},
    report::SourceReport,
    vcpu::Machine,
    vm::{Kvmclock, MachineState, VcpuState, Vm},
};

/// What the source did while the guest still ran.
struct BeforePause {
    /// Post-copy: the pages that were zero then, which the pause checks again.
    zero_candidates: Option<Bitmap>,
    /// Pre-copy and hybrid: the rounds.
    precopied: Option<Rounds>,
}

/// The guest as it stopped: its vCPUs' states, and kvmclock read right after.
struct Stopped {
    /// The vCPUs' states.
    vcpus: Vec<VcpuState>,
    /// kvmclock.
    clock: Kvmclock,
}

/// What the switch sent, and what post-copy is left with.
struct Switched {
    /// The zero pages.
    zero: Bitmap,
    /// The pages the destination has, or needs not be sent (the zero pages).
    sent: Bitmap,
    /// Pages pre-copy sent that were stale at the switch.
    discarded: u64,
    /// Bytes the switch sent.
    bytes: u64,
    /// What the guest had reported when it was paused.
    guest_rounds: Option<u64>,
    /// Pre-copy's rounds, pages and bytes, its last pages (sent while paused) included.
    precopy: (u32, u64, u64),
    /// Which pages were resident in the source's mapping when the guest was paused.
    resident: Vec<bool>,
    /// What the pause did to find the zero pages.
    pause: PauseWork,
}

/// What the pause did to find the zero pages and send pre-copy's last pages, for the
/// report.
struct PauseWork {
    /// Pages it checked for zeros.
    checked: u64,
    /// Pages it read to check them (a page read twice counts twice).
    read: u64,
    /// Pre-copy: how long its last pages took, until the destination had them all.
    send: Duration,
}

/// Migrates the guest `machine` runs to `destination`, `how` it was asked.
pub(super) fn migrate(
    machine: Machine,
    destination: &str,
    how: &Migration,
) -> Result<SourceReport, SendError> {
    let addr = resolve(destination)?;
    let start = Instant::now();
    let (mut stream, mut requests) = link::open(addr)?;
    let vm = machine.vm().clone();
    let announced = announce(vm.ram(), &mut stream, &mut requests, how.kind)?;
    let setup = start.elapsed();
    let before = before_pause(&vm, &mut stream, how)?;
    let paused = Instant::now();
    let vcpus = machine.stop()?;
    // At once: whatever the switch then takes, the guest's clocks go on at the destination
    // from this instant, and its vCPUs' TSCs from the same.
    let clock = vm.clock()?;
    let stopped = Stopped { vcpus, clock };
    let switched = switch_over(&vm, &mut stream, stopped, before, how.kind)?;
    let (rounds, precopy_pages, precopy_bytes) = switched.precopy;
    let bytes = announced + switched.bytes + precopy_bytes;
    let serving = Arc::new(Serving::new(
        vm.clone(),
        switched.zero,
        switched.sent,
        bytes,
    ));
    let mut times = Times {
        paused,
        setup,
        rounds,
        downtime: None,
    };
    let recoveries = serve_until_done(addr, &serving, stream, requests, &mut times, how)?;
    let downtime = times
        .downtime
        .ok_or_else(|| LinkError::from(ProtocolError::NeverResumed))?;
    let sent = serving.sent();
    let faulted_in = faulted_in(vm.ram(), &switched.resident)?;
    Ok(SourceReport {
        kind: how.kind,
        precopy_rounds: rounds,
        precopy_pages,
        discarded_pages: switched.discarded,
        setup_us: setup.as_micros() as u64,
        downtime_us: downtime.as_micros() as u64,
        total_ms: start.elapsed().as_millis() as u64,
        bytes_sent: sent.bytes,
        pages: serving.zero().len(),
        zero_pages: serving.zero().count(),
        zero_pages_sent: sent.zero_sent,
        pages_requested: sent.requested,
        pages_streamed: sent.streamed,
        max_sends_per_page: sent.max_sends,
        guest_rounds: switched.guest_rounds,
        recoveries,
        pause_zero_checked: switched.pause.checked,
        pause_pages_read: switched.pause.read,
        pause_send_us: switched.pause.send.as_micros() as u64,
        pages_faulted_in: faulted_in,
    })
}

/// Tells the destination the guest's size and the `kind` of migration, and waits until it
/// has set up its RAM (not in the downtime); returns the bytes sent.
fn announce(
    ram: &GuestRam,
    stream: &mut BufWriter<TcpStream>,
    requests: &mut TcpStream,
    kind: Kind,
) -> Result<u64, SendError> {
    let bytes = protocol::send_control(
        stream,
        &Control::Memory {
            ram_size: ram.size(),
            kind,
        },
    )?;
    protocol::flush(stream, "sending the guest's size")?;
    protocol::expect_ready(requests)?;
    Ok(bytes)
}

/// What is done while the guest still runs: post-copy looks for zero pages, pre-copy and
/// hybrid run their rounds on `stream`.
fn before_pause(
    vm: &Vm,
    stream: &mut BufWriter<TcpStream>,
    how: &Migration,
) -> Result<BeforePause, SendError> {
    // Post-copy looks for zero pages while the guest still runs: the pause then checks
    // again only those candidates (most of them untouched, which mincore() alone settles),
    // so that the downtime does not grow with RAM. Nothing relies on a dirty log here.
    let zero_candidates = match how.kind {
        Kind::PostCopy => Some(zero_pages(vm.ram(), &vm.ram().resident()?, |_| true).zero),
        Kind::PreCopy | Kind::Hybrid => None,
    };
    let precopied = match how.kind {
        Kind::PostCopy => None,
        Kind::PreCopy | Kind::Hybrid => {
            vm.enable_dirty_logging()?;
            let plan = match how.kind {
                Kind::PreCopy => Plan::Converge {
                    downtime: how.downtime_target,
                    max_rounds: how.max_rounds,
                },
                _ => Plan::Rounds(how.rounds),
            };
            Some(precopy::run(vm, stream, plan)?)
        }
    };
    Ok(BeforePause {
        zero_candidates,
        precopied,
    })
}

/// The switch, with the guest `stopped`: pre-copy's last pages, then the machine state,
/// the zero-page map and the stale pre-copied pages.
fn switch_over(
    vm: &Vm,
    stream: &mut BufWriter<TcpStream>,
    stopped: Stopped,
    before: BeforePause,
    kind: Kind,
) -> Result<Switched, SendError> {
    let ram = vm.ram();
    let BeforePause {
        zero_candidates,
        mut precopied,
    } = before;
    // Which pages the guest ever touched, looked at once with the guest stopped: the others
    // are zero without being read. Reading them would fault each one in (the module
    // allocating a zeroed page for it): most of a mostly idle guest's RAM, a pause that
    // grew with RAM. The report counts the pages faulted in after this.
    let resident = ram.resident()?;
    // What the guest wrote since the last round is stale at the destination.
    if let Some(rounds) = &mut precopied {
        vm.dirty_pages()?.ones().for_each(|p| rounds.valid.clear(p));
        // The dirty log stays on: the guest never runs here again, and turning it off
        // (a memory slot update) would only lengthen the downtime.
    }
    let ZeroScan {
        zero,
        checked,
        read,
    } = match (&zero_candidates, &precopied) {
        // Post-copy: the pages found zero before the pause. A page found not zero then is
        // sent even if the guest has zeroed it since: a page of zeros too many at worst.
        (Some(candidates), _) => zero_pages(ram, &resident, |page| candidates.get(page)),
        // Pre-copy: the pages it never sent (those sent and written since go again).
        (None, Some(rounds)) if kind == Kind::PreCopy => {
            zero_pages(ram, &resident, |page| !rounds.sent.get(page))
        }
        // Hybrid: the pages its rounds did not settle.
        (None, rounds) => zero_pages(ram, &resident, |page| {
            rounds.as_ref().is_none_or(|r| !r.valid.get(page))
        }),
    };
    let mut send = Duration::ZERO;
    if let Some(rounds) = &mut precopied {
        if kind == Kind::PreCopy {
            // Pre-copy sends the rest now, while the guest is paused: the pages written
            // since they were sent, and those never sent that are not zero.
            let stale: Vec<u64> = rounds
                .sent
                .ones()
                .filter(|&p| !rounds.valid.get(p))
                .collect();
            let fresh: Vec<u64> = (0..ram.pages())
                .filter(|&p| !rounds.sent.get(p) && !zero.get(p))
                .collect();
            let sending = Instant::now();
            precopy::send(ram, stream, &[stale, fresh].concat(), rounds)?;
            // The machine state would follow at once; waiting for the acknowledgement costs
            // a round trip and says how long the downtime's page transfer took.
            precopy::drain(stream)?;
            send = sending.elapsed();
        }
    }
    let state = MachineState {
        ram_size: ram.size(),
        vcpus: stopped.vcpus,
        vm: vm.state()?,
        clock: stopped.clock,
        devices: vm.devices().state(),
    };
    let report = state.devices.test_report();
    let guest_rounds = report.reports().then_some(report.rounds);
    let mut bytes = protocol::send_control(stream, &Control::Machine(Box::new(state)))?;
    bytes += protocol::send_control(
        stream,
        &Control::ZeroMap {
            pages: zero.len(),
            words: zero.words(),
        },
    )?;
    let discard = Bitmap::new(ram.pages());
    if let Some(rounds) = &precopied {
        rounds
            .sent
            .ones()
            .filter(|&p| !rounds.valid.get(p))
            .for_each(|p| {
                discard.set(p);
            });
    }
    bytes += protocol::send_control(
        stream,
        &Control::Discard {
            words: discard.words(),
        },
    )?;
    protocol::flush(stream, "sending the machine state")?;
    // Nothing more to send for zero pages and for what pre-copy settled.
    let sent = zero.clone();
    if let Some(rounds) = &precopied {
        rounds.valid.ones().for_each(|p| {
            sent.set(p);
        });
    }
    Ok(Switched {
        zero,
        sent,
        discarded: discard.count(),
        bytes,
        guest_rounds,
        precopy: precopied
            .as_ref()
            .map_or((0, 0, 0), |r| (r.rounds, r.pages, r.bytes)),
        resident,
        pause: PauseWork {
            checked,
            read,
            send,
        },
    })
}

/// Serves post-copy on `stream` and `requests` until the destination is done. The guest
/// runs at the destination, and only this process has the pages it has not loaded yet: a
/// broken connection is not the end, the source reconnects (for up to `how`'s recovery
/// timeout each time) and goes on. Returns how many times it reconnected.
fn serve_until_done(
    addr: SocketAddr,
    serving: &Arc<Serving>,
    mut stream: BufWriter<TcpStream>,
    mut requests: TcpStream,
    times: &mut Times,
    how: &Migration,
) -> Result<u32, SendError> {
    let mut recoveries = 0;
    while let Err(e) = serve::serve(serving, stream, &mut requests, times) {
        if !e.is_disconnection() {
            return Err(e);
        }
        eprintln!(
            "muserload-loader: the connection to the destination broke ({e}); reconnecting \
             for up to {:?}",
            how.recover_timeout
        );
        (stream, requests) = link::reconnect(addr, serving, how.recover_timeout)?;
        recoveries += 1;
        eprintln!("muserload-loader: reconnected; the migration goes on");
    }
    Ok(recoveries)
}

/// The `candidate` pages of `ram` that are zero, given which are `resident`: never touched
/// (not resident), or resident and holding only zeros (only those are read).
fn zero_pages(ram: &GuestRam, resident: &[bool], candidate: impl Fn(u64) -> bool) -> ZeroScan {
    zero::scan(resident, candidate, |page| ram.is_zero(page))
}

/// How many pages are resident in `ram`'s mapping that were not by `before`: pages the
/// guest never touched that reading faulted in (the guest no longer runs here).
fn faulted_in(ram: &GuestRam, before: &[bool]) -> Result<u64, MemoryError> {
    Ok(ram
        .resident()?
        .iter()
        .zip(before)
        .filter(|&(&now, &then)| now && !then)
        .count() as u64)
}
