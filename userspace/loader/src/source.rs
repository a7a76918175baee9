//! The source: runs the test guest and, when told, migrates it post-copy: it pauses the
//! vCPUs, sends their state, the devices' state and a map of the zero pages, then serves
//! the destination's page requests ahead of a background stream of every other page, until
//! the destination says every page is loaded.

use std::{
    io::{self, BufRead, BufWriter, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        mpsc, Arc, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    address::{resolve, AddressError},
    bitmap::Bitmap,
    boot::{self, BootError, LinuxGuest, TestGuestConfig},
    interrupted::NoFaults,
    memory::{GuestRam, MemoryError, BATCH_PAGES},
    precopy::{self, Plan, PrecopyError},
    protocol::{self, Channel, Control, Kind, LinkError, ProtocolError},
    report::{self, ReportError, SourceReport},
    vcpu::{GuestStopped, Machine, VcpuError},
    vm::{MachineState, Vm, VmError},
};

/// Why `muserload-loader run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Guest RAM could not be set up.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The guest could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The vCPUs could not be started.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The guest stopped before it was migrated.
    #[error(transparent)]
    Guest(#[from] Arc<GuestStopped>),
    /// The migration failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The report could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// Why migrating the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The destination's address does not resolve.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The destination could not be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The VM's dirty log or state failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Reading guest RAM failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The pre-copy rounds failed.
    #[error(transparent)]
    Precopy(#[from] PrecopyError),
    /// The guest stopped on its own before it was paused.
    #[error(transparent)]
    Guest(#[from] Arc<GuestStopped>),
    /// The stream's thread could not be started.
    #[error("spawning the stream thread: {0}")]
    Spawn(#[source] io::Error),
    /// A socket could not be cloned for another thread.
    #[error("cloning {what}: {source}")]
    Clone {
        /// Which socket.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The stream's thread panicked.
    #[error("the stream thread panicked")]
    StreamPanicked,
    /// A connection broke in post-copy and the destination did not come back in time.
    #[error(
        "the destination did not come back within {timeout:?} ({cause}); the guest, which \
         runs there, cannot get its missing pages"
    )]
    Unrecovered {
        /// How long the source tried.
        timeout: Duration,
        /// Why the last attempt failed.
        #[source]
        cause: Box<SendError>,
    },
}

impl SendError {
    /// Whether the destination could not be reached, or the connection to it broke: what
    /// post-copy recovers from by reconnecting.
    fn is_disconnection(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Link(LinkError::Disconnected { .. })
        )
    }
}

/// `map_err` helper for cloning `what`, a socket.
fn clone_error(what: &'static str) -> impl FnOnce(io::Error) -> SendError {
    move |source| SendError::Clone { what, source }
}

/// The guest to run.
pub enum Guest {
    /// The built-in test guest.
    Test {
        /// Its image.
        image: PathBuf,
        /// What it does.
        config: TestGuestConfig,
    },
    /// Linux.
    Linux {
        /// The bzImage.
        kernel: PathBuf,
        /// The initramfs.
        initrd: PathBuf,
        /// The command line.
        cmdline: String,
    },
}

/// What `muserload-loader run` was asked.
pub struct RunOptions {
    /// The guest.
    pub guest: Guest,
    /// Guest RAM in bytes.
    pub ram_size: u64,
    /// Where to migrate to without being told on stdin.
    pub migrate_to: Option<String>,
    /// Migrate this long after the start...
    pub migrate_after: Option<Duration>,
    /// ...or once the guest has completed this many rounds.
    pub migrate_after_rounds: Option<u64>,
    /// Where to write the report as JSON.
    pub report_json: Option<PathBuf>,
    /// How to migrate.
    pub migration: Migration,
}

/// How to migrate.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Post-copy, pre-copy or hybrid.
    pub kind: Kind,
    /// Hybrid: pre-copy rounds before the switch (after the first full pass).
    pub rounds: u32,
    /// Pre-copy: switch once what is left could be sent within this time...
    pub downtime_target: Duration,
    /// ...or, if it never can, after this many rounds (or [`precopy::MAX_TRAFFIC`] times
    /// RAM sent).
    pub max_rounds: u32,
    /// Post-copy: how long to keep reconnecting after a connection broke.
    pub recover_timeout: Duration,
}

/// Runs the test guest, and migrates it if asked.
pub fn run(options: RunOptions) -> Result<(), RunError> {
    let ram = GuestRam::new(options.ram_size)?;
    let entry = match &options.guest {
        Guest::Test { image, config } => boot::load_test_guest(&ram, image, *config)?,
        Guest::Linux {
            kernel,
            initrd,
            cmdline,
        } => boot::load_linux(
            &ram,
            LinuxGuest {
                kernel,
                initrd,
                cmdline,
            },
        )?,
    };
    let vm = Arc::new(Vm::new(ram, Box::new(std::io::stdout()))?);
    let vcpu = vm.boot_vcpu(0, &entry)?;
    let started = Instant::now();
    let machine = Machine::start(vm.clone(), vec![vcpu], Arc::new(NoFaults))?;

    let destination = wait_for_migrate(&machine, &options, started)?;
    let report = migrate(machine, &destination, &options.migration)?;
    println!("{}", report.table());
    if let Some(path) = &options.report_json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// Waits until it is time to migrate: `--migrate-after`, `--migrate-after-rounds`, or a
/// `migrate ADDR` line on stdin. Returns the destination.
fn wait_for_migrate(
    machine: &Machine,
    options: &RunOptions,
    started: Instant,
) -> Result<String, Arc<GuestStopped>> {
    let (tx, rx) = mpsc::channel();
    // Commands on stdin, only when no destination was given: a loader started in the
    // background of a shell that read its terminal would be stopped by SIGTTIN, vCPUs and
    // all. The thread is left blocked in read() once the migration starts.
    let interactive = options.migrate_to.is_none();
    interactive.then(|| {
        thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("migrate"), Some(addr)) => {
                        let _ = tx.send(addr.to_owned());
                    }
                    (Some("status"), None) | (None, _) => {}
                    _ => eprintln!("muserload-loader: commands: migrate HOST:PORT, status"),
                }
            }
        })
    });
    let devices = machine.vm().devices();
    loop {
        if let Some(failure) = machine.failure() {
            return Err(failure);
        }
        if let Ok(addr) = rx.try_recv() {
            return Ok(addr);
        }
        if let Some(addr) = &options.migrate_to {
            let due_time = options
                .migrate_after
                .is_some_and(|after| started.elapsed() >= after);
            let due_rounds = options
                .migrate_after_rounds
                .is_some_and(|rounds| devices.report().rounds >= rounds);
            let no_condition =
                options.migrate_after.is_none() && options.migrate_after_rounds.is_none();
            if due_time || due_rounds || no_condition {
                return Ok(addr.clone());
            }
        }
        devices.wait_report(Duration::from_millis(50), |_| false);
    }
}

/// Opens the connection of `channel` to the destination at `addr`.
fn connect(addr: SocketAddr, channel: Channel) -> Result<TcpStream, SendError> {
    let mut stream =
        TcpStream::connect(addr).map_err(|source| SendError::Connect { addr, source })?;
    protocol::tune(&stream)?;
    protocol::send_hello(&mut stream, channel)?;
    protocol::hello_answer(&mut stream)?;
    Ok(stream)
}

/// What the serving threads share.
struct Serving {
    vm: Arc<Vm>,
    zero: Bitmap,
    /// Pages sent at least once (zero pages count as sent: they never need to be).
    sent: Bitmap,
    sends: Vec<AtomicU8>,
    /// The page after the last requested one, where the stream goes on (`u64::MAX`: none
    /// since the stream last looked).
    next_after_request: AtomicU64,
    requested: AtomicU64,
    streamed: AtomicU64,
    zero_sent: AtomicU64,
    bytes: AtomicU64,
}

/// The times the source reports to the destination once the guest runs there.
struct Times {
    paused: Instant,
    setup: Duration,
    rounds: u32,
    /// Set by the first `Resumed` (a recovery repeats it).
    downtime: Option<Duration>,
}

impl Serving {
    fn count_send(&self, page: u64) {
        self.sends[page as usize].fetch_add(1, Ordering::Relaxed);
        if self.zero.get(page) {
            self.zero_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends `pages` in one batch.
    fn send(&self, w: &mut impl Write, pages: &[u64]) -> Result<(), LinkError> {
        // SAFETY: The vCPUs are stopped for good and nothing loads into the source's RAM.
        let data: Vec<(u64, &[u8])> = pages
            .iter()
            .map(|&p| (p, unsafe { self.vm.ram().page(p) }))
            .collect();
        let bytes = protocol::send_pages(w, &data)?;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }
}

/// Migrates the guest `machine` runs to `destination`, `how` it was asked.
fn migrate(
    machine: Machine,
    destination: &str,
    how: &Migration,
) -> Result<SourceReport, SendError> {
    let addr = resolve(destination)?;
    let start = Instant::now();
    let mut stream = BufWriter::with_capacity(1 << 20, connect(addr, Channel::Stream)?);
    let mut requests = connect(addr, Channel::Requests)?;

    let vm = machine.vm().clone();
    let ram = vm.ram();
    let mut bytes = protocol::send_control(
        &mut stream,
        &Control::Memory {
            ram_size: ram.size(),
            kind: how.kind,
        },
    )?;
    protocol::flush(&mut stream, "sending the guest's size")?;
    // The destination sets up its RAM now, not in the downtime.
    protocol::expect_ready(&mut requests)?;
    let setup = start.elapsed();
    // Post-copy looks for zero pages while the guest still runs: the pause then checks
    // again only those candidates (most of them untouched, which mincore() alone settles),
    // so that the downtime does not grow with RAM. Nothing relies on a dirty log here.
    let zero_candidates = match how.kind {
        Kind::PostCopy => Some(zero_pages(ram, |_| true)?),
        Kind::PreCopy | Kind::Hybrid => None,
    };
    let precopied = match how.kind {
        Kind::PostCopy => None,
        Kind::PreCopy | Kind::Hybrid => {
            vm.enable_dirty_logging()?;
            let plan = match how.kind {
                Kind::PreCopy => Plan::Converge {
                    downtime: how.downtime_target,
                    max_rounds: how.max_rounds,
                },
                _ => Plan::Rounds(how.rounds),
            };
            Some(precopy::run(&vm, &mut stream, plan)?)
        }
    };

    let paused = Instant::now();
    let vcpus = machine.stop()?;
    // What the guest wrote since the last round is stale at the destination.
    let mut precopied = precopied;
    if let Some(rounds) = &mut precopied {
        vm.dirty_pages()?.ones().for_each(|p| rounds.valid.clear(p));
        if how.kind == Kind::PreCopy {
            // Pre-copy sends the rest now, while the guest is paused.
            let stale: Vec<u64> = rounds
                .sent
                .ones()
                .filter(|&p| !rounds.valid.get(p))
                .collect();
            let fresh: Vec<u64> = (0..ram.pages())
                .filter(|&p| !rounds.sent.get(p) && !ram.is_zero(p))
                .collect();
            precopy::send(ram, &mut stream, &[stale, fresh].concat(), rounds)?;
        }
        // The dirty log stays on: the guest never runs here again, and turning it off
        // (a memory slot update) would only lengthen the downtime.
    }
    let state = MachineState {
        ram_size: ram.size(),
        vcpus,
        vm: vm.state()?,
        devices: vm.devices().state(),
    };
    let guest_rounds = state.devices.test_report().rounds;
    bytes += protocol::send_control(&mut stream, &Control::Machine(Box::new(state)))?;
    // Zero pages: never sent (or sent and written since) and zero now.
    let valid = precopied
        .as_ref()
        .map_or_else(|| Bitmap::new(ram.pages()), |r| r.valid.clone());
    let zero = match zero_candidates {
        // A page found not zero before the pause is sent even if the guest has zeroed it
        // since: a page of zeros too many at worst.
        Some(candidates) => zero_pages(ram, |page| candidates.get(page))?,
        None => zero_pages(ram, |page| !valid.get(page))?,
    };
    bytes += protocol::send_control(
        &mut stream,
        &Control::ZeroMap {
            pages: zero.len(),
            words: zero.words(),
        },
    )?;
    let discard = Bitmap::new(ram.pages());
    if let Some(rounds) = &precopied {
        rounds
            .sent
            .ones()
            .filter(|&p| !rounds.valid.get(p))
            .for_each(|p| {
                discard.set(p);
            });
    }
    bytes += protocol::send_control(
        &mut stream,
        &Control::Discard {
            words: discard.words(),
        },
    )?;
    protocol::flush(&mut stream, "sending the machine state")?;
    // Nothing more to send for zero pages and for what pre-copy settled.
    let sent = zero.clone();
    valid.ones().for_each(|p| {
        sent.set(p);
    });
    let serving = Arc::new(Serving {
        sends: (0..ram.pages()).map(|_| AtomicU8::new(0)).collect(),
        vm: vm.clone(),
        zero,
        sent,
        next_after_request: AtomicU64::new(u64::MAX),
        requested: AtomicU64::new(0),
        streamed: AtomicU64::new(0),
        zero_sent: AtomicU64::new(0),
        bytes: AtomicU64::new(bytes + precopied.as_ref().map_or(0, |r| r.bytes)),
    });

    let rounds = precopied.as_ref().map_or(0, |r| r.rounds);
    let mut times = Times {
        paused,
        setup,
        rounds,
        downtime: None,
    };
    let mut recoveries = 0;
    // Post-copy: the guest runs at the destination, and only this process has the pages it
    // has not loaded yet. A broken connection is not the end: reconnect and go on.
    while let Err(e) = serve(&serving, stream, &mut requests, &mut times) {
        if !e.is_disconnection() {
            return Err(e);
        }
        eprintln!(
            "muserload-loader: the connection to the destination broke ({e}); reconnecting \
             for up to {:?}",
            how.recover_timeout
        );
        (stream, requests) = reconnect(addr, &serving, how.recover_timeout)?;
        recoveries += 1;
        eprintln!("muserload-loader: reconnected; the migration goes on");
    }
    let downtime = times
        .downtime
        .ok_or_else(|| LinkError::from(ProtocolError::NeverResumed))?;
    Ok(SourceReport {
        kind: how.kind,
        precopy_rounds: rounds,
        precopy_pages: precopied.as_ref().map_or(0, |r| r.pages),
        discarded_pages: discard.count(),
        setup_us: setup.as_micros() as u64,
        downtime_us: downtime.as_micros() as u64,
        total_ms: start.elapsed().as_millis() as u64,
        bytes_sent: serving.bytes.load(Ordering::Relaxed),
        pages: serving.zero.len(),
        zero_pages: serving.zero.count(),
        zero_pages_sent: serving.zero_sent.load(Ordering::Relaxed),
        pages_requested: serving.requested.load(Ordering::Relaxed),
        pages_streamed: serving.streamed.load(Ordering::Relaxed),
        max_sends_per_page: serving
            .sends
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0),
        guest_rounds,
        recoveries,
    })
}

/// Serves one pair of connections: streams pages in a thread and answers requests, until
/// the destination is done (`Ok`) or a connection breaks.
fn serve(
    serving: &Arc<Serving>,
    stream: BufWriter<TcpStream>,
    requests: &mut TcpStream,
    times: &mut Times,
) -> Result<(), SendError> {
    // Whichever side fails shuts both connections, so that the other's blocking call
    // returns too; the first failure is the one to report.
    let sockets = Arc::new(Sockets::new(stream.get_ref(), requests)?);
    let stop = Arc::new(AtomicBool::new(false));
    let streamer = {
        let (serving, stop, sockets) = (serving.clone(), stop.clone(), sockets.clone());
        thread::Builder::new()
            .name("stream".into())
            .spawn(move || {
                let streamed = stream_pages(&serving, stream, &stop);
                if streamed.is_err() {
                    sockets.shut(Channel::Stream);
                }
                streamed
            })
            .map_err(SendError::Spawn)?
    };
    let served = serve_requests(serving, requests, times);
    stop.store(true, Ordering::SeqCst);
    if served.is_err() {
        sockets.shut(Channel::Requests);
    }
    let streamed = streamer.join().map_err(|_| SendError::StreamPanicked)?;
    match (served, streamed) {
        (Ok(()), Ok(())) => Ok(()),
        // Once the destination has every page, a stream cut short is no loss.
        (Ok(()), Err(e)) => {
            eprintln!("muserload-loader: stream ended early (harmless, all pages loaded): {e}");
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Err(served), Err(streamed)) => Err(match sockets.first_to_fail() {
            Some(Channel::Stream) => streamed.into(),
            _ => served,
        }),
    }
}

/// Handles on both connections, to shut them from another thread.
struct Sockets {
    sockets: [TcpStream; 2],
    /// The side of [`serve`] (the thread on that channel) that shut them first.
    first: OnceLock<Channel>,
}

impl Sockets {
    /// Handles on `stream` and `requests`.
    fn new(stream: &TcpStream, requests: &TcpStream) -> Result<Self, SendError> {
        let clone = |s: &TcpStream| s.try_clone().map_err(clone_error("a socket"));
        Ok(Self {
            sockets: [clone(stream)?, clone(requests)?],
            first: OnceLock::new(),
        })
    }

    /// Shuts both connections, the side on channel `by` having failed.
    fn shut(&self, by: Channel) {
        // Only the first side to fail is kept: the other failed because of it.
        let _ = self.first.set(by);
        for socket in &self.sockets {
            // Fails only if it is shut already.
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// The side that failed first, if one did.
    fn first_to_fail(&self) -> Option<Channel> {
        self.first.get().copied()
    }
}

/// Reconnects to the destination after a connection broke, retrying until `timeout`;
/// returns the new connections, with `serving` set to send what the destination misses.
fn reconnect(
    addr: SocketAddr,
    serving: &Serving,
    timeout: Duration,
) -> Result<(BufWriter<TcpStream>, TcpStream), SendError> {
    let deadline = Instant::now() + timeout;
    loop {
        match resume(addr, serving) {
            Ok(connections) => return Ok(connections),
            Err(e) if e.is_disconnection() => {
                if Instant::now() >= deadline {
                    return Err(SendError::Unrecovered {
                        timeout,
                        cause: Box::new(e),
                    });
                }
                thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens both connections again and asks the destination which pages it misses.
fn resume(
    addr: SocketAddr,
    serving: &Serving,
) -> Result<(BufWriter<TcpStream>, TcpStream), SendError> {
    let mut stream = BufWriter::with_capacity(1 << 20, connect(addr, Channel::Stream)?);
    let mut requests = connect(addr, Channel::Requests)?;
    let bytes = protocol::send_control(&mut stream, &Control::Resume)?;
    protocol::flush(&mut stream, "resuming the stream")?;
    let pages = serving.zero.len();
    let missing = protocol::expect_missing(&mut requests, pages)?;
    serving.bytes.fetch_add(bytes, Ordering::Relaxed);
    // Whatever was in flight when the connection broke is missing again.
    for page in 0..pages {
        if missing.get(page) {
            serving.sent.clear(page);
        } else {
            serving.sent.set(page);
        }
    }
    serving.next_after_request.store(0, Ordering::Relaxed);
    Ok((stream, requests))
}

/// The `candidate` pages that are zero: never touched (not resident), or resident and
/// holding only zeros.
fn zero_pages(ram: &GuestRam, candidate: impl Fn(u64) -> bool) -> Result<Bitmap, MemoryError> {
    let map = Bitmap::new(ram.pages());
    for (page, resident) in ram.resident()?.into_iter().enumerate() {
        let page = page as u64;
        if candidate(page) && (!resident || ram.is_zero(page)) {
            map.set(page);
        }
    }
    Ok(map)
}

/// Answers the destination's requests until it says it is done; notes the downtime.
fn serve_requests(
    serving: &Serving,
    requests: &mut TcpStream,
    times: &mut Times,
) -> Result<(), SendError> {
    let mut reader = requests
        .try_clone()
        .map_err(clone_error("the requests socket"))?;
    loop {
        match protocol::expect_serving(&mut reader, serving.zero.len())? {
            protocol::Serving::Request(pages) => {
                for chunk in pages.chunks(BATCH_PAGES) {
                    for &page in chunk {
                        serving.sent.set(page);
                        serving.count_send(page);
                    }
                    serving.send(requests, chunk)?;
                    serving
                        .requested
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                if let Some(&last) = pages.last() {
                    serving
                        .next_after_request
                        .store(last + 1, Ordering::Relaxed);
                }
            }
            protocol::Serving::Resumed => {
                let downtime = *times.downtime.get_or_insert(times.paused.elapsed());
                let message = Control::SourceTimes {
                    rounds: times.rounds,
                    setup: times.setup.as_micros() as u64,
                    downtime: downtime.as_micros() as u64,
                };
                let bytes = protocol::send_control(requests, &message)?;
                serving.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            protocol::Serving::Done => return Ok(()),
        }
    }
}

/// Sends every page not sent yet, from the last requested page on, until all are sent or
/// `stop` is set (the destination is done, or the connections broke).
fn stream_pages(
    serving: &Serving,
    mut stream: BufWriter<TcpStream>,
    stop: &AtomicBool,
) -> Result<(), LinkError> {
    let mut cursor = 0;
    let mut batch = Vec::with_capacity(BATCH_PAGES);
    while !stop.load(Ordering::SeqCst) {
        let after_request = serving.next_after_request.swap(u64::MAX, Ordering::Relaxed);
        if after_request != u64::MAX {
            cursor = after_request;
        }
        batch.clear();
        while batch.len() < BATCH_PAGES {
            let Some(page) = serving.sent.next_clear(cursor) else {
                break;
            };
            cursor = page + 1;
            if serving.sent.set(page) {
                serving.count_send(page);
                batch.push(page);
            }
        }
        if batch.is_empty() {
            let bytes = protocol::send_control(&mut stream, &Control::StreamEnd)?;
            serving.bytes.fetch_add(bytes, Ordering::Relaxed);
            protocol::flush(&mut stream, "sending the stream")?;
            return Ok(());
        }
        serving.send(&mut stream, &batch)?;
        serving
            .streamed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // A batch goes out at once, so that requests never wait behind a full buffer.
        protocol::flush(&mut stream, "sending the stream")?;
    }
    Ok(())
}
