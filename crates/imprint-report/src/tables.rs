//! The summary as a markdown report and as a terminal table.

use crate::stats::{Gain, SummaryRow};
use std::fmt::Write as _;

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
