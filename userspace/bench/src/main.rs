//! `muserload-bench`: muserload against userfaultfd, side by side in one boot of one
//! kernel, with the same sizes and the same CPU placement. Every case verifies the content
//! of every page it loaded; a mismatch fails the run.
//!
//! Usage: `muserload-bench [--pages N] [--repeat N] [--json FILE]
//! [--only move|queue|scaling|signal|bulk] [--profile]` in the guest (`--repeat`: how many
//! times every case runs, 5 by default, the repetition the outer loop; `--only`: one group
//! of cases, to run again; `--profile`: where each case's time goes, sampled with perf, `make
//! bench-profile`, once each), and
//! `muserload-bench --plot RESULTS.json OUT.svg` on the host to draw the results;
//! `muserload-bench --migrations MIGRATIONS.json OUT.svg` tabulates and draws
//! `make bench-migrate`'s.
//!
//! `muserload-bench --vcpus [--counts N,N,...] [--slice-mib N] [--repeat N] [--json FILE]`
//! (`make bench-vcpus`): demand paging of a nested KVM VM whose vCPUs all fault at once
//! ([`vcpus`]); `muserload-bench --plot-vcpus RESULTS.json OUT.svg` tabulates and draws it.

mod anon;
mod bulk;
mod handler_slot;
mod migrations;
mod pattern;
mod plot;
mod profile;
mod report;
mod roundtrip;
mod uffd;
mod vcpus;

use std::{process::ExitCode, time::Instant};

use nix::{
    errno::Errno,
    sched::{sched_setaffinity, CpuSet},
    unistd::Pid,
};

use report::Measurement;

/// An error of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// muserload failed.
    #[error(transparent)]
    Muserload(#[from] muserload::Error),
    /// A userfaultfd call failed.
    #[error("{op} failed: {errno}")]
    Uffd {
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// Another system call failed.
    #[error("{op} failed: {errno}")]
    Sys {
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// A loaded page did not hold what was loaded.
    #[error("{case} ({implementation}): page {page} holds the wrong data")]
    Mismatch {
        /// The case.
        case: &'static str,
        /// The implementation.
        implementation: &'static str,
        /// The page.
        page: usize,
    },
    /// A page of the nested VM (`--vcpus`) did not hold what was loaded, afterwards.
    #[error("{backend}: page {page} of the VM holds the wrong data")]
    VcpusMismatch {
        /// The backend.
        backend: String,
        /// The page.
        page: usize,
    },
    /// The nested VM's guest read wrong first words (`--vcpus`).
    #[error("{backend}: the guest read {pages} pages with the wrong data")]
    VcpusGuestMismatch {
        /// The backend.
        backend: String,
        /// How many pages.
        pages: usize,
    },
    /// The nested VM failed.
    #[error(transparent)]
    Machine(#[from] vcpus::MachineError),
    /// The object was aborted while the resolver still had faults to serve.
    #[error("the object was aborted with faults left to serve")]
    Aborted,
    /// A thread of the benchmark panicked.
    #[error("the {0} thread panicked")]
    Thread(&'static str),
    /// The picture could not be drawn.
    #[error("plotting failed: {0}")]
    Plot(String),
    /// A results file could not be read.
    #[error("{path}: {message}")]
    Results {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A bad command line.
    #[error(
        "usage: muserload-bench [--pages N] [--repeat N] [--json FILE] \
         [--only move|queue|scaling|signal|bulk] [--profile] ({0})"
    )]
    Usage(String),
}

/// The result of a benchmark step.
pub type Result<T> = std::result::Result<T, Error>;

/// The CPU every thread of a case runs on: faulter and resolver share it, as a vCPU and
/// its VMM's resolver do on a loaded host; it is the pinning stated next to each figure.
pub const CPU: usize = 0;

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|errno| Error::Sys {
        op: "CpuSet::set",
        errno,
    })?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|errno| Error::Sys {
        op: "sched_setaffinity",
        errno,
    })
}

/// A group of cases, to run alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// The zero-copy (MOVE) cases: run again with the module's page pool off.
    Move,
    /// The queue-mode round trips with one faulter.
    Queue,
    /// Queue-mode throughput with 2, 4 and 8 faulters.
    Scaling,
    /// The signal-mode round trips.
    Signal,
    /// The bulk loads.
    Bulk,
}

struct Options {
    pages: usize,
    /// How many times every case runs, the repetition the outer loop: a noisy spell of the
    /// emulated machine then hits every case once instead of one case every time.
    repeat: usize,
    json: Option<String>,
    /// `--only`: one group; `None`: every case.
    only: Option<Group>,
    /// `--profile`: sample every case with perf and print where its time went.
    profile: bool,
}

/// `value` as a number `valid` accepts; a usage error naming it as `what` otherwise.
pub(crate) fn number<T: std::str::FromStr>(
    value: &str,
    what: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T> {
    value
        .parse()
        .ok()
        .filter(|n| valid(n))
        .ok_or_else(|| Error::Usage(format!("bad {what} {value}")))
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options> {
    let mut options = Options {
        pages: 4096,
        repeat: 5,
        json: None,
        only: None,
        profile: false,
    };
    while let Some(arg) = args.next() {
        if arg == "--profile" {
            options.profile = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| Error::Usage(format!("{arg} needs a value")))?;
        match arg.as_str() {
            "--pages" => options.pages = number(&value, "page count", |&p| p >= 64 && p % 64 == 0)?,
            "--repeat" => options.repeat = number(&value, "repetition count", |&n| n >= 1)?,
            "--json" => options.json = Some(value),
            "--only" => {
                options.only = Some(match value.as_str() {
                    "move" => Group::Move,
                    "queue" => Group::Queue,
                    "scaling" => Group::Scaling,
                    "signal" => Group::Signal,
                    "bulk" => Group::Bulk,
                    _ => return Err(Error::Usage(format!("unknown group {value}"))),
                })
            }
            _ => return Err(Error::Usage(format!("unknown argument {arg}"))),
        }
    }
    Ok(options)
}

/// Runs the cases `options` pick, `--repeat` times over (once with `--profile`); returns
/// each case's repetitions combined and, with `--profile`, their profiles.
fn run(options: &Options) -> Result<(Vec<Measurement>, Vec<profile::CaseProfile>)> {
    pin(CPU)?;
    let mut profiles = Vec::new();
    if options.profile {
        profile::enable()?;
    }
    let repeat = if options.profile { 1 } else { options.repeat };
    // One list per repetition, the cases in the same order in each.
    let mut repetitions = Vec::with_capacity(repeat);
    for repetition in 1..=repeat {
        repetitions.push(run_once(options, repetition, repeat, &mut profiles)?);
    }
    Ok((report::combine(repetitions), profiles))
}

/// Runs the cases `options` pick once: repetition `repetition` of `repeat`.
fn run_once(
    options: &Options,
    repetition: usize,
    repeat: usize,
    profiles: &mut Vec<profile::CaseProfile>,
) -> Result<Vec<Measurement>> {
    let pages = options.pages;
    let mut results = Vec::new();
    // Each case says when it starts, so that a run that stops says where.
    let mut case = |name: &str, f: &dyn Fn() -> Result<Measurement>| -> Result<()> {
        eprintln!("# {name} ({repetition}/{repeat})");
        let measured = f()?;
        profiles.extend(profile::tally(&measured));
        results.push(measured);
        Ok(())
    };
    let all = options.only.is_none();
    if all {
        case("first touch", &|| bulk::first_touch(pages))?;
        case("memcpy", &|| bulk::memcpy_4k(pages))?;
    }
    let round_trips: &[roundtrip::Kind] = match options.only {
        None | Some(Group::Queue) => &[roundtrip::Kind::Copy, roundtrip::Kind::Move],
        Some(Group::Move) => &[roundtrip::Kind::Move],
        Some(Group::Signal | Group::Bulk | Group::Scaling) => &[],
    };
    let bulks: &[bulk::Kind] = match options.only {
        None | Some(Group::Bulk) => &[
            bulk::Kind::Move,
            bulk::Kind::RecvCopy,
            bulk::Kind::Copy,
            bulk::Kind::Zero,
        ],
        Some(Group::Move) => &[bulk::Kind::Move],
        Some(Group::Queue | Group::Signal | Group::Scaling) => &[],
    };
    for &kind in round_trips {
        case("queue, muserload", &|| {
            roundtrip::queue_muserload(pages, kind, 1)
        })?;
        case("queue, userfaultfd", &|| {
            roundtrip::queue_uffd(pages, kind, 1)
        })?;
    }
    if all || options.only == Some(Group::Scaling) {
        // Throughput as faulting threads grow, one resolver.
        for threads in [2, 4, 8] {
            let copy = roundtrip::Kind::Copy;
            case("scaling, muserload", &|| {
                roundtrip::queue_muserload(pages, copy, threads)
            })?;
            case("scaling, userfaultfd", &|| {
                roundtrip::queue_uffd(pages, copy, threads)
            })?;
        }
    }
    let signal_trips: &[roundtrip::Kind] = match options.only {
        None | Some(Group::Signal) => &[roundtrip::Kind::Copy, roundtrip::Kind::Move],
        Some(Group::Move) => &[roundtrip::Kind::Move],
        Some(Group::Queue | Group::Scaling | Group::Bulk) => &[],
    };
    for &kind in signal_trips {
        case("signal, muserload", &|| {
            roundtrip::signal_muserload(pages, kind)
        })?;
        case("signal, userfaultfd", &|| {
            roundtrip::signal_uffd(pages, kind)
        })?;
    }
    for &kind in bulks {
        case("bulk, muserload", &|| bulk::muserload(pages * 4, kind))?;
        case("bulk, userfaultfd", &|| bulk::uffd(pages * 4, kind))?;
    }
    Ok(results)
}

/// Reads a results file written as JSON.
fn read_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    let results_error = |message: String| Error::Results {
        path: json.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(json).map_err(|e| results_error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| results_error(e.to_string()))
}

/// `--plot RESULTS.json OUT.svg`.
fn plot(json: &str, svg: &str) -> Result<()> {
    let results: Vec<Measurement> = read_json(json)?;
    plot::plot(&results, svg)
}

/// `--migrations RESULTS.json OUT.svg`: `make bench-migrate`'s table and picture.
fn migrations(json: &str, svg: &str) -> Result<()> {
    let results: Vec<migrations::Migration> = read_json(json)?;
    migrations::print_tables(&results);
    migrations::plot(&results, svg)
}

/// `--plot-vcpus RESULTS.json OUT.svg`: `make bench-vcpus`'s table and picture.
fn plot_vcpus(json: &str, svg: &str) -> Result<()> {
    let points: Vec<vcpus::Point> = read_json(json)?;
    vcpus::print(&points);
    vcpus::plot(&points, svg)
}

/// Writes `value` as JSON to `path`.
fn write_json(path: &str, value: &impl serde::Serialize) -> std::result::Result<(), String> {
    serde_json::to_string_pretty(value)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(path, json))
        .map_err(|err| format!("writing {path}: {err}"))
}

/// `--vcpus ...`: the nested VM's demand paging.
fn vcpus_main(args: &[String]) -> ExitCode {
    let pairs: Vec<(String, String)> = args
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
        .collect();
    let json = pairs
        .iter()
        .find(|(a, _)| a == "--json")
        .map(|(_, v)| v.clone());
    let rest: Vec<(String, String)> = pairs.into_iter().filter(|(a, _)| a != "--json").collect();
    let options = match vcpus::parse(&rest) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("muserload-bench: {err}");
            return ExitCode::from(2);
        }
    };
    let points = match vcpus::main(&options) {
        Ok((points, seconds)) => {
            println!("# --vcpus took {seconds:.0} s");
            points
        }
        Err(err) => {
            eprintln!("muserload-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = json {
        if let Err(err) = write_json(&path, &points) {
            eprintln!("muserload-bench: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, json, svg] = args.as_slice() {
        if flag == "--plot" || flag == "--migrations" || flag == "--plot-vcpus" {
            let result = match flag.as_str() {
                "--plot" => plot(json, svg),
                "--plot-vcpus" => plot_vcpus(json, svg),
                _ => migrations(json, svg),
            };
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("muserload-bench: {err}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    if args.first().map(String::as_str) == Some("--vcpus") {
        return vcpus_main(&args[1..]);
    }
    let options = match parse(args.into_iter()) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("muserload-bench: {err}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let (results, profiles) = match run(&options) {
        Ok(run) => run,
        Err(err) => {
            eprintln!("muserload-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    report::print_table(&results);
    println!(
        "# {} pages per round-trip case, pinned to CPU {CPU}, each case {} times \
         (interleaved), {:.1} s; median us and pages/s: the median of the runs, [min, max] \
         beside; a ratio is better (<) or worse (>) only when the runs' ranges of median us \
         do not overlap (~: they do); muserload's MOVE cases take staging refills from the \
         module's page pool (unless pool_pages=0), which a worker zeroes on an unbound \
         workqueue (the idle vCPU)",
        options.pages,
        results.first().map_or(0, |m| m.runs),
        start.elapsed().as_secs_f64()
    );
    if options.profile {
        profile::print(&profiles);
    }
    if let Some(path) = &options.json {
        if let Err(err) = write_json(path, &results) {
            eprintln!("muserload-bench: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
