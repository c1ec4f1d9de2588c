//! Convolution and transposed convolution layers (PyTorch's `nn.Conv2d`, `nn.ConvTranspose2d`).

use super::{kaiming_normal, uniform, Tensor4};
use crate::tree::Var;
use crate::{params, ImprintDevice};
use dfdx::prelude::*;
use imprint_ops::{conv2d, conv_transpose2d, Conv2dSpec, ConvTranspose2dSpec};
use rand::Rng;

#[derive(Clone, Debug)]
pub struct Conv2d<D: ImprintDevice> {
    pub weight: Var<D>,
    pub bias: Option<Var<D>>,
    pub spec: Conv2dSpec,
}
params!(Conv2d { weight, bias });

impl<D: ImprintDevice> Conv2d<D> {
    /// PyTorch's default init: weight, then bias, uniform in ±1/sqrt(fan_in).
    pub fn new(dev: &D, spec: Conv2dSpec, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (spec.weight_shape()[1..].iter().product::<usize>() as f32).sqrt();
        Self {
            weight: uniform(dev, &spec.weight_shape(), bound, rng),
            bias: Some(uniform(dev, &[spec.out_channels], bound, rng)),
            spec,
        }
    }

    /// Without bias, weights drawn from N(0, 2 / fan_out) (He et al. 2015, as torchvision's
    /// ResNets): for convolutions followed by batch norm, which makes a bias redundant.
    pub fn he_without_bias(dev: &D, spec: Conv2dSpec, rng: &mut impl Rng) -> Self {
        let [out, _, kh, kw] = spec.weight_shape();
        Self {
            weight: kaiming_normal(dev, &spec.weight_shape(), out * kh * kw, rng),
            bias: None,
            spec,
        }
    }

    /// `input_grad = false` when `x` is data, which needs no gradient.
    pub fn forward<T: Tape<f32, D>>(&self, x: Tensor4<D, T>, input_grad: bool) -> Tensor4<D, T> {
        let spec = if input_grad {
            self.spec
        } else {
            self.spec.without_input_grad()
        };
        conv2d(
            x,
            &self.weight.value,
            self.bias.as_ref().map(|b| &b.value),
            &spec,
        )
        .expect("conv2d failed on the device")
    }
}

#[derive(Clone, Debug)]
pub struct ConvTranspose2d<D: ImprintDevice> {
    pub weight: Var<D>,
    pub bias: Var<D>,
    pub spec: ConvTranspose2dSpec,
}
params!(ConvTranspose2d { weight, bias });

impl<D: ImprintDevice> ConvTranspose2d<D> {
    /// PyTorch's default init; its fan-in is read from weight dim 1 (`out / groups`).
    pub fn new(dev: &D, spec: ConvTranspose2dSpec, rng: &mut impl Rng) -> Self {
        let bound = 1.0 / (spec.weight_shape()[1..].iter().product::<usize>() as f32).sqrt();
        Self {
            weight: uniform(dev, &spec.weight_shape(), bound, rng),
            bias: uniform(dev, &[spec.out_channels], bound, rng),
            spec,
        }
    }

    pub fn forward<T: Tape<f32, D>>(&self, x: Tensor4<D, T>) -> Tensor4<D, T> {
        conv_transpose2d(x, &self.weight.value, Some(&self.bias.value), &self.spec)
            .expect("conv_transpose2d failed on the device")
    }
}
