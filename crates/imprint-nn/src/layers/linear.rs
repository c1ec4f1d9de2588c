//! Fully connected layer, `act(x · Wᵀ + b)`, weight `[out, in]` as PyTorch's `nn.Linear`.

use super::uniform;
use crate::tree::{Kind, Var};
use crate::{linear, params, Activation, ImprintDevice, Matrix};
use dfdx::prelude::*;
use rand::Rng;

#[derive(Clone, Debug)]
pub struct Linear<D: ImprintDevice> {
    pub weight: Var<D>,
    pub bias: Var<D>,
}
params!(Linear { weight, bias });

impl<D: ImprintDevice> Linear<D> {
    /// PyTorch's default init: weight, then bias, uniform in ±1/sqrt(in).
    pub fn new(dev: &D, in_features: usize, out_features: usize, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (in_features as f32).sqrt();
        Self {
            weight: uniform(dev, &[out_features, in_features], bound, rng),
            bias: uniform(dev, &[out_features], bound, rng),
        }
    }

    /// A layer with the given weight `[out, in]` and bias, row-major.
    pub fn from_values(dev: &D, weight: Vec<f32>, bias: Vec<f32>) -> Self {
        let (out, n_in) = (bias.len(), weight.len() / bias.len().max(1));
        Self {
            weight: Var::new(dev, weight, &[out, n_in], Kind::Param),
            bias: Var::new(dev, bias, &[out], Kind::Param),
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }

    /// `input_grad = false` when `x` is data, which needs no gradient.
    pub fn forward<T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        activation: Activation,
        input_grad: bool,
    ) -> Matrix<D, T> {
        linear(
            x,
            &self.weight.value,
            &self.bias.value,
            self.out_features(),
            activation,
            input_grad,
        )
        .expect("linear forward failed on the device")
    }
}
