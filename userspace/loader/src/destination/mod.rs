//! The destination: receives the machine state, arms guest RAM, resumes the guest at once,
//! and loads each page as it arrives: the pages the vCPUs fault on, requested from the
//! source, and the background stream; zero pages are never asked for, they are loaded as
//! zero locally.
//!
//! [`receive`] takes the steps in order: what comes before the guest runs (`arrival`),
//! the guest resumed and its pages loaded (`resumed`), by threads that share `loading`'s
//! state: page intake (`intake`), the fault side (`faults`), and the link to the source,
//! with its recovery in post-copy (`link`).

mod arrival;
mod error;
mod faults;
mod intake;
mod link;
mod loading;
mod resumed;

use std::{net::TcpListener, path::PathBuf, time::Duration};

use muserload::PAGE_SIZE;

pub use self::error::ReceiveError;
use self::{arrival::Arrival, resumed::Resumed, resumed::Stopped};
use crate::{
    address::resolve,
    report::{self, DestinationReport},
};

/// A page's size, as guest offsets count it.
const PAGE: u64 = PAGE_SIZE as u64;

/// How vCPU faults on pages not loaded yet reach the loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The module queues an event and the vCPU sleeps until the page is loaded.
    Queue,
    /// The module signals the vCPU thread, whose handler asks for the page and waits.
    Signal,
}

/// How long the destination runs the guest once its pages are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RunUntil {
    /// Until the project's test guest (or Linux test guest) has checked all its memory
    /// `--check-sweeps` times, as it reports on its I/O ports; then the destination stops
    /// it.
    Checked,
    /// Until the guest powers off: any guest.
    PowerOff,
}

/// What `muserload-loader receive` was asked.
pub struct ReceiveOptions {
    /// The address to listen on.
    pub listen: String,
    /// The fault mode.
    pub mode: Mode,
    /// How long to run the guest once its pages are loaded.
    pub until: RunUntil,
    /// How many complete checks of its memory the guest must make here before the
    /// destination stops it ([`RunUntil::Checked`]).
    pub check_sweeps: u64,
    /// How long the guest may take to make them, or to power off.
    pub timeout: Duration,
    /// How long to wait for the source to reconnect after a connection broke.
    pub recover_timeout: Duration,
    /// Where to write the report as JSON.
    pub report_json: Option<PathBuf>,
    /// Where to draw the timeline (SVG).
    pub plot: Option<PathBuf>,
}

/// Receives a guest and runs it until it has checked its memory, or powered off.
pub fn receive(options: ReceiveOptions) -> Result<(), ReceiveError> {
    let listener = listen(&options.listen)?;
    let (stream, requests, accepted) = link::accept_source(&listener)?;
    let arrival = Arrival::receive(stream, requests, faults::fault_mode(options.mode))?;
    let guest = Resumed::start(arrival, options.mode)?;
    let times = guest.load_all(&listener, options.recover_timeout, accepted)?;
    let stopped = match options.until {
        RunUntil::Checked => guest.check(options.check_sweeps, options.timeout)?,
        RunUntil::PowerOff => guest.run_until_power_off(options.timeout)?,
    };
    let report = stopped.report(&times)?;
    publish(&report, &stopped, &options)?;
    stopped.verdict()
}

/// Listens on `addr`, and says where (the port may have been 0).
fn listen(addr: &str) -> Result<TcpListener, ReceiveError> {
    let addr = resolve(addr)?;
    let listener =
        TcpListener::bind(addr).map_err(|source| ReceiveError::Listen { addr, source })?;
    let local = listener.local_addr().map_err(ReceiveError::LocalAddr)?;
    eprintln!("muserload-loader: listening on {local}");
    Ok(listener)
}

/// Prints `report`, writes it as JSON and draws the timeline if asked.
fn publish(
    report: &DestinationReport,
    stopped: &Stopped,
    options: &ReceiveOptions,
) -> Result<(), ReceiveError> {
    println!("{}", report.table());
    if let Some(path) = &options.report_json {
        report::write_json(path, report)?;
    }
    if let Some(path) = &options.plot {
        let title = format!(
            "{} of a {} MiB guest, {} mode",
            report.kind_name(),
            stopped.vm.ram().size() >> 20,
            report.mode
        );
        stopped.loading.timeline.plot(path, &title)?;
    }
    Ok(())
}
