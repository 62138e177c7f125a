//! Grouped bar charts as SVG, drawn with plotters like [`crate::load::chart`]: one group of bars per
//! category (a replication setting), one bar per series, each labelled with its value.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One series: a bar in every group.
#[derive(Debug, Clone)]
pub(super) struct Series {
    /// Its name in the legend.
    pub(super) name: String,
    /// Its colour.
    pub(super) colour: RGBColor,
    /// One value per category.
    pub(super) values: Vec<f64>,
}

/// Colours of the series, in order (colour-blind safe).
pub(super) const COLOURS: [RGBColor; 3] =
    [RGBColor(0x1f, 0x4e, 0x9a), RGBColor(0xd9, 0x5f, 0x02), RGBColor(0x1b, 0x9e, 0x77)];

/// Width and height of a chart, in SVG pixels.
const SIZE: (u32, u32) = (1000, 480);
/// Share of a category's width its bars take together.
const GROUP_WIDTH: f64 = 0.8;

/// Draws `series` as groups of bars over `categories`; returns the SVG document, XML
/// declaration included.
pub(super) fn grouped_bars_svg(
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[Series],
) -> Result<String> {
    let draw_error = |err: DrawingAreaErrorKind<std::io::Error>| anyhow!("cannot draw the chart: {err}");
    let y_top = series.iter().flat_map(|s| &s.values).copied().filter(|y| y.is_finite()).fold(0.0, f64::max);
    // Room above the highest bar for its label and for the legend.
    let y_max = (y_top * 1.3).max(1.0);
    let groups = categories.len().max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        // Category `i` spans `i..i + 1` on the x axis.
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..groups as f64, 0.0..y_max)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            // The axis's own labels would fall where its number scale puts them: each category
            // is named under its group instead, below.
            .x_labels(0)
            .y_desc(y_desc)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()
            .map_err(draw_error)?;
        let bar = GROUP_WIDTH / series.len().max(1) as f64;
        for (s, line) in series.iter().enumerate() {
            let left = (1.0 - GROUP_WIDTH) / 2.0 + bar * s as f64;
            let style = line.colour.filled();
            let label =
                ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
            let heights: Vec<(f64, f64, String)> = line
                .values
                .iter()
                .take(groups)
                .enumerate()
                .map(|(i, &value)| {
                    let x = i as f64 + left;
                    match value.is_finite() {
                        true => (x, value.max(0.0), format!("{value:.0}")),
                        false => (x, 0.0, "n/a".to_owned()),
                    }
                })
                .collect();
            let colour = line.colour;
            chart
                .draw_series(heights.iter().map(|&(x, height, _)| {
                    // A sliver of white between neighbouring bars.
                    Rectangle::new([(x, 0.0), (x + bar * 0.97, height)], style)
                }))
                .map_err(draw_error)?
                .label(line.name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
            chart
                .draw_series(heights.into_iter().map(|(x, height, text)| {
                    EmptyElement::at((x + bar / 2.0, height)) + Text::new(text, (0, -2), label.clone())
                }))
                .map_err(draw_error)?;
        }
        let name = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(categories.iter().enumerate().map(|(i, category)| {
                EmptyElement::at((i as f64 + 0.5, 0.0)) + Text::new(category.clone(), (0, 8), name.clone())
            }))
            .map_err(draw_error)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(0xcc, 0xcc, 0xcc))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    Ok(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{svg}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_labelled_groups_of_bars() {
        let categories = vec!["R=1 level 0".to_owned(), "R=3 level <2>".to_owned()];
        let series = vec![
            Series { name: "puts/s".into(), colour: COLOURS[0], values: vec![3000.0, 1200.0] },
            Series { name: "gets/s".into(), colour: COLOURS[1], values: vec![4000.0, f64::NAN] },
        ];
        let svg = grouped_bars_svg("throughput", "operations per second", &categories, &series).unwrap();
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("R=1 level 0") && svg.contains("R=3 level &lt;2&gt;"), "categories, escaped");
        assert!(svg.contains("puts/s") && svg.contains("gets/s"), "a legend");
        assert!(svg.contains("\n3000\n") && svg.contains("\n1200\n"), "values on the bars: {svg}");
        assert!(svg.contains("\nn/a\n"), "no number for no value");
        assert!(svg.matches("<rect").count() >= 4, "four bars at least");
    }

    #[test]
    fn draws_nothing_to_show() {
        assert!(grouped_bars_svg("nothing", "ops/s", &[], &[]).unwrap().contains("<svg"));
    }
}
