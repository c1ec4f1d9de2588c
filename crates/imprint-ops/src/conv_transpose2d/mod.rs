//! 2-D transposed convolution (PyTorch's `nn.ConvTranspose2d`), computed as the adjoint of
//! [`conv2d`](crate::conv2d) on the convolution's own kernels: its forward pass is the
//! convolution's input gradient, its input gradient the convolution's forward pass.

mod cpu_kernel;

use crate::conv2d::check_params;
use crate::error::SpecError;
use crate::{Conv2dSpec, Tensor1, Tensor4};
use dfdx::prelude::*;

/// Hyper-parameters of a 2-D transposed convolution; pairs are `(height, width)`.
///
/// The weight holds `[in_channels, out_channels / groups, kernel.0, kernel.1]` elements
/// row-major, like PyTorch's `ConvTranspose2d.weight`. `output_padding` adds rows/columns at
/// the bottom/right so that a stride-`s` convolution's input size can be recovered exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub output_padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl ConvTranspose2dSpec {
    /// Square `kernel`, stride 1, no padding, no output padding, no dilation, one group.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel: (kernel, kernel),
            stride: (1, 1),
            padding: (0, 0),
            output_padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }

    /// The same stride in both dimensions.
    pub fn stride(self, stride: usize) -> Self {
        Self {
            stride: (stride, stride),
            ..self
        }
    }

    /// The same padding on all four sides (removed from the output, as in PyTorch).
    pub fn padding(self, padding: usize) -> Self {
        Self {
            padding: (padding, padding),
            ..self
        }
    }

    /// The same output padding in both dimensions.
    pub fn output_padding(self, output_padding: usize) -> Self {
        Self {
            output_padding: (output_padding, output_padding),
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

    /// The convolution this op is the adjoint of: channels swapped, same kernel, stride,
    /// padding, dilation and groups, and the same weight memory (`[in, out / groups, kh, kw]`
    /// here is `[out', in' / groups, kh, kw]` there).
    pub fn as_conv(&self) -> Conv2dSpec {
        Conv2dSpec {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            input_grad: true,
        }
    }

    /// `[in, out / groups, kh, kw]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        self.as_conv().weight_shape()
    }

    /// Number of weight elements.
    pub fn weight_len(&self) -> usize {
        self.as_conv().weight_len()
    }

    /// Checks that every size is positive, `groups` divides both channel counts and, as
    /// PyTorch requires, `output_padding` is smaller than the stride or the dilation.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.as_conv().validate()?;
        let ok = |op: usize, s: usize, d: usize| op < s || op < d;
        if !ok(self.output_padding.0, self.stride.0, self.dilation.0)
            || !ok(self.output_padding.1, self.stride.1, self.dilation.1)
        {
            return Err(SpecError::OutputPadding {
                output_padding: self.output_padding,
                stride: self.stride,
                dilation: self.dilation,
            });
        }
        Ok(())
    }

    /// Output `(height, width)` for an `h x w` input, PyTorch's formula
    /// `(in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`, or an
    /// error when the spec is invalid or the result would be empty.
    pub fn output_size_checked(&self, h: usize, w: usize) -> Result<(usize, usize), SpecError> {
        self.validate()?;
        let dim = |size: usize, k: usize, s: usize, p: usize, op: usize, d: usize| {
            size.checked_sub(1)
                .and_then(|m| (m * s + d * (k - 1) + op + 1).checked_sub(2 * p))
                .filter(|&o| o > 0)
        };
        let (k, s, p, op, d) = (
            self.kernel,
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
        );
        match (
            dim(h, k.0, s.0, p.0, op.0, d.0),
            dim(w, k.1, s.1, p.1, op.1, d.1),
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
            .unwrap_or_else(|e| panic!("conv_transpose2d: {e}"))
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

/// A device that can run [`conv_transpose2d`].
pub trait ConvTranspose2dKernel: Storage<f32> + Sized {
    /// See [`conv_transpose2d`].
    fn conv_transpose2d<S: Shape, T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        weight: &Tensor<S, f32, Self>,
        bias: Option<&Tensor1<Self>>,
        spec: &ConvTranspose2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err>;
}

/// Transposed convolution of an NCHW batch `x` (`[n, in, h, w]`) into `[n, out, oh, ow]`, with
/// `(oh, ow) = spec.output_size(h, w)`.
///
/// Without bias it is exactly the adjoint of [`conv2d`](crate::conv2d) with
/// [`ConvTranspose2dSpec::as_conv`] and the same weight: `<conv2d(a), b> = <a,
/// conv_transpose2d(b)>`. `weight` may have any shape holding the `[in, out / groups, kh, kw]`
/// elements row-major; `bias` is `[out]`. When `x` carries an owned tape, the backward pass adds
/// gradients for `x`, `weight` and `bias`.
///
/// # Panics
/// When the spec is invalid or does not fit `x`, `weight` or `bias`.
pub fn conv_transpose2d<S: Shape, D: ConvTranspose2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    weight: &Tensor<S, f32, D>,
    bias: Option<&Tensor1<D>>,
    spec: &ConvTranspose2dSpec,
) -> Result<Tensor4<D, T>, D::Err> {
    D::conv_transpose2d(x, weight, bias, spec)
}

#[cfg(test)]
mod tests;
