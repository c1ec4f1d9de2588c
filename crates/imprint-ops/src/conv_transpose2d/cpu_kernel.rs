use super::{ConvTranspose2dKernel, ConvTranspose2dSpec};
use crate::conv2d::cpu_kernel::{checked_output, choose, on_tape, Dims, SliceOp};
use crate::precision::current_kernel;
use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;

impl ConvTranspose2dKernel for Cpu {
    fn conv_transpose2d<S: Shape, T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        weight: &Tensor<S, f32, Self>,
        bias: Option<&Tensor1<Self>>,
        spec: &ConvTranspose2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let check = |i, w, b| spec.check(i, w, b);
        let out = checked_output("conv_transpose2d", &x, weight, bias, check);
        let (n, _, h, w) = *x.shape();
        // The convolution this op is the adjoint of maps its output back to its input.
        let passes = choose(Dims::new(&spec.as_conv(), n, out, (h, w)), current_kernel());
        on_tape(
            x,
            weight,
            bias,
            (spec.out_channels, out),
            true,
            SliceOp::Transposed(passes),
        )
    }
}
