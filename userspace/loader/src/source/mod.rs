//! The source: runs the test guest and, when told, migrates it post-copy: it pauses the
//! vCPUs, sends their state, the devices' state and a map of the zero pages, then serves
//! the destination's page requests ahead of a background stream of every other page, until
//! the destination says every page is loaded.
//!
//! [`run`] boots the guest and waits until it is time to migrate; `migrate` takes the
//! migration's steps, `serve` serves post-copy, `link` opens the connections to the
//! destination and opens them again when they break, `zero` tells zero pages apart.

mod error;
mod link;
mod migrate;
mod serve;
mod zero;

use std::{
    io::BufRead,
    path::PathBuf,
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

pub use self::error::RunError;
use crate::{
    boot::{self, LinuxGuest, TestGuestConfig},
    interrupted::NoFaults,
    memory::GuestRam,
    protocol::Kind,
    report,
    vcpu::{GuestStopped, Machine},
    vm::Vm,
};

/// The guest to run.
pub enum Guest {
    /// The built-in test guest.
    Test {
        /// Its image.
        image: PathBuf,
        /// What it does.
        config: TestGuestConfig,
    },
    /// Linux.
    Linux {
        /// The bzImage.
        kernel: PathBuf,
        /// The initramfs.
        initrd: PathBuf,
        /// The command line.
        cmdline: String,
    },
}

/// What `muserload-loader run` was asked.
pub struct RunOptions {
    /// The guest.
    pub guest: Guest,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// Where to migrate to without being told on stdin.
    pub migrate_to: Option<String>,
    /// Migrate this long after the start...
    pub migrate_after: Option<Duration>,
    /// ...or once the guest has completed this many rounds.
    pub migrate_after_rounds: Option<u64>,
    /// Where to write the report as JSON.
    pub report_json: Option<PathBuf>,
    /// How to migrate.
    pub migration: Migration,
}

/// How to migrate.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Post-copy, pre-copy or hybrid.
    pub kind: Kind,
    /// Hybrid: pre-copy rounds before the switch (after the first full pass).
    pub rounds: u32,
    /// Pre-copy: switch once what is left could be sent within this time...
    pub downtime_target: Duration,
    /// ...or, if it never can, after this many rounds (or [`precopy::MAX_TRAFFIC`](crate::precopy::MAX_TRAFFIC) times
    /// RAM sent).
    pub max_rounds: u32,
    /// Post-copy: how long to keep reconnecting after a connection broke.
    pub recover_timeout: Duration,
}

/// Runs the test guest, and migrates it if asked.
pub fn run(options: RunOptions) -> Result<(), RunError> {
    let ram = GuestRam::new(options.ram_size)?;
    let entry = match &options.guest {
        Guest::Test { image, config } => boot::load_test_guest(&ram, image, *config)?,
        Guest::Linux {
            kernel,
            initrd,
            cmdline,
        } => boot::load_linux(
            &ram,
            LinuxGuest {
                kernel,
                initrd,
                cmdline,
            },
        )?,
    };
    let vm = Arc::new(Vm::new(ram, Box::new(std::io::stdout()))?);
    let vcpu = vm.boot_vcpu(0, &entry)?;
    let started = Instant::now();
    let machine = Machine::start(vm.clone(), vec![vcpu], Arc::new(NoFaults))?;

    let Some(destination) = wait_for_migrate(&machine, &options, started)? else {
        machine.stop()?;
        eprintln!("muserload-loader: the guest powered off");
        return Ok(());
    };
    let report = migrate::migrate(machine, &destination, &options.migration)?;
    println!("{}", report.table());
    if let Some(path) = &options.report_json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// Waits until it is time to migrate: `--migrate-after`, `--migrate-after-rounds`, or a
/// `migrate ADDR` line on stdin. Returns the destination, or none if the guest powered
/// off first.
fn wait_for_migrate(
    machine: &Machine,
    options: &RunOptions,
    started: Instant,
) -> Result<Option<String>, Arc<GuestStopped>> {
    let (tx, rx) = mpsc::channel();
    // Commands on stdin, only when no destination was given: a loader started in the
    // background of a shell that read its terminal would be stopped by SIGTTIN, vCPUs and
    // all. The thread is left blocked in read() once the migration starts.
    let interactive = options.migrate_to.is_none();
    interactive.then(|| {
        thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("migrate"), Some(addr)) => {
                        let _ = tx.send(addr.to_owned());
                    }
                    (Some("status"), None) | (None, _) => {}
                    _ => eprintln!("muserload-loader: commands: migrate HOST:PORT, status"),
                }
            }
        })
    });
    let devices = machine.vm().devices();
    loop {
        if let Some(failure) = machine.failure() {
            return Err(failure);
        }
        if machine.powered_off() {
            return Ok(None);
        }
        if let Ok(addr) = rx.try_recv() {
            return Ok(Some(addr));
        }
        if let Some(addr) = &options.migrate_to {
            let due_time = options
                .migrate_after
                .is_some_and(|after| started.elapsed() >= after);
            let due_rounds = options
                .migrate_after_rounds
                .is_some_and(|rounds| devices.report().rounds >= rounds);
            let no_condition =
                options.migrate_after.is_none() && options.migrate_after_rounds.is_none();
            if due_time || due_rounds || no_condition {
                return Ok(Some(addr.clone()));
            }
        }
        devices.wait_report(Duration::from_millis(50), |_| false);
    }
}
