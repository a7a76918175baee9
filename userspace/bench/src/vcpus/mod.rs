//! `muserload-bench --vcpus`: demand paging of a nested VM whose vCPUs all fault at once,
//! modelled on KVM's `tools/testing/selftests/kvm/demand_paging_test.c`: N vCPUs, each
//! touching every page of its own slice of guest memory once, on every backend
//! ([`Backend::ALL`]) in one boot, the repetitions the outer loop (a noisy spell of the
//! emulated machine hits every case once). Every page's content is checked, by the guest
//! (its first word) and afterwards by the host (all of it).

mod backend;
mod guest;
mod kvm_stats;
mod machine;
mod plot;
mod report;

use std::time::{Duration, Instant};

pub use backend::{Backend, Shape};
pub use machine::MachineError;

pub use plot::plot;
pub use report::{print, Point};

use backend::{Outcome, PagesLock};
use kvm_stats::Exits;
use machine::{cycles_to_duration, mismatches};
use muserload::PAGE_SIZE;

use crate::{number, Error, Result};

/// What `--vcpus` runs.
pub struct Options {
    /// Each vCPU's slice, in MiB.
    pub slice_mib: usize,
    /// The vCPU counts.
    pub vcpus: Vec<usize>,
    /// How many times every case runs.
    pub repeat: usize,
    /// How long a case's vCPUs may take before those not done count as stuck.
    pub deadline: Duration,
}

/// One case's run: the aggregate and mean per-vCPU rates, every touch's latency, and
/// muserload's page locks.
struct Run {
    pages_per_s: f64,
    per_vcpu_pages_per_s: f64,
    latencies_ns: Vec<u64>,
    pages_lock: Option<PagesLock>,
    exits: Exits,
}

impl Run {
    fn new(outcome: Outcome, slice_pages: usize) -> Self {
        let (runs, tsc_khz) = (&outcome.runs, outcome.tsc_khz);
        let start = runs.iter().map(|r| r.start).min();
        let end = runs.iter().map(|r| r.end).max();
        let wall = start.zip(end).map_or(0.0, |(s, e)| (e - s).as_secs_f64());
        let pages = runs.len() * slice_pages;
        let per_vcpu = runs
            .iter()
            .map(|r| slice_pages as f64 / (r.end - r.start).as_secs_f64())
            .sum::<f64>()
            / runs.len().max(1) as f64;
        let mut latencies_ns: Vec<u64> = runs
            .iter()
            .flat_map(|r| &r.cycles)
            .map(|&c| cycles_to_duration(c, tsc_khz).as_nanos() as u64)
            .collect();
        latencies_ns.sort_unstable();
        Self {
            pages_per_s: pages as f64 / wall,
            per_vcpu_pages_per_s: per_vcpu,
            latencies_ns,
            pages_lock: outcome.pages_lock,
            exits: runs
                .iter()
                .fold(Exits::default(), |sum, r| sum.plus(r.exits)),
        }
    }

    /// The latency at quantile `q`, in microseconds.
    fn latency_us(&self, q: f64) -> f64 {
        let i = ((self.latencies_ns.len() as f64 - 1.0) * q) as usize;
        self.latencies_ns
            .get(i)
            .map_or(0.0, |&ns| ns as f64 / 1000.0)
    }
}

/// Runs every backend at every vCPU count, `repeat` times over; returns a point per
/// backend and count: the run with the median aggregate rate, and the range of all.
pub fn run(options: &Options) -> Result<Vec<Point>> {
    let slice_pages = options.slice_mib * 1024 * 1024 / PAGE_SIZE;
    let cases: Vec<(usize, Backend)> = options
        .vcpus
        .iter()
        .flat_map(|&n| Backend::ALL.map(|b| (n, b)))
        .collect();
    let mut runs: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    let mut failed: Vec<Vec<String>> = cases.iter().map(|_| Vec::new()).collect();
    for repetition in 1..=options.repeat {
        for ((&(vcpus, backend), runs), failed) in cases.iter().zip(&mut runs).zip(&mut failed) {
            eprintln!(
                "# {vcpus} vCPUs, {} ({repetition}/{})",
                backend.name(),
                options.repeat
            );
            let outcome = match backend.run(Shape {
                vcpus,
                slice_pages,
                deadline: options.deadline,
            }) {
                // Its vCPUs were kicked out, or one left the guest loop (its registers
                // corrupted: no backend touches them, the emulated machine did), and the VM
                // is gone: the run has no figures, says why, and the other cases go on. A
                // page with wrong content stays fatal: that is a backend's.
                Err(Error::Machine(
                    e @ (MachineError::Stuck { .. } | MachineError::Exit { .. }),
                )) => {
                    eprintln!("# {e}");
                    failed.push(e.to_string());
                    continue;
                }
                outcome => outcome?,
            };
            let wrong = mismatches(&outcome.runs);
            if wrong > 0 {
                return Err(Error::VcpusGuestMismatch {
                    backend: backend.name(),
                    pages: wrong,
                });
            }
            runs.push(Run::new(outcome, slice_pages));
        }
    }
    Ok(cases
        .into_iter()
        .zip(runs)
        .zip(failed)
        .map(|(((vcpus, backend), runs), failed)| {
            point(backend, vcpus * slice_pages, vcpus, runs, failed)
        })
        .collect())
}

/// A case's point from its runs: the one with the median aggregate rate, with the range of
/// all (a case whose every run failed has none: rates 0).
fn point(
    backend: Backend,
    pages: usize,
    vcpus: usize,
    mut runs: Vec<Run>,
    failed: Vec<String>,
) -> Point {
    runs.sort_by(|a, b| a.pages_per_s.total_cmp(&b.pages_per_s));
    let range = runs
        .first()
        .zip(runs.last())
        .map_or((0.0, 0.0), |(low, high)| {
            (low.pages_per_s, high.pages_per_s)
        });
    let median = runs.len().checked_sub(1).map(|last| &runs[last / 2]);
    Point {
        backend,
        name: backend.name(),
        vcpus,
        pages,
        runs: runs.len(),
        pages_per_s: median.map_or(0.0, |m| m.pages_per_s),
        pages_per_s_range: range,
        per_vcpu_pages_per_s: median.map_or(0.0, |m| m.per_vcpu_pages_per_s),
        p50_us: median.map_or(0.0, |m| m.latency_us(0.5)),
        p99_us: median.map_or(0.0, |m| m.latency_us(0.99)),
        pages_lock: median.and_then(|m| m.pages_lock),
        exits: median.map(|m| m.exits).unwrap_or_default(),
        failed,
    }
}

/// `--vcpus`'s own arguments: `--slice-mib N`, `--counts N,N,...`, `--repeat N`,
/// `--deadline-s N`.
pub fn parse(args: &[(String, String)]) -> Result<Options> {
    let mut options = Options {
        slice_mib: 16,
        // 16 too where the host has the cores: on 2, its MOVE case alone outlasts the
        // deadline (a TLB shootdown per page to 16 vCPUs' CPUs).
        vcpus: vec![1, 2, 4, 8],
        repeat: 3,
        // Ten times the slowest case measured (about 60 s at 8 vCPUs), far below the
        // guest's timeout: a vCPU that hangs ends the run saying where it stopped.
        deadline: Duration::from_secs(600),
    };
    for (arg, value) in args {
        match arg.as_str() {
            "--slice-mib" => {
                options.slice_mib = number(value, "slice size", |m| (1..=64).contains(m))?
            }
            "--counts" => {
                options.vcpus = value
                    .split(',')
                    .map(|n| n.parse().ok().filter(|&n| (1..=16).contains(&n)))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| Error::Usage(format!("bad vCPU counts {value}")))?
            }
            "--deadline-s" => {
                options.deadline = Duration::from_secs(number(value, "deadline", |&s| s >= 1)?)
            }
            "--repeat" => options.repeat = number(value, "repetition count", |&n| n >= 1)?,
            _ => return Err(Error::Usage(format!("unknown argument {arg} for --vcpus"))),
        }
    }
    Ok(options)
}

/// Runs `--vcpus` and prints its table; the time it took.
pub fn main(options: &Options) -> Result<(Vec<Point>, f64)> {
    let start = Instant::now();
    let points = run(options)?;
    print(&points);
    Ok((points, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, v)| (a.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_case_failed_in_every_run_has_no_figures_but_says_why() {
        let p = point(
            Backend::FirstTouch,
            64,
            2,
            Vec::new(),
            vec!["vCPU 1".into()],
        );
        assert_eq!(
            (p.runs, p.pages_per_s, p.pages_per_s_range),
            (0, 0.0, (0.0, 0.0))
        );
        assert_eq!(p.failed, ["vCPU 1"]);
        let run = |rate| Run {
            pages_per_s: rate,
            per_vcpu_pages_per_s: rate / 2.0,
            latencies_ns: vec![1000, 2000, 3000],
            pages_lock: None,
            exits: Exits::default(),
        };
        let p = point(
            Backend::FirstTouch,
            64,
            2,
            vec![run(30.0), run(10.0), run(20.0)],
            vec![],
        );
        assert_eq!(
            (p.runs, p.pages_per_s, p.pages_per_s_range),
            (3, 20.0, (10.0, 30.0))
        );
        assert_eq!((p.p50_us, p.p99_us), (2.0, 2.0));
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let o = parse(&args(&[("--counts", "1,4"), ("--slice-mib", "8")])).expect("parses");
        assert_eq!((o.vcpus, o.slice_mib, o.repeat), (vec![1, 4], 8, 3));
        for bad in [
            ("--counts", "0"),
            ("--counts", "17"),
            ("--counts", "1,,2"),
            ("--slice-mib", "65"),
            ("--repeat", "0"),
            ("--deadline-s", "0"),
            ("--pages", "64"),
        ] {
            assert!(parse(&args(&[bad])).is_err(), "{bad:?}");
        }
    }
}
