use super::{Conv2dKernel, Conv2dSpec};
use crate::cpu_util::{batch_split, col2im, gemm, im2col, row_major, transposed, Geometry};
use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;
use rayon::prelude::*;

/// Sizes of one convolution, derived once from the spec and the input shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub batch: usize,
    pub geo: Geometry,
    pub groups: usize,
    /// Output channels per group.
    pub out_per_group: usize,
    /// Column-matrix rows per group: `in / groups * kh * kw`.
    pub k_per_group: usize,
}

impl Dims {
    pub fn new(
        spec: &Conv2dSpec,
        batch: usize,
        image: (usize, usize),
        out: (usize, usize),
    ) -> Self {
        Self {
            batch,
            geo: Geometry {
                channels: spec.in_channels,
                image,
                grid: out,
                kernel: spec.kernel,
                stride: spec.stride,
                padding: spec.padding,
                dilation: spec.dilation,
            },
            groups: spec.groups,
            out_per_group: spec.out_channels / spec.groups,
            k_per_group: spec.in_channels / spec.groups * spec.kernel.0 * spec.kernel.1,
        }
    }

    fn in_len(&self) -> usize {
        self.geo.image_len()
    }

    fn out_len(&self) -> usize {
        self.groups * self.out_per_group * self.geo.cols()
    }

    fn col_len(&self) -> usize {
        self.geo.rows() * self.geo.cols()
    }
}

/// Forward pass on plain slices: `x` is `[batch, in, h, w]`, `w` the weight, `b` the bias;
/// returns `[batch, out, oh, ow]`.
pub(crate) fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Dims) -> Vec<f32> {
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let mut y = vec![0.0; d.batch * d.out_len()];
    let (per_task, gemm_threads) = batch_split(d.batch);
    let identity = d.geo.is_identity();
    y.par_chunks_mut(per_task * d.out_len())
        .zip(x.par_chunks(per_task * d.in_len()))
        .for_each(|(ys, xs)| {
            let mut col = vec![0.0; if identity { 0 } else { d.col_len() }];
            for (yi, xi) in ys
                .chunks_exact_mut(d.out_len())
                .zip(xs.chunks_exact(d.in_len()))
            {
                let col: &[f32] = if identity {
                    xi
                } else {
                    im2col(&d.geo, xi, &mut col);
                    &col
                };
                if let Some(b) = b {
                    for (row, &bias) in yi.chunks_exact_mut(l).zip(b) {
                        row.fill(bias);
                    }
                }
                for g in 0..d.groups {
                    // y_g[cgo, l] (+)= W_g[cgo, kg] · col_g[kg, l]
                    gemm(
                        &mut yi[g * cgo * l..(g + 1) * cgo * l],
                        row_major(&w[g * cgo * kg..(g + 1) * cgo * kg], cgo, kg),
                        row_major(&col[g * kg * l..(g + 1) * kg * l], kg, l),
                        b.is_some(),
                        gemm_threads,
                    );
                }
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
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let (per_task, gemm_threads) = batch_split(d.batch);
    let identity = d.geo.is_identity();
    let task = |xs: &[f32], dys: &[f32], mut gxs: Option<&mut [f32]>| {
        let mut gw = vec![0.0; w.len()];
        // One scratch matrix per task: first the image's columns for dW, then dL/dcol for dx.
        let mut buf = vec![0.0; if identity { 0 } else { d.col_len() }];
        for (i, (xi, dyi)) in xs
            .chunks_exact(d.in_len())
            .zip(dys.chunks_exact(d.out_len()))
            .enumerate()
        {
            if !identity {
                im2col(&d.geo, xi, &mut buf);
            }
            let col: &[f32] = if identity { xi } else { &buf };
            for g in 0..d.groups {
                // dW_g[cgo, kg] += dY_g[cgo, l] · col_gᵀ[l, kg]
                gemm(
                    &mut gw[g * cgo * kg..(g + 1) * cgo * kg],
                    row_major(&dyi[g * cgo * l..(g + 1) * cgo * l], cgo, l),
                    transposed(&col[g * kg * l..(g + 1) * kg * l], l, kg),
                    true,
                    gemm_threads,
                );
            }
            let Some(gxs) = gxs.as_deref_mut() else {
                continue;
            };
            let gxi = &mut gxs[i * d.in_len()..(i + 1) * d.in_len()];
            // dcol_g[kg, l] = W_gᵀ[kg, cgo] · dY_g[cgo, l], then dx += col2im(dcol). With an
            // identity geometry the column matrix is the image, so the product lands in dx.
            let dcol_into = |dcol: &mut [f32], accumulate: bool| {
                for g in 0..d.groups {
                    gemm(
                        &mut dcol[g * kg * l..(g + 1) * kg * l],
                        transposed(&w[g * cgo * kg..(g + 1) * cgo * kg], kg, cgo),
                        row_major(&dyi[g * cgo * l..(g + 1) * cgo * l], cgo, l),
                        accumulate,
                        gemm_threads,
                    );
                }
            };
            if identity {
                dcol_into(gxi, true);
            } else {
                dcol_into(&mut buf, false);
                col2im(&d.geo, &buf, gxi);
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

/// Adds the per-channel sums of `dy` (`[batch, channels, plane]`) to `gb`.
pub(crate) fn bias_grad(dy: &[f32], channels: usize, plane: usize, gb: &mut [f32]) {
    assert_eq!(gb.len(), channels);
    if dy.is_empty() {
        return;
    }
    for img in dy.chunks_exact(channels * plane) {
        for (g, row) in gb.iter_mut().zip(img.chunks_exact(plane)) {
            *g += row.iter().sum::<f32>();
        }
    }
}

impl Conv2dKernel for Cpu {
    fn conv2d<S: Shape, T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        weight: &Tensor<S, f32, Self>,
        bias: Option<&Tensor1<Self>>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let (n, c, h, w) = *x.shape();
        let out = spec
            .check(
                (c, h, w),
                weight.shape().num_elements(),
                bias.map(|b| b.shape().0),
            )
            .unwrap_or_else(|e| panic!("conv2d: {e}"));
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
        let shape = (n, spec.out_channels, out.0, out.1);
        let y = dev.try_tensor_from_vec(y, shape)?;
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
