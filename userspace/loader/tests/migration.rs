//! Migrations of the test guest and of the Linux guest between two loader processes, in
//! every kind and mode, and the loader's answers to bad input. They need /dev/kvm and
//! /dev/muserload, so they run in the test VM.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Output, Stdio},
    thread,
    time::Duration,
};

use common::{
    assert_clocks_kept, check_reports, json, loader, migrate_retrying_nested_deaths, scratch,
    test_guest, u, Destination, Guest, Migrated,
};
use serde_json::Value;

/// Migrates a guest (`kind`: post-copy, pre-copy or hybrid; `mode`: queue or signal) and
/// checks both reports and the guest's clocks; returns the reports.
fn migrate(name: &str, kind: &str, mode: &str, guest: &Guest) -> (Value, Value) {
    let dir = scratch(name);
    let (src_json, dst_json) = (dir.join("source.json"), dir.join("destination.json"));
    let plot = dir.join("timeline.svg");
    let Migrated {
        destination,
        source_console,
        between: (),
    } = migrate_retrying_nested_deaths(guest, kind, &src_json, || {
        let destination = Destination::start(&[
            "--mode",
            mode,
            "--report-json",
            dst_json.to_str().expect("path"),
            "--plot",
            plot.to_str().expect("path"),
        ]);
        let to = destination.addr.clone();
        (destination, (), to)
    });
    assert!(destination.ok, "the destination failed");
    let (src, dst) = (json(&src_json), json(&dst_json));
    check_reports(&src, &dst);
    assert_clocks_kept(
        &source_console,
        &destination.console,
        Duration::from_micros(u(&dst, "downtime_us")),
    );
    let svg = std::fs::read_to_string(&plot).expect("the timeline");
    for label in ["requested", "streamed", "zero (local)", "vCPU fault wait"] {
        assert!(svg.contains(label), "{label} missing in the timeline");
    }
    (src, dst)
}

/// Post-copy: no page went more than twice, every page that is not zero went, and vCPUs
/// waiting on pages were served by requests far sooner than the stream brought everything.
fn post_copy(name: &str, mode: &str, guest: &Guest) {
    let (src, dst) = migrate(name, "post-copy", mode, guest);
    assert_eq!(u(&src, "precopy_pages"), 0);
    assert!(u(&src, "max_sends_per_page") <= 2);
    let normal = u(&dst, "normal_pages");
    assert!(u(&src, "pages_requested") + u(&src, "pages_streamed") >= normal);
    assert!(u(&dst, "bytes_received") < (normal + 64) * 4200 * 2);
    assert!(u(&dst, "faults") > 0 && u(&dst, "pages_requested") > 0);
    assert!(
        u(&dst, "fault_wait_p50_us") * 10 < u(&dst, "load_all_ms") * 1000,
        "median fault wait {} us against {} ms to load all pages",
        u(&dst, "fault_wait_p50_us"),
        u(&dst, "load_all_ms")
    );
}

/// Pre-copy: every page arrives before the guest resumes, so nothing is requested.
fn pre_copy(name: &str, guest: &Guest) {
    let (src, dst) = migrate(name, "pre-copy", "queue", guest);
    assert!(u(&src, "precopy_rounds") >= 1);
    assert!(u(&dst, "precopy_pages") >= u(&dst, "normal_pages"));
    assert_eq!(u(&dst, "pages_requested"), 0);
    assert_eq!(u(&dst, "discarded_pages"), 0);
}

/// Hybrid: pre-copy rounds, then what the guest kept writing comes post-copy.
fn hybrid(name: &str, guest: &Guest) {
    let (src, dst) = migrate(name, "hybrid", "queue", guest);
    // The first full pass, and by default no more.
    assert_eq!(u(&src, "precopy_rounds"), 1);
    assert!(u(&dst, "precopy_pages") > 0);
    // The working set is rewritten all the time: stale at the switch, fetched again.
    assert!(u(&dst, "discarded_pages") > 0);
    assert_eq!(u(&src, "discarded_pages"), u(&dst, "discarded_pages"));
}

#[test]
fn post_copy_in_queue_mode() {
    post_copy("queue", "queue", &Guest::test());
}

#[test]
fn post_copy_in_signal_mode() {
    post_copy("signal", "signal", &Guest::test());
}

#[test]
fn pre_copy_of_the_test_guest() {
    pre_copy("pre-copy", &Guest::test());
}

#[test]
fn hybrid_of_the_test_guest() {
    hybrid("hybrid", &Guest::test());
}

// The Linux guest: boots, fills 64 MiB and is migrated mid-workload, after two rounds of
// rewriting its working set. Its test names contain "linux_guest": the suite skips them
// under KASAN, where a nested Linux takes minutes (vm/guest/run-tests).

#[test]
fn post_copy_of_the_linux_guest() {
    post_copy("linux-post-copy", "queue", &Guest::linux());
}

#[test]
fn post_copy_of_the_linux_guest_in_signal_mode() {
    post_copy("linux-signal", "signal", &Guest::linux());
}

#[test]
fn pre_copy_of_the_linux_guest() {
    pre_copy("linux-pre-copy", &Guest::linux());
}

#[test]
fn hybrid_of_the_linux_guest() {
    hybrid("linux-hybrid", &Guest::linux());
}

/// Runs the loader with `args`; returns its output once it exits (it must within 60 s).
fn run_loader(args: &[&str]) -> Output {
    let child = loader()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the loader");
    child.wait_with_output().expect("loader output")
}

/// The loader failed with one line on stderr containing `wanted`.
fn assert_one_error_line(stderr: &str, wanted: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(
        lines[0].starts_with("muserload-loader: error: ") && lines[0].contains(wanted),
        "stderr: {stderr}"
    );
}

fn source_to(addr: &str) -> Output {
    run_loader(&[
        "run",
        "--test-guest",
        &test_guest(),
        "--mem-mib",
        "16",
        "--migrate-to",
        addr,
    ])
}

#[test]
fn a_refused_connection_is_one_clear_error() {
    // Bind and drop: the port is then (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = source_to(&format!("127.0.0.1:{port}"));
    assert!(!out.status.success());
    assert_one_error_line(&String::from_utf8_lossy(&out.stderr), "cannot connect");
}

#[test]
fn a_bad_address_is_one_clear_error() {
    let out = source_to("no-port-here");
    assert!(!out.status.success());
    assert_one_error_line(&String::from_utf8_lossy(&out.stderr), "invalid address");
    let out = run_loader(&["receive", "--listen", "256.1.1.1:80"]);
    assert!(!out.status.success());
    assert_one_error_line(&String::from_utf8_lossy(&out.stderr), "invalid address");
}

/// The migration protocol's version, as the loader speaks it (`protocol::VERSION`).
const PROTOCOL_VERSION: u32 = 3;

fn hello(version: u32, channel: u32) -> Vec<u8> {
    let mut hello = b"MUSERLD\0".to_vec();
    hello.extend_from_slice(&version.to_le_bytes());
    hello.extend_from_slice(&channel.to_le_bytes());
    hello
}

#[test]
fn a_source_of_another_version_is_refused() {
    let destination = Destination::start(&[]);
    let mut conn = TcpStream::connect(&destination.addr).expect("connecting");
    conn.write_all(&hello(99, 1)).expect("hello");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("version 99"));
    let (ok, stderr) = destination.finish();
    assert!(!ok);
    assert_one_error_line(&stderr, "protocol version 99");
}

#[test]
fn a_destination_of_another_version_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listening");
    let addr = listener.local_addr().expect("address").to_string();
    let fake = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accepting");
        let mut hello = [0; 16];
        conn.read_exact(&mut hello).expect("hello");
        let mut answer = b"MUSERLD\0".to_vec();
        answer.extend_from_slice(&7u32.to_le_bytes());
        answer.extend_from_slice(&0u32.to_le_bytes());
        conn.write_all(&answer).expect("answer");
        thread::sleep(Duration::from_millis(500));
    });
    let out = source_to(&addr);
    fake.join().expect("fake destination");
    assert!(!out.status.success());
    assert_one_error_line(&String::from_utf8_lossy(&out.stderr), "protocol version 7");
}

#[test]
fn a_peer_of_another_protocol_is_refused() {
    let destination = Destination::start(&[]);
    let mut conn = TcpStream::connect(&destination.addr).expect("connecting");
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("request");
    let (ok, stderr) = destination.finish();
    assert!(!ok);
    assert_one_error_line(&stderr, "does not speak the muserload migration protocol");
}

#[test]
fn a_truncated_stream_is_one_clear_error() {
    let destination = Destination::start(&[]);
    let mut conns = Vec::new();
    for channel in [1, 2] {
        let mut conn = TcpStream::connect(&destination.addr).expect("connecting");
        conn.write_all(&hello(PROTOCOL_VERSION, channel))
            .expect("hello");
        let mut answer = [0; 16];
        conn.read_exact(&mut answer).expect("answer");
        conns.push(conn);
    }
    // A control frame announcing 1000 bytes, then 10 of them, then the end.
    let mut frame = vec![1u8];
    frame.extend_from_slice(&1000u32.to_le_bytes());
    frame.extend_from_slice(&[0; 10]);
    conns[0].write_all(&frame).expect("frame");
    drop(conns);
    let (ok, stderr) = destination.finish();
    assert!(!ok);
    assert_one_error_line(&stderr, "closed the connection mid-stream");
}
