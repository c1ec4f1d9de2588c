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
