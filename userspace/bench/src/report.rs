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

/// One measured case of one implementation.
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
        Self {
            case: case.to_owned(),
            implementation: implementation.to_owned(),
            pinning: pinning.to_owned(),
            pages,
            median_ns: at(0.5),
            p99_ns: at(0.99),
            pages_per_s: pages as f64 / total.as_secs_f64(),
            work,
            quantiles: (0..QUANTILES)
                .map(|i| at(i as f64 / (QUANTILES - 1) as f64))
                .collect(),
        }
    }
}

/// Prints the table: every case with its implementations, and muserload's median over
/// userfaultfd's where both ran.
pub fn print_table(results: &[Measurement]) {
    println!(
        "{:<22} {:<12} {:<10} {:>10} {:>10} {:>12} {:>7} {:>22}",
        "case", "impl", "pinning", "median us", "p99 us", "pages/s", "ratio", "copies/zero/flush"
    );
    for m in results {
        let ratio = match m.implementation.as_str() {
            "muserload" => results
                .iter()
                .find(|o| o.case == m.case && o.implementation == "userfaultfd")
                .map(|o| format!("{:.2}x", m.median_ns as f64 / o.median_ns.max(1) as f64))
                .unwrap_or_default(),
            _ => String::new(),
        };
        println!(
            "{:<22} {:<12} {:<10} {:>10.1} {:>10.1} {:>12.0} {:>7} {:>22}",
            m.case,
            m.implementation,
            m.pinning,
            m.median_ns as f64 / 1000.0,
            m.p99_ns as f64 / 1000.0,
            m.pages_per_s,
            ratio,
            format!(
                "{:.2}/{:.2}/{:.3}",
                m.work.copies, m.work.zero_fills, m.work.tlb_flushes
            ),
        );
    }
}
