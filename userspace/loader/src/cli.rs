//! The command line: what `muserload-loader run` and `receive` take, checked and turned
//! into the options of [`crate::source::run`] and [`crate::destination::receive`].

use std::{
    path::PathBuf,
    time::{Duration, TryFromFloatSecsError},
};

use clap::{Parser, Subcommand};

use crate::{
    boot::TestGuestConfig,
    destination::{Mode, ReceiveOptions, RunUntil},
    protocol::Kind,
    source::{Guest, Migration, RunOptions},
};

/// A command line the loader cannot run (beyond what `clap` checks).
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A duration that is not a number of seconds (negative, too large, not a number).
    #[error("{option} {value}: not a number of seconds")]
    Seconds {
        /// The option.
        option: &'static str,
        /// Its value.
        value: f64,
        /// Why it is none.
        #[source]
        source: TryFromFloatSecsError,
    },
    /// Neither guest, or parts of both.
    #[error("give --test-guest, or --kernel and --initrd")]
    Guest,
}

/// What a command asks of the loader.
pub enum Task {
    /// Run a guest, and migrate it.
    Run(RunOptions),
    /// Receive a guest.
    Receive(ReceiveOptions),
}

/// A KVM VMM whose guest RAM is a muserload object: runs the built-in test guest and
/// migrates it post-copy.
#[derive(Parser)]
#[command(version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The loader's commands.
#[derive(Subcommand)]
pub enum Command {
    /// Run a guest (the test guest, or Linux); migrate it when told (`--migrate-to`, or
    /// `migrate HOST:PORT` on stdin).
    Run {
        /// The test guest's image (muserload-test-guest, an ELF file).
        #[arg(long, required_unless_present = "kernel", conflicts_with = "kernel")]
        test_guest: Option<PathBuf>,
        /// A Linux kernel (bzImage) to boot instead.
        #[arg(long, requires = "initrd")]
        kernel: Option<PathBuf>,
        /// The Linux guest's initramfs.
        #[arg(long, requires = "kernel")]
        initrd: Option<PathBuf>,
        /// More of the Linux guest's command line (after `console=ttyS0 reboot=k panic=-1
        /// no-kvmapf`). The project's Linux test guest takes its workload's sizes here:
        /// `workload_mib=`, `working_set_mib=`, `sweep_mib=`.
        /// Words after `--` go to the guest's init as its arguments.
        #[arg(
            long,
            requires = "kernel",
            default_value = "",
            allow_hyphen_values = true
        )]
        cmdline: String,
        /// Guest RAM in MiB.
        #[arg(long, default_value_t = 256)]
        mem_mib: u64,
        /// MiB the test guest rewrites every round.
        #[arg(long, default_value_t = 32, conflicts_with = "kernel")]
        working_set_mib: u64,
        /// MiB the test guest checks every round (a full check of its memory takes several).
        #[arg(long, default_value_t = 8, conflicts_with = "kernel")]
        sweep_mib: u64,
        /// Migrate to this destination (HOST:PORT, where `muserload-loader receive` listens).
        #[arg(long)]
        migrate_to: Option<String>,
        /// Seconds to run before migrating.
        #[arg(long, requires = "migrate_to")]
        migrate_after: Option<f64>,
        /// Rounds the guest completes before migrating.
        #[arg(long, requires = "migrate_to")]
        migrate_after_rounds: Option<u64>,
        /// Write the report as JSON here.
        #[arg(long)]
        report_json: Option<PathBuf>,
        /// How to migrate.
        #[arg(long, value_enum, default_value_t = Kind::PostCopy)]
        migration: Kind,
        /// Hybrid: pre-copy rounds after the first full pass, then post-copy.
        #[arg(long, default_value_t = 0)]
        precopy_rounds: u32,
        /// Pre-copy switches over once the pages left could be sent within this time...
        #[arg(long, default_value_t = 50)]
        downtime_target_ms: u64,
        /// ...or, for a guest that dirties memory faster than that, after this many rounds
        /// after the first full pass, or once it has sent 3 times RAM (Xen's limits).
        #[arg(long, default_value_t = 30)]
        max_rounds: u32,
        /// Seconds to keep reconnecting if a connection breaks in post-copy.
        #[arg(long, default_value_t = 60.0)]
        recover_timeout: f64,
    },
    /// Receive a migrating guest and run it until it has checked all its memory, or until
    /// it powers off.
    Receive {
        /// Address to listen on (HOST:PORT).
        #[arg(long)]
        listen: String,
        /// How faults on pages not received yet reach the loader.
        #[arg(long, value_enum, default_value_t = Mode::Queue)]
        mode: Mode,
        /// How long to run the guest once its pages are loaded: until the project's test
        /// guests have checked their memory, or until any guest powers off.
        #[arg(long, value_enum, default_value_t = RunUntil::Checked)]
        run_until: RunUntil,
        /// Complete checks of its memory the guest makes here before it is stopped (0: stop
        /// once every page is loaded).
        #[arg(long, default_value_t = 1)]
        check_sweeps: u64,
        /// Seconds the guest may take for them (default 600), or to power off (default: no
        /// limit); then the destination stops it.
        #[arg(long)]
        timeout: Option<f64>,
        /// Seconds to wait for the source to reconnect if a connection breaks in post-copy;
        /// then the guest is stopped.
        #[arg(long, default_value_t = 60.0)]
        recover_timeout: f64,
        /// Write the report as JSON here.
        #[arg(long)]
        report_json: Option<PathBuf>,
        /// Draw the migration's timeline here (SVG): pages loaded per ms by cause, vCPU
        /// fault waits.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

impl Command {
    /// The task the command asks for, its arguments checked.
    pub fn task(self) -> Result<Task, ArgsError> {
        match self {
            Command::Run {
                test_guest,
                kernel,
                initrd,
                cmdline,
                mem_mib,
                working_set_mib,
                sweep_mib,
                migrate_to,
                migrate_after,
                migrate_after_rounds,
                report_json,
                migration,
                precopy_rounds,
                downtime_target_ms,
                max_rounds,
                recover_timeout,
            } => {
                let migrate_after = migrate_after
                    .map(|s| seconds(s, "--migrate-after"))
                    .transpose()?;
                let recover_timeout = seconds(recover_timeout, "--recover-timeout")?;
                let guest = match (test_guest, kernel, initrd) {
                    (Some(image), None, None) => Guest::Test {
                        image,
                        config: TestGuestConfig {
                            working_set_pages: working_set_mib << 8,
                            sweep_pages: sweep_mib << 8,
                        },
                    },
                    (None, Some(kernel), Some(initrd)) => Guest::Linux {
                        kernel,
                        initrd,
                        // The serial console. A panic reboots, and a reboot ends in a triple
                        // fault, which ends the loader: the machine has no keyboard
                        // controller, and the kernel falls back to one. No asynchronous page
                        // faults, which KVM would raise for pages a vCPU waits on.
                        cmdline: format!("console=ttyS0 reboot=k panic=-1 no-kvmapf {cmdline}"),
                    },
                    _ => return Err(ArgsError::Guest),
                };
                Ok(Task::Run(RunOptions {
                    guest,
                    ram_size: mem_mib << 20,
                    migrate_to,
                    migrate_after,
                    migrate_after_rounds,
                    report_json,
                    migration: Migration {
                        kind: migration,
                        rounds: precopy_rounds,
                        downtime_target: Duration::from_millis(downtime_target_ms),
                        max_rounds,
                        recover_timeout,
                    },
                }))
            }
            Command::Receive {
                listen,
                mode,
                run_until,
                check_sweeps,
                timeout,
                recover_timeout,
                report_json,
                plot,
            } => Ok(Task::Receive(ReceiveOptions {
                listen,
                mode,
                until: run_until,
                check_sweeps,
                timeout: match (timeout, run_until) {
                    (Some(timeout), _) => seconds(timeout, "--timeout")?,
                    (None, RunUntil::Checked) => CHECK_TIMEOUT,
                    (None, RunUntil::PowerOff) => NO_LIMIT,
                },
                recover_timeout: seconds(recover_timeout, "--recover-timeout")?,
                report_json,
                plot,
            })),
        }
    }
}

/// The time a guest has for its checks by default.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);
/// No time limit: a century.
const NO_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `value` seconds, as the duration `option` gives.
fn seconds(value: f64, option: &'static str) -> Result<Duration, ArgsError> {
    Duration::try_from_secs_f64(value).map_err(|source| ArgsError::Seconds {
        option,
        value,
        source,
    })
}
