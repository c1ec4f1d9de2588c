use super::{Conv2dKernel, Conv2dSpec};
use crate::cpu_util::{
    col2im, gather, gemm, im2col, optional_chunks, row_major, sum_in_order, transposed,
    with_scratch, Chunks, Geometry, PooledVec, CHUNK_SCRATCH, IO_SCRATCH,
};
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

    pub fn in_len(&self) -> usize {
        self.geo.image_len()
    }

    pub fn out_len(&self) -> usize {
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
    // Every element is overwritten below; a large zeroed `vec!` comes from fresh zero pages
    // rather than a fill pass.
    let mut y = vec![0.0; d.batch * d.out_len()];
    y.par_chunks_mut(chunks.images * d.out_len())
        .zip(x.par_chunks(chunks.images * d.in_len()))
        .for_each(|(ys, xs)| {
            let images = xs.len() / d.in_len();
            let pitch = images * l;
            let col_len = d.geo.rows() * pitch;
            with_scratch(&CHUNK_SCRATCH, col_len + out_channels * pitch, |buf| {
                let (col, prod) = buf.split_at_mut(col_len);
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
    let (l, cgo, kg) = (d.geo.cols(), d.out_per_group, d.k_per_group);
    let out_channels = d.groups * cgo;
    let chunks = Chunks::new(d.batch, d.col_len() + d.out_len());
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
            let col_len = d.geo.rows() * pitch;
            with_scratch(&CHUNK_SCRATCH, col_len + out_channels * pitch, |buf| {
                // `col` holds first the chunk's columns for dW, then dL/dcol for dx.
                let (col, dyc) = buf.split_at_mut(col_len);
                for (i, xi) in xs.chunks_exact(d.in_len()).enumerate() {
                    im2col(&d.geo, xi, &mut col[i * l..], pitch);
                }
                gather(dys, dyc, out_channels, l);
                for g in 0..d.groups {
                    let dy_g = row_major(&dyc[g * cgo * pitch..(g + 1) * cgo * pitch], cgo, pitch);
                    let col_g = &mut col[g * kg * pitch..(g + 1) * kg * pitch];
                    // dW_g[cgo, kg] += dY_g[cgo, images * l] · col_gᵀ[images * l, kg]
                    gemm(
                        &mut gw[g * cgo * kg..(g + 1) * cgo * kg],
                        dy_g,
                        transposed(col_g, pitch, kg),
                        true,
                        chunks.gemm_threads,
                    );
                    if gxs.is_none() {
                        continue;
                    }
                    // dcol_g[kg, images * l] = W_gᵀ[kg, cgo] · dY_g[cgo, images * l],
                    // over this group's columns, which dW no longer needs.
                    gemm(
                        col_g,
                        transposed(&w[g * cgo * kg..(g + 1) * cgo * kg], kg, cgo),
                        row_major(&dyc[g * cgo * pitch..(g + 1) * cgo * pitch], cgo, pitch),
                        false,
                        chunks.gemm_threads,
                    );
                }
                for (i, gxi) in gxs
                    .into_iter()
                    .flat_map(|g| g.chunks_exact_mut(d.in_len()))
                    .enumerate()
                {
                    col2im(&d.geo, &col[i * l..], pitch, gxi);
                }
            });
            gw
        })
        .collect();
    sum_in_order(&parts, w.len())
}

/// Adds the per-channel sums of `dy` (`[batch, channels, plane]`) to `gb`, the images split
/// between threads.
fn bias_grad(dy: &[f32], channels: usize, plane: usize, gb: &mut [f32]) {
    assert_eq!(gb.len(), channels);
    if dy.is_empty() {
        return;
    }
    // Per-image sums added in image order, for the same reason as in `backward`.
    let parts: Vec<Vec<f32>> = dy
        .par_chunks_exact(channels * plane)
        .map(|img| img.chunks_exact(plane).map(lane_sum).collect())
        .collect();
    let sums = sum_in_order(&parts, channels);
    gb.iter_mut().zip(&sums).for_each(|(g, s)| *g += s);
}

/// Sum of `v` over eight running totals: one total makes every add wait for the previous one,
/// eight let them pipeline and vectorise.
fn lane_sum(v: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        lanes.iter_mut().zip(c).for_each(|(l, x)| *l += x);
    }
    lanes.iter().sum::<f32>() + rest
}

/// The forward and backward kernels of a convolution-like op on plain slices: forward `(x, w,
/// bias) -> y`, backward `(x, w, dy, dx accumulator if wanted) -> dw`.
pub(crate) struct Kernels<F, B> {
    pub forward: F,
    pub backward: B,
}

/// Runs `kernels.forward` on `x` (`[n, _, _, _]`) into `[n, out_channels, out.0, out.1]` and,
/// when `x` owns its tape, records the backward pass for `x` (where `input_grad`), `weight`
/// and `bias`. Shared by [`conv2d`](crate::conv2d) and
/// [`conv_transpose2d`](crate::conv_transpose2d), which differ in their kernels only.
pub(crate) fn on_tape<S, T, F, B>(
    x: Tensor4<Cpu, T>,
    weight: &Tensor<S, f32, Cpu>,
    bias: Option<&Tensor1<Cpu>>,
    (out_channels, out): (usize, (usize, usize)),
    input_grad: bool,
    kernels: Kernels<F, B>,
) -> Result<Tensor4<Cpu, T>, CpuError>
where
    S: Shape,
    T: Tape<f32, Cpu>,
    F: FnOnce(&[f32], &[f32], Option<&[f32]>) -> Vec<f32>,
    B: Fn(&[f32], &[f32], &[f32], Option<&mut [f32]>) -> Vec<f32> + Send + Sync + 'static,
{
    let n = x.shape().0;
    let shape = (n, out_channels, out.0, out.1);
    let dev = x.device().clone();
    let (x, mut tape) = x.split_tape();
    let mut ws = vec![0.0; weight.shape().num_elements()];
    weight.copy_into(&mut ws);
    let bs = bias.map(|b| {
        let mut v = vec![0.0; out_channels];
        b.copy_into(&mut v);
        v
    });
    // The kernels read plain slices. Without a tape the copy of `x` goes to reused scratch,
    // which spares faulting in new pages per call; with one, the backward pass keeps it.
    let x_len = x.shape().num_elements();
    if !T::OWNS_TAPE {
        let y = with_scratch(&IO_SCRATCH, x_len, |xs| {
            x.copy_into(xs);
            (kernels.forward)(xs, &ws, bs.as_deref())
        });
        return Ok(dev.try_tensor_from_vec(y, shape)?.put_tape(tape));
    }
    let mut xs = PooledVec::new(x_len);
    x.copy_into(xs.as_mut_slice());
    let y = (kernels.forward)(xs.as_slice(), &ws, bs.as_deref());
    let y = dev.try_tensor_from_vec(y, shape)?;
    let (x_g, w_g, y_g) = (x.ghost(), weight.ghost(), y.ghost());
    let b_g = bias.map(|b| b.ghost());
    let backward = kernels.backward;
    tape.add_backward_op(move |grads| {
        // Taken out of the gradients for the kernels to read beside dL/dx, rather than
        // copied; put back below.
        let dy = std::mem::take(&mut **grads.get_or_alloc_mut(&y_g)?);
        if let Some(b_g) = &b_g {
            bias_grad(
                &dy,
                out_channels,
                out.0 * out.1,
                grads.get_or_alloc_mut(b_g)?,
            );
        }
        let gx = match input_grad {
            true => Some(&mut grads.get_or_alloc_mut(&x_g)?[..]),
            false => None,
        };
        let gw = backward(xs.as_slice(), &ws, &dy, gx);
        **grads.get_or_alloc_mut(&y_g)? = dy;
        let acc = grads.get_or_alloc_mut(&w_g)?;
        acc.iter_mut().zip(&gw).for_each(|(a, g)| *a += g);
        Ok(())
    });
    Ok(y.put_tape(tape))
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
        let shape = (spec.out_channels, out);
        #[cfg(target_arch = "x86_64")]
        if let Some(plan) = super::direct_kernel::plan(&d) {
            use super::direct_kernel as direct;
            let plan = std::sync::Arc::new(plan);
            let fwd_plan = plan.clone();
            let kernels = Kernels {
                forward: |x: &[f32], w: &[f32], b: Option<&[f32]>| {
                    direct::forward(x, w, b, &d, &fwd_plan)
                },
                backward: move |x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>| {
                    direct::backward(x, w, dy, gx, &d, &plan)
                },
            };
            return on_tape(x, weight, bias, shape, spec.input_grad, kernels);
        }
        let kernels = Kernels {
            forward: |x: &[f32], w: &[f32], b: Option<&[f32]>| forward(x, w, b, &d),
            backward: move |x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>| {
                backward(x, w, dy, gx, &d)
            },
        };
        on_tape(x, weight, bias, shape, spec.input_grad, kernels)
    }
}
