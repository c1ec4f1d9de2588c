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

/// `text` from a file in backticks, escaped onto one line (a tensor name may hold anything).
pub fn quoted(text: &str) -> String {
    format!("`{}`", text.escape_debug())
}

/// Whether `bytes` start as a PyTorch checkpoint does: a zip archive (`torch.save` since 1.6)
/// or a pickle's PROTO opcode (the legacy format).
fn looks_like_pytorch(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)
}

/// Bytes of tensor data the header of `bytes` promises (the largest end offset), when the
/// header reads as JSON.
fn promised_data(bytes: &[u8]) -> Option<u64> {
    let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(len)?)?).ok()?;
    header
        .as_object()?
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .try_fold(0u64, |most, end| Some(most.max(end?)))
}

/// A safetensors reading error of the file `bytes`, in plain words.
fn explain(e: &safetensors::SafeTensorError, bytes: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    if looks_like_pytorch(bytes) {
        return "a PyTorch checkpoint, not safetensors: `imprint import` reads it into one of our \
                architectures (and writes the safetensors file and sidecar the other commands \
                take)"
            .into();
    }
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match e {
        E::HeaderTooSmall => format!(
            "the file is cut short: {} bytes, too few for the 8-byte length of its header",
            bytes.len()
        ),
        E::InvalidHeaderLength | E::HeaderTooLarge => match header_len {
            Some(n) if n.saturating_add(8) > bytes.len() as u64 => format!(
                "the file is cut short inside its header: the header is {n} bytes long, and \
                 {} bytes follow its length",
                bytes.len() - 8
            ),
            _ => "not a safetensors file: the length of its header is not valid".into(),
        },
        E::InvalidOffset(name) => format!(
            "tensor {}: its data does not start where the tensor before it ends (offsets \
             that overlap or leave a gap): the header is damaged",
            quoted(name)
        ),
        E::TensorInvalidInfo => {
            "a tensor's data offsets do not span the bytes its shape and dtype need: the \
             header is damaged"
                .into()
        }
        E::ValidationOverflow => "a tensor's shape is too large to count its bytes".into(),
        E::MetadataIncompleteBuffer => {
            let data = (bytes.len() as u64).saturating_sub(8 + header_len.unwrap_or(0));
            match promised_data(bytes) {
                Some(promised) if promised > data => format!(
                    "the file is cut short: its header promises {promised} bytes of tensor \
                     data, {data} follow it"
                ),
                Some(promised) => format!(
                    "{} bytes follow the tensor data its header describes ({promised} bytes): \
                     not one safetensors file",
                    data - promised
                ),
                None => "the tensors its header describes do not end where the file does".into(),
            }
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "not a safetensors file: its header is not valid".into()
        }
        other => format!("not a safetensors file: {other}"),
    }
}

/// Reads every tensor of a safetensors file (f32 only) and its string metadata. The path must
/// name a regular file: a named pipe or a device is refused before it is opened. The values are
/// not checked here: the loaders do, through one set of bounds.
pub fn load_tensors(
    path: &Path,
) -> Result<(BTreeMap<String, NamedTensor>, BTreeMap<String, String>)> {
    let bytes = imprint_fs::read_regular(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| err(path, explain(&e, &bytes)))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(err(
                path,
                format!(
                    "tensor {} is {:?}, expected F32 (weights are floating point)",
                    quoted(&name),
                    view.dtype()
                ),
            ));
        }
        let data: Vec<f32> = view
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

    /// The message `bytes` written as a safetensors file give, without the path.
    fn problem(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let e = load_tensors(&path).unwrap_err().to_string();
        let prefix = format!("{}: ", path.display());
        e.strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{e}"))
            .to_string()
    }

    #[test]
    fn damaged_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let two = vec![
            sample()[0].clone(),
            NamedTensor {
                name: "encoder.0.bias".into(),
                shape: vec![2],
                data: vec![0.5, 0.25],
            },
        ];
        save_tensors(&path, &two, &BTreeMap::new()).unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(
            problem(&whole[..5]),
            "the file is cut short: 5 bytes, too few for the 8-byte length of its header"
        );
        let header = u64::from_le_bytes(whole[..8].try_into().unwrap());
        assert_eq!(
            problem(&whole[..20]),
            format!(
                "the file is cut short inside its header: the header is {header} bytes long, \
                 and 12 bytes follow its length"
            )
        );
        assert_eq!(
            problem(&whole[..whole.len() - 3]),
            "the file is cut short: its header promises 32 bytes of tensor data, 29 follow it"
        );
        assert_eq!(
            problem(&[whole.as_slice(), b"xyz"].concat()),
            "3 bytes follow the tensor data its header describes (32 bytes): not one \
             safetensors file"
        );
        // The second tensor's data starting inside the first's.
        let text = String::from_utf8_lossy(&whole[8..8 + header as usize]).to_string();
        let overlapping = text.replace("[8,32]", "[4,28]");
        assert_ne!(overlapping, text, "{text}");
        let mut bytes = whole[..8].to_vec();
        bytes.extend(overlapping.as_bytes());
        bytes.extend(&whole[8 + header as usize..]);
        assert_eq!(
            problem(&bytes),
            "tensor `encoder.0.weight`: its data does not start where the tensor before it \
             ends (offsets that overlap or leave a gap): the header is damaged"
        );
        // A PyTorch file, zip or legacy.
        for start in [b"PK\x03\x04rest".as_slice(), b"\x80\x02}q\x00."] {
            assert!(problem(start)
                .starts_with("a PyTorch checkpoint, not safetensors: `imprint import`"));
        }
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
