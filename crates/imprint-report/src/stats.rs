//! The comparison's statistics: each strategy paired with the baseline seed by seed, the mean
//! gain with a Student-t 95% confidence interval.

use crate::records::RunRecord;
use crate::{csv_err, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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
pub(crate) fn t_critical_975(df: usize) -> f64 {
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
