//! Reading a strided view out of a storage into a row-major vector.

use crate::pickle::TensorSpec;

/// Elements of a tensor of this shape, or None on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The view `spec` of `storage`, row-major; the error says why the view does not fit.
pub(crate) fn gather(spec: &TensorSpec, storage: &[f32]) -> Result<Vec<f32>, String> {
    let count = element_count(&spec.shape).ok_or("its element count overflows")?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // A dimension of size 1 is never stepped along: its stride, whatever the file says, is
    // not used.
    let stride: Vec<usize> = spec
        .shape
        .iter()
        .zip(&spec.stride)
        .map(|(&size, &step)| if size == 1 { 0 } else { step })
        .collect();
    let last = spec
        .shape
        .iter()
        .zip(&stride)
        .try_fold(spec.offset, |end, (&size, &stride)| {
            (size - 1).checked_mul(stride)?.checked_add(end)
        })
        .ok_or("its strides overflow")?;
    if last >= storage.len() {
        return Err(format!(
            "it reaches element {last} of a storage of {} elements",
            storage.len()
        ));
    }
    if is_row_major(&spec.shape, &stride) {
        return Ok(storage[spec.offset..spec.offset + count].to_vec());
    }
    // An odometer over the indices; `at` is the storage element they address, always within
    // `..=last` when read.
    let dims = spec.shape.len();
    let mut index = vec![0usize; dims];
    let mut at = spec.offset;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(storage[at]);
        for d in (0..dims).rev() {
            index[d] += 1;
            at += stride[d];
            if index[d] < spec.shape[d] {
                break;
            }
            at -= stride[d] * spec.shape[d];
            index[d] = 0;
        }
    }
    Ok(out)
}

/// Whether the strides are those of a contiguous row-major tensor (size-1 dimensions may
/// have any stride).
fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&size, &step) in shape.iter().zip(stride).rev() {
        if size != 1 && step != expected {
            return false;
        }
        expected *= size;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::pickle::Storage;
    use std::rc::Rc;

    fn spec(offset: usize, shape: &[usize], stride: &[usize]) -> TensorSpec {
        TensorSpec {
            storage: Rc::new(Storage {
                key: "0".into(),
                dtype: Dtype::F32,
            }),
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    #[test]
    fn gathers_transposed_offset_and_broadcast_views() {
        let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // The transpose of a [3, 4] matrix.
        assert_eq!(
            gather(&spec(0, &[4, 3], &[1, 4]), &storage).unwrap(),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        // Column 1 of a [3, 4] matrix, and a contiguous slice at an offset.
        assert_eq!(
            gather(&spec(1, &[3], &[4]), &storage).unwrap(),
            [1., 5., 9.]
        );
        assert_eq!(
            gather(&spec(5, &[2, 2], &[2, 1]), &storage).unwrap(),
            [5., 6., 7., 8.]
        );
        // A scalar, an expanded row and an empty tensor.
        assert_eq!(gather(&spec(7, &[], &[]), &storage).unwrap(), [7.]);
        assert_eq!(
            gather(&spec(2, &[2, 3], &[0, 1]), &storage).unwrap(),
            [2., 3., 4., 2., 3., 4.]
        );
        assert!(gather(&spec(99, &[0, 3], &[3, 1]), &storage)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn refuses_views_past_the_storage() {
        let storage = [0f32; 12];
        let err = gather(&spec(10, &[3], &[1]), &storage).unwrap_err();
        assert_eq!(err, "it reaches element 12 of a storage of 12 elements");
        let err = gather(&spec(0, &[2, 2], &[usize::MAX, 1]), &storage).unwrap_err();
        assert_eq!(err, "its strides overflow");
        // A size-1 dimension's stride is never used, however large.
        assert_eq!(
            gather(&spec(0, &[1, 2], &[usize::MAX, 1]), &[3., 4.]).unwrap(),
            [3., 4.]
        );
    }
}
