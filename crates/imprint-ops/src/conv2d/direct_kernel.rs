//! conv2d on the direct kernels (see [`crate::direct`]), for one group whose image is the
//! stride times the output grid: all of ResNet's and the autoencoder's convolutions.

use super::cpu_kernel::Dims;
use crate::cpu_util::{
    optional_chunks, sum_in_order, with_scratch, Chunks, CHUNK_SCRATCH, IO_SCRATCH,
};
use crate::direct::{
    self, merge_planes_add, pad_channels, padded_stride, split_planes, Packed, Plan, Start, TapSet,
};
use rayon::prelude::*;

/// The direct plan of `d`, where the CPU and the convolution allow one.
pub(crate) fn plan(d: &Dims) -> Option<Plan> {
    if d.groups != 1 || !direct::available() {
        return None;
    }
    Plan::new(&d.geo)
}

/// Runs `f` on the channels of `images` split into sub-planes and copied `stride` apart (on
/// `images` themselves where they need neither).
fn with_planes<R>(images: &[f32], plan: &Plan, stride: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    if plan.planes() == 1 && stride == plan.plane_len() {
        return f(images);
    }
    let channels = images.len() / (plan.planes() * plan.plane_len());
    with_scratch(&CHUNK_SCRATCH, channels * stride, |split| {
        split_planes(images, plan, split, stride);
        f(split)
    })
}

/// Forward pass on plain slices, as [`super::cpu_kernel::forward`]; images in parallel.
pub(crate) fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Dims, plan: &Plan) -> Vec<f32> {
    let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, plan.taps.len());
    let plane_len = plan.plane_len();
    let taps = TapSet::new(plan.grid, &plan.taps);
    let packed = Packed::new((cout, cin, ntaps), |o, i, t| w[(o * cin + i) * ntaps + t]);
    let start = b.map_or(Start::Zero, Start::Bias);
    let mut y = vec![0.0; d.batch * d.out_len()];
    y.par_chunks_mut(d.out_len())
        .zip(x.par_chunks(d.in_len()))
        .for_each(|(yi, xi)| {
            let stride = padded_stride(plan.planes() * plane_len);
            with_planes(xi, plan, stride, |src| {
                direct::conv(src, stride, &taps, &packed, yi, plane_len, start);
            })
        });
    y
}

/// Backward pass on plain slices, as [`super::cpu_kernel::backward`]: adds `dL/dx` to `gx`
/// (where given) and returns `dL/dW`.
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gx: Option<&mut [f32]>,
    d: &Dims,
    plan: &Plan,
) -> Vec<f32> {
    let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, plan.taps.len());
    let (plane_len, len) = (plan.plane_len(), cout * cin * ntaps);
    let taps = TapSet::new(plan.grid, &plan.taps);
    let adjoints = match gx {
        Some(_) => adjoints(w, d, plan),
        None => Vec::new(),
    };
    let chunks = Chunks::new(d.batch, d.in_len() + d.out_len());
    let gxs = optional_chunks(
        gx,
        chunks.images * d.in_len(),
        d.batch.div_ceil(chunks.images),
    );
    let dy_stride = padded_stride(plane_len);
    // One dW per chunk, summed in chunk order (the chunks cut by the batch alone), so that the
    // result does not depend on the thread count.
    let parts: Vec<Vec<f32>> = gxs
        .into_par_iter()
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .zip(dy.par_chunks(chunks.images * d.out_len()))
        .map(|((gxs, xs), dys)| {
            // dy copied once, channels apart as the forward kernel wants them, for both dx
            // and dW.
            with_scratch(&IO_SCRATCH, dys.len() / plane_len * dy_stride, |dyp| {
                pad_channels(dys, plane_len, dyp, dy_stride);
                let dy_images = dyp.chunks(cout * dy_stride);
                for (gxi, dyi) in gxs
                    .into_iter()
                    .flat_map(|g| g.chunks_exact_mut(d.in_len()))
                    .zip(dy_images)
                {
                    adjoint(dyi, dy_stride, &adjoints, gxi, plan);
                }
                let mut gw = vec![0.0; len];
                let x_stride = plan.planes() * plane_len;
                with_planes(xs, plan, x_stride, |src| {
                    let dy = (&dyp[..], dy_stride);
                    direct::weight_grad(src, x_stride, dy, (cout, cin), &taps, &mut gw);
                });
                gw
            })
        })
        .collect();
    sum_in_order(&parts, len)
}

/// The taps and packed weights of `dL/dx`, one set per sub-plane of the input: the taps that
/// read that sub-plane, turned around.
fn adjoints(w: &[f32], d: &Dims, plan: &Plan) -> Vec<(TapSet, Packed)> {
    let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, plan.taps.len());
    (0..plan.planes())
        .map(|s| {
            let (taps, index) = plan.adjoint_taps(s);
            let packed = Packed::new((cin, cout, taps.len()), |i, o, t| {
                w[(o * cin + i) * ntaps + index[t]]
            });
            (TapSet::new(plan.grid, &taps), packed)
        })
        .collect()
}

/// Adds to `gxi` the adjoint convolutions of one image's output gradient `src` (channels
/// `stride` apart), one per sub-plane of the input.
fn adjoint(
    src: &[f32],
    stride: usize,
    adjoints: &[(TapSet, Packed)],
    gxi: &mut [f32],
    plan: &Plan,
) {
    let plane_len = plan.plane_len();
    if let [(taps, packed)] = adjoints {
        let start = Start::Accumulate;
        return direct::conv(src, stride, taps, packed, gxi, plane_len, start);
    }
    with_scratch(&CHUNK_SCRATCH, gxi.len(), |split| {
        let split_stride = plan.planes() * plane_len;
        for (s, (taps, packed)) in adjoints.iter().enumerate() {
            let dst = &mut split[s * plane_len..];
            direct::conv(src, stride, taps, packed, dst, split_stride, Start::Zero);
        }
        merge_planes_add(split, plan, gxi);
    });
}
