//! conv2d on the direct kernels (see [`crate::direct`]), for one group whose image is the
//! stride times the output grid: all of ResNet's and the autoencoder's convolutions.
//!
//! Images go to the kernels in stacks (see [`Stack`]): small grids stacked into one taller
//! grid fill their vectors and pay the per-image costs once per stack.

use super::cpu_kernel::{weight_grad_by_chunks, ConvPasses, Dims};
use crate::cpu_util::{with_scratch, Chunks, Start, CHUNK_SCRATCH, IO_SCRATCH, OUT_SCRATCH};
use crate::direct::{self, padded_stride, Packed, Plan, Stack, TapSet};
use rayon::prelude::*;

/// Output pixels a stack of images should reach: 16 vectors.
const STACK_PIXELS: usize = 256;

/// The passes of one convolution on the direct f32 kernels.
pub(crate) struct DirectPasses {
    pub d: Dims,
    pub plan: Plan,
}

impl ConvPasses for DirectPasses {
    fn dims(&self) -> &Dims {
        &self.d
    }

    fn name(&self) -> &'static str {
        "direct f32"
    }

    fn forward_into(&self, x: &[f32], w: &[f32], start: Start, y: &mut [f32]) {
        forward_into(x, w, start, y, &self.d, &self.plan)
    }

    fn adjoint_into(&self, w: &[f32], dy: &[f32], gx: &mut [f32]) {
        adjoint_into(w, dy, gx, &self.d, &self.plan)
    }

    fn backward(&self, x: &[f32], w: &[f32], dy: &[f32], gx: Option<&mut [f32]>) -> Vec<f32> {
        backward(x, w, dy, gx, &self.d, &self.plan)
    }
}

/// The direct plan of `d`, where the CPU and the convolution allow one.
pub(crate) fn plan(d: &Dims) -> Option<Plan> {
    if d.groups != 1 || !direct::available() {
        return None;
    }
    Plan::new(&d.geo)
}

/// Images per stack: as many whole grids as [`STACK_PIXELS`] holds, at least one. The batch
/// is cut into stacks by this size alone.
fn stack_images(plan: &Plan) -> usize {
    (STACK_PIXELS / plan.plane_len()).max(1)
}

/// The layouts of a stack of `images` images: the input split into sub-planes, and the
/// output (one plane per channel).
fn layouts(d: &Dims, plan: &Plan, images: usize) -> (Stack, Stack) {
    let pixels = images * plan.plane_len();
    let input = Stack {
        grid: plan.grid,
        phases: plan.phases,
        channels: d.geo.channels,
        images,
        stride: padded_stride(plan.planes() * pixels),
    };
    let output = Stack {
        phases: (1, 1),
        channels: d.out_per_group,
        stride: padded_stride(pixels),
        ..input
    };
    (input, output)
}

/// One value per stack size of a batch: the full stacks' and, where the batch does not divide
/// into them, the last stack's.
struct PerStack<T> {
    full: T,
    last: Option<T>,
    images: usize,
}

impl<T> PerStack<T> {
    /// `f(n)` for stacks of `images` images and for the last of a `batch`.
    fn new(batch: usize, images: usize, f: impl Fn(usize) -> T) -> Self {
        Self {
            full: f(images),
            last: (!batch.is_multiple_of(images)).then(|| f(batch % images)),
            images,
        }
    }

    /// The value for a stack of `images` images.
    fn get(&self, images: usize) -> &T {
        match &self.last {
            Some(last) if images != self.images => last,
            _ => &self.full,
        }
    }
}

/// `y = start + conv(x)` over a batch, stacks in parallel.
fn forward_into(x: &[f32], w: &[f32], start: Start, y: &mut [f32], d: &Dims, plan: &Plan) {
    let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, plan.taps.len());
    let packed = Packed::new((cout, cin, ntaps), |o, i, t| w[(o * cin + i) * ntaps + t]);
    let g = stack_images(plan);
    let taps = PerStack::new(d.batch, g, |n| TapSet::new(plan.grid, n, &plan.taps));
    y.par_chunks_mut(g * d.out_len())
        .zip(x.par_chunks(g * d.in_len()))
        .for_each(|(ys, xs)| {
            let images = xs.len() / d.in_len();
            let (input, output) = layouts(d, plan, images);
            let taps = taps.get(images);
            with_scratch(&CHUNK_SCRATCH, input.len(), |src| {
                input.gather(xs, src);
                if images == 1 {
                    let plane_len = plan.plane_len();
                    return direct::conv(src, input.stride, taps, &packed, ys, plane_len, start);
                }
                // The stack's outputs lie in one tall grid per channel: computed apart, then
                // put in place.
                let accumulate = matches!(start, Start::Accumulate);
                let start = if accumulate { Start::Zero } else { start };
                with_scratch(&OUT_SCRATCH, output.len(), |dst| {
                    direct::conv(src, input.stride, taps, &packed, dst, output.stride, start);
                    output.scatter(dst, ys, accumulate);
                });
            });
        });
}

/// `gx += convᵀ(dy)` over a batch, stacks in parallel: the input gradient without the weight
/// gradient.
fn adjoint_into(w: &[f32], dy: &[f32], gx: &mut [f32], d: &Dims, plan: &Plan) {
    let g = stack_images(plan);
    let adjoints = PerStack::new(d.batch, g, |n| adjoints(w, d, plan, n));
    gx.par_chunks_mut(g * d.in_len())
        .zip(dy.par_chunks(g * d.out_len()))
        .for_each(|(gxs, dys)| {
            let images = dys.len() / d.out_len();
            let (input, output) = layouts(d, plan, images);
            with_scratch(&IO_SCRATCH, output.len(), |src| {
                output.gather(dys, src);
                adjoint(src, &output, adjoints.get(images), gxs, &input);
            })
        });
}

/// Backward pass on plain slices, as the gemm kernels' (`super::cpu_kernel::backward`): adds
/// `dL/dx` to `gx` (where given) and returns `dL/dW`.
///
/// Chunk by chunk (cut by the batch alone), `x` and `dy` are put in the kernels' layout once,
/// stack by stack, for both gradients; one dW per chunk, summed in chunk order, so that the
/// result does not depend on the thread count.
fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    gx: Option<&mut [f32]>,
    d: &Dims,
    plan: &Plan,
) -> Vec<f32> {
    let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, plan.taps.len());
    let len = cout * cin * ntaps;
    let g = stack_images(plan);
    let taps = PerStack::new(d.batch, g, |n| TapSet::new(plan.grid, n, &plan.taps));
    let adjoints = PerStack::new(d.batch, g, |n| match gx {
        Some(_) => adjoints(w, d, plan, n),
        None => Vec::new(),
    });
    // Whole stacks per chunk.
    let images = Chunks::new(d.batch, d.in_len() + d.out_len())
        .images
        .next_multiple_of(g);
    // Images of one phase, one per stack, are read where they lie.
    let in_place = g == 1 && plan.planes() == 1;
    weight_grad_by_chunks((x, dy, gx), d, images, len, |xs, dys, gxs, gw| {
        let stacks = Stacks::new(xs.len() / d.in_len(), g, d, plan, in_place);
        with_scratch(&IO_SCRATCH, stacks.len(|(_, o)| o), |dyp| {
            stacks.gather(dys, dyp, |(_, o)| o);
            if let Some(gxs) = gxs {
                let (mut at_x, mut at_dy) = (0, 0);
                for (input, output) in stacks.iter() {
                    let gx = &mut gxs[at_x..at_x + input.images * d.in_len()];
                    let src = &dyp[at_dy..at_dy + output.len()];
                    adjoint(src, &output, adjoints.get(input.images), gx, &input);
                    (at_x, at_dy) = (at_x + gx.len(), at_dy + output.len());
                }
            }
            let mut weight_grad = |xp: &[f32]| {
                for run in stacks.runs() {
                    let (input, output) = run.layouts;
                    let x = &xp[run.inputs];
                    let dy = (&dyp[run.outputs], output.stride);
                    let taps = taps.get(input.images);
                    direct::weight_grad(x, input.stride, dy, (cout, cin), taps, gw);
                }
            };
            if in_place {
                return weight_grad(xs);
            }
            with_scratch(&CHUNK_SCRATCH, stacks.len(|(i, _)| i), |xp| {
                stacks.gather(xs, xp, |(i, _)| i);
                weight_grad(xp);
            });
        });
    })
}

/// The stacks of one chunk of images, each laid out after the one before (inputs in one
/// buffer, outputs in another): whole stacks first, then possibly a shorter one.
struct Stacks {
    full: (Stack, Stack),
    count: usize,
    last: Option<(Stack, Stack)>,
}

/// Stacks of one size in a row, for one call of the weight-gradient kernel: their layouts and
/// where they lie in the input and output buffers.
struct Run {
    layouts: (Stack, Stack),
    inputs: std::ops::Range<usize>,
    outputs: std::ops::Range<usize>,
}

impl Stacks {
    /// The stacks of `images` images; with `in_place` the inputs keep their NCHW layout (one
    /// image per stack, one phase, channels a plane apart).
    fn new(images: usize, g: usize, d: &Dims, plan: &Plan, in_place: bool) -> Self {
        let layouts = |n| {
            let (mut input, output) = layouts(d, plan, n);
            if in_place {
                input.stride = plan.plane_len();
            }
            (input, output)
        };
        Self {
            full: layouts(g),
            count: images / g,
            last: (!images.is_multiple_of(g)).then(|| layouts(images % g)),
        }
    }

    /// Input and output layout of every stack, in order.
    fn iter(&self) -> impl Iterator<Item = (Stack, Stack)> + '_ {
        std::iter::repeat_n(self.full, self.count).chain(self.last)
    }

    /// Floats of the layouts `pick` chooses, all stacks together.
    fn len(&self, pick: impl Fn((Stack, Stack)) -> Stack) -> usize {
        self.iter().map(|l| pick(l).len()).sum()
    }

    /// Copies the chunk's `images` (NCHW) into `out`, stack by stack, in the layouts `pick`
    /// chooses.
    fn gather(&self, images: &[f32], out: &mut [f32], pick: impl Fn((Stack, Stack)) -> Stack) {
        let (mut from, mut to) = (0, 0);
        for layout in self.iter() {
            let stack = pick(layout);
            let n =
                stack.images * stack.channels * stack.phases.0 * stack.phases.1 * stack.plane_len();
            stack.gather(&images[from..from + n], &mut out[to..to + stack.len()]);
            (from, to) = (from + n, to + stack.len());
        }
    }

    /// The whole stacks as one run, then the shorter one.
    fn runs(&self) -> Vec<Run> {
        let (input, output) = self.full;
        let (ins, outs) = (self.count * input.len(), self.count * output.len());
        let mut runs = Vec::new();
        if self.count > 0 {
            runs.push(Run {
                layouts: self.full,
                inputs: 0..ins,
                outputs: 0..outs,
            });
        }
        if let Some((i, o)) = self.last {
            runs.push(Run {
                layouts: (i, o),
                inputs: ins..ins + i.len(),
                outputs: outs..outs + o.len(),
            });
        }
        runs
    }
}

/// The taps and packed weights of `dL/dx` for stacks of `images` images, one set per
/// sub-plane of the input: the taps that read that sub-plane, turned around.
fn adjoints(w: &[f32], d: &Dims, plan: &Plan, images: usize) -> Vec<(TapSet, Packed)> {
    let (cin, cout, ntaps) = (d.geo.channels, d.out_per_group, plan.taps.len());
    (0..plan.planes())
        .map(|s| {
            let (taps, index) = plan.adjoint_taps(s);
            let packed = Packed::new((cin, cout, taps.len()), |i, o, t| {
                w[(o * cin + i) * ntaps + index[t]]
            });
            (TapSet::new(plan.grid, images, &taps), packed)
        })
        .collect()
}

/// Adds to `gx` (the stack's images, NCHW) the adjoint convolutions of the stack's output
/// gradient `src` (in the `output` layout), one per sub-plane of the `input` layout.
fn adjoint(
    src: &[f32],
    output: &Stack,
    adjoints: &[(TapSet, Packed)],
    gx: &mut [f32],
    input: &Stack,
) {
    if let ([(taps, packed)], 1) = (adjoints, input.images) {
        let start = Start::Accumulate;
        return direct::conv(
            src,
            output.stride,
            taps,
            packed,
            gx,
            input.plane_len(),
            start,
        );
    }
    with_scratch(&OUT_SCRATCH, input.len(), |split| {
        let pixels = input.images * input.plane_len();
        for (s, (taps, packed)) in adjoints.iter().enumerate() {
            let dst = &mut split[s * pixels..];
            direct::conv(
                src,
                output.stride,
                taps,
                packed,
                dst,
                input.stride,
                Start::Zero,
            );
        }
        input.scatter(split, gx, true);
    });
}
