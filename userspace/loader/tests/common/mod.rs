//! What the loader's integration tests share: the loader and the guests (in /bin in the
//! test VM, or where MUSERLOAD_LOADER, MUSERLOAD_TEST_GUEST, MUSERLOAD_LINUX_KERNEL and
//! MUSERLOAD_LINUX_INITRD say), loaders running in the background, and their reports.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or(default.into())
}

/// The loader's command.
pub fn loader() -> Command {
    Command::new(var("MUSERLOAD_LOADER", "/bin/muserload-loader"))
}

/// The test guest's image.
pub fn test_guest() -> String {
    var("MUSERLOAD_TEST_GUEST", "/bin/muserload-test-guest")
}

/// The test guest's arguments to `muserload-loader run`.
pub fn test_guest_args() -> Vec<String> {
    ["--test-guest", &test_guest(), "--mem-mib", "64"]
        .map(String::from)
        .to_vec()
}

/// The Linux guest's arguments to `muserload-loader run`.
pub fn linux_guest_args() -> Vec<String> {
    [
        "--kernel",
        &var("MUSERLOAD_LINUX_KERNEL", "/bin/linux-guest-bzImage"),
        "--initrd",
        &var("MUSERLOAD_LINUX_INITRD", "/bin/linux-guest.cpio.gz"),
        // The workload takes half: 64 MiB, as the test guest's.
        "--mem-mib",
        "128",
    ]
    .map(String::from)
    .to_vec()
}

/// A directory of the test's own.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("muserload-loader-{name}"));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// How long one loader may take in these tests: a hang fails the test, it does not stall
/// the suite.
pub const LOADER_DEADLINE: Duration = Duration::from_secs(240);

/// Waits for `child` until [`LOADER_DEADLINE`]; kills it after that (the test then fails,
/// saying which one hung). Returns whether it exited successfully.
pub fn wait_or_kill(child: &mut Child, what: &str) -> bool {
    let start = Instant::now();
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

/// A destination loader, listening. Killed if the test ends first.
pub struct Destination {
    child: Child,
    /// Where it listens.
    pub addr: String,
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
    /// Starts `muserload-loader receive` with `args` on a free port.
    pub fn start(args: &[&str]) -> Self {
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

    /// Waits for it to exit; returns whether it succeeded, and its stderr.
    pub fn finish(mut self) -> (bool, String) {
        let ok = wait_or_kill(&mut self.child, "the destination");
        let stderr = self.stderr.take().map(|t| t.join().expect("stderr reader"));
        (ok, stderr.unwrap_or_default())
    }
}

/// Starts a source running `guest` (8 MiB working set, checking 8 MiB a round) that
/// migrates (`kind`) to `to` after two rounds and writes its report to `report`.
pub fn start_source(guest: &[String], kind: &str, to: &str, report: &Path) -> Child {
    loader()
        .arg("run")
        .args(guest)
        .args(["--working-set-mib", "8", "--sweep-mib", "8"])
        .args(["--migration", kind, "--migrate-to", to])
        .args(["--migrate-after-rounds", "2"])
        .args(["--report-json", report.to_str().expect("path")])
        // Nothing to read: with --migrate-to the source takes no commands.
        .stdin(Stdio::null())
        .spawn()
        .expect("running the source")
}

/// A report written with --report-json.
pub fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("a JSON report");
    serde_json::from_str(&text).expect("valid JSON")
}

/// A number in a report.
pub fn u(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

/// What both reports of a migration say that went right: the guest went on at the
/// destination, checked all its memory and found it right; zero pages never went over the
/// wire.
pub fn check_reports(src: &Value, dst: &Value) {
    assert_eq!(u(dst, "guest_mismatches"), 0);
    assert!(u(dst, "guest_sweeps_here") >= 1);
    assert!(u(dst, "guest_rounds_here") >= 1);
    assert!(u(src, "zero_pages") > 0);
    assert_eq!(u(src, "zero_pages"), u(dst, "zero_pages"));
    assert_eq!(u(src, "zero_pages_sent"), 0);
    assert!(u(dst, "downtime_us") > 0);
}
