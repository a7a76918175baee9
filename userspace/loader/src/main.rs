//! `muserload-loader`: a KVM VMM whose guest RAM is a muserload object, and that migrates
//! a running guest post-copy over TCP.
//!
//! ```text
//! muserload-loader receive --listen 0.0.0.0:4444 --mode queue
//! muserload-loader run --test-guest muserload-test-guest --mem-mib 256 \
//!     --working-set-mib 32 --migrate-to 127.0.0.1:4444 --migrate-after 2
//! ```

mod address;
mod backlog;
mod bitmap;
mod boot;
mod cli;
mod destination;
mod devices;
mod error;
mod interrupted;
mod lock;
mod memory;
mod power_off;
mod precopy;
mod protocol;
mod report;
mod source;
mod timeline;
mod vcpu;
mod vm;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command, Task},
    error::Error,
};

/// Runs the command; an error is one line on stderr and exit status 1.
fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("muserload-loader: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Does what `command` asks.
fn run(command: Command) -> Result<(), Error> {
    match command.task()? {
        Task::Run(options) => source::run(options)?,
        Task::Receive(options) => destination::receive(options)?,
    }
    Ok(())
}
