//! Safetensors checkpoints: f32 little-endian, row-major, names following the module tree
//! (`encoder.0.weight`, weights `[out, in]`), readable by PyTorch's `safetensors.torch.load_file`.

use crate::{NnError, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A tensor held on the host, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Writes `tensors` (and string `metadata`) to `path` crash-safely.
pub fn save_tensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let raw = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (t.name.clone(), t.shape.clone(), raw)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.clone(), v))
                .map_err(|e| err(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let out = safetensors::tensor::serialize(views, &Some(meta))
        .map_err(|e| err(path, format!("cannot serialize: {e}")))?;
    imprint_fs::write_atomic(path, &out)?;
    Ok(())
}

/// Reads every tensor of a safetensors file (f32 only) and its string metadata.
pub fn load_tensors(
    path: &Path,
) -> Result<(BTreeMap<String, NamedTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| err(path, format!("not a safetensors file: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(err(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().to_vec();
        tensors.insert(name.clone(), NamedTensor { name, shape, data });
    }
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| err(path, format!("bad header: {e}")))?;
    let metadata = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok((tensors, metadata))
}
