//! 2-D convolution (cross-correlation, as in PyTorch's `nn.Conv2d`) with stride, padding,
//! dilation and groups.

#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod bf16_amx;
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod bf16_avx512;
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod bf16_kernel;
pub(crate) mod cpu_kernel;
#[cfg(target_arch = "x86_64")]
pub(crate) mod direct_kernel;
mod gemm_kernel;

use crate::error::{nonzero, SpecError};
use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;

/// Hyper-parameters of a 2-D convolution; pairs are `(height, width)`.
///
/// The weight holds `[out_channels, in_channels / groups, kernel.0, kernel.1]` elements
/// row-major, like PyTorch's `Conv2d.weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    /// Whether the backward pass computes `dL/dx`. An input that needs no gradient (the data
    /// fed to the first layer) can switch it off and spare that product; its gradient is then
    /// never allocated.
    pub input_grad: bool,
}

impl Conv2dSpec {
    /// Square `kernel`, stride 1, no padding, no dilation, one group, with the input's
    /// gradient.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: (kernel, kernel),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            input_grad: true,
        }
    }

    /// The same stride in both dimensions.
    pub fn stride(self, stride: usize) -> Self {
        Self {
            stride: (stride, stride),
            ..self
        }
    }

    /// The same zero padding on all four sides.
    pub fn padding(self, padding: usize) -> Self {
        Self {
            padding: (padding, padding),
            ..self
        }
    }

    /// The same dilation in both dimensions.
    pub fn dilation(self, dilation: usize) -> Self {
        Self {
            dilation: (dilation, dilation),
            ..self
        }
    }

    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }

    /// No `dL/dx` in the backward pass (see [`Self::input_grad`]).
    pub fn without_input_grad(self) -> Self {
        Self {
            input_grad: false,
            ..self
        }
    }

    /// `[out, in / groups, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel.0,
            self.kernel.1,
        ]
    }

    /// Number of weight elements.
    pub fn weight_len(&self) -> usize {
        self.weight_shape().iter().product()
    }

    /// Checks that every size is positive and `groups` divides both channel counts.
    pub fn validate(&self) -> Result<(), SpecError> {
        nonzero(&[
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel height", self.kernel.0),
            ("kernel width", self.kernel.1),
            ("stride height", self.stride.0),
            ("stride width", self.stride.1),
            ("dilation height", self.dilation.0),
            ("dilation width", self.dilation.1),
            ("groups", self.groups),
        ])?;
        if !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return Err(SpecError::Groups {
                groups: self.groups,
                in_channels: self.in_channels,
                out_channels: self.out_channels,
            });
        }
        Ok(())
    }

    /// Output `(height, width)` for an `h x w` input, PyTorch's formula
    /// `floor((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1`, or an error when
    /// the spec is invalid or the (padded) input is smaller than the dilated kernel.
    pub fn output_size_checked(&self, h: usize, w: usize) -> Result<(usize, usize), SpecError> {
        self.validate()?;
        let dim = |size: usize, k: usize, s: usize, p: usize, d: usize| {
            (size + 2 * p)
                .checked_sub(d * (k - 1) + 1)
                .map(|span| span / s + 1)
        };
        match (
            dim(
                h,
                self.kernel.0,
                self.stride.0,
                self.padding.0,
                self.dilation.0,
            ),
            dim(
                w,
                self.kernel.1,
                self.stride.1,
                self.padding.1,
                self.dilation.1,
            ),
        ) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(SpecError::InputTooSmall { h, w }),
        }
    }

    /// Output `(height, width)` for an `h x w` input; see [`Self::output_size_checked`].
    ///
    /// # Panics
    /// Where [`Self::output_size_checked`] returns an error.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.output_size_checked(h, w)
            .unwrap_or_else(|e| panic!("conv2d: {e}"))
    }

    /// Checks an input of `[_, channels, h, w]` and parameters of the given lengths against the
    /// spec, returning the output size.
    pub fn check(
        &self,
        (channels, h, w): (usize, usize, usize),
        weight_len: usize,
        bias_len: Option<usize>,
    ) -> Result<(usize, usize), SpecError> {
        let out = self.output_size_checked(h, w)?;
        let expected = (self.in_channels, self.weight_len(), self.out_channels);
        check_params(expected, (channels, weight_len, bias_len))?;
        Ok(out)
    }
}

/// Checks the input's channel count and the weight and bias lengths against the `(in_channels,
/// weight length, out_channels)` a spec expects.
pub(crate) fn check_params(
    (in_channels, weight_len, out_channels): (usize, usize, usize),
    (channels, got_weight, got_bias): (usize, usize, Option<usize>),
) -> Result<(), SpecError> {
    if channels != in_channels {
        return Err(SpecError::Channels {
            expected: in_channels,
            got: channels,
        });
    }
    let check_len = |what, expected, got| {
        if expected == got {
            Ok(())
        } else {
            Err(SpecError::ParamLen {
                what,
                expected,
                got,
            })
        }
    };
    check_len("weight", weight_len, got_weight)?;
    got_bias.map_or(Ok(()), |got| check_len("bias", out_channels, got))
}

/// A device that can run [`conv2d`]; a CUDA kernel would implement this beside the CPU one.
pub trait Conv2dKernel: Storage<f32> + Sized {
    /// See [`conv2d`].
    fn conv2d<S: Shape, T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        weight: &Tensor<S, f32, Self>,
        bias: Option<&Tensor1<Self>>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err>;
}

/// 2-D convolution of an NCHW batch `x` (`[n, in, h, w]`) into `[n, out, oh, ow]`, with
/// `(oh, ow) = spec.output_size(h, w)`.
///
/// `weight` may have any shape holding the `[out, in / groups, kh, kw]` elements row-major
/// (flat `(usize,)` or 4-D); `bias` is `[out]`. When `x` carries an owned tape, the backward
/// pass adds gradients for `x` (unless `spec.input_grad` is off), `weight` and `bias`.
///
/// # Panics
/// When the spec is invalid or does not fit `x`, `weight` or `bias` (see [`Conv2dSpec::check`]).
pub fn conv2d<S: Shape, D: Conv2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    weight: &Tensor<S, f32, D>,
    bias: Option<&Tensor1<D>>,
    spec: &Conv2dSpec,
) -> Result<Tensor4<D, T>, D::Err> {
    D::conv2d(x, weight, bias, spec)
}

#[cfg(test)]
mod tests;
