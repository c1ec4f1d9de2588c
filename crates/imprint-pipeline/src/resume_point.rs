//! Checkpoints an interrupted job continues from (`checkpoint.safetensors` in its folder):
//! weights, optimizer moments, random-stream positions and history in one file, written
//! atomically, with a fingerprint of what must be unchanged for it to be continued. A
//! pre-training leaves one at every epoch end, a fine-tuning every `finetune.checkpoint_every`
//! steps. They are written and read through [`Artifacts`]: by replica 0 alone, which hands what
//! it read to every replica.

use crate::{Artifacts, Pipeline, PipelineError, Prepared, Result};
use imprint_finetune::{FinetuneSnapshot, FinetuneState, Strategy};
use imprint_nn::{save_tensors, NamedTensor};
use imprint_pretrain::{Snapshot, TrainingState};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const PRETRAIN_FORMAT: &str = "imprint-pretrain-checkpoint/2";
const FINETUNE_FORMAT: &str = "imprint-finetune-checkpoint/1";

pub fn checkpoint_path(out: &Artifacts) -> PathBuf {
    out.join("checkpoint.safetensors")
}

fn json<T: Serialize>(value: &T, path: &Path) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))
}

fn save<S: Serialize>(
    path: &Path,
    format: &str,
    run: String,
    tensors: &[NamedTensor],
    state: &S,
) -> Result<()> {
    let metadata = BTreeMap::from([
        ("format".to_string(), format.to_string()),
        ("run".to_string(), run),
        ("state".to_string(), json(state, path)?),
    ]);
    save_tensors(path, tensors, &metadata)?;
    Ok(())
}

/// The tensors and state of the checkpoint at `path`, after checking that it is of this kind
/// and of the run `run` describes.
fn load<S: DeserializeOwned>(
    path: &Path,
    format: &str,
    run: String,
    what: &str,
) -> Result<(Vec<NamedTensor>, S)> {
    let fail = |message: &str| {
        PipelineError::Input {
        path: path.display().to_string(),
        message: format!(
            "cannot resume from this {what} checkpoint: {message}; delete it to start the {what} over"
        ),
    }
    };
    let (tensors, metadata) = crate::bounds::weights_and_metadata(path)?;
    if metadata.get("format").map(String::as_str) != Some(format) {
        return Err(fail(&format!("its format is not `{format}`")));
    }
    if metadata.get("run") != Some(&run) {
        return Err(fail(
            "it was made with other settings, preprocessing or data",
        ));
    }
    let state: S = metadata
        .get("state")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| fail("its training state is missing or unreadable"))?;
    Ok((tensors.into_values().collect(), state))
}

/// What must be unchanged for a pre-training checkpoint to be continued: pre-training settings,
/// input preprocessing and the unlabeled data (its manifest's digest).
fn pretrain_run(p: &Pipeline, data: &Prepared, path: &Path) -> Result<String> {
    json(
        &(
            &p.pretrain,
            &p.data.preprocess,
            &data.unlabeled.source.summary().sha256,
        ),
        path,
    )
}

pub fn save_pretrain(out: &Artifacts, p: &Pipeline, data: &Prepared, s: &Snapshot) -> Result<()> {
    out.write(|| {
        let path = checkpoint_path(out);
        let run = pretrain_run(p, data, &path)?;
        save(&path, PRETRAIN_FORMAT, run, &s.tensors, &s.state)
    })
}

/// The pre-training checkpoint in `out`, if there is one, after checking that it belongs to
/// this pipeline and data.
pub fn load_pretrain(out: &Artifacts, p: &Pipeline, data: &Prepared) -> Result<Option<Snapshot>> {
    let (tensors, state) = out.read_back_with_tensors(|| {
        let path = checkpoint_path(out);
        if !path.exists() {
            return Ok((Vec::new(), None));
        }
        let run = pretrain_run(p, data, &path)?;
        let (tensors, state): (_, TrainingState) =
            load(&path, PRETRAIN_FORMAT, run, "pre-training")?;
        Ok((tensors, Some(state)))
    })?;
    Ok(state.map(|state| Snapshot { tensors, state }))
}

/// What a fine-tuning checkpoint must match: the fine-tuning settings and architecture, the
/// preprocessing, the strategy, budget and seed, and the labeled and unlabeled data.
fn finetune_run(
    p: &Pipeline,
    data: &Prepared,
    (strategy, k): (Strategy, usize),
    path: &Path,
) -> Result<String> {
    json(
        &(
            &p.finetune,
            &p.pretrain.architecture,
            &p.data.preprocess,
            strategy,
            k,
            &data.labeled.source.summary().sha256,
            &data.unlabeled.source.summary().sha256,
        ),
        path,
    )
}

pub fn save_finetune(
    out: &Artifacts,
    p: &Pipeline,
    data: &Prepared,
    run: (Strategy, usize),
    s: &FinetuneSnapshot,
) -> Result<()> {
    out.write(|| {
        let path = checkpoint_path(out);
        let fingerprint = finetune_run(p, data, run, &path)?;
        save(&path, FINETUNE_FORMAT, fingerprint, &s.tensors, &s.state)
    })
}

/// The fine-tuning checkpoint in `out`, if there is one, after checking that it belongs to
/// this run.
pub fn load_finetune(
    out: &Artifacts,
    p: &Pipeline,
    data: &Prepared,
    run: (Strategy, usize),
) -> Result<Option<FinetuneSnapshot>> {
    let (tensors, state) = out.read_back_with_tensors(|| {
        let path = checkpoint_path(out);
        if !path.exists() {
            return Ok((Vec::new(), None));
        }
        let fingerprint = finetune_run(p, data, run, &path)?;
        let (tensors, state): (_, FinetuneState) =
            load(&path, FINETUNE_FORMAT, fingerprint, "fine-tuning")?;
        Ok((tensors, Some(state)))
    })?;
    Ok(state.map(|state| FinetuneSnapshot { tensors, state }))
}

/// Removes a finished job's checkpoint (absent is fine).
pub fn remove(out: &Artifacts) -> Result<()> {
    out.write(|| {
        let path = checkpoint_path(out);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(PipelineError::Output(format!("{}: {e}", path.display())))
            }
            _ => Ok(()),
        }
    })
}
