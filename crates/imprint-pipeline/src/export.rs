//! The `export` job: a classifier or an encoder of ours written as a standard ONNX model, its
//! input inversion and normalisation inside the graph (see `imprint-onnx`).

use crate::finetune_job::encoder_of;
use crate::predict::model_of;
use crate::sidecar::{read_sidecar, sidecar_path};
use crate::{PipelineError, Result, Sidecar};
use imprint_finetune::Head;
use std::path::Path;

/// What an export wrote.
pub struct Exported {
    /// `logits` (a classifier) or `features` (an encoder).
    pub output: &'static str,
    /// Its width: classes or features.
    pub width: usize,
    pub bytes: usize,
    /// The ONNX operator set version written.
    pub opset: i64,
}

/// Writes the model `weights` (with its sidecar beside it) to `out` as ONNX, through a
/// temporary name; `out` is the file [`crate::prepare_output_file`] chose.
pub fn export_onnx(weights: &Path, out: &Path) -> Result<Exported> {
    let side_path = sidecar_path(weights);
    let input = |message: String| PipelineError::Input {
        path: weights.display().to_string(),
        message,
    };
    let source = format!("{}", weights.display());
    let (bytes, output, width) = match read_sidecar(&side_path)? {
        Sidecar::Model(side) => {
            let model = model_of(weights, &side)?;
            let Head::Linear(head) = &model.head else {
                return Err(input(
                    "a kNN classifier has no ONNX form here (its head looks up the labeled \
                     images' features); export its encoder"
                        .into(),
                ));
            };
            let metadata = [
                ("classes".to_string(), side.classes.join(",")),
                ("source".to_string(), source),
            ];
            let bytes = imprint_onnx::to_onnx(
                &model.encoder,
                Some(head),
                side.preprocess.invert,
                &metadata,
            )
            .map_err(|e| input(e.to_string()))?;
            (bytes, "logits", side.classes.len())
        }
        Sidecar::Encoder(side) => {
            let encoder = encoder_of(weights, &side)?;
            let metadata = [("source".to_string(), source)];
            let bytes = imprint_onnx::to_onnx(&encoder, None, side.preprocess.invert, &metadata)
                .map_err(|e| input(e.to_string()))?;
            (bytes, "features", encoder.features())
        }
    };
    imprint_fs::write_atomic(out, &bytes)?;
    Ok(Exported {
        output,
        width,
        bytes: bytes.len(),
        opset: imprint_onnx::OPSET,
    })
}
