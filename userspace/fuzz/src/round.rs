//! One round: an object set up and armed, worker processes and threads loading, faulting,
//! remapping and aborting it at random, a resolver serving its events; then, once all of
//! them are gone, the shadow model's check of every page.

use std::{
    collections::HashMap,
    ffi::CStr,
    os::fd::RawFd,
    sync::atomic::Ordering::SeqCst,
    time::{Duration, Instant},
};

use crate::{
    abi::{self, muserload_arm, muserload_load, muserload_setup},
    inject::Injector,
    model::PageHistory,
    resolve::Resolver,
    rng::Rng,
    shared::{self, fill, Content, Entry, Kind, Shared, PAGE},
    sys::{self, Exit},
    target,
    worker::{arm_flags, Process, Round, Worker},
    Error,
};

const DEVICE: &CStr = c"/dev/muserload";

/// Every feature the fuzzer uses.
const FEATURES: u32 = abi::MUSERLOAD_FEATURE_SIGNAL
    | abi::MUSERLOAD_FEATURE_QUEUE
    | abi::MUSERLOAD_FEATURE_MOVE
    | abi::MUSERLOAD_FEATURE_LOADV
    | abi::MUSERLOAD_FEATURE_STATS
    | abi::MUSERLOAD_FEATURE_RESOLVE;

/// How long a round's workers may run before the round counts as hung.
const HANG: Duration = Duration::from_secs(120);

/// The shape of a run's rounds.
pub struct Shape {
    /// Worker processes per round.
    pub procs: usize,
    /// Threads per worker process.
    pub threads: usize,
    /// Staging slots per thread.
    pub slots: usize,
}

/// Runs round `number` with `ops` operations per thread at most.
pub fn run(
    shared: &'static Shared,
    shape: &Shape,
    number: u64,
    seed: u64,
    ops: u64,
    injector: Option<&Injector>,
) -> Result<(), Error> {
    let mut rng = Rng::new(seed, 0);
    shared.begin_round(number);
    let pages = rng.range(8, shared::MAX_PAGES);
    let threads = shape.procs * shape.threads;
    let staging_pages = threads * shape.slots;
    let fd = sys::open(DEVICE).map_err(|e| Error::Sys("open /dev/muserload", e))?;
    let fail = |what: std::fmt::Arguments<'_>| {
        shared.fail(format_args!("round {number} (seed {seed:#x}): {what}"));
    };

    // The handshake, and setups the module must refuse.
    let (api, r) = abi::handshake(fd, u64::from(abi::MUSERLOAD_API) + 1, 0);
    if r != Err(libc::EINVAL) || api.api != u64::from(abi::MUSERLOAD_API) {
        fail(format_args!(
            "API with a wrong version: {r:?}, module speaks {}",
            api.api
        ));
    }
    let api_version = u64::from(abi::MUSERLOAD_API);
    let features = u64::from(FEATURES);
    let (api, r) = abi::handshake(fd, api_version, features | 1 << 63);
    if r != Err(libc::EINVAL) || api.features & features != features {
        fail(format_args!(
            "API asking for an unknown feature: {r:?}, module has {:#x}",
            api.features
        ));
    }
    let (_, r) = abi::handshake(fd, api_version, features);
    r.map_err(|e| Error::Sys("MUSERLOAD_IOC_API", e))?;
    let page = PAGE as u64;
    for (what, size, staging, flags) in [
        ("size 0", 0, 0, 0),
        ("an unaligned size", page + 1, 0, 0),
        (
            "size past staging",
            abi::MUSERLOAD_STAGING_OFFSET + page,
            0,
            0,
        ),
        (
            "too much staging",
            page,
            u64::from(abi::MUSERLOAD_STAGING_MAX) + page,
            0,
        ),
        ("flags", page, 0, 1),
    ] {
        let r = abi::setup(
            fd,
            &muserload_setup {
                size,
                staging_size: staging,
                flags,
            },
        );
        if r != Err(libc::EINVAL) {
            fail(format_args!("SETUP with {what}: {r:?}, expected EINVAL"));
        }
    }
    let setup = muserload_setup {
        size: (pages * PAGE) as u64,
        staging_size: (staging_pages * PAGE) as u64,
        flags: 0,
    };
    abi::setup(fd, &setup).map_err(|e| Error::Sys("MUSERLOAD_IOC_SETUP", e))?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let map = |len, offset| sys::mmap(len, rw, libc::MAP_SHARED, fd, offset);
    let guest = map(pages * PAGE, 0).map_err(|e| Error::Sys("mmap guest", e))?;
    // A second view, which must always show what the first shows.
    let view = map(pages * PAGE, 0).map_err(|e| Error::Sys("mmap guest", e))?;
    let staging = map(staging_pages * PAGE, abi::MUSERLOAD_STAGING_OFFSET)
        .map_err(|e| Error::Sys("mmap staging", e))?;
    if let Ok(addr) = map(2 * PAGE, ((pages - 1) * PAGE) as u64) {
        fail(format_args!("mmap past guest memory succeeded"));
        // SAFETY: Nothing uses that mapping.
        let _ = unsafe { sys::munmap(addr, 2 * PAGE) };
    }

    // Arm runs of pages in queue or signal mode; leave some empty.
    let signals = [libc::SIGUSR1, libc::SIGUSR2];
    shared::set_context(shared::context::ROUND);
    target::set(shared, fd, guest, pages);
    let mut initially_armed = vec![false; pages];
    let mut p = 0;
    while p < pages {
        let n = rng.range(1, 16).min(pages - p);
        let mode = rng.below(4);
        if mode > 0 {
            let signal = if mode == 3 { signals[rng.below(2)] } else { 0 };
            let flags = arm_flags(&mut rng, signal);
            let record = shared.reserve(1).ok_or(Error::LogFull)?;
            shared.arming(p, n, signal, flags);
            shared.write(record, Kind::ArmAttempt, p, n, 0, shared.seq());
            let arm = muserload_arm {
                start: (guest + p * PAGE) as u64,
                len: (n * PAGE) as u64,
                signal: signal as u32,
                flags,
            };
            abi::arm(fd, &arm).map_err(|e| Error::Sys("MUSERLOAD_IOC_ARM", e))?;
            shared.complete(record, Kind::Armed, shared.seq());
            initially_armed[p..p + n].fill(true);
        }
        p += n;
    }
    // The events descriptor, after one with an unknown flag (refused, so none yet).
    let r = abi::ioctl_value(fd, abi::IOC_EVENTS, 1);
    if r != Err(libc::EINVAL) {
        fail(format_args!("EVENTS with an unknown flag: {r:?}"));
    }
    let flags = [
        0,
        abi::MUSERLOAD_EVENTS_NONBLOCK,
        abi::MUSERLOAD_EVENTS_CLOEXEC,
        abi::MUSERLOAD_EVENTS_NONBLOCK | abi::MUSERLOAD_EVENTS_CLOEXEC,
    ][rng.below(4)];
    let events = abi::ioctl_value(fd, abi::IOC_EVENTS, flags as usize)
        .map_err(|e| Error::Sys("EVENTS", e))?;

    let round = Round {
        number,
        seed,
        fd,
        events,
        guest,
        pages,
        staging,
        slots: shape.slots,
        signals,
        inject: injector.is_some(),
    };
    // Another object, whose addresses this round's object must refuse, and an address
    // nothing can be read from: made before allocations may fail.
    let other_fd = sys::open(DEVICE).map_err(|e| Error::Sys("open /dev/muserload", e))?;
    let other_setup = muserload_setup {
        size: 4 * PAGE as u64,
        staging_size: 0,
        flags: 0,
    };
    abi::handshake(other_fd, u64::from(abi::MUSERLOAD_API), 0)
        .1
        .map_err(|e| Error::Sys("MUSERLOAD_IOC_API", e))?;
    abi::setup(other_fd, &other_setup).map_err(|e| Error::Sys("MUSERLOAD_IOC_SETUP", e))?;
    let process = Process {
        no_exit: std::sync::RwLock::new(()),
        other: sys::mmap(4 * PAGE, libc::PROT_READ, libc::MAP_SHARED, other_fd, 0)
            .map_err(|e| Error::Sys("mmap", e))?,
        hole: sys::mmap(
            PAGE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
        .map_err(|e| Error::Sys("mmap", e))?,
    };
    if let Some(injector) = injector {
        injector.start();
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for index in 0..shape.procs {
        // SAFETY: The parent is single-threaded here (the resolver starts after the forks),
        // so the child may do anything.
        match unsafe { sys::fork() } {
            Ok(0) => worker_process(shared, &round, &process, index, shape.threads, ops),
            Ok(pid) => workers.push(pid),
            Err(e) => return Err(Error::Sys("fork", e)),
        }
    }
    let resolver = Resolver::spawn(shared, round);

    // Wait for the workers, then end the post-copy: abort, or close the events
    // descriptor (the resolver going away).
    let mut hung = false;
    for pid in workers {
        let exit = loop {
            match sys::wait(pid, true) {
                Ok(Some(exit)) => break Some(exit),
                Ok(None) if started.elapsed() < HANG => sys::sleep_us(2000),
                Ok(None) => {
                    hung = true;
                    fail(format_args!(
                        "worker {pid} still running after {HANG:?}: a hang"
                    ));
                    if let Ok(s) = abi::stats(fd) {
                        fail(format_args!(
                            "stats: waiters {} unloaded {}",
                            s.waiters, s.unloaded
                        ));
                    }
                    // Where it is stuck: the last hang, 120 s with no waiter in the
                    // module, could not be told from its report.
                    fail(format_args!("its threads:\n{}", thread_stacks(pid)));
                    shared.aborted.store(true, SeqCst);
                    let _ = abi::ioctl_value(fd, abi::IOC_ABORT, 0);
                    sys::kill(pid, libc::SIGKILL);
                    // Reaped here: the loop must not report it again.
                    break sys::wait(pid, false).ok().flatten();
                }
                Err(e) => break Some(Exit::Code(1000 + e)),
            }
        };
        match exit {
            Some(Exit::Code(0)) => {}
            Some(Exit::Signal(libc::SIGBUS)) if shared.aborted.load(SeqCst) => {}
            Some(Exit::Signal(libc::SIGKILL)) if hung => {}
            other => fail(format_args!("worker {pid} ended with {other:?}")),
        }
    }
    if let Some(injector) = injector {
        injector.stop();
    }
    if rng.one_in(2) {
        shared.aborted.store(true, SeqCst);
        abi::ioctl_value(fd, abi::IOC_ABORT, 0).map_err(|e| Error::Sys("ABORT", e))?;
        // The resolver's wait ends with no events, then its descriptor is closed.
        resolver.after_abort(&fail);
    } else {
        // The resolver goes away: closing the last reference (the workers, who shared it,
        // are gone) aborts the object. Not before it is gone: until then, no wait of its
        // may end without events.
        resolver.stop(&fail);
        shared.aborted.store(true, SeqCst);
    }
    sys::close(events);

    // Children of workers that exited first (forked touchers) were reparented to this
    // process (a subreaper, see main): none may outlive the round, where it would log a
    // load of this round's object into the next round's log.
    while sys::wait(-1, false).is_ok() {}

    check(shared, &round, view, &initially_armed, &mut rng, &fail);

    // SAFETY: The round is over: nothing uses its mappings any more.
    unsafe {
        let _ = sys::munmap(guest, pages * PAGE);
        let _ = sys::munmap(view, pages * PAGE);
        let _ = sys::munmap(staging, staging_pages * PAGE);
    }
    // SAFETY: As above.
    unsafe {
        let _ = sys::munmap(process.other, 4 * PAGE);
        let _ = sys::munmap(process.hole, PAGE);
    }
    sys::close(other_fd);
    sys::close(fd);
    Ok(())
}

/// A worker process: its threads run the round's operations, then it exits.
fn worker_process(
    shared: &'static Shared,
    round: &Round,
    process: &Process,
    index: usize,
    threads: usize,
    ops: u64,
) -> ! {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(
                move || match Worker::new(shared, round, process, index * threads + t) {
                    Ok(worker) => worker.run(ops),
                    Err(e) => shared.fail(format_args!("worker thread: errno {e}")),
                },
            );
        }
    });
    sys::exit_now(0)
}

/// One probe: loads page `page` with a new tag if it is not loaded. Some(tag) if it
/// loaded, None if the page was loaded already.
fn probe(shared: &Shared, fd: RawFd, guest: usize, page: usize) -> Result<Option<u64>, i32> {
    let tag = shared.tags(1);
    let mut buf = vec![0u64; PAGE / 8];
    fill(&mut buf, tag);
    let mut load = muserload_load {
        dst: (guest + page * PAGE) as u64,
        src: buf.as_ptr() as u64,
        len: PAGE as u64,
        mode: u64::from(abi::MUSERLOAD_LOAD_COPY),
        loaded: 0,
    };
    match abi::load(fd, &mut load) {
        Ok(()) => Ok(Some(tag)),
        Err(libc::EEXIST) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The shadow model's verdict on every page, from the round's log:
/// - nothing duplicated: between two arms of a page at most one load of it succeeds;
/// - nothing lost: a load that surely came after the page's last arm is what the page
///   holds, and the page is loaded;
/// - nothing stale or foreign: a loaded page holds the content of a load of that page that
///   may have come after its last arm (or zeros, if it was never armed), and both views
///   show the same;
/// - the counters agree: no page armed and unloaded, no waiter left;
/// - then pages armed again are discarded (reloadable, new content in both views).
fn check(
    shared: &Shared,
    round: &Round,
    view: usize,
    initially_armed: &[bool],
    rng: &mut Rng,
    fail: &dyn Fn(std::fmt::Arguments<'_>),
) {
    let entries = shared.entries();
    let mut loads: HashMap<usize, Vec<Entry>> = HashMap::new();
    let mut arms: HashMap<usize, Vec<Entry>> = HashMap::new();
    for e in &entries {
        match e.kind {
            Kind::Loaded | Kind::LoadAttempt => loads.entry(e.page).or_default().push(*e),
            Kind::Armed | Kind::ArmAttempt => {
                for p in e.page..e.page + e.count {
                    arms.entry(p).or_default().push(*e);
                }
            }
            Kind::NotLoaded | Kind::NotArmed => {}
        }
    }
    let none = Vec::new();
    // Every entry of a page, whatever its kind, for the report of a check that fails.
    let history = |page: usize| {
        let mut out = format!("page {page}: its whole log:");
        for e in entries
            .iter()
            .filter(|e| e.page <= page && page < e.page + e.count.max(1))
        {
            out += &format!("\n  {}", e.describe());
        }
        out
    };
    for (page, &armed_at_start) in initially_armed.iter().enumerate() {
        let failures = shared.failures.load(SeqCst);
        check_page(
            shared,
            round,
            view,
            page,
            armed_at_start,
            loads.get(&page).unwrap_or(&none),
            arms.get(&page).unwrap_or(&none),
            fail,
        );
        if shared.failures.load(SeqCst) != failures {
            fail(format_args!("{}", history(page)));
        }
    }
    check_counters_and_discards(shared, round, view, rng, fail);
}

/// The shadow model's verdict on page `page` (see [`check`]).
#[allow(clippy::too_many_arguments)]
fn check_page(
    shared: &Shared,
    round: &Round,
    view: usize,
    page: usize,
    armed_at_start: bool,
    loads: &[Entry],
    arms: &[Entry],
    fail: &dyn Fn(std::fmt::Arguments<'_>),
) {
    {
        let history = PageHistory {
            loads,
            arms,
            armed_at_start,
        };
        if let Some(succeeded) = history.too_many_loads() {
            fail(format_args!(
                "page {page}: {succeeded} loads succeeded across {} arms",
                arms.len()
            ));
        }
        let sure = history.sure_loads();
        if sure.len() > 1 {
            fail(format_args!(
                "page {page}: duplicated: {} loads after its last arm: {sure:x?}",
                sure.len()
            ));
        }
        let probed = match probe(shared, round.fd, round.guest, page) {
            Ok(p) => p,
            Err(e) => {
                fail(format_args!("page {page}: probe: errno {e}"));
                return;
            }
        };
        let addr = round.guest + page * PAGE;
        // SAFETY: The page is loaded now (by the probe, if not before): reading it maps it.
        let (got, seen) = unsafe { (shared::content(addr), shared::content(view + page * PAGE)) };
        if got != seen {
            fail(format_args!(
                "page {page}: the two views differ: {got:?} and {seen:?}"
            ));
        }
        match probed {
            Some(tag) => {
                if let Some(e) = sure.first() {
                    fail(format_args!(
                        "page {page}: lost: not loaded, but loaded by {e:x?}"
                    ));
                }
                if got != Content::Tag(tag) {
                    fail(format_args!("page {page}: the probe's load shows {got:?}"));
                }
            }
            None => {
                let ok = history.may_hold(got);
                if !ok {
                    fail(format_args!(
                        "page {page}: holds {got:x?}; loads {loads:x?}; arms {arms:x?}; initially armed {}",
                        armed_at_start
                    ));
                }
            }
        }
    }
}

/// The counters once every page is loaded, then discards (see [`check`]).
fn check_counters_and_discards(
    shared: &Shared,
    round: &Round,
    view: usize,
    rng: &mut Rng,
    fail: &dyn Fn(std::fmt::Arguments<'_>),
) {
    match abi::stats(round.fd) {
        Ok(s) if s.unloaded == 0 && s.waiters == 0 => {}
        Ok(s) => fail(format_args!(
            "after the probes: unloaded {} waiters {}",
            s.unloaded, s.waiters
        )),
        Err(e) => fail(format_args!("STATS: errno {e}")),
    }

    // Discard some pages: none may keep its old content anywhere.
    for _ in 0..8 {
        let page = rng.below(round.pages);
        let arm = muserload_arm {
            start: (round.guest + page * PAGE) as u64,
            len: PAGE as u64,
            signal: 0,
            flags: 0,
        };
        if let Err(e) = abi::arm(round.fd, &arm) {
            fail(format_args!("page {page}: re-arm: errno {e}"));
            continue;
        }
        match probe(shared, round.fd, round.guest, page) {
            Ok(Some(tag)) => {
                // SAFETY: The page is loaded.
                let (a, b) = unsafe {
                    (
                        shared::content(round.guest + page * PAGE),
                        shared::content(view + page * PAGE),
                    )
                };
                if a != Content::Tag(tag) || b != Content::Tag(tag) {
                    fail(format_args!(
                        "page {page}: stale after a discard: {a:x?} / {b:x?}, expected {tag:#x}"
                    ));
                }
            }
            other => fail(format_args!(
                "page {page}: after a discard, the probe: {other:?}"
            )),
        }
    }
}

/// Every thread of process `pid`: its state, where it sleeps (`wchan`) and its kernel stack.
fn thread_stacks(pid: i32) -> String {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = String::new();
    for task in tasks.flatten() {
        let dir = task.path().display().to_string();
        let state = read(format!("{dir}/stat"));
        // The state is the field after the command name, which is in parentheses.
        let state = state
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        out += &format!(
            "thread {}: state {} in {}\n{}",
            task.file_name().to_string_lossy(),
            state.unwrap_or("?"),
            read(format!("{dir}/wchan")),
            read(format!("{dir}/stack")),
        );
    }
    out
}
