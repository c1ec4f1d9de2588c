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

mod grids;
mod plots;
mod records;
mod stats;
mod tables;

pub use grids::{grid_scale, image_grid};
pub use plots::{plot_accuracy, plot_curves, plot_curves_on_two_axes, Curve, PLOT_SIZE};
pub use records::{read_results_csv, write_results_csv, write_table_csv, RunRecord};
pub use stats::{summarize, write_summary_csv, Gain, SummaryRow};
pub use tables::{render_markdown, render_terminal_table};

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

#[cfg(test)]
mod tests;
