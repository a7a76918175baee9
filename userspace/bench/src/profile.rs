//! `--profile`: where each case's time goes, sampled as `perf record -a` samples: a
//! software cpu-clock event on every CPU, for every task, kernel and user, every
//! [`PERIOD_NS`], only while a case's measured part runs (its [`Window`]); kernel addresses
//! are named from /proc/kallsyms. Sampling rather than tracing, so that a profiled case
//! costs about what a measured one does (a sample is one timer interrupt), and so that the
//! functions TCG makes dear (the kernel's `rep movsb` copies and `rep stosb` clears, which
//! no tracer can hook) show up by name.

use std::{
    collections::HashMap,
    fs,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    ptr::NonNull,
    sync::{
        atomic::{fence, Ordering},
        Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use crate::{report::Measurement, Error, Result, CPU};

/// Time between two samples of a CPU, in nanoseconds.
pub const PERIOD_NS: u64 = 100_000;

/// Data pages of each CPU's ring (a power of two): 2 MiB, room for ~87 000 samples, 8.7 s
/// of a CPU at [`PERIOD_NS`], more than any case's measured part; the ring is read only
/// when the case is over.
const RING_PAGES: usize = 512;

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0`: the fields a sampler needs.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
const PERF_SAMPLE_IP: u64 = 1 << 0;
const PERF_SAMPLE_TID: u64 = 1 << 1;
/// `perf_event_attr.disabled`: each [`Window`] turns the events on, then off.
const ATTR_DISABLED: u64 = 1 << 0;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;
const PERF_EVENT_IOC_DISABLE: libc::Ioctl = 0x2401;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
const PERF_RECORD_MISC_CPUMODE_MASK: u16 = 7;
const PERF_RECORD_MISC_KERNEL: u16 = 1;
/// Where `data_head` and `data_tail` sit in `struct perf_event_mmap_page`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;

fn sys(op: &'static str) -> Error {
    Error::Sys {
        op,
        errno: nix::errno::Errno::last(),
    }
}

/// One sample: where a CPU was.
struct Sample {
    kernel: bool,
    ip: u64,
    pid: u32,
}

/// One CPU's sampling event and its ring.
///
/// # Invariants
///
/// `base` maps `len` bytes of `fd`'s ring: its control page, then [`RING_PAGES`] pages.
struct Ring {
    cpu: usize,
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    page: usize,
}

impl Ring {
    fn open(cpu: usize) -> Result<Self> {
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            size: size_of::<PerfEventAttr>() as u32,
            config: PERF_COUNT_SW_CPU_CLOCK,
            sample_period: PERIOD_NS,
            sample_type: PERF_SAMPLE_IP | PERF_SAMPLE_TID,
            flags: ATTR_DISABLED,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `perf_event_attr` of the size it states; pid -1 with a
        // CPU samples every task on that CPU (root only).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                -1,
                cpu as libc::c_int,
                -1,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(sys("perf_event_open"));
        }
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = (RING_PAGES + 1) * page;
        // SAFETY: a new shared mapping of the event's ring, which is what perf expects;
        // nothing else is mapped at the address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(sys("mmap of the perf ring"));
        }
        // INVARIANT: `base` maps the control page and the ring, `len` bytes.
        Ok(Self {
            cpu,
            fd,
            base: NonNull::new(base.cast()).ok_or_else(|| sys("mmap of the perf ring"))?,
            len,
            page,
        })
    }

    fn ioctl(&self, request: libc::Ioctl, op: &'static str) -> Result<()> {
        // SAFETY: ENABLE and DISABLE take no argument.
        let ret = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&self.fd), request, 0) };
        if ret < 0 {
            return Err(sys(op));
        }
        Ok(())
    }

    /// Hands every sample in the ring to `f` and empties the ring; returns how many samples
    /// the kernel dropped because the ring was full.
    fn drain(&mut self, mut f: impl FnMut(Sample)) -> u64 {
        let data_size = (self.len - self.page) as u64;
        // SAFETY: By the type invariants the control page is mapped; `data_head` is an
        // aligned u64 that the kernel updates: read it once, then order the data reads after
        // it, as perf's own reader does.
        let head = unsafe { self.base.add(DATA_HEAD).cast::<u64>().read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above; `data_tail` is ours to write.
        let mut tail = unsafe { self.base.add(DATA_TAIL).cast::<u64>().read_volatile() };
        let byte = |at: u64| -> u8 {
            // SAFETY: By the type invariants the ring's data pages follow the control page;
            // `at % data_size` is inside them.
            unsafe {
                self.base
                    .add(self.page + (at % data_size) as usize)
                    .read_volatile()
            }
        };
        let u64_at = |at: u64| (0..8).fold(0u64, |v, i| v | (byte(at + i) as u64) << (8 * i));
        let mut lost = 0;
        while tail < head {
            let header = u64_at(tail);
            let (kind, misc, size) = (header as u32, (header >> 32) as u16, (header >> 48) as u16);
            if size == 0 {
                break;
            }
            match kind {
                PERF_RECORD_SAMPLE => f(Sample {
                    kernel: misc & PERF_RECORD_MISC_CPUMODE_MASK == PERF_RECORD_MISC_KERNEL,
                    ip: u64_at(tail + 8),
                    pid: u64_at(tail + 16) as u32,
                }),
                PERF_RECORD_LOST => lost += u64_at(tail + 16),
                _ => {}
            }
            tail += size as u64;
        }
        fence(Ordering::Release);
        // SAFETY: as above: telling the kernel what was read frees that part of the ring.
        unsafe { self.base.add(DATA_TAIL).cast::<u64>().write_volatile(head) };
        lost
    }
}

// SAFETY: The ring is a shared mapping of the process, valid in any thread; `Sampler`'s
// mutex serialises its readers.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: By the type invariants `base` maps `len` bytes, used by nothing else now.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Kernel text symbols by address, from /proc/kallsyms (module ones end in `[module]`;
/// Rust names are demangled).
struct Symbols(Vec<(u64, String)>);

impl Symbols {
    fn load() -> Result<Self> {
        let text = fs::read_to_string("/proc/kallsyms").map_err(|e| Error::Results {
            path: "/proc/kallsyms".into(),
            message: e.to_string(),
        })?;
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let address = u64::from_str_radix(words.next()?, 16).ok()?;
                let kind = words.next()?;
                let name = words.next()?;
                if !matches!(kind, "t" | "T" | "w" | "W") || address == 0 {
                    return None;
                }
                let name = format!("{:#}", rustc_demangle::demangle(name));
                Some(match words.next() {
                    Some(module) => (address, format!("{name} {module}")),
                    None => (address, name),
                })
            })
            .collect();
        if symbols.is_empty() {
            return Err(Error::Results {
                path: "/proc/kallsyms".into(),
                message: "no addresses (kernel.kptr_restrict?)".into(),
            });
        }
        symbols.sort_unstable();
        Ok(Self(symbols))
    }

    /// The function `ip` is in, and how far into it.
    fn name(&self, ip: u64) -> (&str, u64) {
        match self.0.partition_point(|(address, _)| *address <= ip) {
            0 => ("[unknown kernel address]", 0),
            i => (&self.0[i - 1].1, ip - self.0[i - 1].0),
        }
    }
}

/// What a name belongs to, for the summary: the first rule whose patterns match wins.
const CATEGORIES: &[(&str, &[&str])] = &[
    ("user space", &["[user]"]),
    (
        "page copy and clear",
        &[
            "rep_movs",
            "rep_stos",
            "clear_page",
            "copy_page",
            "memcpy",
            "memset",
            "copy_user",
            "copy_mc",
            "copy_from_user",
            "copy_to_user",
            "prep_new_page",
        ],
    ),
    ("muserload module", &["[muserload]"]),
    ("userfaultfd", &["userfault", "mfill", "uffd", "move_pages"]),
    (
        "signal delivery, FPU state",
        &[
            "signal",
            "sigframe",
            "rt_frame",
            "sigreturn",
            "fpu",
            "xsave",
            "xrstor",
            "fpregs",
        ],
    ),
    (
        "timer and sampling interrupts",
        &[
            "perf_",
            "hrtimer",
            "tick_",
            "sysvec_apic_timer",
            "timer",
            "lapic",
            "cpu_clock",
        ],
    ),
    (
        "scheduler, wakeups",
        &[
            "schedule",
            "switch",
            "wake",
            "enqueue",
            "dequeue",
            "pick_",
            "sched",
            "update_curr",
            "update_load",
            "finish_task",
            "prepare_task",
            "ttwu",
            "select_task",
            "preempt",
        ],
    ),
    (
        "entry and exit (syscall, fault)",
        &[
            "entry_",
            "asm_",
            "exc_",
            "irqentry",
            "syscall",
            "error_entry",
            "restore_regs",
            "irq_return",
            "ret_from",
        ],
    ),
    ("rest of the kernel (mm, fs)", &[""]),
];

/// Samples of one case: per name, on the case's CPU and on the others.
pub struct CaseProfile {
    case: String,
    implementation: String,
    pages: usize,
    here: HashMap<String, u64>,
    /// The case's CPU's samples by instruction: function and offset.
    instructions: HashMap<(String, u64), u64>,
    elsewhere: HashMap<String, u64>,
    /// The case's CPU's samples in the idle task: its threads were all asleep.
    idle: u64,
    lost: u64,
}

impl CaseProfile {
    /// Microseconds per page of `samples`.
    fn us(&self, samples: u64) -> f64 {
        (samples * PERIOD_NS) as f64 / 1000.0 / self.pages.max(1) as f64
    }

    fn category(&self, category: &str) -> u64 {
        self.here
            .iter()
            .filter(|(name, _)| category_of(name) == category)
            .map(|(_, n)| n)
            .sum()
    }
}

fn category_of(name: &str) -> &'static str {
    CATEGORIES
        .iter()
        .find(|(_, patterns)| patterns.iter().any(|p| name.contains(p)))
        .map(|(category, _)| *category)
        .unwrap_or("")
}

/// The online CPUs, from /proc/stat: not from sysconf() or available_parallelism(), which
/// musl and std answer with the calling thread's affinity, and the benchmark is pinned.
fn online_cpus() -> Result<Vec<usize>> {
    let stat = fs::read_to_string("/proc/stat").map_err(|e| Error::Results {
        path: "/proc/stat".into(),
        message: e.to_string(),
    })?;
    Ok(stat
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .next()?
                .strip_prefix("cpu")?
                .parse()
                .ok()
        })
        .collect())
}

/// Samples every CPU while a case's measured part runs.
struct Sampler {
    rings: Vec<Ring>,
    symbols: Symbols,
}

/// The sampler, once [`enable`] made it: `--profile`.
static SAMPLER: Mutex<Option<Sampler>> = Mutex::new(None);

fn sampler() -> MutexGuard<'static, Option<Sampler>> {
    SAMPLER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Makes every [`Window`] from now on sampled.
pub fn enable() -> Result<()> {
    *sampler() = Some(Sampler::new()?);
    Ok(())
}

/// The samples of the windows since the last call, tallied for `measured`; `None` unless
/// [`enable`]d.
pub fn tally(measured: &Measurement) -> Option<CaseProfile> {
    sampler().as_mut().map(|sampler| sampler.tally(measured))
}

/// The measured part of a case: its wall time, sampled when profiling.
pub struct Window(Instant);

impl Window {
    /// Starts the clock (and the sampler).
    pub fn open() -> Result<Self> {
        if let Some(sampler) = sampler().as_mut() {
            sampler.switch(PERF_EVENT_IOC_ENABLE, "PERF_EVENT_IOC_ENABLE")?;
        }
        Ok(Self(Instant::now()))
    }

    /// Stops it; returns the time since [`Self::open`].
    pub fn close(self) -> Result<Duration> {
        let elapsed = self.0.elapsed();
        if let Some(sampler) = sampler().as_mut() {
            sampler.switch(PERF_EVENT_IOC_DISABLE, "PERF_EVENT_IOC_DISABLE")?;
        }
        Ok(elapsed)
    }
}

impl Sampler {
    /// Opens a sampling event on every online CPU, off; reads the kernel's symbols.
    fn new() -> Result<Self> {
        Ok(Self {
            rings: online_cpus()?
                .into_iter()
                .map(Ring::open)
                .collect::<Result<_>>()?,
            symbols: Symbols::load()?,
        })
    }

    /// Turns every CPU's event on or off.
    fn switch(&self, request: libc::Ioctl, op: &'static str) -> Result<()> {
        self.rings
            .iter()
            .try_for_each(|ring| ring.ioctl(request, op))
    }

    /// Tallies the samples in the rings for `measured`, emptying them.
    fn tally(&mut self, measured: &Measurement) -> CaseProfile {
        let mut profile = CaseProfile {
            case: measured.case.clone(),
            implementation: measured.implementation.clone(),
            pages: measured.pages,
            here: HashMap::new(),
            instructions: HashMap::new(),
            elsewhere: HashMap::new(),
            idle: 0,
            lost: 0,
        };
        for ring in &mut self.rings {
            let symbols = &self.symbols;
            let here = ring.cpu == CPU;
            profile.lost += ring.drain(|sample| {
                // The idle task is pid 0: no work, but the case's CPU waiting is part of
                // its time.
                if sample.pid == 0 {
                    profile.idle += u64::from(here);
                    return;
                }
                let (name, offset) = if sample.kernel {
                    symbols.name(sample.ip)
                } else {
                    ("[user]", 0)
                };
                let tally = if here {
                    *profile
                        .instructions
                        .entry((name.to_owned(), offset))
                        .or_default() += 1;
                    &mut profile.here
                } else {
                    &mut profile.elsewhere
                };
                *tally.entry(name.to_owned()).or_default() += 1;
            });
        }
        profile
    }
}

/// The case CPU's [`HOT`] busiest kernel instructions: function, offset, samples.
fn hottest(profile: &CaseProfile) -> Vec<(&str, u64, u64)> {
    let mut hot: Vec<(&str, u64, u64)> = profile
        .instructions
        .iter()
        .filter(|((name, _), _)| name != "[user]")
        .map(|((name, offset), n)| (name.as_str(), *offset, *n))
        .collect();
    hot.sort_by_key(|&(_, _, n)| std::cmp::Reverse(n));
    hot.truncate(HOT);
    hot
}

/// How many instructions each implementation lists.
const HOT: usize = 6;

/// How many functions each comparison lists.
const TOP: usize = 14;

/// Prints, for every case that both implementations ran, where the case's CPU spent its
/// time, in microseconds per page: by category, then the busiest functions; and how busy
/// the other CPUs were (the module's page pool worker runs there).
pub fn print(profiles: &[CaseProfile]) {
    println!();
    println!(
        "# Profiles: perf cpu-clock samples every {} us on every CPU while a \
         case's measured part ran, in us per page; sampling slows what it samples (the \
         table above was measured with it on)",
        PERIOD_NS / 1000
    );
    for ours in profiles.iter().filter(|p| p.implementation == "muserload") {
        let Some(theirs) = profiles
            .iter()
            .find(|p| p.case == ours.case && p.implementation == "userfaultfd")
        else {
            continue;
        };
        println!();
        println!("## {} ({} pages)", ours.case, ours.pages);
        println!(
            "{:<60} {:>10} {:>12}",
            "on the case's CPU", "muserload", "userfaultfd"
        );
        // A line of the comparison: `label` at `depth`, then each side's samples in us/page.
        let row = |depth: usize, label: &str, samples: &dyn Fn(&CaseProfile) -> u64| {
            let label: String = label.chars().take(60 - 2 * depth).collect();
            println!(
                "{:indent$}{label:<width$} {:>10.2} {:>12.2}",
                "",
                ours.us(samples(ours)),
                theirs.us(samples(theirs)),
                indent = 2 * depth,
                width = 60 - 2 * depth
            );
        };
        row(0, "busy", &|p| p.here.values().sum());
        row(0, "idle (every thread of the case asleep)", &|p| p.idle);
        for (category, _) in CATEGORIES {
            if ours.category(category) + theirs.category(category) > 0 {
                row(1, category, &|p| p.category(category));
            }
        }
        let mut names: Vec<&String> = ours.here.keys().chain(theirs.here.keys()).collect();
        names.sort_unstable();
        names.dedup();
        let count = |p: &CaseProfile, name: &String| p.here.get(name).copied().unwrap_or(0);
        names.sort_by_key(|name| std::cmp::Reverse(count(ours, name).max(count(theirs, name))));
        println!("  busiest functions:");
        for name in names.into_iter().take(TOP) {
            row(2, name, &|p| count(p, name));
        }
        println!("  hottest kernel instructions (objdump the function at the offset):");
        for (name, offset, n, p) in [ours, theirs].iter().flat_map(|p| {
            hottest(p)
                .into_iter()
                .map(move |(name, offset, n)| (name, offset, n, p))
        }) {
            let shown: String = name.chars().take(44).collect();
            println!(
                "    {:<11} {:<44} +{:#06x} {:>10.2}",
                p.implementation,
                shown,
                offset,
                p.us(n)
            );
        }
        row(0, "the other CPUs, busy", &|p| p.elsewhere.values().sum());
        if ours.lost + theirs.lost > 0 {
            println!("# {} samples lost (ring full)", ours.lost + theirs.lost);
        }
    }
}
