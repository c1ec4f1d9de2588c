//! PNG figures: accuracy against the label budget, and curves (losses over epochs).

use crate::stats::SummaryRow;
use crate::{invalid, ReportError, Result};
use plotters::chart::MeshStyle;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::path::Path;

/// Size in pixels (width, height) of the PNGs drawn by [`plot_accuracy`] and [`plot_curves`].
pub const PLOT_SIZE: (u32, u32) = (960, 640);

const FONT: &str = "sans-serif";

/// Registers the embedded DejaVu Sans as the plot font (once per process).
fn ensure_font() {
    static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // The font is embedded and known to parse; a failure here is a build defect.
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .unwrap_or_else(|_| panic!("embedded DejaVuSans.ttf failed to parse"));
    });
}

/// Colour-blind friendly palette (Okabe-Ito, then a few extra) for strategies / series.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
    RGBColor(128, 128, 128),
    RGBColor(148, 103, 189),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plot_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Plot {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    }
}

/// The legend of a plot's series, in one style for every plot.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .legend_area_size(34)
        .draw()
}

/// Encodes an RGB8 buffer as PNG and writes it atomically.
pub(crate) fn write_png(path: &Path, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
    let img = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| invalid(path, "internal error: image buffer has the wrong size"))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|source| ReportError::Image {
            path: path.to_path_buf(),
            source,
        })?;
    imprint_fs::write_atomic(path, bytes.get_ref())?;
    Ok(())
}

/// Draws on a white RGB canvas of [`PLOT_SIZE`] with `draw`, then saves it as a PNG.
fn render_plot(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    ensure_font();
    let (w, h) = PLOT_SIZE;
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(path))?;
        draw(&root)?;
        root.present().map_err(plot_err(path))?;
    }
    write_png(path, w, h, buffer)
}

/// Pads `[lo, hi]` by `frac` of its span (or by `min_span / 2` when it is narrower than that).
fn padded(lo: f64, hi: f64, frac: f64, min_span: f64) -> (f64, f64) {
    let span = hi - lo;
    if span < min_span {
        let mid = (lo + hi) / 2.0;
        (mid - min_span / 2.0, mid + min_span / 2.0)
    } else {
        (lo - frac * span, hi + frac * span)
    }
}

/// Linear x axis (in plot space: the budget, or its log10) with ticks exactly at the budgets,
/// labelled with the budget itself.
struct BudgetAxis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    log: bool,
}

impl Ranged for BudgetAxis {
    type FormatOption = plotters::coord::ranged1d::NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value - self.lo) / (self.hi - self.lo);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl plotters::coord::ranged1d::ValueFormatter<f64> for BudgetAxis {
    fn format_ext(&self, value: &f64) -> String {
        fmt_budget(if self.log { 10f64.powf(*value) } else { *value })
    }
}

/// Tick label: at most 6 decimals, trailing zeros dropped ("5", "0.35", "2.5").
fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn fmt_budget(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.2}")
    }
}

/// PNG line plot of mean test accuracy (%) against labels per class: one coloured line with
/// markers and ± std error bars per strategy, a dashed line at chance (100 / `classes` %),
/// legend, axis labels, title, and a note under the axes saying what the points and bars are.
/// The x axis is logarithmic when the largest budget is at least 10 times the smallest, else
/// linear; ticks sit at the budgets. Strategies are dodged sideways a little so their error bars
/// do not overlap.
pub fn plot_accuracy(path: &Path, title: &str, rows: &[SummaryRow], classes: usize) -> Result<()> {
    let rows: Vec<&SummaryRow> = rows
        .iter()
        .filter(|r| r.mean_accuracy.is_finite())
        .collect();
    if rows.is_empty() {
        return Err(invalid(
            path,
            "no summary rows with a finite accuracy to plot",
        ));
    }
    let mut strategies: Vec<&str> = Vec::new();
    for r in &rows {
        if !strategies.contains(&r.strategy.as_str()) {
            strategies.push(&r.strategy);
        }
    }
    let budgets: BTreeSet<usize> = rows.iter().map(|r| r.labels_per_class).collect();
    let min_b = *budgets.first().expect("non-empty") as f64;
    let max_b = *budgets.last().expect("non-empty") as f64;
    let log_x = min_b > 0.0 && max_b / min_b >= 10.0;
    // Plot in transformed space (log10 of the budget when logarithmic) with ticks at the budgets.
    let to_x = |b: f64| if log_x { b.log10() } else { b };
    let (x_lo, x_hi) = padded(
        to_x(min_b),
        to_x(max_b),
        0.06,
        if log_x { 0.2 } else { 2.0 },
    );
    let dodge_step = 0.008 * (x_hi - x_lo);
    let n_strat = strategies.len() as f64;

    let std_of = |r: &SummaryRow| {
        if r.std_accuracy.is_finite() {
            r.std_accuracy
        } else {
            0.0
        }
    };
    let chance = 100.0 / classes.max(1) as f64;
    let y_min = rows
        .iter()
        .map(|r| 100.0 * (r.mean_accuracy - std_of(r)))
        .fold(chance, f64::min);
    let y_max = rows
        .iter()
        .map(|r| 100.0 * (r.mean_accuracy + std_of(r)))
        .fold(f64::NEG_INFINITY, f64::max);
    let (y_lo, y_hi) = padded(y_min, y_max, 0.08, 5.0);
    let (y_lo, y_hi) = (y_lo.max(0.0), y_hi.min(100.0).max(y_lo.max(0.0) + 1.0));

    let x_axis = BudgetAxis {
        lo: x_lo,
        hi: x_hi,
        ticks: budgets.iter().map(|&b| to_x(b as f64)).collect(),
        log: log_x,
    };
    let seeds = rows.iter().map(|r| r.runs).max().unwrap_or(0);
    let note = format!(
        "Points: mean test accuracy over the seeds (up to {seeds} runs each); error bars: \
         ± 1 standard deviation across them; dashed: chance, {chance:.0}% for {classes} classes."
    );
    render_plot(path, |root| {
        let err = plot_err(path);
        let (area, foot) = root.split_vertically(PLOT_SIZE.1 - 30);
        foot.draw_text(&note, &(FONT, 15).into_font().color(&BLACK), (16, 4))
            .map_err(&err)?;
        let mut chart = titled(&area, title, 70)
            .build_cartesian_2d(x_axis, y_lo..y_hi)
            .map_err(&err)?;
        house_style(&mut chart.configure_mesh())
            .x_desc(if log_x {
                "labels per class (log scale)"
            } else {
                "labels per class"
            })
            .y_desc("test accuracy (%)")
            .draw()
            .map_err(&err)?;

        let grey = RGBColor(110, 110, 110);
        chart
            .draw_series(DashedLineSeries::new(
                [(x_lo, chance), (x_hi, chance)],
                8,
                6,
                grey.stroke_width(2),
            ))
            .map_err(&err)?
            .label(format!("chance ({chance:.0}%)"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2))
            });
        for (i, strategy) in strategies.iter().enumerate() {
            let c = colour(i);
            let offset = (i as f64 - (n_strat - 1.0) / 2.0) * dodge_step;
            let mut points: Vec<(f64, f64, f64)> = rows
                .iter()
                .filter(|r| r.strategy == *strategy)
                .map(|r| {
                    (
                        to_x(r.labels_per_class as f64) + offset,
                        100.0 * r.mean_accuracy,
                        100.0 * std_of(r),
                    )
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(x, y, _)| (x, y)),
                    c.stroke_width(3),
                ))
                .map_err(&err)?
                .label(*strategy)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (24, 0)], c.stroke_width(3))
                        + Circle::new((12, 0), 4, c.filled())
                });
            let cap = 0.35 * dodge_step.max(0.004 * (x_hi - x_lo));
            chart
                .draw_series(points.iter().filter(|p| p.2 > 0.0).flat_map(|&(x, y, s)| {
                    let style = c.stroke_width(2);
                    [
                        PathElement::new(vec![(x, y - s), (x, y + s)], style),
                        PathElement::new(vec![(x - cap, y - s), (x + cap, y - s)], style),
                        PathElement::new(vec![(x - cap, y + s), (x + cap, y + s)], style),
                    ]
                }))
                .map_err(&err)?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&(x, y, _)| Circle::new((x, y), 5, c.filled())),
                )
                .map_err(&err)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight).map_err(&err)
    })
}

/// One curve of [`plot_curves`]: its name and `(epoch, value)` points.
pub type Curve = (String, Vec<(f64, f64)>);

/// PNG line plot of curves such as per-epoch losses: each series is `(name, [(epoch, value)])`,
/// drawn as a coloured line with a legend; x axis "epoch", y axis `y_label`.
pub fn plot_curves(path: &Path, title: &str, y_label: &str, series: &[Curve]) -> Result<()> {
    plot_curves_on_two_axes(path, title, y_label, series, None)
}

/// [`plot_curves`], with `right`'s curves (e.g. an accuracy beside losses) drawn dashed against
/// a second y axis on the right, labelled with its `.0`.
pub fn plot_curves_on_two_axes(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Curve],
    right: Option<(&str, &[Curve])>,
) -> Result<()> {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().filter(finite).copied())
        .collect();
    if all.is_empty() {
        return Err(invalid(path, "no finite points to plot"));
    }
    let x_min = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = padded(x_min, x_max, 0.02, 1.0);
    let y_floor = (y_max - y_min).abs().max(y_max.abs()).max(1e-9) * 1e-3;
    let (y_lo, y_hi) = padded(y_min, y_max, 0.06, y_floor);
    // Losses are non-negative: do not let padding push the axis below zero needlessly.
    let y_lo = if y_min >= 0.0 { y_lo.max(0.0) } else { y_lo };

    let right_points: Vec<(f64, f64)> = right
        .iter()
        .flat_map(|(_, curves)| curves.iter())
        .flat_map(|(_, pts)| pts.iter().filter(finite).copied())
        .collect();
    let (r_lo, r_hi) = match right_points.is_empty() {
        true => (0.0, 1.0),
        false => padded(
            right_points
                .iter()
                .map(|p| p.1)
                .fold(f64::INFINITY, f64::min),
            right_points
                .iter()
                .map(|p| p.1)
                .fold(f64::NEG_INFINITY, f64::max),
            0.06,
            1e-3,
        ),
    };

    render_plot(path, |root| {
        let err = plot_err(path);
        let mut builder = titled(root, title, 80);
        if right.is_some() {
            builder.right_y_label_area_size(80);
        }
        // The right-hand axis is set before the primary mesh is drawn, which takes the right
        // label area away from it: drawn first, the loss's ticks land on the right too.
        let mut chart = builder
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(&err)?
            .set_secondary_coord(x_lo..x_hi, r_lo..r_hi);
        house_style(&mut chart.configure_mesh())
            .x_desc("epoch")
            .y_desc(y_label)
            .x_label_formatter(&|x| fmt_tick(*x))
            .draw()
            .map_err(&err)?;
        if let Some((label, curves)) = right.filter(|_| !right_points.is_empty()) {
            chart
                .configure_secondary_axes()
                .y_desc(label)
                .y_label_formatter(&|y| fmt_tick(*y))
                .axis_desc_style((FONT, 18))
                .label_style((FONT, 15))
                .draw()
                .map_err(&err)?;
            for (j, (name, points)) in curves.iter().enumerate() {
                let c = colour(series.len() + j);
                let pts: Vec<(f64, f64)> = points.iter().filter(finite).copied().collect();
                chart
                    .draw_secondary_series(DashedLineSeries::new(
                        pts.iter().copied(),
                        10,
                        5,
                        c.stroke_width(3),
                    ))
                    .map_err(&err)?
                    .label(format!("{name} (right axis)"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
                    });
                chart
                    .draw_secondary_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(&err)?;
            }
        }
        for (i, (name, points)) in series.iter().enumerate() {
            let c = colour(i);
            let pts: Vec<(f64, f64)> = points.iter().filter(finite).copied().collect();
            let anno = chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))
                .map_err(&err)?;
            anno.label(name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
            });
            if pts.len() <= 40 {
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(&err)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .legend_area_size(34)
            .draw()
            .map_err(&err)
    })
}

/// A chart on `root` with its title and the margins every plot here shares, `y_labels` pixels
/// wide for the y axis's labels.
fn titled<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    y_labels: u32,
) -> ChartBuilder<'a, 'b, DB> {
    let mut chart = ChartBuilder::on(root);
    chart
        .caption(title, (FONT, 26))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(y_labels);
    chart
}

/// The fonts, grid and y ticks every plot here shares.
fn house_style<'m, 'a, 'b, X, DB>(
    mesh: &'m mut MeshStyle<'a, 'b, X, RangedCoordf64, DB>,
) -> &'m mut MeshStyle<'a, 'b, X, RangedCoordf64, DB>
where
    X: Ranged,
    DB: DrawingBackend,
{
    mesh.y_label_formatter(&|y| fmt_tick(*y))
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        .max_light_lines(1)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
}
