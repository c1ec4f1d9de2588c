//! One fine-tuning run per row of `results.csv`, and plain numeric tables.

use crate::{csv_err, invalid, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

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
