//! What the loader's integration tests share: the loader and the guests (in /bin in the
//! test VM, or where MUSERLOAD_LOADER, MUSERLOAD_TEST_GUEST, MUSERLOAD_LINUX_KERNEL,
//! MUSERLOAD_LINUX_INITRD, MUSERLOAD_STOCK_KERNEL and MUSERLOAD_STOCK_INITRD say), loaders
//! running in the background, and their reports; what the guests' consoles say of their
//! clocks is in `clock`.

mod clock;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use muserload::{
    uapi::{muserload_stats, _MUSERLOAD_STATS, MUSERLOAD_IOCTL_BASE},
    Stats,
};
use nix::libc;
use serde_json::Value;

pub use self::clock::assert_clocks_kept;

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

/// A guest to run: its arguments to `muserload-loader run`, and when a source migrates it.
pub struct Guest {
    /// Its arguments.
    pub args: Vec<String>,
    /// Once its console says this, the source is told to migrate (`migrate ADDR` on its
    /// stdin); none: after the guest's second round, as the project's guests report them.
    pub migrate_on: Option<&'static str>,
}

#[allow(
    dead_code,
    reason = "each test file compiles this module and uses some of its guests"
)]
impl Guest {
    fn new(args: &[&str], migrate_on: Option<&'static str>) -> Self {
        Self {
            args: args.iter().map(|&arg| arg.to_owned()).collect(),
            migrate_on,
        }
    }

    /// The test guest.
    pub fn test() -> Self {
        let image = test_guest();
        let args = [
            "--test-guest",
            &image,
            "--mem-mib",
            "64",
            "--working-set-mib",
            "8",
            "--sweep-mib",
            "8",
        ];
        Self::new(&args, None)
    }

    /// The project's Linux guest: its kernel, its memory workload as init.
    pub fn linux() -> Self {
        Self::linux_kernel(
            ("MUSERLOAD_LINUX_KERNEL", "/bin/linux-guest-bzImage"),
            ("MUSERLOAD_LINUX_INITRD", "/bin/linux-guest.cpio.gz"),
            // The workload takes half: 64 MiB, as the test guest's.
            "128",
            "workload_mib=64 working_set_mib=8 sweep_mib=8",
            None,
        )
    }

    /// A stock guest: Debian's kernel, whose init (muserload-guest-init) runs Debian's
    /// `stress-ng` with `stress` (its arguments) and powers off; migrated once stress-ng
    /// runs.
    pub fn stock(stress: &str) -> Self {
        Self::linux_kernel(
            ("MUSERLOAD_STOCK_KERNEL", "/bin/stock-bzImage"),
            ("MUSERLOAD_STOCK_INITRD", "/bin/stock-guest.cpio.gz"),
            "256",
            &format!("-- stress-ng {stress}"),
            Some("guest-init: heartbeat"),
        )
    }

    /// A Linux guest: the kernel and initramfs that the variables name (`(variable,
    /// default)`), `mem_mib` of RAM, `cmdline` added to the kernel command line.
    fn linux_kernel(
        kernel: (&str, &str),
        initrd: (&str, &str),
        mem_mib: &str,
        cmdline: &str,
        migrate_on: Option<&'static str>,
    ) -> Self {
        let (kernel, initrd) = (var(kernel.0, kernel.1), var(initrd.0, initrd.1));
        let args = [
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--mem-mib",
            mem_mib,
            "--cmdline",
            cmdline,
        ];
        Self::new(&args, migrate_on)
    }
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

/// How a loader that was waited for ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// It exited, successfully or not.
    Exited { ok: bool },
    /// It hung with its vCPU threads running all along and muserload idle meanwhile (its
    /// object's counters of faults and loads still, no thread waiting on a page; or no
    /// object): its nested guest ran and got nowhere, as QEMU TCG's nested SVM leaves one
    /// now and then (`Documentation/loader.rst`, "Limits"). A loader waiting for anything,
    /// a page included, sleeps instead; a vCPU faulting on a page again and again (a
    /// fault-retry livelock in the module) would run too, but each of its tries that
    /// queues an event, sends a signal or waits moves those counters.
    Stalled,
}

/// Waits for `child` until [`LOADER_DEADLINE`]; after that says where every loader's
/// threads are, prints its muserload counters, and kills it. A hang whose nested guest
/// stalled is [`Waited::Stalled`]; any other fails the test, saying which loader hung.
pub fn wait_or_kill(child: &mut Child, what: &str) -> Waited {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a loader") {
            return Waited::Exited {
                ok: status.success(),
            };
        }
        if start.elapsed() > LOADER_DEADLINE {
            eprintln!("{what} hung: where every loader's threads are");
            eprint!("{}", loader_threads());
            // A running thread has no stack to read: the kernel console gets the
            // backtraces of whatever the CPUs are running (is a vCPU in its guest, or
            // looping in the host kernel?).
            let _ = std::fs::write("/proc/sysrq-trigger", "l");
            let counters = kvm_counters(child.id());
            // Its muserload counters at both ends of that second, read before it is killed
            // (its object dies with it): they tell a stalled guest from a vCPU that faults
            // on a page again and again, whose thread keeps running too.
            let (muserload, stalled) =
                muserload_counters_around(child.id(), || vcpus_keep_running(child.id()));
            // Is a stalled guest exiting all the time (and for what), or running quietly?
            eprintln!("its VM's KVM counters that moved in that second:");
            for (name, after) in kvm_counters(child.id()) {
                match counters.get(&name) {
                    Some(before) if *before != after => {
                        eprintln!("  {name}: +{}", after.wrapping_sub(*before))
                    }
                    _ => {}
                }
            }
            let (text, idle) = muserload.verdict();
            eprintln!("{what}'s muserload counters, read 1 s apart while it hung:\n{text}");
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                stalled,
                "{what} hung for {LOADER_DEADLINE:?} and was killed"
            );
            assert!(
                idle,
                "{what} hung for {LOADER_DEADLINE:?} with its vCPUs running, but its \
                 muserload counters (above) do not show muserload idle: not taken for a \
                 stalled nested guest, killed and not run again"
            );
            eprintln!(
                "{what} hung for {LOADER_DEADLINE:?} with its vCPUs running and muserload \
                 idle: killed"
            );
            return Waited::Stalled;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The counters KVM keeps of process `pid`'s VMs (debugfs), by name.
fn kvm_counters(pid: u32) -> BTreeMap<String, u64> {
    let Ok(vms) = std::fs::read_dir("/sys/kernel/debug/kvm") else {
        return BTreeMap::new();
    };
    vms.flatten()
        .filter(|vm| {
            vm.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pid}-"))
        })
        .filter_map(|vm| std::fs::read_dir(vm.path()).ok())
        .flat_map(|files| files.flatten())
        .filter_map(|file| {
            let value = std::fs::read_to_string(file.path()).ok()?;
            Some((
                file.file_name().to_string_lossy().into_owned(),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// muserload's counters of a hung loader's object, read before and after a while.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one, on the stack, per hung loader"
)]
enum MuserloadCounters {
    /// The loader has no muserload object: its RAM is plain anonymous memory.
    NoObject,
    /// They could not be read: why.
    Unreadable(String),
    /// Before and after.
    Sampled(Stats, Stats),
}

/// `MUSERLOAD_IOC_STATS`, computed as the `muserload` crate does (its ioctls are private).
const IOC_STATS: libc::Ioctl = nix::request_code_read!(
    MUSERLOAD_IOCTL_BASE,
    _MUSERLOAD_STATS,
    size_of::<muserload_stats>()
);

/// Runs `during` between two reads of the counters of process `pid`'s muserload object.
fn muserload_counters_around<R>(pid: u32, during: impl FnOnce() -> R) -> (MuserloadCounters, R) {
    let object = match descriptor_of(pid, Path::new(muserload::DEVICE_PATH)) {
        Ok(Some(object)) => object,
        Ok(None) => return (MuserloadCounters::NoObject, during()),
        Err(why) => return (MuserloadCounters::Unreadable(why), during()),
    };
    let read = || {
        let mut stats = Stats::default();
        // SAFETY: `object` is a muserload object, and MUSERLOAD_IOC_STATS writes a
        // `struct muserload_stats` where the argument points: `stats`.
        match unsafe { libc::ioctl(object.as_raw_fd(), IOC_STATS, &mut stats) } {
            0 => Ok(stats),
            _ => Err(format!(
                "MUSERLOAD_IOC_STATS: {}",
                std::io::Error::last_os_error()
            )),
        }
    };
    let before = read();
    let result = during();
    let counters = match (before, read()) {
        (Ok(before), Ok(after)) => MuserloadCounters::Sampled(before, after),
        (Err(why), _) | (_, Err(why)) => MuserloadCounters::Unreadable(why),
    };
    (counters, result)
}

/// Process `pid`'s descriptor of `file`, duplicated into this process with pidfd_getfd(2)
/// (which needs the right to ptrace it: the tests run as root), or `None` if it has none.
/// Opening /proc/PID/fd/N instead would open a device anew: another object.
fn descriptor_of(pid: u32, file: &Path) -> Result<Option<OwnedFd>, String> {
    let fds = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&fds).map_err(|e| format!("{fds}: {e}"))?;
    let Some(fd) = entries
        .flatten()
        .filter(|entry| std::fs::read_link(entry.path()).is_ok_and(|target| target == file))
        .find_map(|entry| entry.file_name().to_str()?.parse::<libc::c_int>().ok())
    else {
        return Ok(None);
    };
    let fail = |call: &str| format!("{call}: {}", std::io::Error::last_os_error());
    // SAFETY: pidfd_open(2) takes a pid and flags; it returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(fail("pidfd_open"));
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as libc::c_int) };
    // SAFETY: pidfd_getfd(2) takes a pidfd, a descriptor of that process and flags; it
    // returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if fd < 0 {
        return Err(fail("pidfd_getfd"));
    }
    // SAFETY: pidfd_getfd returned a new descriptor that nothing else owns.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
}

/// The counters of `struct muserload_stats` that count faults and loads, by name: when
/// none of them moves, nothing faulted on the object's pages and nothing loaded them.
fn fault_and_load_counters(stats: &Stats) -> [(&'static str, u64); 10] {
    [
        ("faults_signal_user", stats.faults_signal_user),
        ("faults_signal_kernel", stats.faults_signal_kernel),
        ("faults_queue_user", stats.faults_queue_user),
        ("faults_queue_kernel", stats.faults_queue_kernel),
        ("fault_waits", stats.fault_waits),
        ("loads_move", stats.loads_move),
        ("loads_copy", stats.loads_copy),
        ("loads_zero", stats.loads_zero),
        ("wakes", stats.wakes),
        ("eexist", stats.eexist),
    ]
}

impl MuserloadCounters {
    /// What they say, to print, and whether they show muserload idle meanwhile: no fault
    /// or load counter moved, and no thread waited on a page (`waiters`, a count of now,
    /// in either read: a loader that waits for a page hangs for another reason than its
    /// guest). A loader without an object shows nothing, so its vCPUs alone say whether
    /// it stalled; counters that could not be read show nothing either, and fail.
    fn verdict(&self) -> (String, bool) {
        let (before, after) = match self {
            Self::NoObject => {
                return (
                    format!(
                        "  none: it has no muserload object (no descriptor of {}: its RAM \
                         is anonymous memory); its vCPUs alone decide",
                        muserload::DEVICE_PATH
                    ),
                    true,
                )
            }
            Self::Unreadable(why) => return (format!("  unreadable: {why}"), false),
            Self::Sampled(before, after) => (before, after),
        };
        let line = |stats: &Stats| {
            let mut line: Vec<String> = fault_and_load_counters(stats)
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            line.push(format!("waiters {}", stats.waiters));
            line.push(format!("unloaded {}", stats.unloaded));
            line.push(format!("wait_ns_total {}", stats.wait_ns_total));
            line.join(", ")
        };
        let mut busy: Vec<String> = fault_and_load_counters(before)
            .iter()
            .zip(fault_and_load_counters(after))
            .filter(|((_, b), (_, a))| b != a)
            .map(|((name, b), (_, a))| format!("{name} moved ({b} -> {a})"))
            .collect();
        if before.waiters != 0 || after.waiters != 0 {
            busy.push(format!(
                "threads waited on a page (waiters {} -> {})",
                before.waiters, after.waiters
            ));
        }
        let said = if busy.is_empty() {
            "no fault or load counted, no thread waiting on a page: muserload idle".to_owned()
        } else {
            format!("muserload at work: {}", busy.join("; "))
        };
        (
            format!(
                "  before: {}\n  after:  {}\n  {said}",
                line(before),
                line(after)
            ),
            busy.is_empty(),
        )
    }
}

/// Whether process `pid` has vCPU threads and they stay running (state R) for a second,
/// sampled every 50 ms.
fn vcpus_keep_running(pid: u32) -> bool {
    let vcpu_states = || -> Vec<String> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
            .filter(|status| status.lines().any(|l| l.starts_with("Name:\tvcpu")))
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("State:"))
                    .map(|state| state.trim().to_owned())
            })
            .collect()
    };
    (0..20).all(|_| {
        let states = vcpu_states();
        thread::sleep(Duration::from_millis(50));
        !states.is_empty() && states.iter().all(|state| state.starts_with('R'))
    })
}

/// Every loader thread's state and kernel stack (/proc/PID/task/TID/stack), to say where
/// a hung migration is stuck.
fn loader_threads() -> String {
    let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    let mut text = String::new();
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return text;
    };
    for process in processes.flatten().map(|entry| entry.path()) {
        // A command name is cut to 15 bytes: "muserload-loade".
        if !read(process.join("comm")).starts_with("muserload-load") {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(process.join("task")) else {
            continue;
        };
        for task in tasks.flatten().map(|entry| entry.path()) {
            let status = read(task.join("status"));
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            };
            text += &format!(
                "{} {} ({}): {}\n{}",
                process.display(),
                field("Pid:"),
                field("Name:"),
                field("State:"),
                read(task.join("stack"))
            );
        }
    }
    text
}

/// A destination loader, listening. Killed if the test ends first.
pub struct Destination {
    child: Child,
    /// Where it listens.
    pub addr: String,
    stderr: Option<thread::JoinHandle<Vec<Line>>>,
    console: Option<thread::JoinHandle<Vec<Line>>>,
}

/// How a destination ended.
pub struct Ended {
    /// Whether it exited successfully.
    pub ok: bool,
    /// Whether it hung with its nested guest stalled (see [`Waited::Stalled`]).
    pub stalled: bool,
    pub stderr: String,
    /// Its guest's serial console.
    pub console: Vec<Line>,
}

/// A line a loader printed, and the host's wall-clock time when the test read it.
pub struct Line {
    /// When the test read it.
    pub at: SystemTime,
    /// The line, its end included.
    pub text: String,
}

/// What `lines` say, end to end.
fn text(lines: &[Line]) -> String {
    lines.iter().map(|line| line.text.as_str()).collect()
}

impl Drop for Destination {
    fn drop(&mut self) {
        // It exited already, unless the test failed first.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A command for a loader's stdin, once a line says `sign`.
struct Prompt {
    /// What the line says.
    sign: &'static str,
    /// The loader's stdin.
    stdin: ChildStdin,
    /// The command, its end of line included.
    command: String,
}

/// Echoes what `from` says (to this test's output, which libtest shows when it fails) and
/// returns all of it once it ends, a line at a time, each with when it came; gives
/// `prompt`'s command once a line says its sign.
fn echo(
    from: impl Read + Send + 'static,
    mut prompt: Option<Prompt>,
) -> thread::JoinHandle<Vec<Line>> {
    thread::spawn(move || {
        let mut from = BufReader::new(from);
        let (mut line, mut lines) = (Vec::new(), Vec::new());
        // Bytes, not lines of UTF-8: a guest may print anything, and a reader that stopped
        // would fail the loader's next write.
        while from.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
            let at = SystemTime::now();
            let text = String::from_utf8_lossy(&line).into_owned();
            eprint!("{text}");
            if let Some(mut prompt) = prompt.take_if(|prompt| text.contains(prompt.sign)) {
                eprintln!("(the test: {})", prompt.command.trim_end());
                let _ = prompt.stdin.write_all(prompt.command.as_bytes());
            }
            lines.push(Line { at, text });
            line.clear();
        }
        lines
    })
}

impl Destination {
    /// Starts `muserload-loader receive` with `args` on a free port.
    pub fn start(args: &[&str]) -> Self {
        let mut child = loader()
            .args(["receive", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the destination");
        let console = echo(child.stdout.take().expect("piped stdout"), None);
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
        Self {
            child,
            addr,
            stderr: Some(echo(stderr, None)),
            console: Some(console),
        }
    }

    /// Waits for it to exit; returns whether it succeeded, and its stderr.
    pub fn finish(self) -> (bool, String) {
        let ended = self.end();
        (ended.ok, ended.stderr)
    }

    /// Waits for it to exit (see [`wait_or_kill`]).
    pub fn end(mut self) -> Ended {
        let waited = wait_or_kill(&mut self.child, "the destination");
        self.collect(waited)
    }

    /// Stops it at once if it still runs (a destination whose source failed waits for it).
    fn stop(mut self) -> Ended {
        let _ = self.child.kill();
        let ok = self.child.wait().is_ok_and(|status| status.success());
        self.collect(Waited::Exited { ok })
    }

    fn collect(&mut self, waited: Waited) -> Ended {
        let lines = |t: Option<thread::JoinHandle<Vec<Line>>>| {
            t.map(|t| t.join().expect("output reader"))
                .unwrap_or_default()
        };
        Ended {
            ok: waited == Waited::Exited { ok: true },
            stalled: waited == Waited::Stalled,
            stderr: text(&lines(self.stderr.take())),
            console: lines(self.console.take()),
        }
    }
}

/// The command of a source running `guest` that migrates (`kind`) to `to` after two rounds,
/// or when told on its stdin (see [`Guest::migrate_on`]), and writes its report to
/// `report`.
fn source_command(guest: &Guest, kind: &str, to: &str, report: &Path) -> Command {
    let mut command = loader();
    command
        .arg("run")
        .args(&guest.args)
        .args(["--migration", kind])
        .args(["--report-json", report.to_str().expect("path")]);
    match guest.migrate_on {
        None => command
            .args(["--migrate-to", to, "--migrate-after-rounds", "2"])
            // Nothing to read: with --migrate-to the source takes no commands.
            .stdin(Stdio::null()),
        Some(_) => command.stdin(Stdio::piped()),
    };
    command
}

/// Starts a source (see [`source_command`]).
#[allow(
    dead_code,
    reason = "each test file compiles this module; migration.rs does not use it"
)]
pub fn start_source(guest: &Guest, kind: &str, to: &str, report: &Path) -> Child {
    source_command(guest, kind, to, report)
        .spawn()
        .expect("running the source")
}

/// How many times a migration is tried whose nested guest dies or stalls.
const ATTEMPTS: u32 = 3;

/// Whether a loader's stderr says its nested guest died: a triple fault or a KVM internal
/// error. A nested guest dies so now and then under QEMU TCG's emulation of nested SVM,
/// also with plain anonymous memory as its RAM instead of a muserload object
/// (`Documentation/loader.rst`, "Limits"): such a death says nothing of muserload.
fn nested_guest_died(stderr: &str) -> bool {
    stderr.contains("the guest stopped: vcpu")
        && (stderr.contains("triple fault") || stderr.contains("KVM internal error"))
}

/// Whether a guest's console tells of something wrong in its memory: the test guest's
/// exception handler or panic, the Linux guest's workload finding a mismatch, or its
/// kernel an oops. A death or stall after that may be muserload's doing, and is never run
/// again.
fn guest_saw_a_fault(console: &[Line]) -> bool {
    console.iter().any(|line| {
        ["exception", "panic", "MISMATCH", "Oops", "BUG:"]
            .iter()
            .any(|sign| line.text.contains(sign))
    })
}

/// A migration that went through: how its destination ended, its source's guest's serial
/// console, and what `begin()` started with the destination (see
/// [`migrate_retrying_nested_deaths`]).
pub struct Migrated<T> {
    /// How the destination ended.
    pub destination: Ended,
    /// The source's guest's serial console.
    pub source_console: Vec<Line>,
    /// What sat between the loaders.
    pub between: T,
}

/// Runs a migration of `guest` (`kind`): `begin()` starts a destination and whatever sits
/// between (returned as `T`) and says where the source migrates to; then a source runs
/// until it ends, and the destination after it. A migration whose source's nested guest
/// died or stalled ([`Waited::Stalled`]), or whose destination's did without its guest
/// having seen anything wrong first (see [`guest_saw_a_fault`]), is run again from a new
/// `begin()`, up to [`ATTEMPTS`] times in all, saying so; any other failure of the source
/// fails the test. Returns the last attempt.
pub fn migrate_retrying_nested_deaths<T>(
    guest: &Guest,
    kind: &str,
    report: &Path,
    mut begin: impl FnMut() -> (Destination, T, String),
) -> Migrated<T> {
    for attempt in 1..=ATTEMPTS {
        let (destination, between, to) = begin();
        let mut source = source_command(guest, kind, &to, report)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the source");
        let prompt = guest.migrate_on.map(|sign| Prompt {
            sign,
            stdin: source.stdin.take().expect("piped stdin"),
            command: format!("migrate {to}\n"),
        });
        let console = echo(source.stdout.take().expect("piped stdout"), prompt);
        let stderr = echo(source.stderr.take().expect("piped stderr"), None);
        let waited = wait_or_kill(&mut source, "the source");
        let source_console = console.join().expect("console reader");
        let source_stderr = text(&stderr.join().expect("stderr reader"));
        let source_ok = waited == Waited::Exited { ok: true };
        let ended = if source_ok {
            destination.end()
        } else {
            // A source that failed leaves its destination waiting for it.
            destination.stop()
        };
        let died = if waited == Waited::Stalled || !source_ok && nested_guest_died(&source_stderr) {
            "the source's"
        } else if (ended.stalled || !ended.ok && nested_guest_died(&ended.stderr))
            && !guest_saw_a_fault(&ended.console)
        {
            "the destination's"
        } else {
            assert!(source_ok, "the source failed");
            return Migrated {
                destination: ended,
                source_console,
                between,
            };
        };
        assert!(
            attempt < ATTEMPTS,
            "{died} nested guest died or stalled {ATTEMPTS} times"
        );
        eprintln!("{died} nested guest died or stalled (attempt {attempt} of {ATTEMPTS}): again");
    }
    unreachable!("the last attempt returns or fails")
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
/// wire; the source never read a page the guest had not touched (the pause tells those
/// from the others without reading them, and reading one would fault it in), so the pause
/// read at most the pages it checked, once each.
pub fn check_reports(src: &Value, dst: &Value) {
    assert_eq!(u(dst, "guest_mismatches"), 0);
    assert!(u(dst, "guest_sweeps_here") >= 1);
    assert!(u(dst, "guest_rounds_here") >= 1);
    assert!(u(src, "zero_pages") > 0);
    assert_eq!(u(src, "zero_pages"), u(dst, "zero_pages"));
    assert_eq!(u(src, "zero_pages_sent"), 0);
    assert!(u(dst, "downtime_us") > 0);
    assert_eq!(u(src, "pages_faulted_in"), 0, "pages the source faulted in");
    assert!(u(src, "pause_pages_read") <= u(src, "pause_zero_checked"));
}

// Each test file compiles these too; they need neither KVM nor muserload.
#[cfg(test)]
mod tests {
    use super::*;

    /// Counters of an object well into a migration: every one of them nonzero.
    fn busy_object() -> Stats {
        Stats {
            faults_signal_user: 1,
            faults_signal_kernel: 2,
            faults_queue_user: 3,
            faults_queue_kernel: 4,
            fault_waits: 5,
            loads_move: 6,
            loads_copy: 7,
            loads_zero: 8,
            wakes: 9,
            eexist: 10,
            unloaded: 11,
            wait_ns_total: 12,
            wait_ns_max: 13,
            ..Stats::default()
        }
    }

    #[test]
    fn muserload_counters_that_did_not_move_are_idle() {
        let stats = busy_object();
        let (text, idle) = MuserloadCounters::Sampled(stats, stats).verdict();
        assert!(idle, "{text}");
        // Both reads, printed.
        assert_eq!(text.matches("faults_queue_user 3,").count(), 2, "{text}");
        assert!(text.contains("muserload idle"), "{text}");
        // A page still to load, or a wait's time, is no activity by itself.
        let mut after = stats;
        after.wait_ns_max += 1;
        after.wait_hist[3] += 1;
        assert!(MuserloadCounters::Sampled(stats, after).verdict().1);
    }

    #[test]
    fn any_fault_or_load_counter_that_moved_is_activity() {
        let bumps: [fn(&mut Stats); 10] = [
            |s| s.faults_signal_user += 1,
            |s| s.faults_signal_kernel += 1,
            |s| s.faults_queue_user += 1,
            |s| s.faults_queue_kernel += 1,
            |s| s.fault_waits += 1,
            |s| s.loads_move += 1,
            |s| s.loads_copy += 1,
            |s| s.loads_zero += 1,
            |s| s.wakes += 1,
            |s| s.eexist += 1,
        ];
        for (bump, (name, _)) in bumps.iter().zip(fault_and_load_counters(&busy_object())) {
            let (before, mut after) = (busy_object(), busy_object());
            bump(&mut after);
            let (text, idle) = MuserloadCounters::Sampled(before, after).verdict();
            assert!(!idle, "{name}: {text}");
            assert!(text.contains(&format!("{name} moved")), "{name}: {text}");
            assert_eq!(text.matches(" moved ").count(), 1, "{name}: {text}");
        }
    }

    #[test]
    fn a_thread_waiting_on_a_page_is_activity() {
        let mut stats = busy_object();
        stats.waiters = 1;
        let (text, idle) = MuserloadCounters::Sampled(stats, stats).verdict();
        assert!(!idle, "{text}");
        assert!(text.contains("waiters 1 -> 1"), "{text}");
        let (before, after) = (busy_object(), stats);
        assert!(!MuserloadCounters::Sampled(before, after).verdict().1);
        assert!(!MuserloadCounters::Sampled(after, before).verdict().1);
    }

    #[test]
    fn no_object_leaves_it_to_the_vcpus_and_unreadable_counters_fail() {
        let (text, idle) = MuserloadCounters::NoObject.verdict();
        assert!(idle && text.contains("no muserload object"), "{text}");
        let (text, idle) = MuserloadCounters::Unreadable("EPERM".into()).verdict();
        assert!(!idle && text.contains("EPERM"), "{text}");
    }

    #[test]
    fn a_process_without_muserload_has_no_object() {
        let (counters, ran) = muserload_counters_around(std::process::id(), || true);
        assert!(ran);
        assert!(
            matches!(counters, MuserloadCounters::NoObject),
            "{counters:?}"
        );
    }

    #[test]
    fn another_process_descriptor_is_duplicated() {
        // This process's own descriptor, through the same calls as another's.
        let path = std::env::current_exe().expect("this test's executable");
        let file = std::fs::File::open(&path).expect("opening it");
        let fd = descriptor_of(std::process::id(), &path)
            .expect("pidfd_open and pidfd_getfd")
            .expect("the file's descriptor");
        assert_ne!(fd.as_raw_fd(), file.as_raw_fd());
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        assert_eq!(link.expect("its link"), path);
        let elsewhere = path.with_file_name("no-such-file");
        assert!(descriptor_of(std::process::id(), &elsewhere)
            .expect("reading /proc")
            .is_none());
    }
}
