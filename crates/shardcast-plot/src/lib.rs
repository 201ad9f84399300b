//! PNG charts of shardcast: line charts (series over time or curves of one
//! figure against another) and forecast fan charts (quantile bands, median
//! and actuals), stacked as panels of one image, and the simulator's chart
//! built from them ([`simulation`]). The command line draws its simulation
//! and demo charts with them.
//!
//! Drawing is plotters' bitmap backend into an RGB buffer, encoded with the
//! `png` crate. Text uses the bundled DejaVu Sans
//! (`assets/fonts/DejaVuSans.ttf`, licence beside it), so a machine without
//! fonts draws the same image.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

pub use plotters::style::RGBColor as Colour;

pub mod simulation;

/// The bundled font's bytes.
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";

/// Colours for lines, in the order a chart should use them.
pub const PALETTE: [Colour; 6] = [
    Colour(31, 119, 180),
    Colour(214, 39, 40),
    Colour(44, 160, 44),
    Colour(255, 127, 14),
    Colour(148, 103, 189),
    Colour(140, 86, 75),
];
/// Near-black, for actuals and demand.
pub const INK: Colour = Colour(30, 30, 30);

/// How the horizontal axis is read and labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Milliseconds since the epoch, labelled as UTC dates and times.
    Time,
    /// Plain numbers.
    Linear,
}

/// Where a chart's legend sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    /// Top left.
    UpperLeft,
    /// Top right.
    UpperRight,
}

/// One line of a [`LineChart`].
#[derive(Debug, Clone)]
pub struct Line {
    /// Legend text.
    pub label: String,
    /// Its colour.
    pub colour: Colour,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Stroke width in pixels.
    pub width: u32,
    /// Draw each value as a step held until the next point (counts, such
    /// as shards, change in steps).
    pub steps: bool,
    /// A dot at each point, with this text beside it (`None`: no dots).
    pub markers: Option<Vec<String>>,
}

impl Line {
    /// A plain line.
    pub fn new(label: impl Into<String>, colour: Colour, points: Vec<(f64, f64)>) -> Self {
        Self {
            label: label.into(),
            colour,
            points,
            width: 1,
            steps: false,
            markers: None,
        }
    }
}

/// Lines on shared axes.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// Title above the panel.
    pub title: String,
    /// How the horizontal axis is read.
    pub x_axis: Axis,
    /// Horizontal axis caption.
    pub x_label: String,
    /// Vertical axis caption.
    pub y_label: String,
    /// The lines, drawn in order.
    pub lines: Vec<Line>,
    /// Start the vertical axis at zero (else at the smallest value).
    pub y_from_zero: bool,
    /// Where the legend sits.
    pub legend: Corner,
}

/// A quantile band of a [`FanChart`]: the area between two levels.
#[derive(Debug, Clone)]
pub struct Band {
    /// Legend text, e.g. `80% (p10–p90)`.
    pub label: String,
    /// Lower edge at each time of the chart.
    pub lower: Vec<f64>,
    /// Upper edge at each time of the chart.
    pub upper: Vec<f64>,
}

/// A probabilistic forecast against what happened: bands (widest first),
/// the median and the actual values, over time.
#[derive(Debug, Clone)]
pub struct FanChart {
    /// Title above the panel.
    pub title: String,
    /// Vertical axis caption.
    pub y_label: String,
    /// Times (ms since the epoch) of every value below.
    pub times: Vec<i64>,
    /// Quantile bands, widest first.
    pub bands: Vec<Band>,
    /// The median at each time.
    pub median: Option<Vec<f64>>,
    /// What happened at each time.
    pub actual: Option<Vec<f64>>,
    /// Observed values before the forecast, `(time ms, value)`, drawn as
    /// one line with the actuals.
    pub history: Vec<(i64, f64)>,
    /// Colour of the bands and the median.
    pub colour: Colour,
}

impl FanChart {
    /// The usual fan over `times`: the 95% (p2.5–p97.5) and 80% (p10–p90)
    /// bands and the median, the value at time `i` and level `q` being
    /// `quantile(i, q)`; no actuals, no history.
    pub fn central(
        title: String,
        y_label: String,
        times: Vec<i64>,
        quantile: impl Fn(usize, f64) -> f64,
    ) -> Self {
        let level = |q: f64| (0..times.len()).map(|i| quantile(i, q)).collect();
        let band = |label: &str, lower: f64, upper: f64| Band {
            label: label.into(),
            lower: level(lower),
            upper: level(upper),
        };
        Self {
            title,
            y_label,
            bands: vec![
                band("95% (p2.5-p97.5)", 0.025, 0.975),
                band("80% (p10-p90)", 0.1, 0.9),
            ],
            median: Some(level(0.5)),
            actual: None,
            history: Vec::new(),
            times,
            colour: PALETTE[0],
        }
    }
}

/// One panel of an image.
#[derive(Debug, Clone)]
pub enum Panel {
    /// Lines on shared axes.
    Line(LineChart),
    /// A forecast fan.
    Fan(FanChart),
}

/// Draws `panels` one above the other, each `panel_height` pixels high, and
/// writes the image to `path` as a PNG.
pub fn write_png(path: &Path, width: u32, panel_height: u32, panels: &[Panel]) -> Result<()> {
    let bytes = render_png(width, panel_height, panels)?;
    shardcast_fs::write_bytes(path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Draws `panels` as [`write_png`] does and returns the PNG bytes.
pub fn render_png(width: u32, panel_height: u32, panels: &[Panel]) -> Result<Vec<u8>> {
    if panels.is_empty() {
        bail!("nothing to draw: no panels");
    }
    if !(200..=8000).contains(&width) || !(150..=4000).contains(&panel_height) {
        bail!("image size {width}×{panel_height} per panel is outside 200..8000 × 150..4000");
    }
    register_font()?;
    let height = panel_height * panels.len() as u32;
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
            match panel {
                Panel::Line(c) => draw_line_chart(area, c)?,
                Panel::Fan(c) => draw_fan_chart(area, c)?,
            }
        }
        root.present().map_err(drawing)?;
    }
    encode(width, height, &rgb)
}

fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        bail!("the bundled font assets/fonts/DejaVuSans.ttf cannot be read")
    }
}

fn drawing(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e}")
}

/// RGB bytes to a PNG file's bytes.
fn encode(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().context("cannot encode the PNG")?;
    w.write_image_data(rgb).context("cannot encode the PNG")?;
    w.finish().context("cannot encode the PNG")?;
    Ok(out)
}

/// Smallest and largest of `values`, ignoring non-finite ones.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A drawable range around `lo..hi`: widened when empty, padded by `pad`
/// of its width on each side, and starting at zero when asked and possible.
fn padded(lo: f64, hi: f64, pad: f64, from_zero: bool) -> (f64, f64) {
    let from_zero = from_zero && lo >= 0.0;
    let (lo, hi) = if hi - lo > 1e-12 * hi.abs().max(1.0) {
        (lo, hi)
    } else {
        (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0))
    };
    let span = hi - lo;
    let lo = if from_zero { 0.0 } else { lo - pad * span };
    (lo, hi + pad * span)
}

/// A UTC label for `ms`, with the time of day when the axis spans little.
fn time_label(ms: f64, span_ms: f64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp_millis(ms as i64) else {
        return String::new();
    };
    if span_ms > 4.0 * 86_400_000.0 {
        t.format("%b %d").to_string()
    } else {
        t.format("%b %d %H:%M").to_string()
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn draw_line_chart(area: &Area<'_>, c: &LineChart) -> Result<()> {
    let all = || c.lines.iter().flat_map(|l| l.points.iter().copied());
    let (Some((x0, x1)), Some((y0, y1))) = (extent(all().map(|p| p.0)), extent(all().map(|p| p.1)))
    else {
        bail!("chart `{}` has no finite points", c.title);
    };
    let x_pad = if c.x_axis == Axis::Time { 0.0 } else { 0.06 };
    let (x0, x1) = padded(x0, x1, x_pad, false);
    // Room above the top point for marker labels.
    let top_pad = if c.lines.iter().any(|l| l.markers.is_some()) {
        0.12
    } else {
        0.06
    };
    let (y0, y1) = padded(y0, y1, top_pad, c.y_from_zero);
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FAMILY, 19))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(drawing)?;
    let span = x1 - x0;
    let time_fmt = move |x: &f64| time_label(*x, span);
    let num_fmt = |x: &f64| trim_number(*x);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(Colour(238, 238, 238))
        .bold_line_style(Colour(215, 215, 215))
        .x_labels(9)
        .y_labels(8)
        .y_label_formatter(&num_fmt);
    if c.x_axis == Axis::Time {
        mesh.x_label_formatter(&time_fmt);
    } else {
        mesh.x_label_formatter(&num_fmt);
    }
    mesh.draw().map_err(drawing)?;
    for line in &c.lines {
        let style = line
            .colour
            .stroke_width(stroke(line.width, line.points.len()));
        let pts = if line.steps {
            as_steps(&line.points)
        } else {
            line.points.clone()
        };
        let legend = line.colour.stroke_width(line.width.max(2));
        chart
            .draw_series(LineSeries::new(pts, style))
            .map_err(drawing)?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], legend));
        if let Some(labels) = &line.markers {
            let dot = line.colour.filled();
            chart
                .draw_series(line.points.iter().map(|&p| Circle::new(p, 4, dot)))
                .map_err(drawing)?;
            let font = (FAMILY, 12).into_font().color(&line.colour);
            chart
                .draw_series(line.points.iter().zip(labels).map(|(&p, text)| {
                    EmptyElement::at(p) + Text::new(text.clone(), (6, -15), font.clone())
                }))
                .map_err(drawing)?;
        }
    }
    legend(&mut chart, c.legend)
}

fn draw_fan_chart(area: &Area<'_>, c: &FanChart) -> Result<()> {
    let n = c.times.len();
    let lens_ok = c
        .bands
        .iter()
        .all(|b| b.lower.len() == n && b.upper.len() == n)
        && c.median.as_ref().is_none_or(|m| m.len() == n)
        && c.actual.as_ref().is_none_or(|a| a.len() == n);
    if n < 2 || !lens_ok {
        bail!(
            "fan chart `{}` needs at least two times and one value per time in every band and line",
            c.title
        );
    }
    let first = c
        .history
        .first()
        .map_or(c.times[0], |h| h.0.min(c.times[0]));
    let (x0, x1) = (first as f64, c.times[n - 1] as f64);
    let ys = c
        .bands
        .iter()
        .flat_map(|b| b.lower.iter().chain(&b.upper))
        .chain(c.median.iter().flatten())
        .chain(c.actual.iter().flatten())
        .copied()
        .chain(c.history.iter().map(|h| h.1));
    let Some((y0, y1)) = extent(ys) else {
        bail!("fan chart `{}` has no finite values", c.title);
    };
    let (y0, y1) = padded(y0, y1, 0.06, false);
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FAMILY, 19))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(drawing)?;
    let span = x1 - x0;
    let time_fmt = move |x: &f64| time_label(*x, span);
    let num_fmt = |x: &f64| trim_number(*x);
    chart
        .configure_mesh()
        .x_desc("time (UTC)")
        .y_desc(c.y_label.as_str())
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(Colour(238, 238, 238))
        .bold_line_style(Colour(215, 215, 215))
        .x_labels(9)
        .y_labels(8)
        .x_label_formatter(&time_fmt)
        .y_label_formatter(&num_fmt)
        .draw()
        .map_err(drawing)?;
    let xs: Vec<f64> = c.times.iter().map(|&t| t as f64).collect();
    let bands = c.bands.len().max(1) as f64;
    for (k, b) in c.bands.iter().enumerate() {
        // Inner bands are drawn over outer ones, each a little darker.
        let fill = c.colour.mix(0.16 + 0.14 * k as f64 / bands).filled();
        let mut outline: Vec<(f64, f64)> =
            xs.iter().copied().zip(b.upper.iter().copied()).collect();
        outline.extend(xs.iter().copied().zip(b.lower.iter().copied()).rev());
        chart
            .draw_series(std::iter::once(Polygon::new(outline, fill)))
            .map_err(drawing)?
            .label(b.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 22, y + 5)], fill));
    }
    if let Some(m) = &c.median {
        let style = c.colour.stroke_width(stroke(2, n));
        chart
            .draw_series(LineSeries::new(
                xs.iter().copied().zip(m.iter().copied()),
                style,
            ))
            .map_err(drawing)?
            .label("median")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
    }
    if let Some(a) = &c.actual {
        let style = INK.stroke_width(1);
        let observed = c.history.iter().map(|&(t, v)| (t as f64, v));
        chart
            .draw_series(LineSeries::new(
                observed.chain(xs.iter().copied().zip(a.iter().copied())),
                style,
            ))
            .map_err(drawing)?
            .label("actual")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], style.stroke_width(2))
            });
    }
    legend(&mut chart, Corner::UpperLeft)
}

fn legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    corner: Corner,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(match corner {
            Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
            Corner::UpperRight => SeriesLabelPosition::UpperRight,
        })
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(Colour(190, 190, 190))
        .draw()
        .map_err(drawing)
}

/// The stroke width for a line of `points` points: wide strokes are joined
/// with mitres, which spike far out where a dense, jagged line turns
/// sharply, so dense lines are drawn one pixel wide.
fn stroke(width: u32, points: usize) -> u32 {
    if points > DENSE { 1 } else { width }
}

/// Points beyond which a line counts as dense.
const DENSE: usize = 300;

/// `points` as a staircase: each value holds until the next point's x.
fn as_steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, &(x, y)) in points.iter().enumerate() {
        if i > 0 {
            out.push((x, points[i - 1].1));
        }
        out.push((x, y));
    }
    out
}

/// A short label for an axis value: no trailing zeros, at most 3 decimals.
fn trim_number(x: f64) -> String {
    let s = if x.abs() >= 1000.0 || x == x.trunc() {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    if s == "-0" { "0".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    /// How many pixels are close to `c`.
    fn count(rgb: &[u8], c: Colour) -> usize {
        rgb.chunks(3)
            .filter(|p| {
                p.iter()
                    .zip([c.0, c.1, c.2])
                    .all(|(&a, b)| a.abs_diff(b) < 8)
            })
            .count()
    }

    #[test]
    fn line_and_fan_charts_render_to_a_png_of_the_asked_size() {
        let t0 = 1_500_000_000_000i64;
        let times: Vec<i64> = (0..50).map(|i| t0 + i * 300_000).collect();
        let actual: Vec<f64> = (0..50).map(|i| 10.0 + (i as f64 / 5.0).sin()).collect();
        let line = LineChart {
            title: "demand".into(),
            x_axis: Axis::Time,
            x_label: "time".into(),
            y_label: "shards".into(),
            lines: vec![
                Line {
                    steps: true,
                    width: 2,
                    ..Line::new(
                        "a",
                        PALETTE[1],
                        times.iter().map(|&t| (t as f64, 12.0)).collect(),
                    )
                },
                Line {
                    markers: Some(vec!["x".into(), "y".into()]),
                    ..Line::new(
                        "b",
                        PALETTE[2],
                        vec![(t0 as f64, 3.0), (t0 as f64 + 1e6, 4.0)],
                    )
                },
            ],
            y_from_zero: true,
            legend: Corner::UpperRight,
        };
        let fan = FanChart {
            title: "forecast".into(),
            y_label: "demand".into(),
            times: times.clone(),
            bands: vec![Band {
                label: "80%".into(),
                lower: actual.iter().map(|a| a - 1.0).collect(),
                upper: actual.iter().map(|a| a + 1.0).collect(),
            }],
            median: Some(actual.clone()),
            actual: Some(actual),
            history: vec![(t0 - 600_000, 9.0), (t0 - 300_000, 10.0)],
            colour: PALETTE[0],
        };
        let png = render_png(600, 300, &[Panel::Line(line), Panel::Fan(fan)]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let (info, rgb) = decode(&png);
        assert_eq!((info.width, info.height), (600, 600));
        // The red step line and the blue median were drawn; most is white.
        assert!(count(&rgb, PALETTE[1]) > 300, "red line missing");
        assert!(count(&rgb, PALETTE[0]) > 200, "median missing");
        assert!(count(&rgb, Colour(255, 255, 255)) > 600 * 600 / 2);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(render_png(600, 300, &[]).is_err());
        let empty = LineChart {
            title: "empty".into(),
            x_axis: Axis::Linear,
            x_label: String::new(),
            y_label: String::new(),
            lines: vec![Line::new("nan", INK, vec![(f64::NAN, 1.0)])],
            y_from_zero: false,
            legend: Corner::UpperLeft,
        };
        let err = render_png(600, 300, &[Panel::Line(empty)]).unwrap_err();
        assert!(err.to_string().contains("no finite points"), "{err}");
        let fan = FanChart {
            title: "short".into(),
            y_label: String::new(),
            times: vec![0, 1],
            bands: vec![],
            median: Some(vec![1.0]),
            actual: None,
            history: Vec::new(),
            colour: INK,
        };
        assert!(render_png(600, 300, &[Panel::Fan(fan)]).is_err());
        assert!(render_png(10, 300, &[]).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(
            as_steps(&[(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]),
            vec![(0.0, 1.0), (1.0, 1.0), (1.0, 2.0), (2.0, 2.0), (2.0, 3.0)]
        );
        assert_eq!((stroke(2, 10), stroke(2, 5000)), (2, 1));
        assert_eq!(trim_number(2.5), "2.5");
        assert_eq!(trim_number(3.0), "3");
        assert_eq!(trim_number(0.12345), "0.123");
        assert_eq!(trim_number(12345.6), "12346");
        assert_eq!(padded(0.0, 0.0, 0.1, true), (0.0, 0.6));
        assert_eq!(padded(2.0, 4.0, 0.0, false), (2.0, 4.0));
        assert_eq!(time_label(0.0, 1e9), "Jan 01");
        assert_eq!(time_label(3_600_000.0, 1e6), "Jan 01 01:00");
    }
}
