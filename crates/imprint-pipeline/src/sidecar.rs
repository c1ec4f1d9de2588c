//! JSON files written beside safetensors weights: what a loader needs to rebuild the model
//! and check it fits, and where the weights came from.

use crate::{PipelineError, Result};
use imprint_data::{ImageShape, Preprocess, SourceFile, SourceRecord};
use imprint_nn::Architecture;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Beside `encoder.safetensors`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderSidecar {
    pub format: String,
    pub architecture: Architecture,
    pub input: ImageShape,
    pub preprocess: Preprocess,
    pub seed: u64,
    pub epochs: usize,
    pub program_version: String,
    /// The unlabeled images' source (older sidecars list its files one by one).
    pub data: SourceRecord,
    /// Source revision the program ran from (see `run.json`); absent in files written by hand.
    #[serde(default)]
    pub git_revision: Option<String>,
    /// Wall time of the pre-training, reused by `--resume` for `results.csv`.
    #[serde(default)]
    pub seconds: Option<f64>,
    /// The checkpoint pre-training started from, when it did not start fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_from: Option<SourceFile>,
}

/// Beside a fine-tuned `model.safetensors`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSidecar {
    pub format: String,
    pub architecture: Architecture,
    pub input: ImageShape,
    pub preprocess: Preprocess,
    pub classes: Vec<String>,
    pub strategy: String,
    pub seed: u64,
    pub program_version: String,
    /// The labeled images' source (older sidecars list its files one by one).
    pub data: SourceRecord,
    #[serde(default)]
    pub git_revision: Option<String>,
    /// How a kNN classifier's bank votes (its `head.bank` and `head.labels` are the weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<KnnVote>,
    /// The checkpoint the encoder started from, when it did not start fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_from: Option<SourceFile>,
}

/// A kNN classifier's vote: its `k` nearest, weighted by `exp(cosine / temperature)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnVote {
    pub k: usize,
    pub temperature: f32,
}

/// What the error of a sidecar read calls the file.
pub const SIDECAR: &str = "checkpoint's sidecar";

pub const ENCODER_FORMAT: &str = "imprint-encoder/1";
pub const MODEL_FORMAT: &str = "imprint-classifier/1";

/// The sidecar of a weights file: `x.safetensors` -> `x.json`.
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))?;
    imprint_fs::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn read_value(path: &Path, what: &str) -> Result<serde_json::Value> {
    let input = |message: String| PipelineError::Input {
        path: path.display().to_string(),
        message,
    };
    let len = imprint_fs::regular_file_size(path)?;
    if len > crate::bounds::MAX_SIDECAR_BYTES {
        return Err(input(format!(
            "holds {len} bytes, not the page of JSON a {what} is (at most {} bytes are read)",
            crate::bounds::MAX_SIDECAR_BYTES
        )));
    }
    let bytes = imprint_fs::read_regular(path)?;
    let text =
        String::from_utf8(bytes).map_err(|e| input(format!("cannot read the {what}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| input(format!("not JSON: {e}")))
}

fn format_of(value: &serde_json::Value) -> &str {
    value.get("format").and_then(|f| f.as_str()).unwrap_or("")
}

fn parse<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| PipelineError::Input {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Reads a JSON file of ours, checking its `format`; `what` names it in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path, expected_format: &str, what: &str) -> Result<T> {
    let value = read_value(path, what)?;
    let format = format_of(&value);
    if format != expected_format {
        return Err(PipelineError::Input {
            path: path.display().to_string(),
            message: format!("format is `{format}`, expected `{expected_format}`"),
        });
    }
    parse(path, value)
}

/// What a checkpoint's sidecar says, by kind.
#[derive(Clone, Debug)]
pub enum Sidecar {
    Encoder(EncoderSidecar),
    Model(ModelSidecar),
}

/// Reads an encoder's or a classifier's sidecar, whichever its `format` says, and checks what
/// it declares against the bounds (`crate::bounds`) before anything is built from it.
pub fn read_sidecar(path: &Path) -> Result<Sidecar> {
    let value = read_value(path, SIDECAR)?;
    let sidecar = match format_of(&value) {
        MODEL_FORMAT => Sidecar::Model(parse(path, value)?),
        ENCODER_FORMAT => Sidecar::Encoder(parse(path, value)?),
        other => {
            return Err(PipelineError::Input {
                path: path.display().to_string(),
                message: format!(
                    "format is `{other}`, expected `{ENCODER_FORMAT}` or `{MODEL_FORMAT}`"
                ),
            })
        }
    };
    crate::bounds::check_sidecar(path, &sidecar)?;
    Ok(sidecar)
}

/// A classifier's sidecar, checked (see [`read_sidecar`]).
pub fn read_model_sidecar(path: &Path) -> Result<ModelSidecar> {
    let side: ModelSidecar = read_json(path, MODEL_FORMAT, SIDECAR)?;
    crate::bounds::check_sidecar(path, &Sidecar::Model(side.clone()))?;
    Ok(side)
}

/// An encoder's sidecar, checked (see [`read_sidecar`]).
pub fn read_encoder_sidecar(path: &Path) -> Result<EncoderSidecar> {
    let side: EncoderSidecar = read_json(path, ENCODER_FORMAT, SIDECAR)?;
    crate::bounds::check_sidecar(path, &Sidecar::Encoder(side.clone()))?;
    Ok(side)
}
