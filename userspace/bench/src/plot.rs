//! The benchmark's picture: latency CDFs of the fault round trips, and fault throughput as
//! faulting threads grow, muserload and userfaultfd side by side.

use plotters::prelude::*;

use crate::{report::Measurement, Error, Result};

/// A plotting error as the benchmark's.
pub(crate) fn draw_error(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

/// Draws `results` (as `muserload-bench --json` wrote them) into the SVG file `path`.
pub fn plot(results: &[Measurement], path: &str) -> Result<()> {
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let (left, right) = root.split_horizontally(800);
    cdfs(results, &left)?;
    scaling(results, &right)?;
    root.present().map_err(draw_error)
}

/// Draws the series labels at `position`.
pub(crate) fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)
}

/// Draws `points` as a line in `line` labelled `label`, and a dot of `radius` in `dot` on
/// each point.
pub(crate) fn line_with_dots<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    points: Vec<(X::ValueType, Y::ValueType)>,
    line: ShapeStyle,
    dot: (i32, ShapeStyle),
    label: String,
) -> Result<()>
where
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points.clone(), line))
        .map_err(draw_error)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line));
    let (radius, style) = dot;
    chart
        .draw_series(points.into_iter().map(|p| Circle::new(p, radius, style)))
        .map_err(draw_error)?;
    Ok(())
}

/// The `index`th colour of muserload's (blue-ish) or userfaultfd's (red-ish) series.
pub(crate) fn color(muserload: bool, index: usize) -> RGBColor {
    let muserload_colors = [
        RGBColor(0, 90, 200),
        RGBColor(0, 160, 220),
        RGBColor(80, 60, 220),
        RGBColor(0, 130, 120),
        RGBColor(120, 150, 255),
    ];
    let uffd_colors = [
        RGBColor(200, 60, 0),
        RGBColor(230, 140, 0),
        RGBColor(170, 0, 90),
        RGBColor(140, 80, 20),
    ];
    let palette: &[RGBColor] = if muserload {
        &muserload_colors
    } else {
        &uffd_colors
    };
    palette[index % palette.len()]
}

fn cdfs(
    results: &[Measurement],
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<()> {
    let round_trips: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.case.contains("round trip"))
        .collect();
    let max_us = round_trips
        .iter()
        .filter_map(|m| m.quantiles.get(19))
        .fold(1.0f64, |max, &ns| max.max(ns as f64 / 1000.0));
    let mut chart = ChartBuilder::on(area)
        .caption(
            "fault round trip: latency CDF (same vCPU)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_us * 1.1, 0f64..1f64)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("microseconds per fault")
        .y_desc("fraction of faults")
        .draw()
        .map_err(draw_error)?;
    let cases: Vec<&str> = {
        let mut c: Vec<&str> = round_trips.iter().map(|m| m.case.as_str()).collect();
        c.dedup();
        c
    };
    for m in &round_trips {
        let index = cases.iter().position(|c| *c == m.case).unwrap_or(0);
        let style = color(m.implementation == "muserload", index);
        let n = m.quantiles.len().saturating_sub(1).max(1);
        let points = m
            .quantiles
            .iter()
            .enumerate()
            .map(|(i, &ns)| (ns as f64 / 1000.0, i as f64 / n as f64));
        chart
            .draw_series(LineSeries::new(points, style.stroke_width(2)))
            .map_err(draw_error)?
            .label(format!("{}: {}", m.implementation, m.case))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn scaling(
    results: &[Measurement],
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> Result<()> {
    let threads_of = |case: &str| -> Option<u32> {
        match case {
            "queue round trip copy" => Some(1),
            c => c.strip_prefix("queue, ")?.split(' ').next()?.parse().ok(),
        }
    };
    let series = |implementation: &str| -> Vec<(u32, f64)> {
        let mut points: Vec<(u32, f64)> = results
            .iter()
            .filter(|m| m.implementation == implementation)
            .filter_map(|m| Some((threads_of(&m.case)?, m.pages_per_s)))
            .collect();
        points.sort_by_key(|p| p.0);
        points
    };
    let max = results
        .iter()
        .filter(|m| threads_of(&m.case).is_some())
        .fold(1.0f64, |max, m| max.max(m.pages_per_s));
    let mut chart = ChartBuilder::on(area)
        .caption("fault throughput, one resolver", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..9u32, 0f64..max * 1.2)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("faulting threads")
        .y_desc("pages per second")
        .draw()
        .map_err(draw_error)?;
    for implementation in ["muserload", "userfaultfd"] {
        let style = color(implementation == "muserload", 0);
        let points = series(implementation);
        line_with_dots(
            &mut chart,
            points,
            style.stroke_width(2),
            (4, style.filled()),
            implementation.to_owned(),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}
