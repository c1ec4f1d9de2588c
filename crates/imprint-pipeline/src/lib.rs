//! The jobs a user runs: pre-train, fine-tune, compare, predict. Each reads a [`Pipeline`],
//! writes its artifacts into an output folder (every file crash-safely), reports progress to an
//! [`Observer`] and returns its results; presentation stays with the caller.

mod compare;
pub mod config;
mod finetune_job;
mod import;
mod predict;
mod prepared;
mod pretrain_job;
pub mod provenance;
mod resume_point;
mod sidecar;

pub use compare::{compare, CompareOutcome};
pub use config::{Overrides, Pipeline, Route};
pub use finetune_job::{finetune_job, FinetuneOutcome, Labels, StartPoint};
pub use import::{import, named_architecture, ImportSpec, Imported};
pub use imprint_fs::OutputDir;
pub use predict::{embed, evaluate_job, inspect, predict, Evaluation, Inspection};
pub use prepared::{write_split, Prepared};
pub use pretrain_job::pretrain_job;
pub use provenance::RunLog;
pub use sidecar::{EncoderSidecar, ModelSidecar, Sidecar};

use imprint_pretrain::EpochStats;
use imprint_report::RunRecord;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error("{0}")]
    Output(String),
    #[error(transparent)]
    Data(#[from] imprint_data::DataError),
    #[error(transparent)]
    Nn(#[from] imprint_nn::NnError),
    #[error(transparent)]
    Pretrain(#[from] imprint_pretrain::PretrainError),
    #[error(transparent)]
    Finetune(#[from] imprint_finetune::FinetuneError),
    #[error(transparent)]
    Report(#[from] imprint_report::ReportError),
    #[error(transparent)]
    Fs(#[from] imprint_fs::FsError),
}

pub type Result<T> = std::result::Result<T, PipelineError>;

/// Receives progress; every method has a silent default.
pub trait Observer {
    fn info(&self, _message: &str) {}
    /// Within a pre-training epoch: (seed, epoch, epochs, batches done, batches per epoch, running loss).
    fn pretrain_batch(
        &self,
        _seed: u64,
        _epoch: usize,
        _epochs: usize,
        _done: usize,
        _total: usize,
        _loss: f64,
    ) {
    }
    fn pretrain_epoch(&self, _seed: u64, _stats: &EpochStats, _epochs: usize) {}
    fn run_finished(&self, _record: &RunRecord) {}
}

/// An observer that ignores everything (tests, library use).
pub struct Silent;
impl Observer for Silent {}

/// Creates `path` and its parents.
pub(crate) fn create_dir(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))
}

/// Refuses an output file that is one of the command's inputs: writing it would destroy what
/// the command reads.
pub fn refuse_overwriting_input(out: &std::path::Path, inputs: &[&std::path::Path]) -> Result<()> {
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize())
    {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    match inputs.iter().find(|i| same(out, i)) {
        Some(input) => Err(PipelineError::Output(format!(
            "{}: --out is also an input of this command ({}); choose another file",
            out.display(),
            input.display()
        ))),
        None => Ok(()),
    }
}

/// The folder a job writes to: refuses one that exists and is not empty unless `force` (or
/// `resume`, which continues the run there). A forced run writes beside it and replaces it
/// only when it finishes ([`OutputDir`]), so a failure leaves the earlier outputs intact.
pub fn prepare_output_dir(dir: &std::path::Path, force: bool, resume: bool) -> Result<OutputDir> {
    if dir.exists() && !dir.is_dir() {
        return Err(PipelineError::Output(format!(
            "{}: --out names a file, not a folder; choose a folder",
            dir.display()
        )));
    }
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() && !force && !resume {
            return Err(PipelineError::Output(format!(
                "{}: output folder exists and is not empty; choose another --out or pass --force",
                dir.display()
            )));
        }
    }
    OutputDir::create(dir, resume).map_err(|e| PipelineError::Output(e.to_string()))
}
