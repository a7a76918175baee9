//! `--vcpus`'s results: a point per backend and vCPU count, the table, the ratios and the
//! issue's targets checked against them.

use muserload::PAGE_SIZE;
use serde::{Deserialize, Serialize};

use super::{
    backend::{Backend, PagesLock, Readers, Taking},
    kvm_stats::Exits,
};
use crate::roundtrip::Kind;

/// One backend at one vCPU count: the repetition with the median aggregate rate.
#[derive(Serialize, Deserialize, Clone)]
pub struct Point {
    /// The backend.
    pub backend: Backend,
    /// Its name in the table.
    pub name: String,
    /// The vCPUs.
    pub vcpus: usize,
    /// Pages touched (all vCPUs).
    pub pages: usize,
    /// How many times it ran.
    pub runs: usize,
    /// Aggregate pages per second: all pages over the time from the first vCPU's start to
    /// the last one's end.
    pub pages_per_s: f64,
    /// The runs' least and greatest aggregate rate.
    pub pages_per_s_range: (f64, f64),
    /// A vCPU's own rate, the mean over the vCPUs.
    pub per_vcpu_pages_per_s: f64,
    /// The median touch, as the vCPU saw it (its TSC), in microseconds.
    pub p50_us: f64,
    /// The 99th percentile touch.
    pub p99_us: f64,
    /// muserload's page locks over the run.
    pub pages_lock: Option<PagesLock>,
    /// The vCPUs' exits over the run, all together.
    #[serde(default)]
    pub exits: Exits,
    /// Why each run that has no figures failed: its vCPUs stuck past the deadline, or one
    /// left the guest loop.
    #[serde(default, alias = "stuck")]
    pub failed: Vec<String>,
}

/// How `a`'s rate compares with `b`'s, and whether it is called: ">" (faster in every pair
/// of runs), "<" (slower in every pair), "~" (the ranges overlap).
pub fn ratio(a: &Point, b: &Point) -> (f64, &'static str) {
    let verdict = if a.pages_per_s_range.0 > b.pages_per_s_range.1 {
        ">"
    } else if a.pages_per_s_range.1 < b.pages_per_s_range.0 {
        "<"
    } else {
        "~"
    };
    (a.pages_per_s / b.pages_per_s, verdict)
}

/// The point of `backend` at `vcpus`, if it has figures (not every run failed).
fn find(points: &[Point], vcpus: usize, backend: Backend) -> Option<&Point> {
    points
        .iter()
        .find(|p| p.vcpus == vcpus && p.backend == backend && p.runs > 0)
}

/// The fastest muserload backend at `vcpus`.
fn best_muserload(points: &[Point], vcpus: usize) -> Option<&Point> {
    points
        .iter()
        .filter(|p| p.vcpus == vcpus && p.backend.is_muserload() && p.runs > 0)
        .max_by(|a, b| a.pages_per_s.total_cmp(&b.pages_per_s))
}

/// The vCPU counts measured, in order.
fn counts(points: &[Point]) -> Vec<usize> {
    let mut counts: Vec<usize> = points.iter().map(|p| p.vcpus).collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Prints the table per vCPU count, then the targets.
pub fn print(points: &[Point]) {
    let slice_mib = points
        .first()
        .map_or(0, |p| (p.pages / p.vcpus.max(1) * PAGE_SIZE) >> 20);
    let repeat = points
        .iter()
        .map(|p| p.runs + p.failed.len())
        .max()
        .unwrap_or(0);
    let ceiling = Backend::FirstTouch;
    let uffd_one = Backend::Userfaultfd(Readers::One, Kind::Copy);
    let uffd_each = Backend::Userfaultfd(Readers::PerVcpu, Kind::Copy);
    for n in counts(points) {
        println!(
            "\n## {n} vCPUs, {slice_mib} MiB each ({} pages)",
            n * slice_mib * 256
        );
        println!(
            "{:<40} {:>10} {:>21} {:>10} {:>8} {:>9} {:>9} {:>14} {:>10} {:>11} {:>12}",
            "backend",
            "pages/s",
            "[min, max]",
            "per vCPU",
            "/ceiling",
            "p50 us",
            "p99 us",
            "exit/pf/sig",
            "contended",
            "lock wait",
            "lock hold"
        );
        let top = find(points, n, ceiling);
        for p in points.iter().filter(|p| p.vcpus == n) {
            if p.runs == 0 {
                println!(
                    "{:<40} failed in every run: {}",
                    p.name,
                    p.failed.join("; ")
                );
                continue;
            }
            let of_ceiling = top.map_or(String::from("-"), |t| {
                let (r, v) = ratio(p, t);
                format!("{:.0}%{v}", r * 100.0)
            });
            let none = || ("-".into(), "-".into(), "-".into());
            let (contended, wait, hold) = p.pages_lock.map_or_else(none, |l| {
                (
                    format!("{:.1}%", 100.0 * l.contended as f64 / l.taken.max(1) as f64),
                    format!(
                        "{:.1} us/pg",
                        l.wait_ns as f64 / 1000.0 / p.pages.max(1) as f64
                    ),
                    format!(
                        "{:.2} us/tk",
                        l.held_ns as f64 / 1000.0 / l.taken.max(1) as f64
                    ),
                )
            });
            let per_page = |n: u64| n as f64 / p.pages.max(1) as f64;
            let exits = format!(
                "{:.2}/{:.2}/{:.2}",
                per_page(p.exits.exits),
                per_page(p.exits.page_faults),
                per_page(p.exits.signal_exits)
            );
            println!(
                "{:<40} {:>10.0} {:>21} {:>10.0} {:>8} {:>9.1} {:>9.1} {:>14} {:>10} {:>11} {:>12}",
                p.name,
                p.pages_per_s,
                format!(
                    "[{:.0}, {:.0}]",
                    p.pages_per_s_range.0, p.pages_per_s_range.1
                ),
                p.per_vcpu_pages_per_s,
                of_ceiling,
                p.p50_us,
                p.p99_us,
                exits,
                contended,
                wait,
                hold
            );
            for why in &p.failed {
                println!("{:<40} a run failed: {why}", "");
            }
        }
        if let Some(best) = best_muserload(points, n) {
            for other in [uffd_one, uffd_each] {
                if let Some(o) = find(points, n, other) {
                    let (r, v) = ratio(best, o);
                    println!("best muserload ({}) / {}: {r:.2}x [{v}]", best.name, o.name);
                }
            }
        }
    }
    println!("\n## Targets");
    for line in targets(points) {
        println!("{line}");
    }
    println!(
        "# each case {repeat} times, interleaved; pages/s: the median run, [min, max] beside; \
         a ratio is called (> faster, < slower) only when the runs' ranges do not overlap \
         (~: they do); latencies as each vCPU's TSC measured its touches; contended: the \
         share of the page locks' takings that found one held by another thread, \
         lock wait: the time they waited, per page; lock hold: how long a taking held its \
         lock, on average (muserload's STATS); exit/pf/sig: per page, the vCPUs' exits to \
         KVM, the nested page faults KVM took, and the returns to userspace for a signal \
         (KVM's stats: work that carries to hardware)"
    );
}

/// The targets, each with its figures and whether it is met.
pub fn targets(points: &[Point]) -> Vec<String> {
    let mut lines = Vec::new();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let counts = counts(points);
    for kind in [Kind::Copy, Kind::Move] {
        let signal = Backend::Signal(kind, Taking::InLoopPreFault);
        let shares: Vec<(usize, f64)> = counts
            .iter()
            .filter_map(|&n| {
                let (s, c) = (
                    find(points, n, signal)?,
                    find(points, n, Backend::FirstTouch)?,
                );
                Some((n, s.pages_per_s / c.pages_per_s))
            })
            .collect();
        if shares.is_empty() {
            continue;
        }
        let figures: Vec<String> = shares
            .iter()
            .map(|(n, s)| format!("{n}: {:.0}%", s * 100.0))
            .collect();
        lines.push(format!(
            "{} >= 80% of first touch at every N ({}): {}",
            signal.name(),
            figures.join(", "),
            met(shares.iter().all(|&(_, s)| s >= 0.8))
        ));
    }
    if let Some(&n) = counts.last() {
        if let Some(best) = best_muserload(points, n) {
            for (other, want) in [
                (Backend::Userfaultfd(Readers::One, Kind::Copy), 10.0),
                (Backend::Userfaultfd(Readers::PerVcpu, Kind::Copy), 2.0),
            ] {
                if let Some(o) = find(points, n, other) {
                    let (r, v) = ratio(best, o);
                    lines.push(format!(
                        "at {n} vCPUs best muserload ({}) >= {want}x {}: {r:.2}x [{v}]: {}",
                        best.name,
                        o.name,
                        met(r >= want)
                    ));
                }
            }
        }
    }
    let rates: Vec<String> = counts
        .iter()
        .filter_map(|&n| best_muserload(points, n).map(|b| format!("{n}: {:.0}", b.pages_per_s)))
        .collect();
    let best: Vec<&Point> = counts
        .iter()
        .filter_map(|&n| best_muserload(points, n))
        .collect();
    // "Does not fall": each count's best run reaches the range of the count before.
    let holds = best
        .windows(2)
        .all(|w| w[1].pages_per_s_range.1 >= w[0].pages_per_s_range.0);
    lines.push(format!(
        "muserload's aggregate pages/s does not fall as N grows ({}): {}",
        rates.join(", "),
        met(holds)
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(backend: Backend, vcpus: usize, rate: f64, spread: f64) -> Point {
        Point {
            backend,
            name: backend.name(),
            vcpus,
            pages: 0,
            runs: 3,
            pages_per_s: rate,
            pages_per_s_range: (rate - spread, rate + spread),
            per_vcpu_pages_per_s: rate / vcpus as f64,
            p50_us: 0.0,
            p99_us: 0.0,
            pages_lock: None,
            exits: Exits::default(),
            failed: Vec::new(),
        }
    }

    #[test]
    fn a_ratio_is_called_only_when_the_ranges_do_not_overlap() {
        let a = point(Backend::FirstTouch, 1, 100.0, 10.0);
        assert_eq!(ratio(&a, &point(Backend::FirstTouch, 1, 50.0, 10.0)).1, ">");
        assert_eq!(
            ratio(&a, &point(Backend::FirstTouch, 1, 150.0, 10.0)).1,
            "<"
        );
        assert_eq!(
            ratio(&a, &point(Backend::FirstTouch, 1, 115.0, 10.0)).1,
            "~"
        );
    }

    #[test]
    fn the_targets_are_judged_from_the_points() {
        let signal = Backend::Signal(Kind::Copy, Taking::InLoopPreFault);
        let uffd = Backend::Userfaultfd(Readers::One, Kind::Copy);
        let each = Backend::Userfaultfd(Readers::PerVcpu, Kind::Copy);
        let points = vec![
            point(Backend::FirstTouch, 1, 100.0, 1.0),
            point(signal, 1, 90.0, 1.0),
            point(uffd, 1, 50.0, 1.0),
            point(each, 1, 50.0, 1.0),
            point(Backend::FirstTouch, 2, 200.0, 1.0),
            point(signal, 2, 150.0, 1.0),
            point(uffd, 2, 10.0, 1.0),
            point(each, 2, 100.0, 1.0),
        ];
        let lines = targets(&points);
        assert!(
            lines[0].contains("1: 90%, 2: 75%") && lines[0].ends_with("NOT met"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("15.00x") && lines[1].ends_with(": met"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("1.50x") && lines[2].ends_with("NOT met"),
            "{lines:?}"
        );
        assert!(lines[3].ends_with(": met"), "{lines:?}");
        // A case failed in every run has no figures: no ratio is made of it.
        let mut failed = points.clone();
        failed[6] = Point {
            runs: 0,
            pages_per_s: 0.0,
            pages_per_s_range: (0.0, 0.0),
            ..failed[6].clone()
        };
        let lines = targets(&failed);
        assert!(
            !lines.iter().any(|l| l.contains("userfaultfd, 1 reader:")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("reader per vCPU")),
            "{lines:?}"
        );
    }
}
