//! Batched inference: a model applied to many images in chunks, without a tape. The one helper
//! every evaluation, prediction and embedding goes through.
//!
//! Inference stays within a memory bound whatever the number of images and their size. The
//! layers that take each image on its own (convolutions, batch norm in eval mode, pooling) run
//! on as many images at once as a share of the memory budget holds the activations of: a
//! ResNet-18 at 224x224 px takes about 10 MB of activations an image, so the fixed chunks of
//! 1,024 images inference once ran took 10 GB there. The linear layers after them take their
//! rows in chunks of [`MAX_CHUNK`] as before: gemm's products sum in an order that depends on
//! how many rows they get (few rows take other kernels), and so the results do not depend on
//! the budget, bit for bit.

use crate::{ImprintDevice, Matrix};
use dfdx::prelude::HasShape;
use imprint_data::Pixels;
use std::ops::Range;

/// Most rows the linear layers take at once, and most images run at once: wide enough to keep
/// the products fast, more gains nothing.
pub const MAX_CHUNK: usize = 1024;

/// One chunk's activations take at most this part (1/4) of the memory budget; the decoded
/// images, which the data's loading keeps within the budget, take the rest.
pub const BUDGET_PARTS: u64 = 4;

/// Activations of the widest size alive at once while an image runs through the layers: a
/// layer's input and output, the block input a residual add keeps, and the kernels' copies.
/// Measured (peak resident memory of `imprint evaluate`, 500 images in one chunk): a ResNet-18
/// at 224 px took about 10 MB an image, 3.1 times its widest activation (the stem's 64 maps of
/// 112x112).
const LIVE_WIDEST: u64 = 4;

/// How inference cuts a set of images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks {
    /// Images run through the layers that take each image on its own, at once.
    pub images: usize,
    /// Rows the linear layers (and a classifier's head) take at once.
    pub rows: usize,
}

impl Chunks {
    /// Chunks within `budget` bytes for images of `input_len` values whose largest activation
    /// holds `widest` values and whose widest row into a linear layer holds `widest_row`: each
    /// count at least 1 and at most [`MAX_CHUNK`], no more images than rows.
    pub fn within(budget: u64, input_len: usize, widest: usize, widest_row: usize) -> Chunks {
        let share = budget / BUDGET_PARTS;
        let fit = |per_image: u64| {
            let n = share / per_image.max(1);
            usize::try_from(n).unwrap_or(usize::MAX).clamp(1, MAX_CHUNK)
        };
        let rows = fit(4 * LIVE_WIDEST * widest_row as u64);
        let images = fit(4 * (input_len as u64 + LIVE_WIDEST * widest as u64));
        Chunks {
            images: images.min(rows),
            rows,
        }
    }
}

/// A model as inference runs it: the layers that take each image on its own, then the rest.
pub trait Stages<D: ImprintDevice> {
    /// Images `[n, pixels]` to rows `[n, width]`, each image on its own.
    fn images(&mut self, x: Matrix<D>) -> Matrix<D>;
    /// The rows of [`Stages::images`] to the model's output.
    fn rows(&mut self, x: Matrix<D>) -> Matrix<D>;
}

/// Two closures: the per-image layers, then the rest.
impl<D: ImprintDevice, F, G> Stages<D> for (F, G)
where
    F: FnMut(Matrix<D>) -> Matrix<D>,
    G: FnMut(Matrix<D>) -> Matrix<D>,
{
    fn images(&mut self, x: Matrix<D>) -> Matrix<D> {
        (self.0)(x)
    }
    fn rows(&mut self, x: Matrix<D>) -> Matrix<D> {
        (self.1)(x)
    }
}

/// Runs images `0..n` (each `len` values, brought into a buffer by `fill(range, buffer)`)
/// through [`Stages::images`] a chunk of [`Chunks::images`] at a time, gathers the rows into
/// chunks of [`Chunks::rows`], runs each through [`Stages::rows`], and hands
/// `sink(range, values)` what that gives, in order: nothing of a chunk is kept once it is sunk.
pub fn for_each_chunk<D: ImprintDevice>(
    dev: &D,
    (n, len): (usize, usize),
    chunks: Chunks,
    mut fill: impl FnMut(Range<usize>, &mut [f32]),
    model: &mut impl Stages<D>,
    mut sink: impl FnMut(Range<usize>, Vec<f32>),
) {
    let (per_images, per_rows) = (chunks.images.max(1), chunks.rows.max(1));
    for start in (0..n).step_by(per_rows) {
        let end = (start + per_rows).min(n);
        let (mut gathered, mut width) = (Vec::new(), 0);
        for from in (start..end).step_by(per_images) {
            let to = (from + per_images).min(end);
            let mut buffer = vec![0.0; (to - from) * len];
            fill(from..to, &mut buffer);
            let out = model.images(dev.tensor_from_vec(buffer, (to - from, len)));
            width = out.shape().1;
            gathered.extend(out.as_vec());
        }
        let x: Matrix<D> = dev.tensor_from_vec(gathered, (end - start, width));
        sink(start..end, model.rows(x).as_vec());
    }
}

/// [`for_each_chunk`] over 8-bit images, converted to values a chunk at a time: a large set
/// never exists as `f32` all at once.
pub fn each_pixels_chunk<D: ImprintDevice>(
    dev: &D,
    pixels: &Pixels,
    chunks: Chunks,
    model: &mut impl Stages<D>,
    sink: impl FnMut(Range<usize>, Vec<f32>),
) {
    for_each_chunk(
        dev,
        (pixels.len(), pixels.image_len()),
        chunks,
        |r, buf| pixels.fill(r, buf),
        model,
        sink,
    )
}

/// `f` applied to images held contiguously in `images` (`len` values each), `chunk` images at
/// a time, the rows it gives gathered in order; for models that are not an encoder (a decoder
/// drawing pictures).
pub fn over_images<D: ImprintDevice>(
    dev: &D,
    images: &[f32],
    len: usize,
    chunk: usize,
    f: impl FnMut(Matrix<D>) -> Matrix<D>,
) -> Vec<f32> {
    let mut out = Vec::new();
    for_each_chunk(
        dev,
        (images.len() / len.max(1), len),
        Chunks {
            images: chunk,
            rows: chunk,
        },
        |r, buf| buf.copy_from_slice(&images[r.start * len..r.end * len]),
        &mut (|x| x, f),
        |_, rows| out.extend(rows),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn chunks_fit_a_share_of_the_budget_and_stay_between_one_and_the_most() {
        // 1,000 input values and a widest activation of 10,000: 4 * (1,000 + 4 * 10,000) =
        // 164,000 bytes an image; a quarter of 164 MB holds 250 of them. Rows of 64 values
        // take 4 * 4 * 64 bytes: the most fit.
        let c = Chunks::within(164_000_000, 1000, 10_000, 64);
        assert_eq!((c.images, c.rows), (250, MAX_CHUNK));
        // Rows of 100,000 values take 4 * 4 * 100,000 bytes: a quarter of 164 MB holds 25 of
        // them, and no more images run at once.
        let c = Chunks::within(164_000_000, 1000, 10_000, 100_000);
        assert_eq!((c.images, c.rows), (25, 25));
        let c = Chunks::within(1, 1000, 10_000, 64);
        assert_eq!((c.images, c.rows), (1, 1));
        let c = Chunks::within(u64::MAX, 0, 0, 0);
        assert_eq!((c.images, c.rows), (MAX_CHUNK, MAX_CHUNK));
    }

    #[test]
    fn every_cut_gives_the_rows_in_order_and_sinks_each_row_chunk_once() {
        let dev = Cpu::default();
        let pixels = Pixels::from_bytes((0..250).collect(), 2);
        // Per image: double; per row chunk: add the row's two values.
        let double = |x: Matrix<Cpu>| x * 2.0;
        let sum = |x: Matrix<Cpu>| {
            let n = x.shape().0;
            x.sum::<(usize,), Axis<1>>().reshape_like(&(n, 1))
        };
        let cut = |images, rows| {
            let mut got = (Vec::new(), Vec::new());
            let chunks = Chunks { images, rows };
            each_pixels_chunk(&dev, &pixels, chunks, &mut (double, sum), |r, v| {
                assert_eq!(v.len(), r.len());
                got.0.push(r);
                got.1.extend(v);
            });
            got
        };
        let (_, whole) = cut(MAX_CHUNK, MAX_CHUNK);
        assert_eq!(whole.len(), 125);
        assert!((whole[1] - 2.0 * (2.0 + 3.0) / 255.0).abs() < 1e-6);
        for (images, rows) in [(1, 1), (7, 7), (3, 50), (125, 125), (1000, 1000)] {
            let (ranges, values) = cut(images, rows);
            assert_eq!(values, whole, "{images} images, {rows} rows");
            assert_eq!(ranges.len(), 125usize.div_ceil(rows));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
