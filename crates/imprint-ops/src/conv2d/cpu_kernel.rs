use super::{Conv2dKernel, Conv2dSpec};
use crate::cpu_util::{col2im, gather, gemm, im2col, row_major, transposed, Chunks, Geometry};
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
///
/// Each chunk of images is one column matrix `[in * kh * kw, images * oh * ow]`, so each group
/// costs one wide product per chunk rather than one narrow product per image.
pub(crate) fn forward(x: &[f32], w: &[f32], b: Option<&[f32]>, d: &Dims) -> Vec<f32> {
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let out_channels = d.groups * cgo;
    let chunks = Chunks::new(d.batch, d.col_len() + d.out_len());
    // Every element is written below; `vec!` of zeros costs no pass of its own.
    let mut y = vec![0.0; d.batch * d.out_len()];
    y.par_chunks_mut(chunks.images * d.out_len())
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .for_each(|(ys, xs)| {
            let images = xs.len() / d.in_len();
            let pitch = images * l;
            let mut col = vec![0.0; d.geo.rows() * pitch];
            let mut prod = vec![0.0; out_channels * pitch];
            for (i, xi) in xs.chunks_exact(d.in_len()).enumerate() {
                im2col(&d.geo, xi, &mut col[i * l..], pitch);
            }
            for g in 0..d.groups {
                // prod_g[cgo, images * l] = W_g[cgo, kg] · col_g[kg, images * l]
                gemm(
                    &mut prod[g * cgo * pitch..(g + 1) * cgo * pitch],
                    row_major(&w[g * cgo * kg..(g + 1) * cgo * kg], cgo, kg),
                    row_major(&col[g * kg * pitch..(g + 1) * kg * pitch], kg, pitch),
                    false,
                    chunks.gemm_threads,
                );
            }
            for (i, yi) in ys.chunks_exact_mut(d.out_len()).enumerate() {
                for (c, row) in yi.chunks_exact_mut(l).enumerate() {
                    let src = &prod[c * pitch + i * l..][..l];
                    let bias = b.map_or(0.0, |b| b[c]);
                    row.iter_mut().zip(src).for_each(|(y, p)| *y = p + bias);
                }
            }
        });
    y
}

/// Backward pass on plain slices: adds `dL/dx` to `gx` and returns `dL/dW`.
pub(crate) fn backward(x: &[f32], w: &[f32], dy: &[f32], gx: &mut [f32], d: &Dims) -> Vec<f32> {
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let out_channels = d.groups * cgo;
    let chunks = Chunks::new(d.batch, d.col_len() + d.out_len());
    gx.par_chunks_mut(chunks.images * d.in_len())
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .zip(dy.par_chunks(chunks.images * d.out_len()))
        .fold(
            || vec![0.0; w.len()],
            |mut gw, ((gxs, xs), dys)| {
                let images = xs.len() / d.in_len();
                let pitch = images * l;
                // First the chunk's columns for dW, then dL/dcol for dx.
                let mut col = vec![0.0; d.geo.rows() * pitch];
                let mut dyc = vec![0.0; out_channels * pitch];
                for (i, xi) in xs.chunks_exact(d.in_len()).enumerate() {
                    im2col(&d.geo, xi, &mut col[i * l..], pitch);
                }
                gather(dys, &mut dyc, out_channels, l);
                for g in 0..d.groups {
                    let dy_g =
                        || row_major(&dyc[g * cgo * pitch..(g + 1) * cgo * pitch], cgo, pitch);
                    let col_g = &mut col[g * kg * pitch..(g + 1) * kg * pitch];
                    // dW_g[cgo, kg] += dY_g[cgo, images * l] · col_gᵀ[images * l, kg]
                    gemm(
                        &mut gw[g * cgo * kg..(g + 1) * cgo * kg],
                        dy_g(),
                        transposed(col_g, pitch, kg),
                        true,
                        chunks.gemm_threads,
                    );
                    // dcol_g[kg, images * l] = W_gᵀ[kg, cgo] · dY_g[cgo, images * l], over
                    // this group's columns, which dW no longer needs.
                    gemm(
                        col_g,
                        transposed(&w[g * cgo * kg..(g + 1) * cgo * kg], kg, cgo),
                        dy_g(),
                        false,
                        chunks.gemm_threads,
                    );
                }
                for (i, gxi) in gxs.chunks_exact_mut(d.in_len()).enumerate() {
                    col2im(&d.geo, &col[i * l..], pitch, gxi);
                }
                gw
            },
        )
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; w.len()])
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
            let gw = backward(&xs, &ws, &dy, grads.get_or_alloc_mut(&x_g)?, &d);
            let acc = grads.get_or_alloc_mut(&w_g)?;
            acc.iter_mut().zip(&gw).for_each(|(a, g)| *a += g);
            Ok(())
        });
        Ok(y.put_tape(tape))
    }
}
