#[cfg(target_arch = "x86_64")]
use super::bf16_kernel::Bf16Passes;
use super::gemm_kernel::GemmPasses;
#[cfg(target_arch = "x86_64")]
use super::{bf16_amx, bf16_avx512, direct_kernel};
use super::{Conv2dKernel, Conv2dSpec};
use crate::cpu_util::{
    optional_chunks, sum_in_order, with_scratch, zeros, Geometry, PooledVec, Start, IO_SCRATCH,
};
use crate::error::SpecError;
use crate::precision::{current_kernel, ProductKernel};
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

    pub fn col_len(&self) -> usize {
        self.geo.rows() * self.geo.cols()
    }
}

/// The weight gradient summed over chunks of `images` images in chunk order, `grad(xs, dys,
/// gxs, gw)` adding each chunk's into `gw` (and its `dL/dx` into `gxs`, where there is one).
/// A fold's grouping would follow the work stealing, and float sums in another order would
/// make runs differ.
pub(crate) fn weight_grad_by_chunks<F>(
    (x, dy, gx): (&[f32], &[f32], Option<&mut [f32]>),
    d: &Dims,
    images: usize,
    w_len: usize,
    grad: F,
) -> Vec<f32>
where
    F: Fn(&[f32], &[f32], Option<&mut [f32]>, &mut [f32]) + Sync,
{
    let gxs = optional_chunks(gx, images * d.in_len(), d.batch.div_ceil(images));
    let parts: Vec<Vec<f32>> = gxs
        .into_par_iter()
        .zip(x.par_chunks(images * d.in_len()))
        .zip(dy.par_chunks(images * d.out_len()))
        .map(|((gxs, xs), dys)| {
            let mut gw = vec![0.0; w_len];
            grad(xs, dys, gxs, &mut gw);
            gw
        })
        .collect();
    sum_in_order(&parts, w_len)
}

/// A convolution's three products on plain slices, one implementation per way of computing
/// them (im2col and matrix products, the direct kernels): the trait below the tape glue
/// ([`on_tape`]), so that another kernel is another implementation of it.
pub(crate) trait ConvPasses: Send + Sync {
    fn dims(&self) -> &Dims;

    /// How the passes compute, for tests and timings.
    #[cfg_attr(not(test), allow(dead_code))]
    fn name(&self) -> &'static str;

    /// `y = start + conv(x)`.
    fn forward_into(&self, x: &[f32], w: &[f32], start: Start, y: &mut [f32]);

    /// `gx += convᵀ(dy)`.
    fn adjoint_into(&self, w: &[f32], dy: &[f32], gx: &mut [f32]);

    /// Adds `dL/dx` to `gx` (where given) and returns `dL/dW`.
    fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>) -> Vec<f32>;
}

pub(crate) type Passes = Box<dyn ConvPasses>;

/// The passes of `d` with products on `kernel`: the direct kernels of f32 or AMX where the CPU
/// and the layer allow them; otherwise im2col and the kernel's matrix products.
pub(crate) fn choose(d: Dims, kernel: ProductKernel) -> Passes {
    #[cfg(target_arch = "x86_64")]
    match kernel {
        ProductKernel::F32 => {
            if let Some(plan) = direct_kernel::plan(&d) {
                return Box::new(direct_kernel::DirectPasses { d, plan });
            }
        }
        ProductKernel::AmxBf16 => {
            if let Some(passes) = Bf16Passes::<bf16_amx::Amx>::new(&d) {
                return Box::new(passes);
            }
        }
        ProductKernel::Avx512Bf16 => {
            if let Some(passes) = Bf16Passes::<bf16_avx512::Avx512>::new(&d) {
                return Box::new(passes);
            }
        }
    }
    Box::new(GemmPasses::new(d, kernel))
}

/// A convolution-like op on plain slices: a convolution, or its adjoint (the transposed
/// convolution, whose passes are the convolution's turned around).
pub(crate) enum SliceOp {
    Conv(Passes),
    Transposed(Passes),
}

impl SliceOp {
    /// `(x, w, bias) -> y`.
    pub fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        match self {
            Self::Conv(p) => {
                let mut y = zeros(p.dims().batch * p.dims().out_len());
                p.forward_into(x, w, b.map_or(Start::Zero, Start::Bias), &mut y);
                y
            }
            Self::Transposed(p) => {
                let d = p.dims();
                let mut y = zeros(d.batch * d.in_len());
                if let Some(b) = b {
                    let plane = d.geo.image.0 * d.geo.image.1;
                    for (row, &bias) in y.chunks_exact_mut(plane).zip(b.iter().cycle()) {
                        row.fill(bias);
                    }
                }
                p.adjoint_into(w, x, &mut y);
                y
            }
        }
    }

    /// `(x, w, dy, dx accumulator if wanted) -> dw`.
    pub fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>) -> Vec<f32> {
        match self {
            Self::Conv(p) => p.backward(x, w, dy, gx),
            // dL/dx is the convolution of dy; dL/dW the convolution's weight gradient with dy
            // as its input and x as its output gradient.
            Self::Transposed(p) => {
                if let Some(gx) = gx {
                    p.forward_into(dy, w, Start::Accumulate, gx);
                }
                p.backward(dy, w, x, None)
            }
        }
    }
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

/// Runs `op`'s forward pass on `x` (`[n, _, _, _]`) into `[n, out_channels, out.0, out.1]`
/// and, when `x` owns its tape, records its backward pass for `x` (where `input_grad`),
/// `weight` and `bias`. Shared by [`conv2d`](crate::conv2d) and
/// [`conv_transpose2d`](crate::conv_transpose2d).
pub(crate) fn on_tape<S: Shape, T: Tape<f32, Cpu>>(
    x: Tensor4<Cpu, T>,
    weight: &Tensor<S, f32, Cpu>,
    bias: Option<&Tensor1<Cpu>>,
    (out_channels, out): (usize, (usize, usize)),
    input_grad: bool,
    op: SliceOp,
) -> Result<Tensor4<Cpu, T>, CpuError> {
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
            op.forward(xs, &ws, bs.as_deref())
        });
        return Ok(dev.try_tensor_from_vec(y, shape)?.put_tape(tape));
    }
    let mut xs = PooledVec::new(x_len);
    x.copy_into(xs.as_mut_slice());
    let y = op.forward(xs.as_slice(), &ws, bs.as_deref());
    let y = dev.try_tensor_from_vec(y, shape)?;
    let (x_g, w_g, y_g) = (x.ghost(), weight.ghost(), y.ghost());
    let b_g = bias.map(|b| b.ghost());
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
        let gw = op.backward(xs.as_slice(), &ws, &dy, gx);
        **grads.get_or_alloc_mut(&y_g)? = dy;
        let acc = grads.get_or_alloc_mut(&w_g)?;
        acc.iter_mut().zip(&gw).for_each(|(a, g)| *a += g);
        Ok(())
    });
    Ok(y.put_tape(tape))
}

/// The output size of `x` through a spec's `check` (input `(channels, h, w)`, weight and bias
/// lengths), panicking with the op's name as the public functions document.
pub(crate) fn checked_output<S: Shape, T>(
    op: &str,
    x: &Tensor4<Cpu, T>,
    weight: &Tensor<S, f32, Cpu>,
    bias: Option<&Tensor1<Cpu>>,
    check: impl FnOnce((usize, usize, usize), usize, Option<usize>) -> Result<(usize, usize), SpecError>,
) -> (usize, usize) {
    let (_, c, h, w) = *x.shape();
    let lens = (weight.shape().num_elements(), bias.map(|b| b.shape().0));
    check((c, h, w), lens.0, lens.1).unwrap_or_else(|e| panic!("{op}: {e}"))
}

impl Conv2dKernel for Cpu {
    fn conv2d<S: Shape, T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        weight: &Tensor<S, f32, Self>,
        bias: Option<&Tensor1<Self>>,
        spec: &Conv2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let out = checked_output("conv2d", &x, weight, bias, |i, w, b| spec.check(i, w, b));
        let (n, _, h, w) = *x.shape();
        let dims = Dims::new(spec, n, (h, w), out);
        let op = SliceOp::Conv(choose(dims, current_kernel()));
        on_tape(
            x,
            weight,
            bias,
            (spec.out_channels, out),
            spec.input_grad,
            op,
        )
    }
}
