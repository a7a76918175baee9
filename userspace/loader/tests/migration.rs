//! Post-copy migrations of the test guest between two loader processes, and the loader's
//! answers to bad input. They need /dev/kvm and /dev/muserload, so they run in the test
//! guest, where the loader and the test guest are in /bin (or where MUSERLOAD_LOADER and
//! MUSERLOAD_TEST_GUEST say).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;

fn loader() -> Command {
    Command::new(std::env::var("MUSERLOAD_LOADER").unwrap_or("/bin/muserload-loader".into()))
}

fn test_guest() -> String {
    std::env::var("MUSERLOAD_TEST_GUEST").unwrap_or("/bin/muserload-test-guest".into())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("muserload-loader-{name}"));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A destination loader, listening. Killed if the test ends first.
struct Destination {
    child: Child,
    addr: String,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Drop for Destination {
    fn drop(&mut self) {
        // It exited already, unless the test failed first.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Destination {
    fn start(args: &[&str]) -> Self {
        let mut child = loader()
            .args(["receive", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the destination");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut line = String::new();
        stderr
            .read_line(&mut line)
            .expect("destination's first line");
        let addr = line
            .trim()
            .strip_prefix("muserload-loader: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let stderr = thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            eprint!("{rest}");
            rest
        });
        Self {
            child,
            addr,
            stderr: Some(stderr),
        }
    }

    fn finish(mut self) -> (bool, String) {
        let ok = wait_or_kill(&mut self.child, "the destination");
        let stderr = self.stderr.take().map(|t| t.join().expect("stderr reader"));
        (ok, stderr.unwrap_or_default())
    }
}

/// How long one loader may take in these tests: a hang fails the test, it does not stall
/// the suite.
const LOADER_DEADLINE: Duration = Duration::from_secs(240);

/// Waits for `child` until [`LOADER_DEADLINE`]; kills it after that (the test then fails,
/// saying which one hung). Returns whether it exited successfully.
fn wait_or_kill(child: &mut Child, what: &str) -> bool {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a loader") {
            return status.success();
        }
        if start.elapsed() > LOADER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung for {LOADER_DEADLINE:?} and was killed");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).expect("a JSON report");
    serde_json::from_str(&text).expect("valid JSON")
}

fn u(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

/// The test guest's arguments to `muserload-loader run`.
fn test_guest_args() -> Vec<String> {
    ["--test-guest", &test_guest(), "--mem-mib", "64"]
        .map(String::from)
        .to_vec()
}

/// Migrates a guest (`kind`: post-copy, pre-copy or hybrid; `mode`: queue or signal) and
/// checks both reports; returns them.
fn migrate(name: &str, kind: &str, mode: &str, guest: &[String]) -> (Value, Value) {
    let dir = scratch(name);
    let (src_json, dst_json) = (dir.join("source.json"), dir.join("destination.json"));
    let dst_json_arg = dst_json.to_str().expect("path");
    let destination = Destination::start(&["--mode", mode, "--report-json", dst_json_arg]);
    let mut source = loader()
        .arg("run")
        .args(guest)
        .args([
            "--working-set-mib",
            "8",
            "--sweep-mib",
            "8",
            "--migration",
            kind,
        ])
        .args([
            "--migrate-to",
            &destination.addr,
            "--migrate-after-rounds",
            "2",
        ])
        .args(["--report-json", src_json.to_str().expect("path")])
        // The source reads commands from stdin; it has none to get here.
        .stdin(Stdio::null())
        .spawn()
        .expect("running the source");
    let source_ok = wait_or_kill(&mut source, "the source");
    let (dst_ok, _) = destination.finish();
    assert!(source_ok, "the source failed");
    assert!(dst_ok, "the destination failed");

    let (src, dst) = (json(&src_json), json(&dst_json));
    // The guest went on at the destination, checked all its memory and found it right.
    assert_eq!(u(&dst, "guest_mismatches"), 0);
    assert!(u(&dst, "guest_sweeps_here") >= 1);
    assert!(u(&dst, "guest_rounds_here") >= 1);
    // Zero pages never went over the wire.
    assert!(u(&src, "zero_pages") > 0);
    assert_eq!(u(&src, "zero_pages"), u(&dst, "zero_pages"));
    assert_eq!(u(&src, "zero_pages_sent"), 0);
    assert!(u(&dst, "downtime_us") > 0);
    (src, dst)
}

/// Post-copy: no page went more than twice, every page that is not zero went, and vCPUs
/// waiting on pages were served by requests far sooner than the stream brought everything.
fn post_copy(name: &str, mode: &str, guest: &[String]) {
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
fn pre_copy(name: &str, guest: &[String]) {
    let (src, dst) = migrate(name, "pre-copy", "queue", guest);
    assert!(u(&src, "precopy_rounds") >= 1);
    assert!(u(&dst, "precopy_pages") >= u(&dst, "normal_pages"));
    assert_eq!(u(&dst, "pages_requested"), 0);
    assert_eq!(u(&dst, "discarded_pages"), 0);
}

/// Hybrid: pre-copy rounds, then what the guest kept writing comes post-copy.
fn hybrid(name: &str, guest: &[String]) {
    let (src, dst) = migrate(name, "hybrid", "queue", guest);
    assert_eq!(u(&src, "precopy_rounds"), 3);
    assert!(u(&dst, "precopy_pages") > 0);
    // The working set is rewritten all the time: stale at the switch, fetched again.
    assert!(u(&dst, "discarded_pages") > 0);
    assert_eq!(u(&src, "discarded_pages"), u(&dst, "discarded_pages"));
}

#[test]
fn post_copy_in_queue_mode() {
    post_copy("queue", "queue", &test_guest_args());
}

#[test]
fn post_copy_in_signal_mode() {
    post_copy("signal", "signal", &test_guest_args());
}

#[test]
fn pre_copy_of_the_test_guest() {
    pre_copy("pre-copy", &test_guest_args());
}

#[test]
fn hybrid_of_the_test_guest() {
    hybrid("hybrid", &test_guest_args());
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
        conn.write_all(&hello(1, channel)).expect("hello");
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
