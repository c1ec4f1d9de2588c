//! Results, summaries, reports and figures for transfer-learning experiments.
//!
//! * [`RunRecord`] is one fine-tuning run; [`write_results_csv`] / [`read_results_csv`] store them.
//! * [`summarize`] groups runs by label budget and strategy and pairs every strategy with the
//!   from-scratch baseline by seed, giving the mean gain and a Student-t 95% confidence interval.
//! * [`render_markdown`] and [`render_terminal_table`] turn the summary into readable tables.
//! * [`plot_accuracy`], [`plot_curves`] and [`image_grid`] draw PNG figures.
//!
//! Every file is written crash-safely through [`imprint_fs::write_atomic`]: a temporary file is
//! written and renamed into place, so an interrupted run never leaves a half file behind.
//!
//! The plots render their text with an embedded copy of the DejaVu Sans font (see
//! `assets/DejaVuSans-LICENSE.txt`), so no system font libraries are needed.

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while writing or reading a report file; each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing the file failed (the message names the file).
    #[error(transparent)]
    Fs(#[from] imprint_fs::FsError),
    /// Reading or writing CSV failed.
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// Drawing a plot failed.
    #[error("{path}: drawing the plot failed: {message}")]
    Plot { path: PathBuf, message: String },
    /// Encoding a PNG failed.
    #[error("{path}: encoding the PNG failed: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The input does not describe a valid file (wrong row length, bad image shape, no data...).
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, ReportError>;

fn invalid(path: &Path, message: impl Into<String>) -> ReportError {
    ReportError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn csv_err(path: &Path) -> impl FnOnce(csv::Error) -> ReportError + '_ {
    move |source| ReportError::Csv {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Run records
// ---------------------------------------------------------------------------------------------

/// One fine-tuning run: one strategy on one labeled subset (labels_per_class, seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub strategy: String,
    pub labels_per_class: usize,
    pub seed: u64,
    /// Fraction of the test set classified correctly, in [0, 1].
    pub test_accuracy: f64,
    pub macro_f1: f64,
    pub pretrain_seconds: f64,
    pub finetune_seconds: f64,
    pub epochs_run: usize,
}

const RESULT_HEADER: [&str; 8] = [
    "strategy",
    "labels_per_class",
    "seed",
    "test_accuracy",
    "macro_f1",
    "pretrain_seconds",
    "finetune_seconds",
    "epochs_run",
];

/// Writes one row per run; the header is the [`RunRecord`] field names in declaration order
/// (written even when `runs` is empty).
pub fn write_results_csv(path: &Path, runs: &[RunRecord]) -> Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer.write_record(RESULT_HEADER).map_err(csv_err(path))?;
    for run in runs {
        writer.serialize(run).map_err(csv_err(path))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv_err(path)(csv::Error::from(e.into_error())))?;
    imprint_fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a file written by [`write_results_csv`] (columns are matched by header name).
pub fn read_results_csv(path: &Path) -> Result<Vec<RunRecord>> {
    let mut reader = csv::Reader::from_path(path).map_err(csv_err(path))?;
    reader
        .deserialize()
        .collect::<std::result::Result<Vec<RunRecord>, _>>()
        .map_err(csv_err(path))
}

// ---------------------------------------------------------------------------------------------
// Summary statistics
// ---------------------------------------------------------------------------------------------

/// Accuracy gain of a strategy over the baseline, paired by seed (strategy minus baseline), as a
/// fraction (multiply by 100 for percentage points).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gain {
    pub mean: f64,
    /// Lower end of the 95% Student-t confidence interval; `-inf` with a single pair.
    pub ci_low: f64,
    /// Upper end of the 95% Student-t confidence interval; `+inf` with a single pair.
    pub ci_high: f64,
    /// Number of seeds present for both the strategy and the baseline.
    pub pairs: usize,
}

impl Gain {
    /// `"helps"` when the whole CI is above 0, `"hurts"` when it is below 0, `"unclear"` otherwise.
    pub fn verdict(&self) -> &'static str {
        if self.ci_low > 0.0 {
            "helps"
        } else if self.ci_high < 0.0 {
            "hurts"
        } else {
            "unclear"
        }
    }
}

/// One (labels_per_class, strategy) group of runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SummaryRow {
    pub strategy: String,
    pub labels_per_class: usize,
    pub runs: usize,
    pub mean_accuracy: f64,
    /// Sample standard deviation (n - 1 denominator); 0 for a single run.
    pub std_accuracy: f64,
    pub mean_macro_f1: f64,
    /// `None` for the baseline itself, or when no baseline run shares a seed with this group.
    pub gain_over_scratch: Option<Gain>,
}

/// Two-sided 95% critical value of Student's t distribution, t_{0.975, df}.
///
/// Exact (9 significant digits) for df 1..=30; above that the Cornish-Fisher expansion around the
/// normal quantile, which is within 1e-6 of the exact value there. `df = 0` gives infinity.
fn t_critical_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706204736,
        4.302652730,
        3.182446305,
        2.776445105,
        2.570581836,
        2.446911851,
        2.364624252,
        2.306004135,
        2.262157163,
        2.228138852,
        2.200985160,
        2.178812830,
        2.160368656,
        2.144786688,
        2.131449546,
        2.119905299,
        2.109815578,
        2.100922040,
        2.093024054,
        2.085963447,
        2.079613845,
        2.073873068,
        2.068657610,
        2.063898562,
        2.059538553,
        2.055529439,
        2.051830516,
        2.048407142,
        2.045229642,
        2.042272456,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => {
            let z: f64 = 1.959_963_984_540_054;
            let n = df as f64;
            let (z3, z5, z7, z9) = (z.powi(3), z.powi(5), z.powi(7), z.powi(9));
            z + (z3 + z) / (4.0 * n)
                + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * n * n)
                + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * n.powi(3))
                + (79.0 * z9 + 776.0 * z7 + 1482.0 * z5 - 1920.0 * z3 - 945.0 * z)
                    / (92160.0 * n.powi(4))
        }
    }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n - 1); 0 for fewer than two values.
fn sample_std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (xs.len() - 1) as f64).sqrt()
}

/// Mean test accuracy per seed (several runs with one seed are averaged).
fn accuracy_by_seed(runs: &[&RunRecord]) -> BTreeMap<u64, f64> {
    let mut sums: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for run in runs {
        let entry = sums.entry(run.seed).or_insert((0.0, 0));
        entry.0 += run.test_accuracy;
        entry.1 += 1;
    }
    sums.into_iter()
        .map(|(seed, (sum, n))| (seed, sum / n as f64))
        .collect()
}

fn paired_gain(strategy: &BTreeMap<u64, f64>, baseline: &BTreeMap<u64, f64>) -> Option<Gain> {
    let diffs: Vec<f64> = strategy
        .iter()
        .filter_map(|(seed, acc)| baseline.get(seed).map(|base| acc - base))
        .collect();
    if diffs.is_empty() {
        return None;
    }
    let n = diffs.len();
    let m = mean(&diffs);
    let (ci_low, ci_high) = if n == 1 {
        (f64::NEG_INFINITY, f64::INFINITY)
    } else {
        let half = t_critical_975(n - 1) * sample_std(&diffs) / (n as f64).sqrt();
        (m - half, m + half)
    };
    Some(Gain {
        mean: m,
        ci_low,
        ci_high,
        pairs: n,
    })
}

/// Groups runs by (labels_per_class, strategy): budgets ascending, and within a budget the
/// strategies in the order they first appear in `runs`.
///
/// The gain of a strategy over `baseline` (e.g. `"scratch"`) at the same budget is paired by seed:
/// only seeds with runs of both are used (several runs with one seed are averaged first), and the
/// 95% CI is mean ± t_{0.975, n-1} · sd / √n. With a single pair the CI is (-inf, +inf).
pub fn summarize(runs: &[RunRecord], baseline: &str) -> Vec<SummaryRow> {
    let mut strategy_order: Vec<&str> = Vec::new();
    for run in runs {
        if !strategy_order.contains(&run.strategy.as_str()) {
            strategy_order.push(&run.strategy);
        }
    }
    let budgets: BTreeSet<usize> = runs.iter().map(|r| r.labels_per_class).collect();

    let mut rows = Vec::new();
    for &budget in &budgets {
        let group = |strategy: &str| -> Vec<&RunRecord> {
            runs.iter()
                .filter(|r| r.labels_per_class == budget && r.strategy == strategy)
                .collect()
        };
        let baseline_by_seed = accuracy_by_seed(&group(baseline));
        for &strategy in &strategy_order {
            let members = group(strategy);
            if members.is_empty() {
                continue;
            }
            let accuracies: Vec<f64> = members.iter().map(|r| r.test_accuracy).collect();
            let f1s: Vec<f64> = members.iter().map(|r| r.macro_f1).collect();
            let gain_over_scratch = if strategy == baseline {
                None
            } else {
                paired_gain(&accuracy_by_seed(&members), &baseline_by_seed)
            };
            rows.push(SummaryRow {
                strategy: strategy.to_string(),
                labels_per_class: budget,
                runs: members.len(),
                mean_accuracy: mean(&accuracies),
                std_accuracy: sample_std(&accuracies),
                mean_macro_f1: mean(&f1s),
                gain_over_scratch,
            });
        }
    }
    rows
}

/// Writes the summary with flat columns `strategy,labels_per_class,runs,mean_accuracy,
/// std_accuracy,mean_macro_f1,gain_mean,gain_ci_low,gain_ci_high,gain_pairs`; the gain columns are
/// empty when there is no gain, and an unbounded CI is written as `-inf` / `inf`.
pub fn write_summary_csv(path: &Path, rows: &[SummaryRow]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record([
            "strategy",
            "labels_per_class",
            "runs",
            "mean_accuracy",
            "std_accuracy",
            "mean_macro_f1",
            "gain_mean",
            "gain_ci_low",
            "gain_ci_high",
            "gain_pairs",
        ])
        .map_err(csv_err(path))?;
    for row in rows {
        let gain = match &row.gain_over_scratch {
            Some(g) => [
                g.mean.to_string(),
                g.ci_low.to_string(),
                g.ci_high.to_string(),
                g.pairs.to_string(),
            ],
            None => Default::default(),
        };
        let mut record = vec![
            row.strategy.clone(),
            row.labels_per_class.to_string(),
            row.runs.to_string(),
            row.mean_accuracy.to_string(),
            row.std_accuracy.to_string(),
            row.mean_macro_f1.to_string(),
        ];
        record.extend(gain);
        writer.write_record(&record).map_err(csv_err(path))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv_err(path)(csv::Error::from(e.into_error())))?;
    imprint_fs::write_atomic(path, &bytes)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Text reports
// ---------------------------------------------------------------------------------------------

const TABLE_HEADER: [&str; 5] = [
    "labels/class",
    "strategy",
    "accuracy % (mean ± std)",
    "gain vs scratch (points, 95% CI)",
    "verdict",
];

fn fmt_accuracy(row: &SummaryRow) -> String {
    format!(
        "{:.1} ± {:.1}",
        100.0 * row.mean_accuracy,
        100.0 * row.std_accuracy
    )
}

fn fmt_points(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.1}", 100.0 * x)
    } else {
        "n/a".to_string()
    }
}

fn fmt_gain(gain: Option<&Gain>) -> String {
    match gain {
        None => "—".to_string(),
        Some(g) => {
            let ci = if g.ci_low.is_finite() && g.ci_high.is_finite() {
                format!("[{}, {}]", fmt_points(g.ci_low), fmt_points(g.ci_high))
            } else {
                "[n/a]".to_string()
            };
            let pairs = if g.pairs == 1 { "pair" } else { "pairs" };
            format!("{} {ci}, {} {pairs}", fmt_points(g.mean), g.pairs)
        }
    }
}

fn fmt_verdict(gain: Option<&Gain>) -> &'static str {
    gain.map_or("—", Gain::verdict)
}

fn table_cells(row: &SummaryRow) -> [String; 5] {
    let gain = row.gain_over_scratch.as_ref();
    [
        row.labels_per_class.to_string(),
        row.strategy.clone(),
        fmt_accuracy(row),
        fmt_gain(gain),
        fmt_verdict(gain).to_string(),
    ]
}

/// Label budgets in order of first appearance, each with its rows.
fn by_budget(rows: &[SummaryRow]) -> Vec<(usize, Vec<&SummaryRow>)> {
    let mut groups: Vec<(usize, Vec<&SummaryRow>)> = Vec::new();
    for row in rows {
        match groups.iter_mut().find(|(b, _)| *b == row.labels_per_class) {
            Some((_, members)) => members.push(row),
            None => groups.push((row.labels_per_class, vec![row])),
        }
    }
    groups
}

/// Markdown report: a title, the caller's context paragraph, a table
/// `| labels/class | strategy | accuracy % (mean ± std) | gain vs scratch (points, 95% CI) | verdict |`
/// (verdict "helps" when the CI is above 0, "hurts" when below, "unclear" otherwise, "—" without a
/// gain), and a line per label budget naming the strategy with the best mean accuracy.
pub fn render_markdown(title: &str, context: &str, rows: &[SummaryRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", title.trim());
    if !context.trim().is_empty() {
        let _ = writeln!(out, "{}\n", context.trim());
    }
    if rows.is_empty() {
        out.push_str("No runs to report.\n");
        return out;
    }
    let _ = writeln!(out, "| {} |", TABLE_HEADER.join(" | "));
    out.push_str("|---:|:---|---:|---:|:---|\n");
    for row in rows {
        let cells = table_cells(row).map(|c| c.replace('|', "\\|"));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push_str(
        "\nGains are paired by seed (strategy minus scratch on the same labeled subset), in \
         percentage points, with a Student-t 95% confidence interval; \"n/a\" means a single \
         pair, so no interval.\n",
    );
    out.push_str("\n## Best strategy per label budget\n\n");
    for (budget, members) in by_budget(rows) {
        let best = members.iter().filter(|r| r.mean_accuracy.is_finite()).fold(
            None::<&SummaryRow>,
            |best, r| match best {
                Some(b) if b.mean_accuracy >= r.mean_accuracy => Some(b),
                _ => Some(r),
            },
        );
        match best {
            Some(best) => {
                let gain = match &best.gain_over_scratch {
                    Some(g) => format!(
                        " (gain {} points vs scratch, {})",
                        fmt_points(g.mean),
                        g.verdict()
                    ),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "- {budget} labels/class: best is **{}** at {:.1}% mean accuracy{gain}",
                    best.strategy,
                    100.0 * best.mean_accuracy
                );
            }
            None => {
                let _ = writeln!(out, "- {budget} labels/class: no finite accuracies");
            }
        }
    }
    out
}

/// The same table as [`render_markdown`] in plain aligned text for a terminal (percent with one
/// decimal; numbers right-aligned).
pub fn render_terminal_table(rows: &[SummaryRow]) -> String {
    let mut table: Vec<[String; 5]> = vec![TABLE_HEADER.map(String::from)];
    table.extend(rows.iter().map(table_cells));
    let mut widths = [0usize; 5];
    for line in &table {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let right_aligned = [true, false, true, true, false];
    let mut out = String::new();
    for (i, line) in table.iter().enumerate() {
        let mut text = String::new();
        for (j, cell) in line.iter().enumerate() {
            let pad = " ".repeat(widths[j] - cell.chars().count());
            if j > 0 {
                text.push_str("  ");
            }
            if right_aligned[j] {
                text.push_str(&pad);
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&pad);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------------------------

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
const PALETTE: [RGBColor; 10] = [
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
fn write_png(path: &Path, width: u32, height: u32, rgb: Vec<u8>) -> Result<()> {
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
/// markers and ± std error bars per strategy, legend, axis labels and title. The x axis is
/// logarithmic when the largest budget is at least 10 times the smallest, else linear; ticks sit
/// at the budgets. Strategies are dodged sideways a little so their error bars do not overlap.
pub fn plot_accuracy(path: &Path, title: &str, rows: &[SummaryRow]) -> Result<()> {
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
    let y_min = rows
        .iter()
        .map(|r| 100.0 * (r.mean_accuracy - std_of(r)))
        .fold(f64::INFINITY, f64::min);
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
    render_plot(path, |root| {
        let err = plot_err(path);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 26))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(70)
            .build_cartesian_2d(x_axis, y_lo..y_hi)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc(if log_x {
                "labels per class (log scale)"
            } else {
                "labels per class"
            })
            .y_desc("test accuracy (%)")
            .y_label_formatter(&|y| fmt_tick(*y))
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 15))
            .max_light_lines(1)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(&err)?;

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

/// PNG line plot of curves such as per-epoch losses: each series is `(name, [(epoch, value)])`,
/// drawn as a coloured line with a legend; x axis "epoch", y axis `y_label`.
pub fn plot_curves(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
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

    render_plot(path, |root| {
        let err = plot_err(path);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 26))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(80)
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_label)
            .x_label_formatter(&|x| fmt_tick(*x))
            .y_label_formatter(&|y| fmt_tick(*y))
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 15))
            .max_light_lines(1)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(&err)?;
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
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(&err)
    })
}

// ---------------------------------------------------------------------------------------------
// Image grids
// ---------------------------------------------------------------------------------------------

/// Gap in pixels between grid cells and around the grid in [`image_grid`].
pub const GRID_GAP: usize = 2;
/// Each image in [`image_grid`] is upscaled so that its shorter side is at least this many pixels.
pub const GRID_MIN_CELL: usize = 56;

/// Integer upscaling factor [`image_grid`] uses for images of `height` x `width`:
/// `ceil(GRID_MIN_CELL / min(height, width))`, at least 1.
pub fn grid_scale(height: usize, width: usize) -> usize {
    let side = height.min(width).max(1);
    GRID_MIN_CELL.div_ceil(side).max(1)
}

/// Writes a PNG grid of images. `rows` is a list of image rows, each a list of images in CHW
/// layout with values in [0, 1] (clamped; NaN drawn as 0), `channels` 1 (grey) or 3 (RGB), all
/// `height` x `width`. Each image is upscaled by [`grid_scale`] with nearest-neighbour pixels and
/// cells are separated (and surrounded) by a white gap of [`GRID_GAP`] pixels, so the PNG is
/// `cols * width * s + (cols + 1) * GRID_GAP` wide and `rows * height * s + (rows + 1) * GRID_GAP`
/// high, where `cols` is the longest row. Shorter rows leave their trailing cells blank.
pub fn image_grid(
    path: &Path,
    channels: usize,
    height: usize,
    width: usize,
    rows: &[Vec<&[f32]>],
) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(invalid(
            path,
            format!("image grid needs 1 or 3 channels, got {channels}"),
        ));
    }
    if height == 0 || width == 0 {
        return Err(invalid(
            path,
            format!("image grid needs non-empty images, got {height}x{width}"),
        ));
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if cols == 0 {
        return Err(invalid(path, "image grid has no images"));
    }
    let expected = channels * height * width;
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            if img.len() != expected {
                return Err(invalid(
                    path,
                    format!(
                        "image at row {r}, column {c} has {} values, expected {channels}x{height}x{width} = {expected}",
                        img.len()
                    ),
                ));
            }
        }
    }
    let s = grid_scale(height, width);
    let (cell_w, cell_h) = (width * s, height * s);
    let out_w = cols * cell_w + (cols + 1) * GRID_GAP;
    let out_h = rows.len() * cell_h + (rows.len() + 1) * GRID_GAP;
    let (Ok(w32), Ok(h32)) = (u32::try_from(out_w), u32::try_from(out_h)) else {
        return Err(invalid(path, "image grid too large"));
    };
    let mut rgb = vec![255u8; out_w * out_h * 3];
    let to_byte = |v: f32| {
        if v.is_nan() {
            0
        } else {
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        }
    };
    let plane = height * width;
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x0 = GRID_GAP + c * (cell_w + GRID_GAP);
            let y0 = GRID_GAP + r * (cell_h + GRID_GAP);
            for y in 0..cell_h {
                for x in 0..cell_w {
                    let src = (y / s) * width + x / s;
                    let px = if channels == 1 {
                        [to_byte(img[src]); 3]
                    } else {
                        [
                            to_byte(img[src]),
                            to_byte(img[plane + src]),
                            to_byte(img[2 * plane + src]),
                        ]
                    };
                    let dst = ((y0 + y) * out_w + x0 + x) * 3;
                    rgb[dst..dst + 3].copy_from_slice(&px);
                }
            }
        }
    }
    write_png(path, w32, h32, rgb)
}

// ---------------------------------------------------------------------------------------------
// Generic tables
// ---------------------------------------------------------------------------------------------

/// Writes a CSV with `header` and rows of numbers (shortest round-trip formatting), e.g.
/// `write_table_csv(path, &["epoch", "train_loss"], &rows)`. Every row must have `header.len()`
/// values.
pub fn write_table_csv(path: &Path, header: &[&str], rows: &[Vec<f64>]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(header).map_err(csv_err(path))?;
    for (i, row) in rows.iter().enumerate() {
        if row.len() != header.len() {
            return Err(invalid(
                path,
                format!(
                    "row {i} has {} values but the header has {} columns",
                    row.len(),
                    header.len()
                ),
            ));
        }
        writer
            .write_record(row.iter().map(f64::to_string))
            .map_err(csv_err(path))?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| csv_err(path)(csv::Error::from(e.into_error())))?;
    imprint_fs::write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(strategy: &str, labels_per_class: usize, seed: u64, acc: f64, f1: f64) -> RunRecord {
        RunRecord {
            strategy: strategy.to_string(),
            labels_per_class,
            seed,
            test_accuracy: acc,
            macro_f1: f1,
            pretrain_seconds: 12.5,
            finetune_seconds: 3.25,
            epochs_run: 30,
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn sample_runs() -> Vec<RunRecord> {
        vec![
            // budget 5 listed first, and "ae" before "scratch", to check the ordering rules
            run("ae", 5, 1, 0.51, 0.5),
            run("ae", 5, 2, 0.62, 0.5),
            run("ae", 5, 3, 0.73, 0.5),
            run("ae", 5, 4, 0.99, 0.5), // seed 4 has no scratch run: not paired
            run("scratch", 5, 1, 0.50, 0.4),
            run("scratch", 5, 2, 0.60, 0.5),
            run("scratch", 5, 3, 0.70, 0.6),
            run("linear", 5, 9, 0.80, 0.7), // no shared seed with scratch
            run("scratch", 1, 7, 0.30, 0.2),
            run("ae", 1, 7, 0.45, 0.3),
        ]
    }

    #[test]
    fn summarize_groups_and_statistics() {
        let rows = summarize(&sample_runs(), "scratch");
        let keys: Vec<(usize, &str)> = rows
            .iter()
            .map(|r| (r.labels_per_class, r.strategy.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (1, "ae"),
                (1, "scratch"),
                (5, "ae"),
                (5, "scratch"),
                (5, "linear")
            ]
        );

        // Expected values computed with Python's statistics module:
        //   mean([.51,.62,.73,.99]) = 0.7125, stdev(...) = 0.2056493779875511
        //   mean([.5,.6,.7]) = 0.6, stdev(...) = 0.1
        //   paired diffs (seeds 1..3) = [.01,.02,.03]: mean 0.02, stdev 0.01,
        //   half width = 4.302652730 * 0.01 / sqrt(3) = 0.024841377118949782
        let ae5 = &rows[2];
        assert_eq!(ae5.runs, 4);
        assert!(close(ae5.mean_accuracy, 0.7125, 1e-12));
        assert!(close(ae5.std_accuracy, 0.2056493779875511, 1e-12));
        assert!(close(ae5.mean_macro_f1, 0.5, 1e-12));
        let g = ae5.gain_over_scratch.as_ref().expect("ae has a gain");
        assert_eq!(g.pairs, 3, "seed 4 is unpaired and must be ignored");
        assert!(close(g.mean, 0.02, 1e-12));
        assert!(close(g.ci_low, 0.02 - 0.024841377118949782, 1e-9));
        assert!(close(g.ci_high, 0.02 + 0.024841377118949782, 1e-9));
        assert_eq!(g.verdict(), "unclear");

        let scratch5 = &rows[3];
        assert_eq!(scratch5.runs, 3);
        assert!(close(scratch5.mean_accuracy, 0.6, 1e-12));
        assert!(close(scratch5.std_accuracy, 0.1, 1e-12));
        assert!(close(scratch5.mean_macro_f1, 0.5, 1e-12));
        assert_eq!(scratch5.gain_over_scratch, None, "baseline has no gain");

        assert_eq!(rows[4].gain_over_scratch, None, "no shared seed, no gain");

        // One run: std 0; one pair: unbounded CI.
        let ae1 = &rows[0];
        assert_eq!(ae1.std_accuracy, 0.0);
        let g1 = ae1.gain_over_scratch.as_ref().unwrap();
        assert_eq!(g1.pairs, 1);
        assert!(close(g1.mean, 0.15, 1e-12));
        assert_eq!(g1.ci_low, f64::NEG_INFINITY);
        assert_eq!(g1.ci_high, f64::INFINITY);
        assert_eq!(g1.verdict(), "unclear");
    }

    #[test]
    fn no_baseline_runs_means_no_gain() {
        let rows = summarize(&sample_runs(), "does-not-exist");
        assert!(rows.iter().all(|r| r.gain_over_scratch.is_none()));
        assert!(summarize(&[], "scratch").is_empty());
    }

    #[test]
    fn ci_for_known_differences() {
        // diffs [1, 2, 3]: mean 2, sd 1, t_{0.975,2} = 4.303 -> 2 ± 4.303/sqrt(3) = 2 ± 2.484
        let runs: Vec<RunRecord> = (1..=3)
            .flat_map(|s| {
                [
                    run("scratch", 10, s, 0.0, 0.0),
                    run("ft", 10, s, s as f64, 0.0),
                ]
            })
            .collect();
        let rows = summarize(&runs, "scratch");
        let g = rows[1].gain_over_scratch.as_ref().unwrap();
        assert_eq!(rows[1].strategy, "ft");
        assert!(close(g.mean, 2.0, 1e-12));
        assert!(close(g.ci_low, 2.0 - 2.484, 1e-3), "{}", g.ci_low);
        assert!(close(g.ci_high, 2.0 + 2.484, 1e-3), "{}", g.ci_high);
        assert_eq!(g.verdict(), "unclear");
    }

    #[test]
    fn repeated_seed_runs_are_averaged_before_pairing() {
        let runs = [
            run("scratch", 2, 1, 0.5, 0.0),
            run("ft", 2, 1, 0.6, 0.0),
            run("ft", 2, 1, 0.8, 0.0),
        ];
        let rows = summarize(&runs, "scratch");
        let g = rows[1].gain_over_scratch.as_ref().unwrap();
        assert_eq!(g.pairs, 1);
        assert!(close(g.mean, 0.2, 1e-12));
    }

    #[test]
    fn t_critical_values() {
        // Reference quantiles of Student's t (two-sided 95%) from standard tables.
        for (df, t) in [
            (1, 12.706),
            (2, 4.303),
            (4, 2.776),
            (10, 2.228),
            (30, 2.042),
            (31, 2.0395),
            (40, 2.0211),
            (60, 2.0003),
            (120, 1.9799),
        ] {
            assert!(
                close(t_critical_975(df), t, 6e-4),
                "df {df}: {}",
                t_critical_975(df)
            );
        }
        assert!(close(t_critical_975(1_000_000), 1.959964, 1e-5));
        assert_eq!(t_critical_975(0), f64::INFINITY);
    }

    #[test]
    fn results_csv_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let mut runs = sample_runs();
        runs[0].strategy = "ae, frozen \"encoder\"".to_string();
        runs[1].test_accuracy = 0.1 + 0.2;
        runs[2].pretrain_seconds = 1e-300;
        runs[3].seed = u64::MAX;
        write_results_csv(&path, &runs).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "strategy,labels_per_class,seed,test_accuracy,macro_f1,pretrain_seconds,finetune_seconds,epochs_run"
        );
        assert_eq!(read_results_csv(&path).unwrap(), runs);

        write_results_csv(&path, &[]).unwrap();
        assert_eq!(read_results_csv(&path).unwrap(), Vec::<RunRecord>::new());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-results.csv");
        let err = read_results_csv(&missing).unwrap_err().to_string();
        assert!(err.contains("missing-results.csv"), "{err}");
        let bad = dir.path().join("no-such-dir").join("table.csv");
        let err = write_table_csv(&bad, &["a"], &[vec![1.0]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("table.csv"), "{err}");
        let short = dir.path().join("short.csv");
        let err = write_table_csv(&short, &["a", "b"], &[vec![1.0]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("short.csv") && err.contains("row 0"), "{err}");
        assert!(!short.exists());
    }

    #[test]
    fn summary_csv_flat_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.csv");
        let rows = summarize(&sample_runs(), "scratch");
        write_summary_csv(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "strategy,labels_per_class,runs,mean_accuracy,std_accuracy,mean_macro_f1,gain_mean,gain_ci_low,gain_ci_high,gain_pairs"
        );
        assert_eq!(lines.len(), 1 + rows.len());
        assert_eq!(lines[1], "ae,1,1,0.45,0,0.3,0.15000000000000002,-inf,inf,1");
        assert_eq!(lines[2], "scratch,1,1,0.3,0,0.2,,,,");
    }

    #[test]
    fn table_csv_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.csv");
        write_table_csv(
            &path,
            &["epoch", "train_loss"],
            &[vec![1.0, 0.5], vec![2.0, 0.25]],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "epoch,train_loss\n1,0.5\n2,0.25\n"
        );
    }

    fn gain(mean: f64, lo: f64, hi: f64, pairs: usize) -> Option<Gain> {
        Some(Gain {
            mean,
            ci_low: lo,
            ci_high: hi,
            pairs,
        })
    }

    fn row(strategy: &str, budget: usize, acc: f64, g: Option<Gain>) -> SummaryRow {
        SummaryRow {
            strategy: strategy.to_string(),
            labels_per_class: budget,
            runs: 5,
            mean_accuracy: acc,
            std_accuracy: 0.021,
            mean_macro_f1: acc - 0.01,
            gain_over_scratch: g,
        }
    }

    fn report_rows() -> Vec<SummaryRow> {
        vec![
            row("scratch", 1, 0.40, None),
            row("finetune", 1, 0.55, gain(0.15, 0.10, 0.20, 5)),
            row("frozen", 1, 0.38, gain(-0.02, -0.05, -0.01, 5)),
            row("scratch", 10, 0.80, None),
            row("finetune", 10, 0.79, gain(-0.01, -0.03, 0.01, 5)),
            row(
                "frozen",
                10,
                0.70,
                gain(-0.1, f64::NEG_INFINITY, f64::INFINITY, 1),
            ),
            row("scratch", 100, 0.95, None),
            row("finetune", 100, 0.96, gain(0.01, 0.002, 0.018, 5)),
            row("frozen", 100, 0.85, gain(-0.1, -0.12, -0.08, 5)),
        ]
    }

    #[test]
    fn markdown_has_table_and_verdicts() {
        let md = render_markdown("Transfer results", "Digits 8x8, 5 seeds.", &report_rows());
        assert!(md.starts_with("# Transfer results\n\nDigits 8x8, 5 seeds.\n"));
        assert!(md.contains(
            "| labels/class | strategy | accuracy % (mean ± std) | gain vs scratch (points, 95% CI) | verdict |"
        ));
        assert!(
            md.contains("| 1 | finetune | 55.0 ± 2.1 | +15.0 [+10.0, +20.0], 5 pairs | helps |")
        );
        assert!(md.contains("| 1 | frozen | 38.0 ± 2.1 | -2.0 [-5.0, -1.0], 5 pairs | hurts |"));
        assert!(
            md.contains("| 10 | finetune | 79.0 ± 2.1 | -1.0 [-3.0, +1.0], 5 pairs | unclear |")
        );
        assert!(md.contains("| 10 | frozen | 70.0 ± 2.1 | -10.0 [n/a], 1 pair | unclear |"));
        assert!(md.contains("| 1 | scratch | 40.0 ± 2.1 | — | — |"));
        assert!(md.contains("- 1 labels/class: best is **finetune** at 55.0%"));
        assert!(md.contains("- 10 labels/class: best is **scratch** at 80.0%"));
        assert!(md.contains("- 100 labels/class: best is **finetune** at 96.0%"));
    }

    #[test]
    fn terminal_table_is_aligned() {
        let text = render_terminal_table(&report_rows());
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + report_rows().len());
        assert!(lines[0].starts_with("labels/class  strategy"));
        // Right-aligned accuracy column: every "±" sits in the same column.
        let col = |l: &str| l.chars().position(|c| c == '±');
        let first = col(lines[2]).unwrap();
        assert!(lines[2..].iter().all(|l| col(l) == Some(first)));
        assert!(lines[3].contains("55.0 ± 2.1") && lines[3].contains("helps"));
        assert!(lines[7].contains("n/a") && lines[7].contains("unclear"));
    }

    fn decode(path: &Path) -> image::RgbImage {
        let img = image::open(path).expect("valid PNG");
        img.to_rgb8()
    }

    fn distinct_colours(img: &image::RgbImage) -> usize {
        img.pixels().map(|p| p.0).collect::<BTreeSet<_>>().len()
    }

    #[test]
    fn accuracy_plot_is_a_nonblank_png() {
        let dir = tempfile::tempdir().unwrap();
        for (name, rows) in [
            ("log.png", report_rows()),
            (
                "linear.png",
                report_rows()
                    .into_iter()
                    .filter(|r| r.labels_per_class < 100)
                    .collect(),
            ),
        ] {
            let path = dir.path().join(name);
            plot_accuracy(&path, "Test accuracy vs labels per class", &rows).unwrap();
            let img = decode(&path);
            assert_eq!(img.dimensions(), PLOT_SIZE);
            assert!(distinct_colours(&img) > 20, "{name} looks blank");
            let first = PALETTE[0];
            assert!(
                img.pixels().any(|p| p.0 == [first.0, first.1, first.2]),
                "{name}: first strategy's line is missing"
            );
        }
        let err = plot_accuracy(&dir.path().join("empty.png"), "t", &[]).unwrap_err();
        assert!(err.to_string().contains("empty.png"));
    }

    #[test]
    fn curves_plot_draws_text_with_the_embedded_font() {
        let dir = tempfile::tempdir().unwrap();
        let series = vec![
            (
                "train".to_string(),
                (1..=20)
                    .map(|e| (e as f64, 1.0 / e as f64))
                    .collect::<Vec<_>>(),
            ),
            (
                "held-out".to_string(),
                (1..=20)
                    .map(|e| (e as f64, 1.2 / e as f64 + 0.05))
                    .collect(),
            ),
        ];
        let a = dir.path().join("a.png");
        let b = dir.path().join("b.png");
        plot_curves(&a, "Pre-training loss", "MSE", &series).unwrap();
        plot_curves(&b, "Pre-training loss!", "MSE", &series).unwrap();
        let (ia, ib) = (decode(&a), decode(&b));
        assert_eq!(ia.dimensions(), PLOT_SIZE);
        assert!(distinct_colours(&ia) > 20);
        // Only the title differs, so the pixels differ only if text is actually rendered.
        assert_ne!(ia, ib, "title text was not drawn");
    }

    #[test]
    fn image_grid_exact_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let black = vec![0.0f32; 64];
        let white = vec![1.0f32; 64];
        let mut ramp = vec![0.0f32; 64];
        ramp[63] = 0.5; // bottom-right source pixel
        let rows = vec![
            vec![black.as_slice(), white.as_slice(), ramp.as_slice()],
            vec![ramp.as_slice(), black.as_slice()],
        ];
        image_grid(&path, 1, 8, 8, &rows).unwrap();
        let img = decode(&path);
        // 8x8 images: scale ceil(56 / 8) = 7, cells 56 px; 3 columns, 2 rows, 2 px gaps incl. border.
        assert_eq!(grid_scale(8, 8), 7);
        assert_eq!(img.dimensions(), (3 * 56 + 4 * 2, 2 * 56 + 3 * 2));
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255], "border");
        assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0], "first cell, black");
        assert_eq!(
            img.get_pixel(57, 57).0,
            [0, 0, 0],
            "last pixel of first cell"
        );
        assert_eq!(img.get_pixel(58, 10).0, [255, 255, 255], "gap");
        // ramp at row 0, column 2: its bottom-right 7x7 block is 0.5 -> 128.
        let (x0, y0) = (2 + 2 * 58, 2);
        assert_eq!(img.get_pixel(x0 + 49, y0 + 49).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(x0 + 55, y0 + 55).0, [128, 128, 128]);
        assert_eq!(img.get_pixel(x0 + 48, y0 + 55).0, [0, 0, 0]);
        // row 1 has only two images: the third cell stays background.
        assert_eq!(img.get_pixel(x0 + 10, 60 + 10).0, [255, 255, 255]);
    }

    #[test]
    fn image_grid_rgb_and_shape_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rgb.png");
        // 3x20x28 image: red plane 1, green 0, blue 0.5 (values outside [0,1] are clamped).
        let (h, w) = (20, 28);
        let mut img = vec![1.5f32; h * w];
        img.extend(vec![-1.0f32; h * w]);
        img.extend(vec![0.5f32; h * w]);
        image_grid(&path, 3, h, w, &[vec![img.as_slice()]]).unwrap();
        let out = decode(&path);
        // scale ceil(56 / 20) = 3 -> cell 84 x 60
        assert_eq!(grid_scale(h, w), 3);
        assert_eq!(out.dimensions(), (84 + 4, 60 + 4));
        assert_eq!(out.get_pixel(40, 30).0, [255, 0, 128]);

        let err = image_grid(&path, 3, h, w, &[vec![&img[1..]]])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rgb.png") && err.contains("row 0, column 0"),
            "{err}"
        );
        assert!(image_grid(&path, 2, h, w, &[vec![img.as_slice()]]).is_err());
        assert!(image_grid(&path, 3, h, w, &[]).is_err());
    }
}
