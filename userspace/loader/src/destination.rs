//! The destination: receives the machine state, arms guest RAM, resumes the guest at once,
//! and loads each page as it arrives: the pages the vCPUs fault on, requested from the
//! source, and the background stream; zero pages are never asked for, they are loaded as
//! zero locally.

use std::{
    cell::Cell,
    io::BufReader,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    address::resolve,
    bitmap::Bitmap,
    error::{io, Error, Result},
    interrupted::{Interrupted, NoFaults},
    lock::{lock, unpoisoned},
    memory::{GuestRam, BATCH_PAGES},
    protocol::{self, Channel, Control, Frame, Pages},
    report::{self, DestinationReport},
    timeline::{Cause, Timeline},
    vcpu::Machine,
    vm::{MachineState, Vm},
};
use indicatif::{ProgressBar, ProgressStyle};
use muserload::{Event, Events, FaultMode, Wake, LOADV_MAX, PAGE_SIZE};
use nix::{errno::Errno, sys::signal::Signal};

/// The signal of signal mode.
const FAULT_SIGNAL: Signal = Signal::SIGUSR1;
/// The largest guest this destination accepts.
const RAM_MAX: u64 = 64 << 30;
const PAGE: u64 = PAGE_SIZE as u64;

/// How vCPU faults on pages not loaded yet reach the loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The module queues an event and the vCPU sleeps until the page is loaded.
    Queue,
    /// The module signals the vCPU thread, whose handler asks for the page and waits.
    Signal,
}

/// What `muserload-loader receive` was asked.
pub struct ReceiveOptions {
    /// The address to listen on.
    pub listen: String,
    /// The fault mode.
    pub mode: Mode,
    /// How many complete checks of its memory the guest must make here before the
    /// destination stops it.
    pub check_sweeps: u64,
    /// How long the guest may take to make them.
    pub timeout: Duration,
    /// How long to wait for the source to reconnect after a connection broke.
    pub recover_timeout: Duration,
    /// Where to write the report as JSON.
    pub report_json: Option<PathBuf>,
    /// Where to draw the timeline (SVG).
    pub plot: Option<PathBuf>,
}

/// Receives a guest and runs it until it has checked its memory.
pub fn receive(options: ReceiveOptions) -> Result<()> {
    let addr = resolve(&options.listen)?;
    let listener = TcpListener::bind(addr).map_err(|source| Error::Listen { addr, source })?;
    let local = listener.local_addr().map_err(io("listening"))?;
    eprintln!("muserload-loader: listening on {local}");
    let (stream, mut requests, accepted) = accept_channels(&listener, None)?;
    let mut stream = BufReader::with_capacity(1 << 16, stream);

    let (ram_size, kind) = match protocol::recv_frame(&mut stream, "stream")? {
        Frame::Control(Control::Memory { ram_size, kind }) => (ram_size, kind),
        _ => {
            return Err(Error::Protocol(
                "the stream did not start with the guest's size".into(),
            ))
        }
    };
    if ram_size == 0 || ram_size % PAGE != 0 || ram_size > RAM_MAX {
        return Err(Error::Protocol(format!("a guest of {ram_size} bytes")));
    }
    let pages = ram_size / PAGE;
    let ram = GuestRam::new(ram_size)?;
    let fault_mode = match options.mode {
        Mode::Queue => FaultMode::Queue,
        // KVM's own accesses to guest memory (kvmclock, instruction emulation) cannot be
        // ended by the signal, and an EFAULT there would become a fault in the guest: they
        // wait, and the resolver thread serves their events, as in queue mode.
        Mode::Signal => FaultMode::SignalKernelWaits(FAULT_SIGNAL as i32),
    };
    ram.object().arm(ram.guest(), 0, ram_size, fault_mode)?;
    protocol::send_control(&mut requests, &Control::Ready)?;

    // Pre-copy rounds, if any, until the machine state.
    let loaded = Bitmap::new(pages);
    let (mut precopy_pages, mut precopy_bytes) = (0, 0);
    let state = {
        let mut staging = ram.object().map_staging()?;
        loop {
            match protocol::recv_frame(&mut stream, "stream")? {
                Frame::Pages(batch) => {
                    precopy_pages += batch.indices.len() as u64;
                    precopy_bytes += batch.wire_size();
                    receive_precopy(&ram, &mut stream, &mut staging, &batch, &loaded, fault_mode)?;
                }
                Frame::Control(Control::Machine(state)) => break state,
                Frame::Control(_) => {
                    return Err(Error::Protocol("stream: expected the machine".into()))
                }
            }
        }
    };
    let MachineState {
        ram_size: state_size,
        vcpus,
        vm: vm_state,
        devices,
    } = *state;
    if state_size != ram_size || vcpus.is_empty() {
        return Err(Error::Protocol(format!(
            "a machine of {state_size} bytes and {} vCPUs",
            vcpus.len()
        )));
    }
    let bad_map = |what: &str| Error::Protocol(format!("stream: no valid {what} map"));
    let zero = match protocol::recv_frame(&mut stream, "stream")? {
        Frame::Control(Control::ZeroMap { pages: n, words }) if n == pages => {
            Bitmap::from_words(pages, &words)
        }
        _ => None,
    }
    .ok_or_else(|| bad_map("zero-page"))?;
    // Pages pre-copy sent that the guest wrote since: armed again, to come post-copy.
    let discard = match protocol::recv_frame(&mut stream, "stream")? {
        Frame::Control(Control::Discard { words }) => Bitmap::from_words(pages, &words),
        _ => None,
    }
    .ok_or_else(|| bad_map("discard"))?;
    for page in discard.ones() {
        ram.object()
            .arm(ram.guest(), page * PAGE, PAGE, fault_mode)?;
        loaded.clear(page);
    }
    let vm = Arc::new(Vm::with_devices(ram, Box::new(std::io::stdout()), devices)?);
    vm.set_state(&vm_state)?;

    // Faults are served from here on: restoring a vCPU already touches guest pages (KVM
    // maps the kvmclock and steal-time pages when their MSRs are set).
    let loading = Arc::new(Loading::new(vm.clone(), zero, loaded));
    loading.bytes.fetch_add(precopy_bytes, Ordering::Relaxed);
    // Queue mode's faults, and in signal mode the kernel's accesses that wait.
    let events = vm.ram().object().events(false)?;
    loading.spawn("resolver", move |l| l.resolve_events(&events))?;
    let interrupted: Arc<dyn Interrupted> = match options.mode {
        Mode::Queue => Arc::new(NoFaults),
        Mode::Signal => {
            muserload::signal::install(FAULT_SIGNAL, note_fault)?;
            Arc::new(SignalFaults(loading.clone()))
        }
    };
    loading.spawn("zero-loader", Loading::load_zero_pages)?;
    loading.attach(stream, requests, &mut lock(&loading.link))?;
    let vcpus = vcpus
        .iter()
        .enumerate()
        .map(|(id, state)| {
            let id = u8::try_from(id).map_err(|_| Error::Protocol("too many vCPUs".into()))?;
            vm.restore_vcpu(id, state, interrupted.as_ref())
        })
        .collect::<Result<Vec<_>>>()?;

    let before = vm.devices().report();
    vm.devices().resume_interrupts()?;
    let machine = Machine::start(vm.clone(), vcpus, interrupted)?;
    let resumed = Instant::now();
    loading.send(&Control::Resumed)?;
    let waited = loading.wait_all_loaded(&machine, &listener, options.recover_timeout);
    if let Err(e) = waited {
        // Pages will not come: vCPUs waiting on one get SIGBUS from the module's ABORT (in
        // queue mode) or give up (in signal mode), and exiting stops the guest.
        loading.abandoned.store(true, Ordering::SeqCst);
        let _ = vm.ram().object().abort();
        return Err(e);
    }
    let load_all = resumed.elapsed();
    let total = accepted.elapsed();
    loading.send(&Control::Done)?;
    loading.done.store(true, Ordering::SeqCst);

    // A sweep under way at the switch began before it: the first complete one here is the
    // second to end. 0: stop once every page is loaded.
    let target = match options.check_sweeps {
        0 => before.sweeps,
        n => before.sweeps + n + 1,
    };
    let report = vm.devices().wait_report(options.timeout, |r| {
        r.sweeps >= target || r.mismatches > 0 || machine.failure().is_some()
    });
    if let Some(failure) = machine.failure() {
        return Err(Error::Guest(failure));
    }
    machine.stop()?;
    let stats = vm.ram().object().stats()?;
    let (precopy_rounds, setup_us, downtime_us) = *lock(&loading.source_times);
    let (p50, p99, max) = percentiles(&mut loading.timeline.waits_us());
    let result = DestinationReport {
        kind,
        precopy_rounds,
        precopy_pages,
        discarded_pages: discard.count(),
        mode: format!("{:?}", options.mode).to_lowercase(),
        total_ms: total.as_millis() as u64,
        downtime_us,
        setup_us,
        load_all_ms: load_all.as_millis() as u64,
        bytes_received: loading.bytes.load(Ordering::Relaxed),
        zero_pages: loading.zero.count(),
        normal_pages: loading.zero.len() - loading.zero.count(),
        pages_requested: loading.requested.count(),
        pages_streamed: loading.streamed.load(Ordering::Relaxed),
        pages_duplicate: loading.duplicates.load(Ordering::Relaxed),
        faults: loading.faults.load(Ordering::Relaxed),
        module_faults: stats.faults_queue_user
            + stats.faults_queue_kernel
            + stats.faults_signal_user
            + stats.faults_signal_kernel,
        fault_wait_p50_us: p50,
        fault_wait_p99_us: p99,
        fault_wait_max_us: max,
        guest_rounds_here: report.rounds - before.rounds,
        guest_sweeps_here: report.sweeps - before.sweeps,
        guest_mismatches: report.mismatches,
        recoveries: loading.recoveries.load(Ordering::Relaxed),
        disconnected_ms: loading.disconnected_ms.load(Ordering::Relaxed),
    };
    println!("{}", result.table());
    if let Some(path) = &options.report_json {
        report::write_json(path, &result)?;
    }
    if let Some(path) = &options.plot {
        let title = format!(
            "{} of a {} MiB guest, {} mode",
            result.kind_name(),
            ram_size >> 20,
            result.mode
        );
        loading.timeline.plot(path, &title)?;
    }
    if report.mismatches > 0 {
        return Err(Error::Mismatch {
            count: report.mismatches,
            first: report.first_mismatch.unwrap_or(0),
        });
    }
    if report.sweeps < target {
        return Err(Error::Guest(format!(
            "it did not check all its memory {} time(s) within {:?}",
            options.check_sweeps, options.timeout
        )));
    }
    Ok(())
}

/// Accepts the source's two connections, in either order. With a `deadline` (a
/// reconnection), fails with [`Error::Unrecovered`] once it passes, and a connection that
/// breaks in its hello, or a channel opened again, replaces what came before: a source
/// may die and come back halfway through.
fn accept_channels(
    listener: &TcpListener,
    deadline: Option<Instant>,
) -> Result<(TcpStream, TcpStream, Instant)> {
    let (mut stream, mut requests, mut first) = (None, None, None);
    listener
        .set_nonblocking(deadline.is_some())
        .map_err(io("listening"))?;
    while stream.is_none() || requests.is_none() {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::Unrecovered("no reconnection".into()));
                }
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io("accepting the source")(e)),
        };
        first.get_or_insert_with(Instant::now);
        conn.set_nonblocking(false)
            .map_err(io("accepting the source"))?;
        protocol::tune(&conn)?;
        let slot = match protocol::accept_hello(&mut conn) {
            Ok(Channel::Stream) => &mut stream,
            Ok(Channel::Requests) => &mut requests,
            Err(Error::Disconnected { .. }) if deadline.is_some() => continue,
            Err(e) => return Err(e),
        };
        if slot.replace(conn).is_some() && deadline.is_none() {
            return Err(Error::Protocol("the source opened a channel twice".into()));
        }
    }
    match (stream, requests, first) {
        (Some(s), Some(r), Some(t)) => Ok((s, r, t)),
        _ => Err(Error::Protocol("missing channel".into())),
    }
}

/// The median, 99th percentile and maximum of `samples`.
fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    if samples.is_empty() {
        return (0, 0, 0);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// What the loading threads share.
struct Loading {
    vm: Arc<Vm>,
    zero: Bitmap,
    loaded: Bitmap,
    requested: Bitmap,
    /// When each page was requested: nanoseconds since `epoch`, plus one (0: never).
    requested_at: Vec<AtomicU64>,
    epoch: Instant,
    /// Loads by cause, fault waits, outages.
    timeline: Timeline,
    /// The connections to the source. Never taken with `progress.0` held: `broke` takes
    /// `progress.0` under it.
    link: Mutex<Link>,
    recoveries: AtomicU32,
    disconnected_ms: AtomicU64,
    /// Notified whenever pages are loaded (signal mode's vCPUs and the main thread wait).
    progress: (Mutex<()>, Condvar),
    faults: AtomicU64,
    streamed: AtomicU64,
    duplicates: AtomicU64,
    bytes: AtomicU64,
    /// Pre-copy rounds, setup and downtime (microseconds), as the source measured them.
    source_times: Mutex<(u32, u64, u64)>,
    /// Every page is loaded; the source may hang up.
    done: AtomicBool,
    /// The source is gone for good: pages not loaded never will be.
    abandoned: AtomicBool,
    /// Why a loading thread stopped.
    failure: Mutex<Option<Error>>,
}

/// The connections to the source; replaced when it reconnects.
#[derive(Default)]
struct Link {
    /// The requests channel's sending side; `None` while the connections are broken.
    requests: Option<TcpStream>,
    /// Both connections, to shut them when either breaks.
    sockets: Vec<TcpStream>,
    /// Which connections the receiving threads read: bumped at each (re)connection.
    generation: u32,
    /// When and why the connections broke, while they are broken.
    broken: Option<(Instant, String)>,
}

impl Loading {
    fn new(vm: Arc<Vm>, zero: Bitmap, loaded: Bitmap) -> Self {
        let pages = zero.len();
        Self {
            vm,
            zero,
            loaded,
            requested: Bitmap::new(pages),
            requested_at: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            timeline: Timeline::new(),
            link: Mutex::new(Link::default()),
            recoveries: AtomicU32::new(0),
            disconnected_ms: AtomicU64::new(0),
            progress: (Mutex::new(()), Condvar::new()),
            faults: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            source_times: Mutex::new((0, 0, 0)),
            done: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    fn ram(&self) -> &GuestRam {
        self.vm.ram()
    }

    /// Runs `work` in a thread; its error, if any, stops the migration.
    fn spawn(
        self: &Arc<Self>,
        name: &str,
        work: impl FnOnce(&Self) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let this = self.clone();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Err(e) = work(&this) {
                    lock(&this.failure).get_or_insert(e);
                    this.progress.1.notify_all();
                }
            })
            .map(drop)
            .map_err(io("spawning a thread"))
    }

    /// Sends `control` to the source. While the connections are broken it is dropped:
    /// a reconnection sends again what matters (see [`Loading::recover`]).
    fn send(&self, control: &Control) -> Result<()> {
        let mut link = lock(&self.link);
        let Some(requests) = link.requests.as_mut() else {
            return Ok(());
        };
        match protocol::send_control(requests, control) {
            Err(e @ Error::Disconnected { .. }) => {
                self.broke(&mut link, &e);
                Ok(())
            }
            result => result.map(drop),
        }
    }

    /// Takes the connections down (`link` is `self.link`, locked): every receiving thread
    /// stops, and the main thread waits for the source to reconnect.
    fn broke(&self, link: &mut Link, why: &Error) {
        if link.broken.is_some() {
            return;
        }
        for socket in link.sockets.drain(..) {
            // Fails only if it is shut already.
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        link.requests = None;
        link.broken = Some((Instant::now(), why.to_string()));
        self.notify();
    }

    /// A receiving thread of connections `generation` saw them break.
    fn lost(&self, generation: u32, why: &Error) {
        let mut link = lock(&self.link);
        if link.generation == generation {
            self.broke(&mut link, why);
        }
    }

    /// Takes new connections (`link` is `self.link`, locked) and starts a receiving thread
    /// on each.
    fn attach(
        self: &Arc<Self>,
        stream: BufReader<TcpStream>,
        requests: TcpStream,
        link: &mut Link,
    ) -> Result<()> {
        let clone = |s: &TcpStream| s.try_clone().map_err(io("cloning a socket"));
        link.sockets = vec![clone(stream.get_ref())?, clone(&requests)?];
        let requests_in = BufReader::with_capacity(1 << 16, clone(&requests)?);
        link.requests = Some(requests);
        link.generation += 1;
        link.broken = None;
        let generation = link.generation;
        self.spawn("request-replies", move |l| {
            l.receive_batches(requests_in, 0, Channel::Requests, generation)
        })?;
        self.spawn("stream", move |l| {
            l.receive_batches(stream, BATCH_PAGES, Channel::Stream, generation)
        })
    }

    /// Waits for the source to reconnect after the connections broke, at most `timeout`,
    /// and tells it what to send again: every page not loaded, the requests not answered.
    /// Gives up by aborting the object: vCPUs waiting on a page get `SIGBUS`.
    fn recover(self: &Arc<Self>, listener: &TcpListener, timeout: Duration) -> Result<()> {
        let Some((since, why)) = lock(&self.link).broken.clone() else {
            return Ok(());
        };
        eprintln!(
            "muserload-loader: the connection to the source broke ({why}); the guest waits \
             for its missing pages while the source reconnects (for up to {timeout:?})"
        );
        let accepted =
            accept_channels(listener, Some(since + timeout)).and_then(|(stream, requests, _)| {
                let mut stream = BufReader::with_capacity(1 << 16, stream);
                match protocol::recv_frame(&mut stream, "stream")? {
                    Frame::Control(Control::Resume) => Ok((stream, requests)),
                    _ => Err(Error::Protocol(
                        "a reconnected stream did not start with Resume".into(),
                    )),
                }
            });
        let (stream, mut requests) = match accepted {
            Ok(connections) => connections,
            Err(e) => {
                let reason = match e {
                    Error::Unrecovered(_) => format!("it did not reconnect within {timeout:?}"),
                    e => e.to_string(),
                };
                return Err(Error::Unrecovered(format!(
                    "the connection to the source broke ({why}) and {reason}: the guest, \
                     missing pages only the source had, was stopped"
                )));
            }
        };
        // Under the link's lock: a fault resolved meanwhile either is in `requested`
        // before the list below is made, or sends its request on the new connection.
        let mut link = lock(&self.link);
        let pages = self.zero.len();
        let missing = Bitmap::new(pages);
        let mut unanswered = Vec::new();
        for page in (0..pages).filter(|&p| !self.loaded.get(p) && !self.zero.get(p)) {
            missing.set(page);
            if self.requested.get(page) {
                unanswered.push(page);
            }
        }
        let mut bytes = protocol::send_control(
            &mut requests,
            &Control::Missing {
                words: missing.words(),
            },
        )?;
        // The first may have been lost; the source keeps the first it gets.
        bytes += protocol::send_control(&mut requests, &Control::Resumed)?;
        if !unanswered.is_empty() {
            bytes +=
                protocol::send_control(&mut requests, &Control::Request { pages: unanswered })?;
        }
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.attach(stream, requests, &mut link)?;
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        self.disconnected_ms
            .fetch_add(since.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.timeline
            .outage(self.timeline.now_ms() - since.elapsed().as_secs_f64() * 1000.0);
        eprintln!(
            "muserload-loader: the source reconnected after {} ms; {} pages to go",
            since.elapsed().as_millis(),
            missing.count()
        );
        Ok(())
    }

    /// Records that `page` is loaded (by us or, after EEXIST, by another thread).
    fn mark_loaded(&self, page: u64) {
        if !self.loaded.set(page) {
            return;
        }
        let at = self.requested_at[page as usize].load(Ordering::Relaxed);
        if at != 0 {
            let now = self.epoch.elapsed().as_nanos() as u64 + 1;
            self.timeline.served(now.saturating_sub(at) / 1000);
        }
    }

    fn notify(&self) {
        let _guard = lock(&self.progress.0);
        self.progress.1.notify_all();
    }

    /// Handles faults on `pages`: zero pages are loaded at once, the others requested
    /// (each once).
    fn resolve(&self, pages: impl IntoIterator<Item = u64>) -> Result<()> {
        let mut wanted = Vec::new();
        for page in pages {
            self.faults.fetch_add(1, Ordering::Relaxed);
            if self.loaded.get(page) {
                continue;
            }
            if self.zero.get(page) {
                match self.ram().object().load_zero(
                    self.ram().guest(),
                    page * PAGE,
                    PAGE,
                    Wake::Now,
                ) {
                    Ok(_) => self.timeline.loaded(Cause::Zero, 1),
                    Err(e) if e.errno() == Some(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                self.mark_loaded(page);
                self.notify();
            } else if self.requested.set(page) {
                let now = self.epoch.elapsed().as_nanos() as u64 + 1;
                self.requested_at[page as usize].store(now, Ordering::Relaxed);
                wanted.push(page);
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        self.send(&Control::Request { pages: wanted })
    }

    /// Queue mode: reads fault events and resolves them, until the object is aborted.
    fn resolve_events(&self, events: &Events) -> Result<()> {
        let mut batch = [Event::default(); BATCH_PAGES];
        loop {
            let n = events.read(&mut batch)?;
            if n == 0 {
                return Ok(());
            }
            self.resolve(batch[..n].iter().map(|e| e.offset / PAGE))?;
        }
    }

    /// Signal mode: waits until `page` is loaded.
    fn wait_loaded(&self, page: u64) -> Result<()> {
        let mut guard = lock(&self.progress.0);
        while !self.loaded.get(page) {
            if let Some(e) = lock(&self.failure).take() {
                return Err(e);
            }
            if self.abandoned.load(Ordering::SeqCst) {
                return Err(Error::Unrecovered(format!("page {page} will not come")));
            }
            guard = unpoisoned(
                self.progress
                    .1
                    .wait_timeout(guard, Duration::from_millis(100)),
            )
            .0;
        }
        Ok(())
    }

    /// Loads every zero page, in vectored calls (lazily: the module allocates a page only
    /// when the guest touches it).
    fn load_zero_pages(&self) -> Result<()> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for page in (0..self.zero.len()).filter(|&p| self.zero.get(p)) {
            match ranges.last_mut() {
                Some((offset, len)) if *offset + *len == page * PAGE => *len += PAGE,
                _ => ranges.push((page * PAGE, PAGE)),
            }
        }
        for chunk in ranges.chunks(LOADV_MAX) {
            let mut rest = chunk.to_vec();
            while !rest.is_empty() {
                let object = self.ram().object();
                let (done, skip) =
                    match object.load_zero_vectored(self.ram().guest(), &rest, Wake::Now) {
                        Ok(loaded) => (loaded, false),
                        // A fault loaded that page first.
                        Err(muserload::Error::Load {
                            loaded,
                            errno: Errno::EEXIST,
                            ..
                        }) => (loaded, true),
                        Err(e) => return Err(e.into()),
                    };
                self.timeline.loaded(Cause::Zero, (done / PAGE) as u32);
                rest = self.consume(rest, done, skip);
            }
            self.notify();
        }
        Ok(())
    }

    /// Marks the first `bytes` of `ranges` loaded, and the page after them too if `skip`
    /// (it was already loaded); returns what is left.
    fn consume(&self, ranges: Vec<(u64, u64)>, bytes: u64, skip: bool) -> Vec<(u64, u64)> {
        let mut to_mark = bytes / PAGE + u64::from(skip);
        let mut left = Vec::new();
        for (offset, len) in ranges {
            let take = to_mark.min(len / PAGE);
            to_mark -= take;
            (offset / PAGE..offset / PAGE + take).for_each(|p| self.mark_loaded(p));
            if take < len / PAGE {
                left.push((offset + take * PAGE, len - take * PAGE));
            }
        }
        left
    }

    /// Receives batches of pages on one channel into staging slots `first_slot..` and
    /// moves them into guest memory, until the stream ends (or, on the requests channel,
    /// the source hangs up after `Done`). A broken connection is not an error: the thread
    /// ends and the main thread waits for the source to reconnect.
    fn receive_batches(
        &self,
        conn: BufReader<TcpStream>,
        first_slot: usize,
        channel: Channel,
        generation: u32,
    ) -> Result<()> {
        match self.receive_frames(conn, first_slot, channel) {
            // After `Done` the source may hang up at any moment.
            Err(_) if self.done.load(Ordering::SeqCst) => Ok(()),
            Err(e @ Error::Disconnected { .. }) => {
                self.lost(generation, &e);
                Ok(())
            }
            result => result,
        }
    }

    fn receive_frames(
        &self,
        mut conn: BufReader<TcpStream>,
        first_slot: usize,
        channel: Channel,
    ) -> Result<()> {
        let what = match channel {
            Channel::Stream => "stream",
            Channel::Requests => "requests channel",
        };
        let mut staging = self.ram().object().map_staging()?;
        loop {
            match (protocol::recv_frame(&mut conn, what)?, channel) {
                (Frame::Pages(pages), _) => {
                    let pairs = stage(
                        &pages,
                        &mut conn,
                        &mut staging,
                        first_slot,
                        self.zero.len(),
                        what,
                    )?;
                    self.bytes.fetch_add(pages.wire_size(), Ordering::Relaxed);
                    let cause = match channel {
                        Channel::Stream => {
                            self.streamed
                                .fetch_add(pairs.len() as u64, Ordering::Relaxed);
                            Cause::Stream
                        }
                        Channel::Requests => Cause::Request,
                    };
                    self.move_pages(&mut staging, &pairs, cause)?;
                    self.notify();
                }
                (Frame::Control(Control::StreamEnd), Channel::Stream) => return Ok(()),
                (
                    Frame::Control(Control::SourceTimes {
                        rounds,
                        setup,
                        downtime,
                    }),
                    Channel::Requests,
                ) => {
                    *lock(&self.source_times) = (rounds, setup, downtime);
                }
                _ => return Err(Error::Protocol(format!("{what}: unexpected message"))),
            }
        }
    }

    /// Moves staging slots into guest pages, `(offset, slot)` pairs; a page loaded
    /// meanwhile (EEXIST) is skipped and counted as a duplicate.
    fn move_pages(
        &self,
        staging: &mut muserload::Staging,
        pairs: &[(u64, usize)],
        cause: Cause,
    ) -> Result<()> {
        let (object, guest) = (self.ram().object(), self.ram().guest());
        let mut rest = pairs;
        while !rest.is_empty() {
            let (moved, skip) = match object.load_move_vectored(guest, staging, rest, Wake::Now) {
                Ok(loaded) => ((loaded / PAGE) as usize, 0),
                Err(muserload::Error::Load {
                    loaded,
                    errno: Errno::EEXIST,
                    ..
                }) => ((loaded / PAGE) as usize, 1),
                Err(e) => return Err(e.into()),
            };
            self.timeline.loaded(cause, moved as u32);
            let taken = (moved + skip).min(rest.len());
            for &(offset, _) in &rest[..taken] {
                self.mark_loaded(offset / PAGE);
            }
            self.duplicates.fetch_add(skip as u64, Ordering::Relaxed);
            rest = &rest[taken..];
        }
        Ok(())
    }

    /// Waits until every page is loaded, showing progress on a terminal; takes the
    /// source's reconnections on `listener` if the connections break.
    fn wait_all_loaded(
        self: &Arc<Self>,
        machine: &Machine,
        listener: &TcpListener,
        recover_timeout: Duration,
    ) -> Result<()> {
        let total = self.zero.len();
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:40} {pos}/{len} pages loaded, {elapsed} {msg}")
        {
            bar.set_style(style);
        }
        loop {
            if lock(&self.link).broken.is_some() {
                bar.set_message("(reconnecting)");
                if let Err(e) = self.recover(listener, recover_timeout) {
                    bar.abandon();
                    return Err(e);
                }
                bar.set_message("");
            }
            let loaded = self.loaded.count();
            bar.set_position(loaded);
            if loaded == total {
                bar.finish_and_clear();
                return Ok(());
            }
            if let Some(e) = lock(&self.failure).take() {
                bar.abandon();
                return Err(e);
            }
            if let Some(failure) = machine.failure() {
                bar.abandon();
                return Err(Error::Guest(failure));
            }
            // Not holding `progress.0` while taking `link` above: a notification between the
            // checks and this wait only delays the next look by the timeout.
            let guard = lock(&self.progress.0);
            drop(unpoisoned(
                self.progress
                    .1
                    .wait_timeout(guard, Duration::from_millis(100)),
            ));
        }
    }
}

/// Loads a pre-copy batch into guest memory. The guest is not running yet; a page sent
/// again (the guest wrote it after its last send) replaces the old copy: armed again first,
/// since loads only fill unloaded pages.
fn receive_precopy(
    ram: &GuestRam,
    stream: &mut BufReader<TcpStream>,
    staging: &mut muserload::Staging,
    batch: &Pages,
    loaded: &Bitmap,
    mode: FaultMode,
) -> Result<()> {
    let pairs = stage(batch, stream, staging, BATCH_PAGES, loaded.len(), "stream")?;
    for &page in batch.indices.iter().filter(|&&p| loaded.get(p)) {
        ram.object().arm(ram.guest(), page * PAGE, PAGE, mode)?;
    }
    ram.object()
        .load_move_vectored(ram.guest(), staging, &pairs, Wake::Now)?;
    batch.indices.iter().for_each(|&p| {
        loaded.set(p);
    });
    Ok(())
}

/// Checks a batch's page indices against the guest's `pages`, reads its data into staging
/// slots `first_slot..`, and returns the `(guest offset, slot)` pairs to MOVE.
fn stage(
    batch: &Pages,
    conn: &mut BufReader<TcpStream>,
    staging: &mut muserload::Staging,
    first_slot: usize,
    pages: u64,
    what: &'static str,
) -> Result<Vec<(u64, usize)>> {
    if let Some(&bad) = batch.indices.iter().find(|&&p| p >= pages) {
        return Err(Error::Protocol(format!("{what}: page {bad} past RAM")));
    }
    let n = batch.indices.len();
    batch.read_data(conn, staging.slots_mut(first_slot, n)?, what)?;
    Ok(batch
        .indices
        .iter()
        .enumerate()
        .map(|(k, &page)| (page * PAGE, first_slot + k))
        .collect())
}

thread_local! {
    /// The address signal mode's handler saw last in this thread (0: none).
    static FAULT_ADDRESS: Cell<u64> = const { Cell::new(0) };
}

/// Signal mode's handler: notes the address for the vCPU loop, which sees KVM_RUN fail
/// with EINTR next. A thread-local `Cell` store is async-signal-safe.
fn note_fault(address: u64) {
    FAULT_ADDRESS.with(|a| a.set(address));
}

/// Signal mode's faults, handled in the vCPU threads.
struct SignalFaults(Arc<Loading>);

impl Interrupted for SignalFaults {
    fn interrupted(&self) -> Result<bool> {
        let address = FAULT_ADDRESS.with(|a| a.replace(0));
        if address == 0 {
            return Ok(false);
        }
        let base = self.0.ram().guest().as_ptr() as u64;
        let page = address
            .checked_sub(base)
            .map(|offset| offset / PAGE)
            .filter(|&page| page < self.0.zero.len())
            .ok_or_else(|| Error::Guest(format!("fault signal for {address:#x}, not guest RAM")))?;
        self.0.resolve([page])?;
        self.0.wait_loaded(page)?;
        Ok(true)
    }
}
