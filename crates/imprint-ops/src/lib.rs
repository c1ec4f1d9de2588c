//! Convolution-family operations for [dfdx] on stable Rust, each a first-class op on the tape
//! with a hand-written backward pass.
//!
//! Images are NCHW tensors with runtime shapes ([`Tensor4`]). Weights are accepted as tensors of
//! any shape whose element count matches, laid out like PyTorch:
//!
//! | op | weight layout | bias |
//! |----|---------------|------|
//! | [`conv2d`] | `[out, in / groups, kh, kw]` (`Conv2d.weight`) | `[out]` |
//! | [`conv_transpose2d`] | `[in, out / groups, kh, kw]` (`ConvTranspose2d.weight`) | `[out]` |
//!
//! Gradients flow to every tensor an op reads (input, weight, bias, batch-norm scale and shift)
//! whenever the input carries an owned tape, exactly as with dfdx's built-in ops. Parameters
//! are taken by reference and never need a tape of their own.
//!
//! Each op is declared as a device trait ([`Conv2dKernel`], [`ConvTranspose2dKernel`],
//! [`Pool2dKernel`], [`BatchNorm2dKernel`], [`FusedBatchNorm2dKernel`]) plus a generic
//! function; this crate implements them for [`dfdx::prelude::Cpu`]. Convolutions with one
//! group whose image is the stride times the output grid (the usual "same" and strided 3x3 and
//! 4x4 layers) run on direct AVX-512 kernels where the CPU has them (and [`NO_AVX512_VAR`] does
//! not turn AVX-512 off); all others, and every convolution on other CPUs, use im2col + gemm, the batch cut into chunks of images that share
//! one column matrix (one wide product per chunk). Either way images are spread over rayon's
//! threads, cut by the batch and image size alone, so results do not depend on the thread
//! count. Another device can implement the traits beside it.
//!
//! Convolutions, transposed convolutions and the fused dense layer take their products in the
//! calling thread's [`Precision`] ([`with_precision`]): f32, or bf16 inputs with f32 sums on
//! AMX tiles or AVX512-BF16, whichever the CPU has ([`ProductKernel`]); everything else is f32.
//!
//! Dropout needs nothing new: dfdx's own [`dfdx::tensor_ops::dropout`] is generic over the
//! shape, so it already works on [`Tensor4`] (it always drops; apply it only while training).

mod allocator;
#[cfg(target_arch = "x86_64")]
#[clippy::msrv = "1.89"]
mod amx;
mod batch_norm2d;
mod conv2d;
mod conv_transpose2d;
mod cpu_util;
mod denormals;
#[cfg(target_arch = "x86_64")]
mod direct;
mod error;
mod isa;
mod linear;
mod matmul;
mod pool2d;
mod precision;
mod shortcut;

#[cfg(test)]
mod dropout_tests;
#[cfg(test)]
mod test_util;

pub use allocator::tune_allocator;
pub use batch_norm2d::{
    batch_norm2d_add_relu_train, batch_norm2d_eval, batch_norm2d_relu_train, batch_norm2d_train,
    with_synced_statistics, BatchNorm2dKernel, FusedBatchNorm2dKernel, SumOverReplicas,
    TrainOutput,
};
pub use conv2d::{conv2d, Conv2dKernel, Conv2dSpec};
pub use conv_transpose2d::{conv_transpose2d, ConvTranspose2dKernel, ConvTranspose2dSpec};
pub use denormals::flush_denormals;
pub use error::SpecError;
pub use isa::{avx2, avx512, avx512_switched_off, NO_AVX512_VAR};
pub use linear::{linear, Activation, LinearKernel};
pub use pool2d::{avg_pool2d, avg_pool2d_padded, max_pool2d, Pool2dKernel, Pool2dSpec};
pub use precision::{
    current_kernel, with_kernel, with_precision, Choice, Precision, ProductKernel,
};
pub use shortcut::{subsample_pad_channels, ShortcutKernel};

use dfdx::prelude::{NoneTape, Tensor};

/// An NCHW image batch with runtime dimensions.
pub type Tensor4<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// A runtime-length vector, used for biases and per-channel parameters.
pub type Tensor1<D> = Tensor<(usize,), f32, D>;

/// A `[rows, cols]` matrix (a batch of flat rows), with or without a tape.
pub type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;
