//! Losses on runtime-shaped matrices, and a guard that stops training on a non-finite loss.

use crate::{ImprintDevice, Matrix, NnError, Result};
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

/// InfoNCE between two views' projections `[batch, dim]`, as in SimCLR and CLIP: row i of `a`
/// must pick row i of `b` out of all rows of `b` by cosine similarity over `temperature`. The
/// other images of the batch are the negatives.
pub fn contrastive_loss<D: ImprintDevice, T: Tape<f32, D>>(
    a: Matrix<D, T>,
    b: Matrix<D, T>,
    temperature: f32,
) -> Tensor<(), f32, D, T> {
    let batch = a.shape().0;
    let logits = unit_rows(a).matmul(unit_rows(b).permute::<_, Axes2<1, 0>>()) / temperature;
    cross_entropy(logits, &(0..batch).collect::<Vec<_>>())
}

/// Each row divided by its Euclidean norm.
fn unit_rows<D: ImprintDevice, T: Tape<f32, D>>(x: Matrix<D, T>) -> Matrix<D, T> {
    let shape = *x.shape();
    let norms = (x.retaped::<T>().square().sum::<(usize,), Axis<1>>() + 1e-12).sqrt();
    x / norms.broadcast_like::<(usize, usize), Axis<1>>(&shape)
}

/// Errors out, naming where, when a loss is NaN or infinite: training cannot recover from it.
pub fn check_finite(loss: f32, epoch: usize, step: usize) -> Result<f32> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(NnError::NonFinite(format!(
            "loss became {loss} at epoch {epoch}, step {step}; lower the learning rate"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, values: impl Fn(usize) -> f32) -> Matrix<Cpu> {
        Cpu::default().tensor_from_vec((0..rows * cols).map(values).collect(), (rows, cols))
    }

    #[test]
    fn contrastive_loss_is_low_for_matched_views_and_log_batch_for_identical_rows() {
        // Rows along distinct axes, the second view a scaled copy: each row picks its own.
        let a = matrix(4, 4, |i| if i % 5 == 0 { 1.0 } else { 0.0 });
        let b = matrix(4, 4, |i| if i % 5 == 0 { 3.0 } else { 0.0 });
        let matched = contrastive_loss(a.clone(), b, 0.1).as_vec()[0];
        assert!(matched < 1e-3, "matched views: {matched}");
        // Every row alike: nothing to tell them apart, the loss is ln(batch).
        let same = matrix(4, 4, |i| (i % 4) as f32 + 1.0);
        let flat = contrastive_loss(same.clone(), same, 0.1).as_vec()[0];
        assert!((flat - 4f32.ln()).abs() < 1e-4, "identical rows: {flat}");
    }

    #[test]
    fn contrastive_loss_gradient_matches_finite_differences() {
        let values = |seed: usize| move |i: usize| ((i * 7 + seed * 13) % 11) as f32 / 5.0 - 1.0;
        let (a, b) = (matrix(3, 5, values(1)), matrix(3, 5, values(2)));
        let loss = |a: &Matrix<Cpu>| contrastive_loss(a.clone(), b.clone(), 0.5).as_vec()[0];
        let grads = contrastive_loss(a.leaky_trace(), b.leaky_trace(), 0.5).backward();
        let analytic = grads.get(&a).as_vec();
        let base = a.as_vec();
        let eps = 1e-3;
        for i in 0..base.len() {
            let shifted = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                loss(&Cpu::default().tensor_from_vec(v, (3, 5)))
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 1e-2,
                "element {i}: finite differences {numeric}, backward {}",
                analytic[i]
            );
        }
    }
}
