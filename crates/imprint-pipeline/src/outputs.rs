//! The one home of where jobs write: every job's output folder goes through
//! [`prepare_output_dir`], every single-file output through [`prepare_output_file`]
//! (the mechanics, marker, lock and checks, are [`imprint_fs::OutputDir`]'s and
//! [`imprint_fs::output_file`]'s). What is imprint's own here: which files mark a folder that an
//! older version wrote, before folders carried the marker.

use crate::provenance::RUN_FORMAT;
use crate::sidecar::{sidecar_path, ENCODER_FORMAT, MODEL_FORMAT};
use crate::{PipelineError, Result};
use imprint_fs::{Claim, Input, OutputDir, MARKER};
use std::path::{Path, PathBuf};

/// The job's output folder `dir`, claimed and locked: refused when it exists and is not empty
/// unless `force` (or `resume`, which continues the job there); `force` replaces only an output
/// folder of imprint, never one that holds or lies inside one of `inputs`. A forced run writes
/// beside it and replaces it only when it finishes ([`OutputDir`]), so a failure leaves the
/// earlier outputs intact.
pub fn prepare_output_dir(
    dir: &Path,
    force: bool,
    resume: bool,
    inputs: &[Input],
) -> Result<OutputDir> {
    let claim = Claim {
        force,
        resume,
        inputs,
        earlier_output: &written_earlier,
    };
    Ok(OutputDir::create(dir, &claim)?)
}

/// Where a single-file output goes: `path` (or the file a link there points to) when it is new
/// or, with `force`, a regular file; never one of `inputs` ([`imprint_fs::output_file`]).
pub fn prepare_output_file(path: &Path, force: bool, inputs: &[Input]) -> Result<PathBuf> {
    Ok(imprint_fs::output_file(path, force, inputs)?)
}

/// A checkpoint as an input: its weights and sidecar, and its whole folder when imprint wrote
/// that folder (whatever else the job left there belongs to the model too).
pub fn checkpoint_inputs(role: &str, weights: &Path) -> Vec<Input> {
    let mut inputs = vec![
        Input::new(role, weights),
        Input::new(format!("the sidecar of {role}"), sidecar_path(weights)),
    ];
    let folder = match weights.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if folder.join(MARKER).is_file() || written_earlier(folder).is_ok() {
        inputs.push(Input::new(format!("the output folder of {role}"), folder));
    }
    inputs
}

/// Every name an older version of imprint wrote at the top of an output folder (of `run`,
/// `pretrain`, `finetune` or `import`), with the records among them.
const EARLIER_NAMES: [&str; 24] = [
    "accuracy.png",
    "checkpoint.safetensors",
    "confusion.csv",
    "data-manifest.csv.gz",
    "decoder.safetensors",
    "encoder.json",
    "encoder.safetensors",
    "filters.png",
    "labeled",
    "labeled.csv",
    "loss.csv",
    "loss.png",
    "metrics.json",
    "model.json",
    "model.safetensors",
    "pipeline.toml",
    "pretrain",
    "reconstructions.png",
    "report.md",
    "results.csv",
    "run.json",
    "runs",
    "summary.csv",
    "validation.csv",
];

/// The records whose `format` only imprint writes.
const RECORDS: [(&str, &str); 3] = [
    ("run.json", RUN_FORMAT),
    ("encoder.json", ENCODER_FORMAT),
    ("model.json", MODEL_FORMAT),
];

/// Whether an older version of imprint wrote `dir` (a folder without the marker): every entry
/// is a name imprint writes, and a record of its own is among them; or it holds nothing but
/// the pre-trainings `imprint pretrain --out DIR/pretrain/seed-N` leaves for a later
/// `run --resume`. Otherwise says why not.
pub(crate) fn written_earlier(dir: &Path) -> std::result::Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list it: {e}"))?;
    let mut names = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| format!("cannot list it: {e}"))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        // Temporary files of a write that was cut short (`.<name>.tmp-<pid>`), and the marker a
        // job claiming the folder has just put there.
        let temporary = name.starts_with('.') && name.contains(".tmp-");
        let claimed = name == MARKER || name == imprint_fs::HOLDER;
        if claimed {
            continue;
        }
        if !EARLIER_NAMES.contains(&name.as_str()) && !temporary {
            return Err(format!("it holds `{name}`, which imprint does not write"));
        }
        names.push(name);
    }
    let recorded = RECORDS
        .iter()
        .any(|(name, format)| record_format(&dir.join(name)).as_deref() == Some(*format));
    let pretrainings_only = names == ["pretrain"]
        && std::fs::read_dir(dir.join("pretrain")).is_ok_and(|seeds| {
            seeds.flatten().all(|seed| {
                seed.path().join(MARKER).is_file() || written_earlier(&seed.path()).is_ok()
            })
        });
    if recorded || pretrainings_only {
        Ok(())
    } else {
        Err("it holds no run.json, encoder.json or model.json of imprint".into())
    }
}

/// The `format` of a small JSON record, read only when it is a regular file.
fn record_format(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 64 << 20 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    value.get("format")?.as_str().map(str::to_string)
}

impl From<imprint_fs::OutputError> for PipelineError {
    fn from(e: imprint_fs::OutputError) -> Self {
        PipelineError::Output(e.to_string())
    }
}
