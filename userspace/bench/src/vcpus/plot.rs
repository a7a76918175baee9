//! `--vcpus`'s picture: aggregate pages per second against the vCPU count, a line per
//! backend (muserload blue-ish, userfaultfd red-ish, first touch black).

use plotters::prelude::*;

use super::{report::Point, Backend};
use crate::{
    plot::{self, draw_error},
    Result,
};

fn color(backend: Backend, index: usize) -> RGBColor {
    match backend {
        Backend::FirstTouch => BLACK,
        b => plot::color(b.is_muserload(), index),
    }
}

/// Draws `points` (as `--vcpus --json` wrote them) into the SVG file `path`.
pub fn plot(points: &[Point], path: &str) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let max_n = points.iter().map(|p| p.vcpus).max().unwrap_or(1) as u32;
    let max = points
        .iter()
        .fold(1.0f64, |m, p| m.max(p.pages_per_s_range.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "demand paging of a nested VM: every vCPU faults at once",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0u32..max_n + 1, 0f64..max * 1.15)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("vCPUs")
        .y_desc("aggregate pages per second (median run)")
        .draw()
        .map_err(draw_error)?;
    let (mut mine, mut theirs) = (0, 0);
    for backend in Backend::ALL
        .into_iter()
        .filter(|&b| points.iter().any(|p| p.backend == b))
    {
        let index = if backend.is_muserload() {
            &mut mine
        } else {
            &mut theirs
        };
        let style = color(backend, *index);
        *index += 1;
        let mut series: Vec<(u32, f64)> = points
            .iter()
            .filter(|p| p.backend == backend)
            .map(|p| (p.vcpus as u32, p.pages_per_s))
            .collect();
        series.sort_by_key(|p| p.0);
        plot::line_with_dots(
            &mut chart,
            series,
            style.stroke_width(2),
            (4, style.filled()),
            backend.name(),
        )?;
    }
    plot::legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(draw_error)
}
