//! Epoch-end checkpoints of a pre-training (`checkpoint.safetensors` in its folder): weights,
//! Adam moments, random-stream position and loss history in one file, written atomically, so
//! `--resume` continues an interrupted pre-training where its last finished epoch left it.

use crate::{Pipeline, PipelineError, Prepared, Result};
use imprint_nn::{load_tensors, save_tensors};
use imprint_pretrain::{Snapshot, TrainingState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "imprint-pretrain-checkpoint/1";

pub fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// What must be unchanged for a checkpoint to be continued: pre-training settings, input
/// preprocessing and the unlabeled data files.
fn fingerprint(p: &Pipeline, data: &Prepared) -> Result<String> {
    serde_json::to_string(&(&p.pretrain, &p.data.preprocess, &data.unlabeled.files))
        .map_err(|e| PipelineError::Output(format!("checkpoint: {e}")))
}

pub fn save(path: &Path, p: &Pipeline, data: &Prepared, snapshot: &Snapshot) -> Result<()> {
    let state = serde_json::to_string(&snapshot.state)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))?;
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("run".to_string(), fingerprint(p, data)?),
        ("state".to_string(), state),
    ]);
    save_tensors(path, &snapshot.tensors, &metadata)?;
    Ok(())
}

/// The checkpoint at `path`, after checking that it belongs to this pipeline and data.
pub fn load(path: &Path, p: &Pipeline, data: &Prepared) -> Result<Snapshot> {
    let fail = |message: &str| PipelineError::Input {
        path: path.display().to_string(),
        message: format!(
            "cannot resume from this pre-training checkpoint: {message}; delete it to start the \
             pre-training over"
        ),
    };
    let (tensors, metadata) = load_tensors(path)?;
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(fail(&format!("its format is not `{FORMAT}`")));
    }
    if metadata.get("run") != Some(&fingerprint(p, data)?) {
        return Err(fail(
            "it was made with other pre-training settings, preprocessing or data",
        ));
    }
    let state: TrainingState = metadata
        .get("state")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| fail("its training state is missing or unreadable"))?;
    Ok(Snapshot {
        tensors: tensors.into_values().collect(),
        state,
    })
}
