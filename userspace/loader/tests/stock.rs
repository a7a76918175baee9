//! A stock distribution kernel with a third-party workload, as a new user would run one:
//! Debian's kernel and Debian's `stress-ng --vm ... --verify` (vm/install-prereqs.sh
//! downloads them, vm/lib.sh packs them), migrated in every kind and mode mid-workload,
//! then run at the destination until the guest powers off. `stress-ng` checks every word
//! it wrote; a lost write fails it, and its exit status fails the test. They need /dev/kvm
//! and /dev/muserload, so they run in the test VM; their names contain "linux_guest": the
//! suite skips them under KASAN, where a nested Linux takes minutes (vm/guest/run-tests).

#[allow(
    dead_code,
    reason = "the test files share this module; this one needs little of it"
)]
mod common;

use std::{
    fs::{self, File},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use common::{
    assert_clocks_kept, json, loader, migrate_retrying_nested_deaths, scratch, u, wait_or_kill,
    Destination, Guest, Line, Migrated, Waited,
};
use serde_json::Value;

/// What `stress-ng` does: one worker rewriting and checking 64 MiB in every way it knows,
/// for long enough to be migrated mid-run (at its first heartbeat, 2 s in) and to go on
/// at the destination.
const STRESS: &str = "--vm 1 --vm-bytes 64M --verify --timeout 20s";

/// What the guest's init prints when `stress-ng` found every word it wrote.
const PASSED: &str = "guest-init: stress-ng exited with status 0";

/// Whether `console` has a line containing `text`.
fn says(console: &[Line], text: &str) -> bool {
    console.iter().any(|line| line.text.contains(text))
}

/// Migrates the stock guest (`kind`, faults in `mode`) and runs it at the destination until
/// it powers off; checks that stress-ng passed there and that the guest's clocks held;
/// returns both reports.
fn migrate(name: &str, kind: &str, mode: &str) -> (Value, Value) {
    let dir = scratch(name);
    let (src_json, dst_json) = (dir.join("source.json"), dir.join("destination.json"));
    let guest = Guest::stock(STRESS);
    let Migrated {
        destination,
        source_console,
        between: (),
    } = migrate_retrying_nested_deaths(&guest, kind, &src_json, || {
        let destination = Destination::start(&[
            "--mode",
            mode,
            "--run-until",
            "power-off",
            "--report-json",
            dst_json.to_str().expect("path"),
        ]);
        let to = destination.addr.clone();
        (destination, (), to)
    });
    assert!(destination.ok, "the destination failed");
    assert!(
        says(&source_console, "guest-init: running stress-ng"),
        "the guest was migrated before stress-ng ran"
    );
    assert!(
        !says(&source_console, "guest-init: stress-ng "),
        "stress-ng ended before the migration"
    );
    assert!(
        says(&destination.console, PASSED),
        "stress-ng did not pass at the destination"
    );
    assert!(
        destination
            .stderr
            .contains("muserload-loader: the guest powered off"),
        "the destination did not say that the guest powered off"
    );
    let (src, dst) = (json(&src_json), json(&dst_json));
    assert_clocks_kept(
        &source_console,
        &destination.console,
        Duration::from_micros(u(&dst, "downtime_us")),
    );
    // Zero pages never go over the wire, and the pause reads no page the guest never
    // touched.
    assert!(u(&src, "zero_pages") > 0);
    assert_eq!(u(&src, "zero_pages"), u(&dst, "zero_pages"));
    assert_eq!(u(&src, "zero_pages_sent"), 0);
    assert_eq!(
        u(&src, "pages_faulted_in"),
        0,
        "pages the source faulted in"
    );
    (src, dst)
}

// Post-copy in both fault modes: the vCPU faults on pages still at the source.

#[test]
fn post_copy_of_a_stock_linux_guest() {
    let (_, dst) = migrate("stock-post-copy", "post-copy", "queue");
    assert!(u(&dst, "faults") > 0 && u(&dst, "pages_requested") > 0);
}

#[test]
fn post_copy_of_a_stock_linux_guest_in_signal_mode() {
    let (_, dst) = migrate("stock-signal", "post-copy", "signal");
    assert!(u(&dst, "faults") > 0 && u(&dst, "pages_requested") > 0);
}

#[test]
fn pre_copy_of_a_stock_linux_guest() {
    let (src, dst) = migrate("stock-pre-copy", "pre-copy", "queue");
    assert!(u(&src, "precopy_rounds") >= 1);
    assert_eq!(u(&dst, "pages_requested"), 0);
}

#[test]
fn hybrid_of_a_stock_linux_guest() {
    let (src, dst) = migrate("stock-hybrid", "hybrid", "queue");
    assert_eq!(u(&src, "precopy_rounds"), 1);
    assert!(u(&dst, "precopy_pages") > 0);
}

/// A guest that powers off without being migrated ends its loader: status 0, and a line
/// that says so.
#[test]
fn a_stock_linux_guest_that_powers_off_ends_the_loader() {
    let guest = Guest::stock("--vm 1 --vm-bytes 16M --verify --timeout 2s");
    let dir = scratch("stock-power-off");
    let (console, stderr) = (dir.join("console"), dir.join("stderr"));
    let file = |path: &PathBuf| File::create(path).expect("an output file");
    let mut child = loader()
        .arg("run")
        .args(&guest.args)
        .stdin(Stdio::null())
        .stdout(file(&console))
        .stderr(file(&stderr))
        .spawn()
        .expect("starting the loader");
    let waited = wait_or_kill(&mut child, "the loader");
    let read =
        |path: &PathBuf| String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    let (console, stderr) = (read(&console), read(&stderr));
    eprint!("{console}{stderr}");
    assert!(waited == Waited::Exited { ok: true }, "the loader failed");
    assert!(console.contains(PASSED), "stress-ng did not pass");
    assert_eq!(stderr.trim_end(), "muserload-loader: the guest powered off");
}
