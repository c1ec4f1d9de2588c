//! safetensors files, read through the safetensors crate.

use crate::dtype::Dtype;
use crate::error::{one_line, Checked, Problem};
use crate::TorchTensor;
use safetensors::{Dtype as FileDtype, SafeTensors};

pub(crate) fn read(bytes: &[u8]) -> Checked<Vec<TorchTensor>> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Problem::Safetensors(one_line(&e.to_string())))?;
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = dtype(view.dtype()).ok_or_else(|| {
                Problem::tensor(&name, format!("dtype {:?} is not supported", view.dtype()))
            })?;
            Ok(TorchTensor {
                data: dtype.decode(view.data()),
                shape: view.shape().to_vec(),
                dtype,
                name,
            })
        })
        .collect()
}

fn dtype(dtype: FileDtype) -> Option<Dtype> {
    Some(match dtype {
        FileDtype::F32 => Dtype::F32,
        FileDtype::F64 => Dtype::F64,
        FileDtype::F16 => Dtype::F16,
        FileDtype::BF16 => Dtype::BF16,
        FileDtype::I64 => Dtype::I64,
        FileDtype::I32 => Dtype::I32,
        FileDtype::I16 => Dtype::I16,
        FileDtype::I8 => Dtype::I8,
        FileDtype::U8 => Dtype::U8,
        FileDtype::BOOL => Dtype::Bool,
        _ => return None,
    })
}
