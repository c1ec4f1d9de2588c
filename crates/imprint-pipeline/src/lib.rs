//! The jobs a user runs: pre-train, fine-tune, compare, predict. Each reads a [`Pipeline`],
//! writes its artifacts into an output folder (every file crash-safely), reports progress to an
//! [`Observer`] and returns its results; presentation stays with the caller.

mod artifacts;
pub mod bounds;
mod compare;
pub mod config;
pub mod detect;
mod export;
mod finetune_job;
mod import;
mod init;
mod outputs;
mod predict;
mod prepared;
mod pretrain_job;
pub mod provenance;
mod resume_point;
mod sidecar;

pub use artifacts::Artifacts;
pub use compare::{compare, CompareOptions, CompareOutcome, OLD_HEAD};
pub use config::{NearDuplicates, Overrides, Pipeline, Route};
pub use detect::named_architecture;
pub use export::{export_onnx, Exported};
pub use finetune_job::{finetune_job, FinetuneOutcome, Labels, StartPoint};
pub use import::{examine, import, Found, ImportSpec, Imported};
pub use imprint_fs::{Input, OutputDir};
pub use init::init_text;
pub use outputs::{checkpoint_inputs, prepare_output_dir, prepare_output_file};
pub use predict::{embed, evaluate_job, inspect, predict, run_warnings, Evaluation, Inspection};
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
    /// Within a fine-tuning: steps done, steps in all, the step's loss.
    fn finetune_step(&self, _done: usize, _total: usize, _loss: f32) {}
    /// A fine-tuning run of a comparison begins: the `index`-th (from 1) of `count`, by name.
    fn run_started(&self, _index: usize, _count: usize, _name: &str) {}
    /// Within a job over images (predicting, evaluating): images done and in all.
    fn progress(&self, _job: &str, _done: usize, _total: usize) {}
    /// A fine-tuning run of a comparison ended (or was kept from an earlier run).
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
