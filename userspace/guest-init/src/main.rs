//! `/init` of a Linux guest that runs one command and powers off: the loader's stock-kernel
//! guest, whose command is a third-party workload (`stress-ng --vm ... --verify`).
//!
//! It mounts `/proc`, `/sys`, `/dev` and `/tmp`, runs the command the kernel command line
//! gives after `--` (the kernel hands those words to init as its arguments, and the
//! `name=value` words it does not know as environment variables), prints the guest's
//! wall-clock time every [`HEARTBEAT`] while it runs and how it ended, then powers the
//! guest off. Without a power-off device Linux halts instead, which `muserload-loader` takes
//! as a power-off. Every line starts with `guest-init: `; those that give the guest's
//! wall-clock time end with `clock SECONDS.NANOSECONDS`, which the loader's tests hold
//! against the host's.

use std::{
    process::{Command, ExitStatus},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use muserload_test_guest_abi::ClockStamp;
use nix::{
    mount::{mount, MsFlags},
    sys::reboot::{reboot, RebootMode},
    unistd::sync,
};

/// How often the guest's wall-clock time is printed while the command runs.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Where the command is looked for.
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The guest's wall-clock time, as lines end: `clock SECONDS.NANOSECONDS` since the epoch.
fn clock() -> ClockStamp {
    ClockStamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Mounts what a command expects to find; one that fails is said and skipped.
fn mount_filesystems() {
    for (kind, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/tmp"),
    ] {
        let mounted = std::fs::create_dir_all(target)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                mount(
                    Some(kind),
                    target,
                    Some(kind),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(e) = mounted {
            println!("guest-init: mounting {kind} on {target}: {e}");
        }
    }
}

/// Runs `command`, printing a heartbeat while it runs; returns how it ended.
fn run(command: &[String]) -> std::io::Result<ExitStatus> {
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .env("PATH", PATH)
        .spawn()?;
    let (done, ended) = mpsc::channel::<()>();
    let heartbeat = thread::spawn(move || {
        while ended.recv_timeout(HEARTBEAT) == Err(mpsc::RecvTimeoutError::Timeout) {
            println!("guest-init: heartbeat, {}", clock());
        }
    });
    let status = child.wait();
    drop(done);
    let _ = heartbeat.join();
    status
}

/// How `status` reads: "exited with status N" or "killed by signal N".
fn ending(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

fn main() {
    mount_filesystems();
    let command: Vec<String> = std::env::args().skip(1).collect();
    if command.is_empty() {
        println!("guest-init: no command: give one after -- on the kernel command line");
    } else {
        let name = &command[0];
        println!("guest-init: running {}, {}", command.join(" "), clock());
        match run(&command) {
            Ok(status) => println!("guest-init: {name} {}, {}", ending(status), clock()),
            Err(e) => println!("guest-init: {name}: {e}"),
        }
    }
    println!("guest-init: powering off");
    sync();
    // Returns only if it failed; init must not exit (the kernel would panic).
    let Err(e) = reboot(RebootMode::RB_POWER_OFF);
    println!("guest-init: power-off: {e}");
    loop {
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn an_ending_says_the_status_or_the_signal() {
        assert_eq!(ending(ExitStatus::from_raw(2 << 8)), "exited with status 2");
        assert_eq!(ending(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
