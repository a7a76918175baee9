//! `--vcpus`'s picture: aggregate pages per second against the vCPU count, a line per
//! backend (muserload blue-ish, userfaultfd red-ish, first touch black).

use plotters::prelude::*;

use super::{report::Point, Backend};
use crate::{plot::draw_error, Result};

fn color(backend: Backend, index: usize) -> RGBColor {
    let muserload = [
        RGBColor(0, 90, 200),
        RGBColor(0, 160, 220),
        RGBColor(80, 60, 220),
        RGBColor(0, 130, 120),
        RGBColor(120, 150, 255),
    ];
    let uffd = [
        RGBColor(200, 60, 0),
        RGBColor(230, 140, 0),
        RGBColor(170, 0, 90),
    ];
    match backend {
        Backend::FirstTouch => BLACK,
        b if b.is_muserload() => muserload[index % muserload.len()],
        _ => uffd[index % uffd.len()],
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
    let mut backends: Vec<Backend> = points.iter().map(|p| p.backend).collect();
    backends.dedup();
    let (mut mine, mut theirs) = (0, 0);
    for backend in Backend::ALL.into_iter().filter(|b| backends.contains(b)) {
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
        chart
            .draw_series(LineSeries::new(series.clone(), style.stroke_width(2)))
            .map_err(draw_error)?
            .label(backend.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                series
                    .into_iter()
                    .map(|p| Circle::new(p, 4, style.filled())),
            )
            .map_err(draw_error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)
}
