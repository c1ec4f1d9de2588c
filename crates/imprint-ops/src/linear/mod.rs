//! Fused dense layer: `y = act(x · Wᵀ + b)` with `W` stored `[out, in]` like PyTorch's
//! `nn.Linear.weight`. Fusing bias and activation into the matrix product saves three passes
//! over the activations and two tape entries per layer, which dominate small-batch training.

mod cpu_kernel;

use crate::{Matrix, Tensor1 as Vector};
use dfdx::prelude::*;
use serde::{Deserialize, Serialize};

/// Element-wise function applied after the affine map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Identity,
    Relu,
    Sigmoid,
}

impl Activation {
    #[inline]
    pub fn apply(self, z: f32) -> f32 {
        match self {
            Activation::Identity => z,
            Activation::Relu => z.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
        }
    }

    /// Derivative expressed through the output `y = act(z)`, so the backward pass needs only `y`.
    #[inline]
    pub fn derivative_from_output(self, y: f32) -> f32 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if y > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Sigmoid => y * (1.0 - y),
        }
    }
}

/// A device that can run the fused linear op; a CUDA kernel would implement this beside the CPU one.
pub trait LinearKernel: Storage<f32> + Sized {
    /// `x` is `[batch, in]`, `weight` holds `[out, in]` row-major, `bias` `[out]`.
    /// `input_grad = false` skips `dL/dx` (the data itself never needs a gradient).
    fn linear_fused<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weight: &Vector<Self>,
        bias: &Vector<Self>,
        out_features: usize,
        activation: Activation,
        input_grad: bool,
    ) -> Result<Matrix<Self, T>, Self::Err>;
}

/// `act(x · Wᵀ + b)` on the tape; see [`LinearKernel::linear_fused`].
pub fn linear<D: LinearKernel, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    weight: &Vector<D>,
    bias: &Vector<D>,
    out_features: usize,
    activation: Activation,
    input_grad: bool,
) -> Result<Matrix<D, T>, D::Err> {
    D::linear_fused(x, weight, bias, out_features, activation, input_grad)
}

#[cfg(test)]
mod tests;
