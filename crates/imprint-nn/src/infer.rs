//! Batched inference: a model applied to many images in chunks, without a tape. The one helper
//! every evaluation, prediction and embedding goes through.

use crate::{ImprintDevice, Matrix};
use imprint_data::Pixels;
use std::ops::Range;

/// Images per chunk: wide enough to keep the products fast, small enough to bound memory.
pub const CHUNK: usize = 1024;

/// Calls `fill(range, buffer)` to bring images `range` (of `n`, each `len` values) into a
/// buffer, `f` on each chunk of at most [`CHUNK`] images, and returns the rows `f` gives, in
/// order.
pub fn in_chunks<D: ImprintDevice>(
    dev: &D,
    n: usize,
    len: usize,
    mut fill: impl FnMut(Range<usize>, &mut [f32]),
    mut f: impl FnMut(Matrix<D>) -> Matrix<D>,
) -> Vec<f32> {
    let mut out = Vec::new();
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let mut buffer = vec![0.0; (end - start) * len];
        fill(start..end, &mut buffer);
        let x: Matrix<D> = dev.tensor_from_vec(buffer, (end - start, len));
        out.extend(f(x).as_vec());
    }
    out
}

/// [`in_chunks`] over images held contiguously in `images`.
pub fn over_images<D: ImprintDevice>(
    dev: &D,
    images: &[f32],
    len: usize,
    f: impl FnMut(Matrix<D>) -> Matrix<D>,
) -> Vec<f32> {
    in_chunks(
        dev,
        images.len() / len.max(1),
        len,
        |r, buf| buf.copy_from_slice(&images[r.start * len..r.end * len]),
        f,
    )
}

/// [`in_chunks`] over 8-bit images, converted to values a chunk at a time: a large set never
/// exists as `f32` all at once.
pub fn over_pixels<D: ImprintDevice>(
    dev: &D,
    images: &Pixels,
    f: impl FnMut(Matrix<D>) -> Matrix<D>,
) -> Vec<f32> {
    in_chunks(
        dev,
        images.len(),
        images.image_len(),
        |r, buf| images.fill(r, buf),
        f,
    )
}
