//! `muserload-fuzz`: drives random sequences of the whole muserload ABI from several
//! processes and threads, and checks every loaded page against a shadow model.
//!
//! Each round sets up an object, arms runs of its pages in queue or signal mode, and forks
//! worker processes whose threads load (every kind, ranged, vectored and with
//! `MUSERLOAD_IOC_RESOLVE`, valid and invalid), arm, touch from user and kernel mode, fork
//! children that touch and exit or are killed, map, split, move, shrink and protect extra
//! mappings, and now and then abort the object or exit, while a resolver thread serves the
//! events (`read()` or `MUSERLOAD_IOC_RESOLVE`, blocking or not). Loads and arms are
//! logged in shared memory; once every worker is gone, the checker decides from the log
//! whether any page was lost, duplicated or stale (see `round::check`).
//!
//! ```text
//! muserload-fuzz [--seed N] [--duration SECONDS] [--ops N] [--procs N] [--threads N]
//!                [--inject PERCENT]
//! ```
//!
//! Prints KTAP (one test), the seed first, so that a failure can be run again with it.
//! Without arguments: a 60 s run with a random seed, as `make test` runs it.

mod abi;
mod inject;
mod model;
mod resolve;
mod rng;
mod round;
mod shared;
mod sys;
mod target;
mod worker;

use std::{
    sync::atomic::Ordering::SeqCst,
    time::{Duration, Instant, SystemTime},
};

use inject::Injector;
use rng::Rng;
use round::Shape;
use shared::Shared;

/// What can stop a run before it checks anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// A system call needed to set a round up failed.
    #[error("{0}: errno {1}")]
    Sys(&'static str, i32),
    /// The shared log could not be mapped.
    #[error("cannot map the shared log: {0}")]
    Map(std::io::Error),
    /// A round's log filled before its setup was done.
    #[error("the round's log is full")]
    LogFull,
}

struct Options {
    seed: u64,
    duration: Duration,
    ops: u64,
    shape: Shape,
    inject: u32,
}

fn parse() -> Result<Options, Error> {
    let mut options = Options {
        seed: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        duration: Duration::from_secs(60),
        ops: u64::MAX,
        shape: Shape {
            procs: 2,
            threads: 2,
            slots: 8,
        },
        inject: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
        let number = || -> Result<u64, Error> {
            let v = value.trim_start_matches("0x");
            let radix = if v.len() < value.len() { 16 } else { 10 };
            u64::from_str_radix(v, radix)
                .map_err(|_| Error::Usage(format!("{flag}: not a number: {value}")))
        };
        match flag.as_str() {
            "--seed" => options.seed = number()?,
            "--duration" => options.duration = Duration::from_secs(number()?),
            "--ops" => options.ops = number()?,
            "--procs" => options.shape.procs = number()?.clamp(1, 16) as usize,
            "--threads" => options.shape.threads = number()?.clamp(1, 16) as usize,
            "--inject" => options.inject = number()?.min(100) as u32,
            _ => return Err(Error::Usage(format!("unknown option {flag}"))),
        }
    }
    Ok(options)
}

fn run(options: &Options) -> Result<bool, Error> {
    println!("TAP version 13");
    println!("1..1");
    println!(
        "# muserload-fuzz --seed {:#x} --duration {} --ops {} --procs {} --threads {} --inject {}",
        options.seed,
        options.duration.as_secs(),
        options.ops,
        options.shape.procs,
        options.shape.threads,
        options.inject
    );
    let shared = Shared::new().map_err(Error::Map)?;
    sys::become_subreaper().map_err(|e| Error::Sys("PR_SET_CHILD_SUBREAPER", e))?;
    target::install_handler(&[libc::SIGUSR1, libc::SIGUSR2])
        .map_err(|e| Error::Sys("sigaction", e))?;
    sys::interrupt_with(resolve::STOP_SIGNAL).map_err(|e| Error::Sys("sigaction", e))?;
    let injector = if options.inject == 0 {
        None
    } else {
        Injector::new(options.inject)
            .inspect_err(|why| println!("# fault injection: off: {why}"))
            .ok()
    };
    let threads = (options.shape.procs * options.shape.threads) as u64;
    let mut rng = Rng::new(options.seed, u64::MAX);
    let start = Instant::now();
    // Ends the run when its time is up: workers stop within an operation, and the round
    // then ends as any other.
    let duration = options.duration;
    let stopper = std::thread::spawn(move || {
        while start.elapsed() < duration && !shared.stop.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        shared.stop.store(true, SeqCst);
    });
    let mut rounds = 0;
    let mut injected = 0;
    while !shared.stop.load(SeqCst) && shared.ops.load(SeqCst) < options.ops {
        rounds += 1;
        let seed = rng.next();
        let left = options.ops - shared.ops.load(SeqCst);
        let ops = (left / threads).clamp(1, rng.range(50, 600) as u64);
        // One round in four fails allocations.
        let inject = injector.as_ref().filter(|_| rng.one_in(4));
        injected += u64::from(inject.is_some());
        if let Err(e) = round::run(shared, &options.shape, rounds, seed, ops, inject) {
            println!("# round {rounds} (seed {seed:#x}): {e}");
            shared.failures.fetch_add(1, SeqCst);
        }
        if shared.failures.load(SeqCst) > 0 {
            println!(
                "# round {rounds} (seed {seed:#x}) failed; the run's seed is {:#x}",
                options.seed
            );
            break;
        }
    }
    shared.stop.store(true, SeqCst);
    let _ = stopper.join();
    let secs = start.elapsed().as_secs_f64();
    let ops = shared.ops.load(SeqCst);
    let failures = shared.failures.load(SeqCst);
    println!(
        "# {} calls failed with ENOMEM in the rounds with fault injection",
        shared.enomem.load(SeqCst)
    );
    println!(
        "# {} log records reserved and never written: their writers died first",
        shared.unwritten.load(SeqCst)
    );
    println!(
        "# {ops} operations in {secs:.1} s ({:.0} ops/s), {rounds} rounds ({injected} with fault injection), {failures} failures, seed {:#x}",
        ops as f64 / secs,
        options.seed
    );
    for (op, _) in worker::OPS {
        let count = shared.op_count[*op as usize].load(SeqCst);
        let nanos = shared.op_nanos[*op as usize].load(SeqCst);
        if let Some(each) = nanos.checked_div(count) {
            println!("# {op:?}: {count} operations, {} us each", each / 1000);
        }
    }
    Ok(failures == 0)
}

fn main() {
    let ok = match parse().and_then(|options| run(&options)) {
        Ok(ok) => ok,
        Err(e) => {
            println!("# {e}");
            false
        }
    };
    println!("{} 1 fuzz", if ok { "ok" } else { "not ok" });
    println!(
        "# Totals: pass:{} fail:{} xfail:0 xpass:0 skip:0 error:0",
        u8::from(ok),
        u8::from(!ok)
    );
    std::process::exit(if ok { 0 } else { 1 });
}
