use super::ShortcutKernel;
use crate::Tensor4;
use dfdx::prelude::*;
use rayon::prelude::*;

/// Sizes of one shortcut.
#[derive(Clone, Copy)]
struct Dims {
    channels: usize,
    before: usize,
    out_channels: usize,
    image: (usize, usize),
    out: (usize, usize),
    stride: usize,
}

impl Dims {
    fn in_len(&self) -> usize {
        self.channels * self.image.0 * self.image.1
    }
    fn out_len(&self) -> usize {
        self.out_channels * self.out.0 * self.out.1
    }

    /// Calls `f(input index, output index)` for every pixel the shortcut keeps of one image.
    #[inline(always)]
    fn for_each_kept(&self, mut f: impl FnMut(usize, usize)) {
        let (h, w) = self.image;
        let (oh, ow) = self.out;
        for c in 0..self.channels {
            for oy in 0..oh {
                let src = (c * h + oy * self.stride) * w;
                let dst = ((c + self.before) * oh + oy) * ow;
                for ox in 0..ow {
                    f(src + ox * self.stride, dst + ox);
                }
            }
        }
    }
}

impl ShortcutKernel for Cpu {
    fn subsample_pad_channels<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        stride: usize,
        (before, after): (usize, usize),
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let (n, c, h, w) = *x.shape();
        let d = Dims {
            channels: c,
            before,
            out_channels: before + c + after,
            image: (h, w),
            out: (h.div_ceil(stride), w.div_ceil(stride)),
            stride,
        };
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();
        let xs = x.as_vec();
        let mut y = vec![0.0; n * d.out_len()];
        y.par_chunks_mut(d.out_len())
            .zip(xs.par_chunks(d.in_len()))
            .for_each(|(yi, xi)| d.for_each_kept(|s, t| yi[t] = xi[s]));
        let y = dev.try_tensor_from_vec(y, (n, d.out_channels, d.out.0, d.out.1))?;
        if !T::OWNS_TAPE {
            return Ok(y.put_tape(tape));
        }
        let (x_g, y_g) = (x.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.clone();
            let gx = grads.get_or_alloc_mut(&x_g)?;
            gx.par_chunks_mut(d.in_len())
                .zip(dy.par_chunks(d.out_len()))
                .for_each(|(gi, di)| d.for_each_kept(|s, t| gi[s] += di[t]));
            Ok(())
        });
        Ok(y.put_tape(tape))
    }
}
