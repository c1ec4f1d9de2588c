//! Batch normalisation over the channels of NCHW batches (PyTorch's `nn.BatchNorm2d`).

mod cpu_kernel;

use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;

/// A device that can run [`batch_norm2d_train`] and [`batch_norm2d_eval`].
pub trait BatchNorm2dKernel: Storage<f32> + Sized {
    /// See [`batch_norm2d_train`].
    #[allow(clippy::type_complexity)]
    fn batch_norm2d_train<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<(Tensor4<Self, T>, Vec<f32>, Vec<f32>), Self::Err>;

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
/// of each channel over the batch and both spatial dimensions. Returns `y` and those
/// statistics (`mean`, biased `var`), so a caller can keep running averages. With an owned tape
/// the backward pass (through the statistics) adds gradients for `x`, `gamma` and `beta`.
///
/// # Panics
/// When `gamma`/`beta` do not have one element per channel, or a channel has fewer than two
/// values (`n * h * w < 2`), where the variance is meaningless.
#[allow(clippy::type_complexity)]
pub fn batch_norm2d_train<D: BatchNorm2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    gamma: &Tensor1<D>,
    beta: &Tensor1<D>,
    eps: f32,
) -> Result<(Tensor4<D, T>, Vec<f32>, Vec<f32>), D::Err> {
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

/// Batch statistics of a training-mode batch norm: the output and each channel's mean and
/// biased variance.
pub type TrainOutput<D, T> = (Tensor4<D, T>, Vec<f32>, Vec<f32>);

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

/// Batch normalisation layer with PyTorch's defaults (`momentum = 0.1`, `eps = 1e-5`, affine,
/// tracking running statistics). `gamma` and `beta` are the trainable scale and shift.
#[derive(Clone)]
pub struct BatchNorm2d<D: Storage<f32>> {
    pub gamma: Tensor1<D>,
    pub beta: Tensor1<D>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub momentum: f32,
    pub eps: f32,
}

impl<D: BatchNorm2dKernel + TensorFromVec<f32>> BatchNorm2d<D> {
    /// `gamma = 1`, `beta = 0`, running mean 0 and running variance 1, like PyTorch.
    pub fn new(dev: &D, channels: usize) -> Self {
        Self {
            gamma: dev.tensor_from_vec(vec![1.0; channels], (channels,)),
            beta: dev.tensor_from_vec(vec![0.0; channels], (channels,)),
            running_mean: vec![0.0; channels],
            running_var: vec![1.0; channels],
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

impl<D: BatchNorm2dKernel> BatchNorm2d<D> {
    pub fn channels(&self) -> usize {
        self.running_mean.len()
    }

    /// Training mode: normalises with the batch statistics (see [`batch_norm2d_train`]) and
    /// updates the running statistics as PyTorch does:
    ///
    /// `running = (1 - momentum) * running + momentum * batch`,
    ///
    /// where the batch variance entering `running_var` is the unbiased one,
    /// `var * m / (m - 1)` with `m = n * h * w`, while the normalisation itself uses the
    /// biased `var`.
    pub fn try_forward_train<T: Tape<f32, D>>(
        &mut self,
        x: Tensor4<D, T>,
    ) -> Result<Tensor4<D, T>, D::Err> {
        let values = values_per_channel(x.shape());
        let out = batch_norm2d_train(x, &self.gamma, &self.beta, self.eps)?;
        Ok(self.update_running(values, out))
    }

    /// Folds a batch's statistics into the running ones (see [`Self::try_forward_train`]) and
    /// returns the output.
    fn update_running<T>(
        &mut self,
        values: usize,
        (y, mean, var): TrainOutput<D, T>,
    ) -> Tensor4<D, T> {
        let m = values as f32;
        let unbiased = m / (m - 1.0);
        let k = self.momentum;
        for (r, b) in self.running_mean.iter_mut().zip(&mean) {
            *r = (1.0 - k) * *r + k * b;
        }
        for (r, b) in self.running_var.iter_mut().zip(&var) {
            *r = (1.0 - k) * *r + k * b * unbiased;
        }
        y
    }

    /// See [`Self::try_forward_train`].
    pub fn forward_train<T: Tape<f32, D>>(&mut self, x: Tensor4<D, T>) -> Tensor4<D, T> {
        self.try_forward_train(x).unwrap()
    }

    /// Evaluation mode: normalises with the running statistics (see [`batch_norm2d_eval`]);
    /// nothing is updated.
    pub fn try_forward_eval<T: Tape<f32, D>>(
        &self,
        x: Tensor4<D, T>,
    ) -> Result<Tensor4<D, T>, D::Err> {
        batch_norm2d_eval(
            x,
            &self.gamma,
            &self.beta,
            &self.running_mean,
            &self.running_var,
            self.eps,
        )
    }

    /// See [`Self::try_forward_eval`].
    pub fn forward_eval<T: Tape<f32, D>>(&self, x: Tensor4<D, T>) -> Tensor4<D, T> {
        self.try_forward_eval(x).unwrap()
    }
}

impl<D: FusedBatchNorm2dKernel> BatchNorm2d<D> {
    /// [`Self::try_forward_train`] followed by ReLU, as one op ([`batch_norm2d_relu_train`]).
    pub fn try_forward_train_relu<T: Tape<f32, D>>(
        &mut self,
        x: Tensor4<D, T>,
    ) -> Result<Tensor4<D, T>, D::Err> {
        let values = values_per_channel(x.shape());
        let out = batch_norm2d_relu_train(x, &self.gamma, &self.beta, self.eps)?;
        Ok(self.update_running(values, out))
    }

    /// [`Self::try_forward_train`], plus `residual`, then ReLU, as one op
    /// ([`batch_norm2d_add_relu_train`]).
    pub fn try_forward_train_add_relu<T, R>(
        &mut self,
        x: Tensor4<D, T>,
        residual: Tensor4<D, R>,
    ) -> Result<Tensor4<D, T>, D::Err>
    where
        T: Tape<f32, D> + Merge<R>,
        R: Tape<f32, D>,
    {
        let values = values_per_channel(x.shape());
        let out = batch_norm2d_add_relu_train(x, residual, &self.gamma, &self.beta, self.eps)?;
        Ok(self.update_running(values, out))
    }

    /// See [`Self::try_forward_train_relu`].
    pub fn forward_train_relu<T: Tape<f32, D>>(&mut self, x: Tensor4<D, T>) -> Tensor4<D, T> {
        self.try_forward_train_relu(x).unwrap()
    }

    /// See [`Self::try_forward_train_add_relu`].
    pub fn forward_train_add_relu<T, R>(
        &mut self,
        x: Tensor4<D, T>,
        residual: Tensor4<D, R>,
    ) -> Tensor4<D, T>
    where
        T: Tape<f32, D> + Merge<R>,
        R: Tape<f32, D>,
    {
        self.try_forward_train_add_relu(x, residual).unwrap()
    }
}

/// Values each channel's statistics are taken over: `n * h * w`.
fn values_per_channel(&(n, _, h, w): &(usize, usize, usize, usize)) -> usize {
    n * h * w
}

#[cfg(test)]
mod tests;
