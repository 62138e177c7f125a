//! Charts as SVG files, drawn with plotters' SVG backend.
//!
//! Nothing here needs a system font: without plotters' `ttf` feature, text is laid out with a
//! rough width estimate and written as SVG `<text>` elements, which the browser renders with its
//! own fonts. So a chart is drawn the same on a bare CI machine as on a desktop.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// A moment of interest on a time axis, e.g. a membership change: a vertical line at `at`, a
/// shaded span to `until`, and a label of two lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    /// Where the line is drawn (x axis units).
    pub at: f64,
    /// Where the shaded span ends (`at` for none).
    pub until: f64,
    /// The text beside the line: a short name...
    pub label: String,
    /// ...and a line of detail under it.
    pub detail: String,
    /// Whether it is drawn in the "removing" colour (a leave) rather than the "adding" one.
    pub removal: bool,
}

/// Colour of added capacity (joins) and of removed capacity (leaves).
const ADDING: RGBColor = RGBColor(0x1b, 0x9e, 0x77);
const REMOVING: RGBColor = RGBColor(0xd9, 0x5f, 0x02);
const SERIES: RGBColor = RGBColor(0x1f, 0x4e, 0x9a);

/// Width and height of a chart, in SVG pixels.
const SIZE: (u32, u32) = (1000, 480);
/// About the width of the plotting area, and of a character of a label, in SVG pixels.
const PLOT_WIDTH: f64 = 890.0;
const CHAR_WIDTH: f64 = 7.2;

/// Draws `points` (x in seconds, y in operations per second) as a line over `0..x_max`, with
/// `markers` as labelled vertical lines; returns the SVG document, XML declaration included.
pub fn throughput_svg(title: &str, points: &[(f64, f64)], markers: &[Marker], x_max: f64) -> Result<String> {
    let draw_error = |err: DrawingAreaErrorKind<std::io::Error>| anyhow!("cannot draw the chart: {err}");
    let x_max = if x_max.is_finite() && x_max > 0.0 { x_max } else { 1.0 };
    let y_top = points.iter().map(|&(_, y)| y).filter(|y| y.is_finite()).fold(0.0, f64::max);
    // Room above the highest point for the markers' labels.
    let y_max = (y_top * 1.25).max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc("successful operations per second")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()
            .map_err(draw_error)?;
        for (i, marker) in markers.iter().enumerate() {
            let colour = if marker.removal { REMOVING } else { ADDING };
            let until = marker.until.max(marker.at);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(marker.at, 0.0), (until, y_max)],
                    colour.mix(0.12).filled(),
                )))
                .map_err(draw_error)?;
            chart
                .draw_series(LineSeries::new([(marker.at, 0.0), (marker.at, y_max)], colour.stroke_width(2)))
                .map_err(draw_error)?;
            // Neighbours' labels alternate between two rows, so that they do not overlap; each
            // stands right of its line, or left of it where it would run off the chart.
            let row = (i % 2) as f64;
            let chars = marker.label.chars().count().max(marker.detail.chars().count()) as f64;
            let fits_right = marker.at + chars * CHAR_WIDTH / PLOT_WIDTH * x_max < x_max;
            let (x, h_pos) = if fits_right {
                (marker.at + x_max * 0.004, HPos::Left)
            } else {
                (marker.at - x_max * 0.004, HPos::Right)
            };
            for (line, text) in [&marker.label, &marker.detail].into_iter().enumerate() {
                let y = y_max * (0.985 - 0.1 * row - 0.045 * line as f64);
                let style = ("sans-serif", 13).into_font().color(&colour).pos(Pos::new(h_pos, VPos::Top));
                chart
                    .draw_series(std::iter::once(Text::new(text.clone(), (x, y), style)))
                    .map_err(draw_error)?;
            }
        }
        chart
            .draw_series(LineSeries::new(points.iter().copied(), SERIES.stroke_width(2)))
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{svg}\n"))
}

/// Writes an SVG document to `path`, atomically (a temporary file renamed into place),
/// creating its folder if needed.
pub fn write_svg(path: &Path, svg: &str) -> Result<()> {
    crate::load::report::create_parent(path)?;
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, svg).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_valid_svg_with_labels() {
        let points: Vec<(f64, f64)> =
            (0..40).map(|i| (f64::from(i) * 0.25, 1000.0 + f64::from(i % 7))).collect();
        let markers = [
            Marker {
                at: 2.0,
                until: 2.6,
                label: "join node 2".into(),
                detail: "2 -> 3".into(),
                removal: false,
            },
            Marker {
                at: 9.8,
                until: 9.9,
                label: "leave node <0>".into(),
                detail: "3 -> 2".into(),
                removal: true,
            },
        ];
        let svg = throughput_svg("throughput", &points, &markers, 10.0).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..80]);
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("join node 2"), "labels are SVG text");
        assert!(svg.contains("leave node &lt;0&gt;"), "text is escaped");
        assert!(
            svg.contains("2 -&gt; 3") && svg.contains("text-anchor=\"end\""),
            "near the edge: left of the line"
        );
        assert!(svg.contains("<polyline"), "the series is drawn");
    }

    #[test]
    fn draws_an_empty_series() {
        let svg = throughput_svg("nothing", &[], &[], 0.0).unwrap();
        assert!(svg.contains("<svg"));
    }
}
