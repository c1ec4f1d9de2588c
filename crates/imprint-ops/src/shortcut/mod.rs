//! The option-A shortcut of CIFAR ResNets (He et al. 2016, §4.2): every `stride`-th pixel of
//! each channel, with zero channels added before and after, so the identity path matches a
//! block that halves the size and widens the channels. PyTorch writes it
//! `F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, before, after))`.

mod cpu_kernel;

use crate::Tensor4;
use dfdx::prelude::*;

/// A device that can run [`subsample_pad_channels`].
pub trait ShortcutKernel: Storage<f32> + Sized {
    /// See [`subsample_pad_channels`].
    fn subsample_pad_channels<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        stride: usize,
        channels: (usize, usize),
    ) -> Result<Tensor4<Self, T>, Self::Err>;
}

/// `[n, c, h, w]` -> `[n, before + c + after, ceil(h / stride), ceil(w / stride)]`: pixel
/// `(y, x)` of channel `k` is `x[k - before, y * stride, x * stride]`, zero for the added
/// channels. With an owned tape, the backward pass hands each output's gradient back to the
/// pixel it came from.
///
/// # Panics
/// When `stride` is 0.
pub fn subsample_pad_channels<D: ShortcutKernel, T: Tape<f32, D>>(
    x: Tensor4<D, T>,
    stride: usize,
    (before, after): (usize, usize),
) -> Result<Tensor4<D, T>, D::Err> {
    assert!(
        stride > 0,
        "subsample_pad_channels: stride must be at least 1"
    );
    D::subsample_pad_channels(x, stride, (before, after))
}

#[cfg(test)]
mod tests;
