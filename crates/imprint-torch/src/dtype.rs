//! Source element types and their little-endian decoding into f32.

/// The element type a tensor had in the file; [`crate::TorchTensor::data`] holds it as f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// Bytes per element in the file.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// The dtype of a `torch.<name>` storage type, as pickled by `torch.save`.
    pub(crate) fn of_storage_type(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "DoubleStorage" => Dtype::F64,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }

    /// Decodes little-endian elements; a trailing partial element is the caller's to refuse.
    pub(crate) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        let chunks = bytes.chunks_exact(self.size());
        match self {
            Dtype::F32 => chunks.map(|c| f32::from_le_bytes(array(c))).collect(),
            Dtype::F64 => chunks
                .map(|c| f64::from_le_bytes(array(c)) as f32)
                .collect(),
            Dtype::F16 => chunks
                .map(|c| half::f16::from_le_bytes(array(c)).to_f32())
                .collect(),
            Dtype::BF16 => chunks
                .map(|c| half::bf16::from_le_bytes(array(c)).to_f32())
                .collect(),
            Dtype::I64 => chunks
                .map(|c| i64::from_le_bytes(array(c)) as f32)
                .collect(),
            Dtype::I32 => chunks
                .map(|c| i32::from_le_bytes(array(c)) as f32)
                .collect(),
            Dtype::I16 => chunks
                .map(|c| i16::from_le_bytes(array(c)) as f32)
                .collect(),
            Dtype::I8 => chunks.map(|c| i8::from_le_bytes(array(c)) as f32).collect(),
            Dtype::U8 => chunks.map(|c| f32::from(c[0])).collect(),
            // torch writes bools as one byte, 0 or 1; any other nonzero byte reads as true.
            Dtype::Bool => chunks.map(|c| f32::from(u8::from(c[0] != 0))).collect(),
        }
    }
}

/// A chunk from `chunks_exact(N)` as an array: the lengths always agree.
fn array<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(chunk);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_dtype_little_endian() {
        assert_eq!(Dtype::F32.decode(&1.5f32.to_le_bytes()), [1.5]);
        assert_eq!(Dtype::F64.decode(&(-2.25f64).to_le_bytes()), [-2.25]);
        assert_eq!(Dtype::F16.decode(&[0x00, 0x3c]), [1.0]);
        assert_eq!(Dtype::BF16.decode(&[0x80, 0x3f]), [1.0]);
        assert_eq!(Dtype::I64.decode(&(-7i64).to_le_bytes()), [-7.0]);
        assert_eq!(Dtype::I32.decode(&(1i32 << 20).to_le_bytes()), [1048576.0]);
        assert_eq!(Dtype::I16.decode(&(-300i16).to_le_bytes()), [-300.0]);
        assert_eq!(Dtype::I8.decode(&[0xff]), [-1.0]);
        assert_eq!(Dtype::U8.decode(&[0xff]), [255.0]);
        assert_eq!(Dtype::Bool.decode(&[0, 1, 2]), [0.0, 1.0, 1.0]);
    }
}
