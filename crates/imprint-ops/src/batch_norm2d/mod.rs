//! Batch normalisation over the channels of NCHW batches (PyTorch's `nn.BatchNorm2d`).

mod cpu_kernel;

use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

/// A device that can run [`batch_norm2d_train`] and [`batch_norm2d_eval`].
pub trait BatchNorm2dKernel: Storage<f32> + Sized {
    /// See [`batch_norm2d_train`].
    fn batch_norm2d_train<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<TrainOutput<Self, T>, Self::Err>;

    /// See [`batch_norm2d_eval`].
    fn batch_norm2d_eval<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Result<Tensor4<Self, T>, Self::Err>;
}

/// `y = (x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c` with the mean and biased variance
/// of each channel over the batch and both spatial dimensions. Returns `y`, those statistics
/// (`mean`, biased `var`) and the count of values they are over, so a caller can keep running
/// averages. With an owned tape the backward pass (through the statistics) adds gradients for
/// `x`, `gamma` and `beta`. Inside [`with_synced_statistics`], the batch is every replica's
/// share of it.
///
/// # Panics
/// When `gamma`/`beta` do not have one element per channel, or a channel has fewer than two
/// values (`n * h * w < 2`), where the variance is meaningless.
pub fn batch_norm2d_train<D: BatchNorm2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    gamma: &Tensor1<D>,
    beta: &Tensor1<D>,
    eps: f32,
) -> Result<TrainOutput<D, T>, D::Err> {
    D::batch_norm2d_train(x, gamma, beta, eps)
}

/// `y = (x - mean_c) / sqrt(var_c + eps) * gamma_c + beta_c` with fixed statistics (a
/// per-channel affine map). With an owned tape the backward pass adds gradients for `x`,
/// `gamma` and `beta`.
///
/// # Panics
/// When a per-channel argument does not have one element per channel.
pub fn batch_norm2d_eval<D: BatchNorm2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    gamma: &Tensor1<D>,
    beta: &Tensor1<D>,
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<Tensor4<D, T>, D::Err> {
    D::batch_norm2d_eval(x, gamma, beta, mean, var, eps)
}

/// What a training-mode batch norm returns: the output, each channel's mean and biased
/// variance, and how many values of each channel they are over (of every replica's share of
/// the batch inside [`with_synced_statistics`]).
pub type TrainOutput<D, T> = (Tensor4<D, T>, Vec<f32>, Vec<f32>, usize);

/// Adds per-channel sums over the replicas of a data-parallel step, in place: every replica
/// passes its own and gets the total, the same bits on each.
pub type SumOverReplicas = Rc<dyn Fn(&mut [f64])>;

thread_local! {
    static SYNCED: RefCell<Option<SumOverReplicas>> = const { RefCell::new(None) };
}

/// Runs `f` with the training-mode batch norms this thread starts in it normalising by the
/// statistics of the whole batch of a data-parallel step, every replica's share together
/// (synchronised batch norm): each such op sums its per-channel sums through `sum`, twice in
/// the forward pass (for the mean, then the variance) and once in the backward pass, whenever
/// that runs. Every replica must run the same ops. A setting of the calling thread, as the
/// number format of the products is, so that the models between the loop and the op need no
/// new argument.
pub fn with_synced_statistics<R>(sum: SumOverReplicas, f: impl FnOnce() -> R) -> R {
    /// Puts back the setting found on entry, however `f` ends.
    struct Restore(Option<SumOverReplicas>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SYNCED.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(SYNCED.with(|s| s.borrow_mut().replace(sum)));
    f()
}

/// The sum a training-mode op started now synchronises its statistics through, if any.
pub(crate) fn synced() -> Option<SumOverReplicas> {
    SYNCED.with(|s| s.borrow().clone())
}

/// A device that can run the fused training-mode ops [`batch_norm2d_relu_train`] and
/// [`batch_norm2d_add_relu_train`].
pub trait FusedBatchNorm2dKernel: BatchNorm2dKernel {
    /// See [`batch_norm2d_relu_train`].
    fn batch_norm2d_relu_train<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<TrainOutput<Self, T>, Self::Err>;

    /// See [`batch_norm2d_add_relu_train`].
    fn batch_norm2d_add_relu_train<T, R>(
        x: Tensor4<Self, T>,
        residual: Tensor4<Self, R>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<TrainOutput<Self, T>, Self::Err>
    where
        T: Tape<f32, Self> + Merge<R>,
        R: Tape<f32, Self>;
}

/// `relu(batch_norm2d_train(x))` as one op: the same numbers as the two ops in a row, without
/// the intermediate tensor, its gradient and their passes over memory.
///
/// # Panics
/// As [`batch_norm2d_train`].
pub fn batch_norm2d_relu_train<D: FusedBatchNorm2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    gamma: &Tensor1<D>,
    beta: &Tensor1<D>,
    eps: f32,
) -> Result<TrainOutput<D, T>, D::Err> {
    D::batch_norm2d_relu_train(x, gamma, beta, eps)
}

/// `relu(batch_norm2d_train(x) + residual)` as one op, the end of a residual block: the same
/// numbers as the three ops in a row. Gradients flow to `x`, `gamma`, `beta` and `residual`
/// (whose tape is merged into the output's).
///
/// # Panics
/// As [`batch_norm2d_train`], and when `residual` does not have the shape of `x`.
pub fn batch_norm2d_add_relu_train<D, T, R>(
    x: Tensor4<D, T>,
    residual: Tensor4<D, R>,
    gamma: &Tensor1<D>,
    beta: &Tensor1<D>,
    eps: f32,
) -> Result<TrainOutput<D, T>, D::Err>
where
    D: FusedBatchNorm2dKernel,
    T: Tape<f32, D> + Merge<R>,
    R: Tape<f32, D>,
{
    D::batch_norm2d_add_relu_train(x, residual, gamma, beta, eps)
}

#[cfg(test)]
mod tests;
