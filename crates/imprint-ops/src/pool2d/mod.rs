//! 2-D max and average pooling over NCHW batches (PyTorch's `max_pool2d` / `avg_pool2d` with
//! `ceil_mode = false`, no dilation).

mod cpu_kernel;

use crate::error::{nonzero, SpecError};
use crate::Tensor4;
use dfdx::prelude::*;

/// Pooling window, stride and padding; pairs are `(height, width)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl Pool2dSpec {
    /// Checks that kernel and stride are positive and, as PyTorch requires, the padding is at
    /// most half the kernel (so every window overlaps the image).
    pub fn validate(&self) -> Result<(), SpecError> {
        nonzero(&[
            ("kernel height", self.kernel.0),
            ("kernel width", self.kernel.1),
            ("stride height", self.stride.0),
            ("stride width", self.stride.1),
        ])?;
        if 2 * self.padding.0 > self.kernel.0 || 2 * self.padding.1 > self.kernel.1 {
            return Err(SpecError::PoolPadding {
                padding: self.padding,
                kernel: self.kernel,
            });
        }
        Ok(())
    }

    /// Output `(height, width)`: `floor((in + 2 * padding - kernel) / stride) + 1`.
    pub fn output_size_checked(&self, h: usize, w: usize) -> Result<(usize, usize), SpecError> {
        self.validate()?;
        let dim = |size: usize, k: usize, s: usize, p: usize| {
            (size + 2 * p).checked_sub(k).map(|span| span / s + 1)
        };
        match (
            dim(h, self.kernel.0, self.stride.0, self.padding.0),
            dim(w, self.kernel.1, self.stride.1, self.padding.1),
        ) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(SpecError::InputTooSmall { h, w }),
        }
    }

    /// Output `(height, width)`; see [`Self::output_size_checked`].
    ///
    /// # Panics
    /// Where [`Self::output_size_checked`] returns an error.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.output_size_checked(h, w)
            .unwrap_or_else(|e| panic!("pool2d: {e}"))
    }
}

/// A device that can run [`max_pool2d`] and [`avg_pool2d`].
pub trait Pool2dKernel: Storage<f32> + Sized {
    /// See [`max_pool2d`].
    fn max_pool2d<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        spec: &Pool2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err>;

    /// See [`avg_pool2d_padded`].
    fn avg_pool2d<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        spec: &Pool2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err>;
}

/// Max pooling; padded positions count as `-inf`, so they are never the maximum. A NaN in a
/// window wins, as in PyTorch. The gradient of each output goes to the first position (row-major
/// within the window) holding the window's maximum.
///
/// # Panics
/// When the spec is invalid for the input (see [`Pool2dSpec::output_size_checked`]).
pub fn max_pool2d<D: Pool2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor4<D, T>, D::Err> {
    D::max_pool2d(
        x,
        &Pool2dSpec {
            kernel,
            stride,
            padding,
        },
    )
}

/// Average pooling without padding: every window lies inside the image and is divided by
/// `kernel.0 * kernel.1`, so PyTorch's `count_include_pad` makes no difference.
///
/// # Panics
/// When the spec is invalid for the input.
pub fn avg_pool2d<D: Pool2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: (usize, usize),
    stride: (usize, usize),
) -> Result<Tensor4<D, T>, D::Err> {
    avg_pool2d_padded(x, kernel, stride, (0, 0))
}

/// Average pooling with zero padding and `count_include_pad = true` (PyTorch's default): each
/// window's sum is divided by `kernel.0 * kernel.1` even where part of it is padding.
///
/// # Panics
/// When the spec is invalid for the input.
pub fn avg_pool2d_padded<D: Pool2dKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor4<D, T>, D::Err> {
    D::avg_pool2d(
        x,
        &Pool2dSpec {
            kernel,
            stride,
            padding,
        },
    )
}

#[cfg(test)]
mod tests;
