//! `make bench-migrate`'s tables and picture: downtime and total time of migrations of the
//! loader's test guest by RAM size, idle and write-heavy, post-copy, pre-copy and hybrid;
//! and pre-copy's pause for a Linux guest that leaves most of its RAM untouched, against
//! its downtime target. The guest runs them (vm/guest/run-bench-migrate) and writes one
//! JSON record per migration with both loaders' reports.

use plotters::prelude::*;
use serde::Deserialize;

use crate::{
    plot::{draw_error, legend, line_with_dots},
    Result,
};

/// The load of the Linux guest that leaves most of its RAM untouched.
pub const UNTOUCHED: &str = "mostly-untouched";

/// One migration, as vm/guest/run-bench-migrate writes it.
#[derive(Debug, Deserialize)]
pub struct Migration {
    /// Guest RAM in MiB.
    pub mib: u64,
    /// "idle" or "write-heavy" (the test guest), or [`UNTOUCHED`] (the Linux guest).
    pub load: String,
    /// "post-copy", "pre-copy" or "hybrid".
    pub kind: String,
    /// Pre-copy's downtime target (`--downtime-target-ms`).
    pub target_ms: f64,
    /// The source's report.
    pub source: serde_json::Value,
    /// The destination's report.
    pub destination: serde_json::Value,
}

impl Migration {
    fn field(&self, side: &serde_json::Value, key: &str) -> f64 {
        side[key].as_f64().unwrap_or(f64::NAN)
    }

    /// Downtime in milliseconds.
    pub fn downtime_ms(&self) -> f64 {
        self.field(&self.source, "downtime_us") / 1000.0
    }

    /// From the source's connection to every page loaded, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.field(&self.source, "total_ms")
    }
}

/// Prints the tables: every migration, then pre-copy's pause for the guest that leaves
/// most of its RAM untouched.
pub fn print_tables(migrations: &[Migration]) {
    print_table(migrations);
    print_untouched(migrations);
}

/// Prints the table of every migration.
fn print_table(migrations: &[Migration]) {
    println!(
        "{:>8}  {:<16} {:<10} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "RAM MiB", "load", "kind", "downtime", "total", "sent MiB", "zero pg", "requested", "stale"
    );
    for m in migrations {
        println!(
            "{:>8}  {:<16} {:<10} {:>7.1} ms {:>7.0} ms {:>12.1} {:>10} {:>10} {:>10}",
            m.mib,
            m.load,
            m.kind,
            m.downtime_ms(),
            m.total_ms(),
            m.field(&m.source, "bytes_sent") / f64::from(1 << 20),
            m.field(&m.source, "zero_pages"),
            m.field(&m.destination, "pages_requested"),
            m.field(&m.source, "discarded_pages"),
        );
    }
}

/// Prints, for each size of the guest that leaves most of its RAM untouched, pre-copy's
/// downtime against its target plus the pause's overhead, and what the pause did to find
/// the zero pages: the pages it checked, those it read, and those it faulted in (pages the
/// guest never touched). The overhead is measured in each migration: its downtime less the
/// time the pause took to send pre-copy's last pages (`pause_send_us`), so a migration is
/// within when those took no longer than the target; post-copy's downtime of the same
/// guest, whose pause sends no page, is shown beside it. Each size is migrated several
/// times, since TCG's times vary from one migration to the next (post-copy's downtime by
/// 5x from one to the next): the times are medians, the counts the most of any run. Times
/// under TCG are not hardware's; the counts are the same.
fn print_untouched(migrations: &[Migration]) {
    let untouched = |kind: &'static str, mib: u64| -> Vec<&Migration> {
        migrations
            .iter()
            .filter(|m| m.load == UNTOUCHED && m.kind == kind && m.mib == mib)
            .collect()
    };
    let mut sizes: Vec<u64> = migrations
        .iter()
        .filter(|m| m.load == UNTOUCHED)
        .map(|m| m.mib)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        return;
    }
    println!();
    println!("pre-copy of a guest that leaves most of its RAM untouched (Linux, 32 MiB workload)");
    println!(
        "{:>8} {:>5}  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}  {:>10} {:>10} {:>10} \
         {:>10}",
        "RAM MiB",
        "runs",
        "downtime",
        "max",
        "page send",
        "target",
        "overhead",
        "post-copy",
        "within",
        "pages",
        "checked",
        "read",
        "faulted in"
    );
    for mib in sizes {
        let (pre, post) = (untouched("pre-copy", mib), untouched("post-copy", mib));
        let downtime = median(pre.iter().map(|m| m.downtime_ms()));
        let send_ms = |m: &Migration| m.field(&m.source, "pause_send_us") / 1000.0;
        let sending = median(pre.iter().map(|m| send_ms(m)));
        let overhead = median(pre.iter().map(|m| m.downtime_ms() - send_ms(m)));
        let post_copy = median(post.iter().map(|m| m.downtime_ms()));
        let target = pre.first().map_or(f64::NAN, |m| m.target_ms);
        // downtime <= target + (downtime - page send): the page send within the target.
        let within = pre.iter().filter(|m| send_ms(m) <= target).count();
        let most = |key: &str| {
            pre.iter()
                .map(|m| m.field(&m.source, key))
                .fold(f64::NAN, f64::max)
        };
        println!(
            "{:>8} {:>5}  {:>7.1} ms {:>7.1} ms {:>7.1} ms {:>7.0} ms {:>7.1} ms {:>7.1} ms \
             {:>7}  {:>10} {:>10} {:>10} {:>10}",
            mib,
            pre.len(),
            downtime,
            pre.iter().map(|m| m.downtime_ms()).fold(f64::NAN, f64::max),
            sending,
            target,
            overhead,
            post_copy,
            format!("{within}/{}", pre.len()),
            most("pages"),
            most("pause_zero_checked"),
            most("pause_pages_read"),
            most("pages_faulted_in"),
        );
    }
    println!(
        "# downtime: pre-copy's median (max: its most); page send: the pause's sending of \
         pre-copy's last pages, until acknowledged (median); overhead: the rest of the \
         downtime (median); post-copy: post-copy's median downtime of the same guest; \
         within: the runs whose downtime <= target + their overhead; checked, read: pages \
         the pause checked for zeros and read to do so; faulted in: pages the guest never \
         touched that the migration read"
    );
}

/// The median of `values` (NaN if there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The test guest's loads, which the picture draws.
const LOADS: [&str; 2] = ["idle", "write-heavy"];

/// Draws downtime and total time against RAM size, a line per (kind, load) of the test
/// guest, into `path`.
pub fn plot(migrations: &[Migration], path: &str) -> Result<()> {
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (left, right) = root.split_horizontally(700);
    panel(
        migrations,
        &left,
        "downtime",
        "milliseconds",
        Migration::downtime_ms,
    )?;
    panel(
        migrations,
        &right,
        "total time",
        "milliseconds",
        Migration::total_ms,
    )?;
    root.present().map_err(draw_error)
}

fn panel(
    migrations: &[Migration],
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    value: fn(&Migration) -> f64,
) -> Result<()> {
    // The test guest's migrations: the Linux guest's have their table.
    let migrations: Vec<&Migration> = migrations
        .iter()
        .filter(|m| LOADS.contains(&m.load.as_str()))
        .collect();
    let max_mib = migrations.iter().map(|m| m.mib).max().unwrap_or(1) as f64;
    let max = migrations
        .iter()
        .map(|m| value(m))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{title} by guest RAM"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_mib * 1.05, 0f64..max * 1.15)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("guest RAM (MiB)")
        .y_desc(unit)
        .draw()
        .map_err(draw_error)?;
    let kinds = ["post-copy", "pre-copy", "hybrid"];
    let colors = [
        RGBColor(0, 90, 200),
        RGBColor(200, 60, 0),
        RGBColor(0, 150, 60),
    ];
    for (kind, color) in kinds.iter().zip(colors) {
        for load in LOADS {
            let mut points: Vec<(f64, f64)> = migrations
                .iter()
                .filter(|m| m.kind == *kind && m.load == load)
                .map(|m| (m.mib as f64, value(m)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let style = if load == "idle" {
                color.stroke_width(1)
            } else {
                color.stroke_width(3)
            };
            line_with_dots(
                &mut chart,
                points,
                style,
                (3, color.filled()),
                format!("{kind}, {load}"),
            )?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}
