//! conv_transpose2d on the direct kernels: the adjoint of a convolution from the output's size
//! to the input's, so its passes are those of [`crate::conv2d`] with the roles turned around.

use crate::conv2d::cpu_kernel::Dims as ConvDims;
use crate::conv2d::direct_kernel as conv;
use crate::cpu_util::zeros;
use crate::direct::{Plan, Start};

/// The convolution this op is the adjoint of, and its direct plan, where the CPU and the
/// convolution allow one (see [`conv::plan`]).
pub(crate) fn plan(d: &super::cpu_kernel::Dims) -> Option<(ConvDims, Plan)> {
    let conv_dims = ConvDims {
        batch: d.batch,
        geo: d.geo,
        groups: d.groups,
        out_per_group: d.in_per_group,
        k_per_group: d.k_per_group,
    };
    let plan = conv::plan(&conv_dims)?;
    Some((conv_dims, plan))
}

/// Forward pass on plain slices: `y = b + convᵀ(x)`.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    d: &ConvDims,
    plan: &Plan,
) -> Vec<f32> {
    let mut y = zeros(d.batch * d.in_len());
    if let Some(b) = b {
        let plane = d.geo.image.0 * d.geo.image.1;
        for (row, &bias) in y.chunks_exact_mut(plane).zip(b.iter().cycle()) {
            row.fill(bias);
        }
    }
    conv::adjoint_into(w, x, &mut y, d, plan);
    y
}

/// Backward pass on plain slices: adds `dL/dx = conv(dy)` to `gx` (where given) and returns
/// `dL/dW`, the convolution's weight gradient with `dy` as its input and `x` as its output
/// gradient.
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gx: Option<&mut [f32]>,
    d: &ConvDims,
    plan: &Plan,
) -> Vec<f32> {
    if let Some(gx) = gx {
        conv::forward_into(dy, w, Start::Accumulate, gx, d, plan);
    }
    conv::backward(dy, w, x, None, d, plan)
}
