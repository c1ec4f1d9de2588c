use super::{ConvTranspose2dKernel, ConvTranspose2dSpec};
use crate::conv2d::cpu_kernel::bias_grad;
use crate::cpu_util::{batch_split, col2im, gemm, im2col, row_major, transposed, Geometry};
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
pub(crate) fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Dims) -> Vec<f32> {
    let (l, cgi, kg) = (d.geo.cols(), d.in_per_group, d.k_per_group);
    let plane = d.geo.image.0 * d.geo.image.1;
    let mut y = vec![0.0; d.batch * d.out_len()];
    let (per_task, gemm_threads) = batch_split(d.batch);
    y.par_chunks_mut(per_task * d.out_len())
        .zip(x.par_chunks(per_task * d.in_len()))
        .for_each(|(ys, xs)| {
            let mut col = vec![0.0; d.col_len()];
            for (yi, xi) in ys
                .chunks_exact_mut(d.out_len())
                .zip(xs.chunks_exact(d.in_len()))
            {
                for g in 0..d.groups {
                    // col_g[kg, l] = W_gᵀ[kg, cgi] · x_g[cgi, l]
                    gemm(
                        &mut col[g * kg * l..(g + 1) * kg * l],
                        transposed(&w[g * cgi * kg..(g + 1) * cgi * kg], kg, cgi),
                        row_major(&xi[g * cgi * l..(g + 1) * cgi * l], cgi, l),
                        false,
                        gemm_threads,
                    );
                }
                if let Some(b) = b {
                    for (row, &bias) in yi.chunks_exact_mut(plane).zip(b) {
                        row.fill(bias);
                    }
                }
                col2im(&d.geo, &col, yi);
            }
        });
    y
}

/// Backward pass on plain slices: adds `dL/dx` to `gx` (when given) and returns `dL/dW`.
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gx: Option<&mut [f32]>,
    d: &Dims,
) -> Vec<f32> {
    let (l, cgi, kg) = (d.geo.cols(), d.in_per_group, d.k_per_group);
    let (per_task, gemm_threads) = batch_split(d.batch);
    let task = |xs: &[f32], dys: &[f32], mut gxs: Option<&mut [f32]>| {
        let mut gw = vec![0.0; w.len()];
        let mut dcol = vec![0.0; d.col_len()];
        for (i, (xi, dyi)) in xs
            .chunks_exact(d.in_len())
            .zip(dys.chunks_exact(d.out_len()))
            .enumerate()
        {
            im2col(&d.geo, dyi, &mut dcol);
            for g in 0..d.groups {
                // dW_g[cgi, kg] += x_g[cgi, l] · dcol_gᵀ[l, kg]
                gemm(
                    &mut gw[g * cgi * kg..(g + 1) * cgi * kg],
                    row_major(&xi[g * cgi * l..(g + 1) * cgi * l], cgi, l),
                    transposed(&dcol[g * kg * l..(g + 1) * kg * l], l, kg),
                    true,
                    gemm_threads,
                );
            }
            let Some(gxs) = gxs.as_deref_mut() else {
                continue;
            };
            let gxi = &mut gxs[i * d.in_len()..(i + 1) * d.in_len()];
            for g in 0..d.groups {
                // dx_g[cgi, l] += W_g[cgi, kg] · dcol_g[kg, l]
                gemm(
                    &mut gxi[g * cgi * l..(g + 1) * cgi * l],
                    row_major(&w[g * cgi * kg..(g + 1) * cgi * kg], cgi, kg),
                    row_major(&dcol[g * kg * l..(g + 1) * kg * l], kg, l),
                    true,
                    gemm_threads,
                );
            }
        }
        gw
    };
    let partials: Vec<Vec<f32>> = match gx {
        Some(gx) => gx
            .par_chunks_mut(per_task * d.in_len())
            .zip(x.par_chunks(per_task * d.in_len()))
            .zip(dy.par_chunks(per_task * d.out_len()))
            .map(|((gxs, xs), dys)| task(xs, dys, Some(gxs)))
            .collect(),
        None => x
            .par_chunks(per_task * d.in_len())
            .zip(dy.par_chunks(per_task * d.out_len()))
            .map(|(xs, dys)| task(xs, dys, None))
            .collect(),
    };
    let mut parts = partials.into_iter();
    let mut gw = parts.next().unwrap_or_else(|| vec![0.0; w.len()]);
    for p in parts {
        gw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    gw
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
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();

        let mut xs = vec![0.0; x.shape().num_elements()];
        x.copy_into(&mut xs);
        let mut ws = vec![0.0; spec.weight_len()];
        weight.copy_into(&mut ws);
        let bs = bias.map(|b| {
            let mut v = vec![0.0; spec.out_channels];
            b.copy_into(&mut v);
            v
        });
        let y = forward(&xs, &ws, bs.as_deref(), &d);
        let y = dev.try_tensor_from_vec(y, (n, spec.out_channels, out.0, out.1))?;
        if !T::OWNS_TAPE {
            return Ok(y.put_tape(tape));
        }
        let (x_g, w_g, y_g) = (x.ghost(), weight.ghost(), y.ghost());
        let b_g = bias.map(|b| b.ghost());
        let channels = spec.out_channels;
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.to_vec();
            if let Some(b_g) = &b_g {
                bias_grad(&dy, channels, out.0 * out.1, grads.get_or_alloc_mut(b_g)?);
            }
            let gw = backward(
                &xs,
                &ws,
                &dy,
                Some(&mut grads.get_or_alloc_mut(&x_g)?[..]),
                &d,
            );
            let acc = grads.get_or_alloc_mut(&w_g)?;
            acc.iter_mut().zip(&gw).for_each(|(a, g)| *a += g);
            Ok(())
        });
        Ok(y.put_tape(tape))
    }
}
