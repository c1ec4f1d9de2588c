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

/// A safetensors reading error in plain words.
fn explain(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::MetadataIncompleteBuffer | E::InvalidOffset(_) => {
            "the file is cut short: its header promises more bytes than it holds".into()
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "not a safetensors file: its header is not valid".into()
        }
        other => format!("not a safetensors file: {other}"),
    }
}

/// Reads every tensor of a safetensors file (f32 only, every value finite) and its string
/// metadata.
pub fn load_tensors(
    path: &Path,
) -> Result<(BTreeMap<String, NamedTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(path, explain(&e)))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(err(
                path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let shape = view.shape().to_vec();
        if let Some(bad) = data.iter().find(|v: &&f32| !v.is_finite()) {
            return Err(err(
                path,
                format!("tensor `{name}` holds {bad}: the weights are broken (a diverged run?)"),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<NamedTensor> {
        vec![NamedTensor {
            name: "encoder.0.weight".into(),
            shape: vec![2, 3],
            data: vec![1.0, -2.0, 3.5, 0.0, 1e-3, -7.25],
        }]
    }

    #[test]
    fn save_then_load_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        save_tensors(&path, &sample(), &meta).unwrap();
        let (tensors, back) = load_tensors(&path).unwrap();
        assert_eq!(tensors["encoder.0.weight"], sample()[0]);
        assert_eq!(back, meta);
    }

    proptest! {
        /// Arbitrary bytes, and a valid file with one byte changed or cut short, load or give an
        /// error naming the file; never a panic (`PROPTEST_CASES` raises the count).
        #[test]
        fn loader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256),
                               at in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("w.safetensors");
            std::fs::write(&path, &bytes).unwrap();
            if let Err(e) = load_tensors(&path) {
                prop_assert!(e.to_string().contains("w.safetensors"));
            }
            save_tensors(&path, &sample(), &BTreeMap::new()).unwrap();
            let mut valid = std::fs::read(&path).unwrap();
            let at = at % valid.len();
            valid[at] = byte;
            valid.truncate(valid.len() - cut.min(valid.len()));
            std::fs::write(&path, &valid).unwrap();
            if let Err(e) = load_tensors(&path) {
                prop_assert!(e.to_string().contains("w.safetensors"));
            }
        }
    }
}
