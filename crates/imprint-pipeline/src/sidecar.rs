//! JSON files written beside safetensors weights: what a loader needs to rebuild the model
//! and check it fits, and where the weights came from.

use crate::{PipelineError, Result};
use imprint_data::{ImageShape, Preprocess, SourceFile};
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
    pub data: Vec<SourceFile>,
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
    pub data: Vec<SourceFile>,
}

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

pub fn read_json<T: DeserializeOwned>(path: &Path, expected_format: &str) -> Result<T> {
    let input = |message: String| PipelineError::Input {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| input(format!("cannot read the checkpoint's sidecar: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| input(format!("not JSON: {e}")))?;
    let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if format != expected_format {
        return Err(input(format!(
            "format is `{format}`, expected `{expected_format}`"
        )));
    }
    serde_json::from_value(value).map_err(|e| input(e.to_string()))
}
