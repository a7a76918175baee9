//! `make bench-migrate`'s table and picture: downtime and total time of migrations of the
//! loader's test guest by RAM size, idle and write-heavy, post-copy, pre-copy and hybrid.
//! The guest runs them (vm/guest/run-bench-migrate) and writes one JSON record per
//! migration with both loaders' reports.

use plotters::prelude::*;
use serde::Deserialize;

use crate::{plot::draw_error, Result};

/// One migration, as vm/guest/run-bench-migrate writes it.
#[derive(Debug, Deserialize)]
pub struct Migration {
    /// Guest RAM in MiB.
    pub mib: u64,
    /// "idle" or "write-heavy".
    pub load: String,
    /// "post-copy", "pre-copy" or "hybrid".
    pub kind: String,
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

/// Prints the table.
pub fn print_table(migrations: &[Migration]) {
    println!(
        "{:>8}  {:<12} {:<10} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "RAM MiB", "load", "kind", "downtime", "total", "sent MiB", "zero pg", "requested", "stale"
    );
    for m in migrations {
        println!(
            "{:>8}  {:<12} {:<10} {:>7.1} ms {:>7.0} ms {:>12.1} {:>10} {:>10} {:>10}",
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

/// Draws downtime and total time against RAM size, a line per (kind, load), into `path`.
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
    let max_mib = migrations.iter().map(|m| m.mib).max().unwrap_or(1) as f64;
    let max = migrations
        .iter()
        .map(value)
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
        for load in ["idle", "write-heavy"] {
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
            chart
                .draw_series(LineSeries::new(points.clone(), style))
                .map_err(draw_error)?
                .label(format!("{kind}, {load}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(draw_error)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)
}
