//! The destination's timeline of a migration, from the guest's resumption on: pages loaded
//! per millisecond by cause, each vCPU fault's wait, and the times without a connection.
//! `receive --plot FILE.svg` draws it.

use std::{path::Path, sync::Mutex, time::Instant};

use plotters::{drawing::DrawingAreaErrorKind, prelude::*};

use crate::lock::lock;

/// Drawing the timeline failed.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(#[from] DrawingAreaErrorKind<std::io::Error>);

/// Why a page was loaded.
#[derive(Clone, Copy)]
pub enum Cause {
    /// A vCPU waited on it and it was requested.
    Request,
    /// The background stream brought it.
    Stream,
    /// It is a zero page, loaded here.
    Zero,
}

/// Each [`Cause`]'s label and color in the plot, in its order.
const CAUSES: [(&str, RGBColor); 3] = [
    ("requested", RGBColor(214, 39, 40)),
    ("streamed", RGBColor(31, 119, 180)),
    ("zero (local)", RGBColor(127, 127, 127)),
];

/// What happened when, in milliseconds since the start.
pub struct Timeline {
    /// Its start: the guest's resumption.
    start: Instant,
    /// Pages loaded in each millisecond, by cause.
    loads: Mutex<Vec<[u32; 3]>>,
    /// When a fault was served (ms) and how long it had waited (µs).
    waits: Mutex<Vec<(f64, u64)>>,
    /// Times without a connection to the source (ms to ms).
    outages: Mutex<Vec<(f64, f64)>>,
}

impl Timeline {
    /// A timeline that starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            loads: Mutex::new(Vec::new()),
            waits: Mutex::new(Vec::new()),
            outages: Mutex::new(Vec::new()),
        }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// `pages` were loaded just now, for `cause`.
    pub fn loaded(&self, cause: Cause, pages: u32) {
        let ms = self.start.elapsed().as_millis() as usize;
        let mut loads = lock(&self.loads);
        if loads.len() <= ms {
            loads.resize(ms + 1, [0; 3]);
        }
        loads[ms][cause as usize] += pages;
    }

    /// A fault that waited `wait_us` was served just now.
    pub fn served(&self, wait_us: u64) {
        let at = self.now_ms();
        lock(&self.waits).push((at, wait_us));
    }

    /// The connections were down from `from_ms` until now.
    pub fn outage(&self, from_ms: f64) {
        let to = self.now_ms();
        lock(&self.outages).push((from_ms, to));
    }

    /// The fault waits in microseconds.
    pub fn waits_us(&self) -> Vec<u64> {
        lock(&self.waits).iter().map(|&(_, wait)| wait).collect()
    }

    /// Draws the timeline as an SVG: pages loaded by cause above, fault waits below, the
    /// outages shaded in both.
    pub fn plot(&self, path: &Path, title: &str) -> Result<(), PlotError> {
        let loads = lock(&self.loads).clone();
        let waits = lock(&self.waits).clone();
        let outages = lock(&self.outages).clone();
        let end_ms = (loads.len() as f64)
            .max(waits.iter().map(|&(at, _)| at).fold(0.0, f64::max))
            .max(1.0);
        // At most ~2000 buckets, so that a long migration stays a readable plot.
        let bucket = (loads.len() / 2000).max(1);
        let buckets: Vec<[u32; 3]> = loads
            .chunks(bucket)
            .map(|chunk| {
                chunk.iter().fold([0; 3], |mut sum, ms| {
                    (0..3).for_each(|c| sum[c] += ms[c]);
                    sum
                })
            })
            .collect();
        let most = buckets.iter().flatten().copied().max().unwrap_or(0).max(1);
        let longest_ms = waits
            .iter()
            .map(|&(_, wait)| wait as f64 / 1000.0)
            .fold(0.0, f64::max)
            .max(0.1);

        let root = SVGBackend::new(path, (1200, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (top, bottom) = root.split_vertically(400);

        let mut chart = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            // Logarithmic: a vectored ZERO load settles tens of thousands of pages in one
            // millisecond, a request one page.
            .build_cartesian_2d(0.0..end_ms, (1u32..most * 2).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("ms since the guest resumed")
            .y_desc(format!("pages loaded per {bucket} ms"))
            .draw()?;
        shade(&mut chart, &outages, 1, most * 2)?;
        for (cause, (name, color)) in CAUSES.iter().enumerate() {
            chart
                .draw_series(
                    buckets
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| b[cause] > 0)
                        .map(|(i, b)| {
                            Circle::new(((i * bucket) as f64, b[cause]), 2, color.filled())
                        }),
                )?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        let mut chart = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end_ms, 0.0..longest_ms * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("ms since the guest resumed (shaded: no connection to the source)")
            .y_desc("vCPU fault wait (ms)")
            .draw()?;
        shade(&mut chart, &outages, 0.0, longest_ms * 1.1)?;
        chart.draw_series(
            waits
                .iter()
                .map(|&(at, wait)| Circle::new((at, wait as f64 / 1000.0), 2, CAUSES[0].1)),
        )?;
        root.present().map_err(PlotError::from)
    }
}

/// Shades the outages across a chart whose y axis goes from `bottom` to `top`.
fn shade<'a, Y: Clone + 'static>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = Y>>,
    >,
    outages: &[(f64, f64)],
    bottom: Y,
    top: Y,
) -> Result<(), PlotError> {
    chart
        .draw_series(outages.iter().map(|&(from, to)| {
            Rectangle::new(
                [(from, bottom.clone()), (to, top.clone())],
                RGBColor(255, 200, 120).mix(0.5).filled(),
            )
        }))
        .map(drop)
        .map_err(PlotError::from)
}
