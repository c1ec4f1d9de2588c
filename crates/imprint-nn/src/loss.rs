//! Losses on runtime-shaped matrices.

use crate::{ImprintDevice, Matrix};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

/// Reconstruction loss of an autoencoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reconstruction {
    /// Mean squared error between `sigmoid(logits)` and the image.
    Mse,
    /// Binary cross-entropy of the logits against pixel intensities in [0, 1].
    Bce,
}

/// Loss of decoder `logits` (pre-sigmoid) against `target` images, both `[batch, pixels]`.
pub fn reconstruction_loss<D: ImprintDevice, T: Tape<f32, D>>(
    kind: Reconstruction,
    logits: Matrix<D, T>,
    target: Matrix<D>,
) -> Tensor<(), f32, D, T> {
    match kind {
        Reconstruction::Mse => mse_loss(logits.sigmoid(), target),
        Reconstruction::Bce => binary_cross_entropy_with_logits_loss(logits, target),
    }
}

/// Reconstruction loss averaged over the pixels where `weight` is 1 (e.g. the hidden patches of
/// a masked autoencoder), 0 elsewhere.
pub fn weighted_reconstruction_loss<D: ImprintDevice, T: Tape<f32, D>>(
    kind: Reconstruction,
    logits: Matrix<D, T>,
    target: Matrix<D>,
    weight: Matrix<D>,
) -> Tensor<(), f32, D, T> {
    let count = weight.as_vec().iter().sum::<f32>().max(1.0);
    let per_pixel = match kind {
        Reconstruction::Mse => (logits.sigmoid() - target).square(),
        Reconstruction::Bce => logits.bce_with_logits(target),
    };
    (per_pixel * weight).sum::<(), _>() / count
}

/// Softmax cross-entropy of `logits` `[batch, classes]` against class indices.
pub fn cross_entropy<D: ImprintDevice, T: Tape<f32, D>>(
    logits: Matrix<D, T>,
    labels: &[usize],
) -> Tensor<(), f32, D, T> {
    let (batch, classes) = *logits.shape();
    let mut one_hot = vec![0.0f32; batch * classes];
    for (row, &label) in labels.iter().enumerate() {
        one_hot[row * classes + label] = 1.0;
    }
    let target = logits.device().tensor_from_vec(one_hot, (batch, classes));
    cross_entropy_with_logits_loss(logits, target)
}

/// NT-Xent, the contrastive loss of SimCLR, between two views' projections `[batch, dim]`: each
/// of the `2 * batch` rows must pick its twin (row i of `a` for row i of `b`, and back) out of
/// all other rows of both views by cosine similarity over `temperature`. The other images'
/// views, `2 * batch - 2` of them, are the negatives.
pub fn contrastive_loss<D: ImprintDevice, T: Tape<f32, D> + Merge<T>>(
    a: Matrix<D, T>,
    b: Matrix<D, T>,
    temperature: f32,
) -> Tensor<(), f32, D, T> {
    let batch = a.shape().0;
    let rows = 2 * batch;
    let both = (unit_rows(a), unit_rows(b)).concat_along(Axis::<0>);
    // dfdx's matmul needs two tensors of distinct ids, and a permute keeps the id: the right
    // side is a scaled copy, which carries the temperature.
    let right = (both.retaped::<T>() / temperature).permute::<_, Axes2<1, 0>>();
    let similarity = both.matmul(right);
    // A row must not pick itself: its own similarity (at most 1 / temperature, as every other)
    // is pushed far below the rest.
    let mut own = vec![0.0f32; rows * rows];
    for row in 0..rows {
        own[row * rows + row] = 1e9;
    }
    let own = similarity.device().tensor_from_vec(own, (rows, rows));
    let twins: Vec<usize> = (0..rows).map(|row| (row + batch) % rows).collect();
    cross_entropy(similarity - own, &twins)
}

/// Each row divided by its Euclidean norm.
pub fn unit_rows<D: ImprintDevice, T: Tape<f32, D>>(x: Matrix<D, T>) -> Matrix<D, T> {
    let shape = *x.shape();
    let norms = (x.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
    x / norms.broadcast_like::<(usize, usize), Axis<1>>(&shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, values: impl Fn(usize) -> f32) -> Matrix<Cpu> {
        Cpu::default().tensor_from_vec((0..rows * cols).map(values).collect(), (rows, cols))
    }

    #[test]
    fn contrastive_loss_is_low_for_matched_views_and_ln_candidates_for_identical_rows() {
        // Rows along distinct axes, the second view a scaled copy: each row picks its own.
        let a = matrix(4, 4, |i| if i % 5 == 0 { 1.0 } else { 0.0 });
        let b = matrix(4, 4, |i| if i % 5 == 0 { 3.0 } else { 0.0 });
        let matched = contrastive_loss(a.clone(), b, 0.1).as_vec()[0];
        assert!(matched < 1e-3, "matched views: {matched}");
        // Every row alike: nothing to tell them apart; each of the 8 rows picks among the 7
        // others, so the loss is ln(7) (ln(8) would mean a row could pick itself).
        let same = matrix(4, 4, |i| (i % 4) as f32 + 1.0);
        let flat = contrastive_loss(same.clone(), same, 0.1).as_vec()[0];
        assert!((flat - 7f32.ln()).abs() < 1e-4, "identical rows: {flat}");
    }

    #[test]
    fn contrastive_loss_gradient_matches_finite_differences() {
        let values = |seed: usize| move |i: usize| ((i * 7 + seed * 13) % 11) as f32 / 5.0 - 1.0;
        let (a, b) = (matrix(3, 5, values(1)), matrix(3, 5, values(2)));
        let grads = contrastive_loss(a.leaky_trace(), b.leaky_trace(), 0.5).backward();
        // Both views: the loss reaches each through its own rows and as the other's negatives.
        let base = [a.as_vec(), b.as_vec()];
        let eps = 1e-3;
        for (view, analytic) in [grads.get(&a).as_vec(), grads.get(&b).as_vec()]
            .into_iter()
            .enumerate()
        {
            for i in 0..base[view].len() {
                let shifted = |d: f32| {
                    let mut v = base.clone();
                    v[view][i] += d;
                    let [a, b] = v.map(|v| Cpu::default().tensor_from_vec(v, (3, 5)));
                    contrastive_loss(a, b, 0.5).as_vec()[0]
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                assert!(
                    (numeric - analytic[i]).abs() < 1e-2,
                    "view {view}, element {i}: finite differences {numeric}, backward {}",
                    analytic[i]
                );
            }
        }
    }
}
