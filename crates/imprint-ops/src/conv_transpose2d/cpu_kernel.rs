use super::{ConvTranspose2dKernel, ConvTranspose2dSpec};
use crate::conv2d::cpu_kernel::{on_tape, Kernels};
use crate::cpu_util::{
    col2im, gather, gemm, im2col, optional_chunks, row_major, sum_in_order, transposed,
    with_scratch, Chunks, Geometry, CHUNK_SCRATCH,
};
use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;
use rayon::prelude::*;

/// Sizes of one transposed convolution. The column matrix has one column per *input* pixel and
/// one row per (output channel, kernel offset); col2im scatters it onto the output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub batch: usize,
    /// Image = the output `[out, oh, ow]`, grid = the input's `(h, w)`.
    pub geo: Geometry,
    pub groups: usize,
    /// Input channels per group.
    pub in_per_group: usize,
    /// Column-matrix rows per group: `out / groups * kh * kw`.
    pub k_per_group: usize,
}

impl Dims {
    pub fn new(
        spec: &ConvTranspose2dSpec,
        batch: usize,
        input: (usize, usize),
        out: (usize, usize),
    ) -> Self {
        Self {
            batch,
            geo: Geometry {
                channels: spec.out_channels,
                image: out,
                grid: input,
                kernel: spec.kernel,
                stride: spec.stride,
                padding: spec.padding,
                dilation: spec.dilation,
            },
            groups: spec.groups,
            in_per_group: spec.in_channels / spec.groups,
            k_per_group: spec.out_channels / spec.groups * spec.kernel.0 * spec.kernel.1,
        }
    }

    fn in_len(&self) -> usize {
        self.groups * self.in_per_group * self.geo.cols()
    }

    fn out_len(&self) -> usize {
        self.geo.image_len()
    }

    fn col_len(&self) -> usize {
        self.geo.rows() * self.geo.cols()
    }
}

/// Forward pass on plain slices: `x` is `[batch, in, h, w]`; returns `[batch, out, oh, ow]`.
///
/// Each chunk of images is gathered into one `[in, images * h * w]` matrix, so each group
/// costs one wide product per chunk rather than one narrow product per image.
pub(crate) fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Dims) -> Vec<f32> {
    let (l, cgi, kg) = (d.geo.cols(), d.in_per_group, d.k_per_group);
    let in_channels = d.groups * cgi;
    let plane = d.geo.image.0 * d.geo.image.1;
    let chunks = Chunks::new(d.batch, d.col_len() + d.in_len());
    let mut y = vec![0.0; d.batch * d.out_len()];
    y.par_chunks_mut(chunks.images * d.out_len())
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .for_each(|(ys, xs)| {
            let images = xs.len() / d.in_len();
            let pitch = images * l;
            with_scratch(&CHUNK_SCRATCH, xs.len() + d.geo.rows() * pitch, |buf| {
                let (xc, col) = buf.split_at_mut(xs.len());
                gather(xs, xc, in_channels, l);
                for g in 0..d.groups {
                    // col_g[kg, images * l] = W_gᵀ[kg, cgi] · x_g[cgi, images * l]
                    gemm(
                        &mut col[g * kg * pitch..(g + 1) * kg * pitch],
                        transposed(&w[g * cgi * kg..(g + 1) * cgi * kg], kg, cgi),
                        row_major(&xc[g * cgi * pitch..(g + 1) * cgi * pitch], cgi, pitch),
                        false,
                        chunks.gemm_threads,
                    );
                }
                for (i, yi) in ys.chunks_exact_mut(d.out_len()).enumerate() {
                    if let Some(b) = b {
                        for (row, &bias) in yi.chunks_exact_mut(plane).zip(b) {
                            row.fill(bias);
                        }
                    }
                    col2im(&d.geo, &col[i * l..], pitch, yi);
                }
            });
        });
    y
}

/// Backward pass on plain slices: adds `dL/dx` to `gx` (where given) and returns `dL/dW`.
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gx: Option<&mut [f32]>,
    d: &Dims,
) -> Vec<f32> {
    let (l, cgi, kg) = (d.geo.cols(), d.in_per_group, d.k_per_group);
    let in_channels = d.groups * cgi;
    let chunks = Chunks::new(d.batch, d.col_len() + d.in_len());
    let gxs = optional_chunks(
        gx,
        chunks.images * d.in_len(),
        d.batch.div_ceil(chunks.images),
    );
    // One dW per chunk, summed in chunk order: a fold's grouping follows the work stealing, and
    // float sums in another order would make runs differ.
    let parts: Vec<Vec<f32>> = gxs
        .into_par_iter()
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .zip(dy.par_chunks(chunks.images * d.out_len()))
        .map(|((gxs, xs), dys)| {
            let mut gw = vec![0.0; w.len()];
            let images = xs.len() / d.in_len();
            let pitch = images * l;
            with_scratch(&CHUNK_SCRATCH, xs.len() + d.geo.rows() * pitch, |buf| {
                // `xc` holds first the chunk's inputs for dW, then dL/dx in the same layout.
                let (xc, dcol) = buf.split_at_mut(xs.len());
                for (i, dyi) in dys.chunks_exact(d.out_len()).enumerate() {
                    im2col(&d.geo, dyi, &mut dcol[i * l..], pitch);
                }
                gather(xs, xc, in_channels, l);
                for g in 0..d.groups {
                    let dcol_g = &dcol[g * kg * pitch..(g + 1) * kg * pitch];
                    let x_g = &mut xc[g * cgi * pitch..(g + 1) * cgi * pitch];
                    // dW_g[cgi, kg] += x_g[cgi, images * l] · dcol_gᵀ[images * l, kg]
                    gemm(
                        &mut gw[g * cgi * kg..(g + 1) * cgi * kg],
                        row_major(x_g, cgi, pitch),
                        transposed(dcol_g, pitch, kg),
                        true,
                        chunks.gemm_threads,
                    );
                    if gxs.is_none() {
                        continue;
                    }
                    // dx_g[cgi, images * l] = W_g[cgi, kg] · dcol_g[kg, images * l]
                    gemm(
                        x_g,
                        row_major(&w[g * cgi * kg..(g + 1) * cgi * kg], cgi, kg),
                        row_major(dcol_g, kg, pitch),
                        false,
                        chunks.gemm_threads,
                    );
                }
                let gxs = gxs.into_iter().flat_map(|g| g.chunks_exact_mut(d.in_len()));
                for (i, gxi) in gxs.enumerate() {
                    for (c, row) in gxi.chunks_exact_mut(l).enumerate() {
                        let src = &xc[c * pitch + i * l..][..l];
                        row.iter_mut().zip(src).for_each(|(g, v)| *g += v);
                    }
                }
            });
            gw
        })
        .collect();
    sum_in_order(&parts, w.len())
}

impl ConvTranspose2dKernel for Cpu {
    fn conv_transpose2d<S: Shape, T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        weight: &Tensor<S, f32, Self>,
        bias: Option<&Tensor1<Self>>,
        spec: &ConvTranspose2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let (n, c, h, w) = *x.shape();
        let out = spec
            .check(
                (c, h, w),
                weight.shape().num_elements(),
                bias.map(|b| b.shape().0),
            )
            .unwrap_or_else(|e| panic!("conv_transpose2d: {e}"));
        let d = Dims::new(spec, n, (h, w), out);
        let shape = (spec.out_channels, out);
        #[cfg(target_arch = "x86_64")]
        if let Some((conv_dims, plan)) = super::direct_kernel::plan(&d) {
            use super::direct_kernel as direct;
            let plan = std::sync::Arc::new(plan);
            let fwd_plan = plan.clone();
            let kernels = Kernels {
                forward: |x: &[f32], w: &[f32], b: Option<&[f32]>| {
                    direct::forward(x, w, b, &conv_dims, &fwd_plan)
                },
                backward: move |x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>| {
                    direct::backward(x, w, dy, gx, &conv_dims, &plan)
                },
            };
            return on_tape(x, weight, bias, shape, true, kernels);
        }
        let kernels = Kernels {
            forward: |x: &[f32], w: &[f32], b: Option<&[f32]>| forward(x, w, b, &d),
            backward: move |x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>| {
                backward(x, w, dy, gx, &d)
            },
        };
        on_tape(x, weight, bias, shape, true, kernels)
    }
}
