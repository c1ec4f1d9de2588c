use super::{Pool2dKernel, Pool2dSpec};
use crate::Tensor4;
use dfdx::prelude::*;
use rayon::prelude::*;

/// Image rows/columns `lo..hi` covered by window `o` of one dimension.
#[inline]
fn window(o: usize, k: usize, s: usize, p: usize, size: usize) -> (usize, usize) {
    let start = (o * s) as isize - p as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + k as isize).max(0) as usize).min(size);
    (lo, hi)
}

/// Planes (one channel of one image) per rayon task: a few tasks per thread.
fn planes_per_task(planes: usize) -> usize {
    planes.div_ceil(4 * rayon::current_num_threads()).max(1)
}

#[derive(Clone, Copy)]
struct Dims {
    image: (usize, usize),
    out: (usize, usize),
    spec: Pool2dSpec,
}

impl Dims {
    fn in_plane(&self) -> usize {
        self.image.0 * self.image.1
    }
    fn out_plane(&self) -> usize {
        self.out.0 * self.out.1
    }
    /// Calls `f(output index, rows, cols)` for every window of one plane.
    #[inline(always)]
    fn for_each_window(&self, mut f: impl FnMut(usize, (usize, usize), (usize, usize))) {
        let Pool2dSpec {
            kernel: k,
            stride: s,
            padding: p,
        } = self.spec;
        for oy in 0..self.out.0 {
            let rows = window(oy, k.0, s.0, p.0, self.image.0);
            for ox in 0..self.out.1 {
                let cols = window(ox, k.1, s.1, p.1, self.image.1);
                f(oy * self.out.1 + ox, rows, cols);
            }
        }
    }
}

/// Max pooling of `[planes, h, w]` data: the maxima and, per output, the index of the first
/// maximum within its plane.
fn max_forward(x: &[f32], d: &Dims) -> (Vec<f32>, Vec<u32>) {
    let planes = x.len() / d.in_plane();
    let mut y = vec![0.0; planes * d.out_plane()];
    let mut arg = vec![0u32; planes * d.out_plane()];
    let ppt = planes_per_task(planes);
    y.par_chunks_mut(ppt * d.out_plane())
        .zip(arg.par_chunks_mut(ppt * d.out_plane()))
        .zip(x.par_chunks(ppt * d.in_plane()))
        .for_each(|((ys, args), xs)| {
            for ((yp, ap), xp) in ys
                .chunks_exact_mut(d.out_plane())
                .zip(args.chunks_exact_mut(d.out_plane()))
                .zip(xs.chunks_exact(d.in_plane()))
            {
                d.for_each_window(|o, rows, cols| {
                    let (mut best, mut at) = (f32::NEG_INFINITY, rows.0 * d.image.1 + cols.0);
                    'window: for iy in rows.0..rows.1 {
                        for ix in cols.0..cols.1 {
                            let i = iy * d.image.1 + ix;
                            let v = xp[i];
                            if v > best || v.is_nan() {
                                (best, at) = (v, i);
                                if v.is_nan() {
                                    break 'window;
                                }
                            }
                        }
                    }
                    yp[o] = best;
                    ap[o] = at as u32;
                });
            }
        });
    (y, arg)
}

fn max_backward(gx: &mut [f32], dy: &[f32], arg: &[u32], d: &Dims) {
    let planes = gx.len() / d.in_plane();
    let ppt = planes_per_task(planes);
    gx.par_chunks_mut(ppt * d.in_plane())
        .zip(dy.par_chunks(ppt * d.out_plane()))
        .zip(arg.par_chunks(ppt * d.out_plane()))
        .for_each(|((gxs, dys), args)| {
            for ((gp, dp), ap) in gxs
                .chunks_exact_mut(d.in_plane())
                .zip(dys.chunks_exact(d.out_plane()))
                .zip(args.chunks_exact(d.out_plane()))
            {
                for (&g, &a) in dp.iter().zip(ap) {
                    gp[a as usize] += g;
                }
            }
        });
}

fn avg_forward(x: &[f32], d: &Dims) -> Vec<f32> {
    let planes = x.len() / d.in_plane();
    let scale = 1.0 / (d.spec.kernel.0 * d.spec.kernel.1) as f32;
    let mut y = vec![0.0; planes * d.out_plane()];
    let ppt = planes_per_task(planes);
    y.par_chunks_mut(ppt * d.out_plane())
        .zip(x.par_chunks(ppt * d.in_plane()))
        .for_each(|(ys, xs)| {
            for (yp, xp) in ys
                .chunks_exact_mut(d.out_plane())
                .zip(xs.chunks_exact(d.in_plane()))
            {
                d.for_each_window(|o, rows, cols| {
                    let mut sum = 0.0;
                    for iy in rows.0..rows.1 {
                        sum += xp[iy * d.image.1 + cols.0..iy * d.image.1 + cols.1]
                            .iter()
                            .sum::<f32>();
                    }
                    yp[o] = sum * scale;
                });
            }
        });
    y
}

fn avg_backward(gx: &mut [f32], dy: &[f32], d: &Dims) {
    let planes = gx.len() / d.in_plane();
    let scale = 1.0 / (d.spec.kernel.0 * d.spec.kernel.1) as f32;
    let ppt = planes_per_task(planes);
    gx.par_chunks_mut(ppt * d.in_plane())
        .zip(dy.par_chunks(ppt * d.out_plane()))
        .for_each(|(gxs, dys)| {
            for (gp, dp) in gxs
                .chunks_exact_mut(d.in_plane())
                .zip(dys.chunks_exact(d.out_plane()))
            {
                d.for_each_window(|o, rows, cols| {
                    let g = dp[o] * scale;
                    for iy in rows.0..rows.1 {
                        gp[iy * d.image.1 + cols.0..iy * d.image.1 + cols.1]
                            .iter_mut()
                            .for_each(|v| *v += g);
                    }
                });
            }
        });
}

/// Reads `x`, checks the spec and returns what both pools need.
fn prepare<T>(x: &Tensor4<Cpu, T>, spec: &Pool2dSpec, op: &str) -> (Vec<f32>, Dims) {
    let (_, _, h, w) = *x.shape();
    let out = spec
        .output_size_checked(h, w)
        .unwrap_or_else(|e| panic!("{op}: {e}"));
    assert!(
        h * w <= u32::MAX as usize,
        "{op}: planes beyond 2^32 pixels are not supported"
    );
    let mut xs = vec![0.0; x.shape().num_elements()];
    x.copy_into(&mut xs);
    let d = Dims {
        image: (h, w),
        out,
        spec: *spec,
    };
    (xs, d)
}

impl Pool2dKernel for Cpu {
    fn max_pool2d<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        spec: &Pool2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let (n, c, _, _) = *x.shape();
        let (xs, d) = prepare(&x, spec, "max_pool2d");
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();
        let (y, arg) = max_forward(&xs, &d);
        let y = dev.try_tensor_from_vec(y, (n, c, d.out.0, d.out.1))?;
        if !T::OWNS_TAPE {
            return Ok(y.put_tape(tape));
        }
        let (x_g, y_g) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.to_vec();
            max_backward(grads.get_or_alloc_mut(&x_g)?, &dy, &arg, &d);
            Ok(())
        });
        Ok(y.put_tape(tape))
    }

    fn avg_pool2d<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        spec: &Pool2dSpec,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let (n, c, _, _) = *x.shape();
        let (xs, d) = prepare(&x, spec, "avg_pool2d");
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();
        let y = avg_forward(&xs, &d);
        drop(xs);
        let y = dev.try_tensor_from_vec(y, (n, c, d.out.0, d.out.1))?;
        if !T::OWNS_TAPE {
            return Ok(y.put_tape(tape));
        }
        let (x_g, y_g) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.to_vec();
            avg_backward(grads.get_or_alloc_mut(&x_g)?, &dy, &d);
            Ok(())
        });
        Ok(y.put_tape(tape))
    }
}
