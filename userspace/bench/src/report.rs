//! Results: per-case latency statistics, the side-by-side table and the JSON file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one page costs on a path, by counting: judged for real hardware, where a copy is
/// ~4x and a signal ~12x cheaper than under TCG.
#[derive(Clone, Copy, Serialize, Deserialize)]
pub struct Work {
    /// Page copies (user or kernel).
    pub copies: f32,
    /// Pages zeroed.
    pub zero_fills: f32,
    /// TLB flushes (a batched flush counts once per batch, divided by its pages).
    pub tlb_flushes: f32,
}

impl Work {
    /// Work of `copies` copies, `zero_fills` zero fills and `tlb_flushes` flushes per page.
    pub const fn new(copies: f32, zero_fills: f32, tlb_flushes: f32) -> Self {
        Self {
            copies,
            zero_fills,
            tlb_flushes,
        }
    }
}

/// How many points of the latency distribution a measurement keeps (0%, 5%, ... 100%).
const QUANTILES: usize = 21;

/// One measured case of one implementation: with repetitions, the repetition whose median
/// is the median of all, and the range of all.
#[derive(Serialize, Deserialize)]
pub struct Measurement {
    /// The case, shared by the implementations compared.
    pub case: String,
    /// `muserload`, `userfaultfd` or `baseline`.
    pub implementation: String,
    /// Where the threads ran.
    pub pinning: String,
    /// Pages handled.
    pub pages: usize,
    /// Median time per page, in nanoseconds.
    pub median_ns: u64,
    /// 99th percentile per page, in nanoseconds.
    pub p99_ns: u64,
    /// Pages per second over the whole run.
    pub pages_per_s: f64,
    /// Counted work per page.
    pub work: Work,
    /// Time per page at the 0%, 5%, ..., 100% quantiles, in nanoseconds (for the CDFs).
    pub quantiles: Vec<u64>,
    /// How many times the case ran (results of older runs: 1).
    #[serde(default = "one")]
    pub runs: usize,
    /// The runs' least and greatest median time per page, in nanoseconds.
    #[serde(default)]
    pub median_ns_range: (u64, u64),
    /// The runs' least and greatest pages per second.
    #[serde(default)]
    pub pages_per_s_range: (f64, f64),
}

/// One run: what results written before repetitions were.
fn one() -> usize {
    1
}

impl Measurement {
    /// Summarises per-page `samples` (one per page, or one per batch of `batch` pages)
    /// taken over `total`.
    pub fn new(
        case: &'static str,
        implementation: &'static str,
        pinning: &str,
        mut samples: Vec<Duration>,
        batch: usize,
        total: Duration,
        work: Work,
    ) -> Self {
        samples.sort_unstable();
        let per_page = |d: Duration| (d.as_nanos() / batch as u128) as u64;
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 - 1.0) * q) as usize)
                .copied()
                .map(per_page)
                .unwrap_or(0)
        };
        let pages = samples.len() * batch;
        let (median_ns, pages_per_s) = (at(0.5), pages as f64 / total.as_secs_f64());
        Self {
            case: case.to_owned(),
            implementation: implementation.to_owned(),
            pinning: pinning.to_owned(),
            pages,
            median_ns,
            p99_ns: at(0.99),
            pages_per_s,
            work,
            quantiles: (0..QUANTILES)
                .map(|i| at(i as f64 / (QUANTILES - 1) as f64))
                .collect(),
            runs: 1,
            median_ns_range: (median_ns, median_ns),
            pages_per_s_range: (pages_per_s, pages_per_s),
        }
    }

    /// Whether muserload's runs (`self`) were faster than userfaultfd's (`other`) in every
    /// pair: "<"; slower in every pair: ">"; their ranges overlap: "~".
    fn verdict(&self, other: &Measurement) -> &'static str {
        let (mine, theirs) = (self.median_ns_range, other.median_ns_range);
        if mine.1 < theirs.0 {
            "<"
        } else if mine.0 > theirs.1 {
            ">"
        } else {
            "~"
        }
    }
}

/// Combines `repetitions` (each a run of the same cases, in the same order) into one
/// measurement per case: the repetition whose median time per page is the median of all
/// (the lower middle one of an even count), with the range of all.
pub fn combine(repetitions: Vec<Vec<Measurement>>) -> Vec<Measurement> {
    let runs = repetitions.len();
    let mut cases: Vec<Vec<Measurement>> = Vec::new();
    for repetition in repetitions {
        for (i, measured) in repetition.into_iter().enumerate() {
            match cases.get_mut(i) {
                Some(case) => case.push(measured),
                None => cases.push(vec![measured]),
            }
        }
    }
    cases
        .into_iter()
        .filter_map(|mut case| {
            let median_ns_range = (
                case.iter().map(|m| m.median_ns).min()?,
                case.iter().map(|m| m.median_ns).max()?,
            );
            let rates = case.iter().map(|m| m.pages_per_s);
            let pages_per_s_range = (
                rates.clone().fold(f64::INFINITY, f64::min),
                rates.fold(0.0, f64::max),
            );
            case.sort_by_key(|m| m.median_ns);
            let mut median = case.swap_remove((case.len() - 1) / 2);
            median.runs = runs;
            median.median_ns_range = median_ns_range;
            median.pages_per_s_range = pages_per_s_range;
            Some(median)
        })
        .collect()
}

/// Prints the table: every case with its implementations, the range of its runs, and
/// muserload's median over userfaultfd's where both ran, with whether the runs' ranges
/// tell them apart.
pub fn print_table(results: &[Measurement]) {
    println!(
        "{:<22} {:<12} {:<10} {:>10} {:>17} {:>10} {:>12} {:>21} {:>8} {:>22}",
        "case",
        "impl",
        "pinning",
        "median us",
        "[min, max]",
        "p99 us",
        "pages/s",
        "[min, max]",
        "ratio",
        "copies/zero/flush"
    );
    for m in results {
        let ratio = match m.implementation.as_str() {
            "muserload" => results
                .iter()
                .find(|o| o.case == m.case && o.implementation == "userfaultfd")
                .map(|o| {
                    format!(
                        "{:.2}x {}",
                        m.median_ns as f64 / o.median_ns.max(1) as f64,
                        m.verdict(o)
                    )
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "{:<22} {:<12} {:<10} {:>10.1} {:>17} {:>10.1} {:>12.0} {:>21} {:>8} {:>22}",
            m.case,
            m.implementation,
            m.pinning,
            us(m.median_ns),
            format!(
                "[{:.1}, {:.1}]",
                us(m.median_ns_range.0),
                us(m.median_ns_range.1)
            ),
            us(m.p99_ns),
            m.pages_per_s,
            format!(
                "[{:.0}, {:.0}]",
                m.pages_per_s_range.0, m.pages_per_s_range.1
            ),
            ratio,
            format!(
                "{:.2}/{:.2}/{:.3}",
                m.work.copies, m.work.zero_fills, m.work.tlb_flushes
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `implementation` whose every page took `us` microseconds.
    fn run(implementation: &'static str, us: u64) -> Measurement {
        Measurement::new(
            "case",
            implementation,
            "cpu0",
            vec![Duration::from_micros(us); 4],
            1,
            Duration::from_micros(4 * us),
            Work::new(1.0, 0.0, 1.0),
        )
    }

    #[test]
    fn repetitions_combine_into_the_median_run_and_the_range_of_all() {
        let repetitions = [30, 10, 20]
            .map(|us| vec![run("muserload", us), run("userfaultfd", 2 * us)])
            .into_iter()
            .collect();
        let combined = combine(repetitions);
        assert_eq!(combined.len(), 2);
        let (mine, theirs) = (&combined[0], &combined[1]);
        assert_eq!((mine.implementation.as_str(), mine.runs), ("muserload", 3));
        assert_eq!(mine.median_ns, 20_000);
        assert_eq!(mine.median_ns_range, (10_000, 30_000));
        assert_eq!(theirs.median_ns_range, (20_000, 60_000));
        let (slowest, fastest) = mine.pages_per_s_range;
        assert!((slowest - 1e6 / 30.0).abs() < 1e-3 && (fastest - 1e5).abs() < 1e-3);
    }

    #[test]
    fn a_ratio_is_better_or_worse_only_when_the_ranges_do_not_overlap() {
        let range = |implementation, runs: [u64; 3]| {
            combine(
                runs.map(|us| vec![run(implementation, us)])
                    .into_iter()
                    .collect(),
            )
            .remove(0)
        };
        let fast = range("muserload", [10, 11, 12]);
        let slow = range("userfaultfd", [13, 14, 20]);
        let wide = range("userfaultfd", [5, 14, 20]);
        assert_eq!(fast.verdict(&slow), "<");
        assert_eq!(slow.verdict(&fast), ">");
        assert_eq!(fast.verdict(&wide), "~");
    }
}
