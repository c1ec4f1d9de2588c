use super::{Activation, LinearKernel};
use crate::{Matrix, Vector};
use dfdx::prelude::*;
use rayon::prelude::*;
use std::sync::Arc;

/// Below this many multiply-adds per thread, handing work to another thread costs more than it
/// saves.
const MIN_FLOPS_PER_PART: usize = 1 << 18;

/// Row blocks handed to threads are multiples of this, so no thread ends with a ragged edge
/// narrower than gemm's micro-kernel.
const ROW_ALIGN: usize = 16;

/// Row-major matrix view for [`gemm_acc`]: pointer, rows, columns, row stride, column stride.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

// SAFETY: a view only ever reads the slice it was made from, which outlives every use.
unsafe impl Send for View {}
unsafe impl Sync for View {}

impl View {
    /// Rows `start..start + len` of this view.
    fn rows(self, start: usize, len: usize) -> View {
        assert!(start + len <= self.rows, "row block out of range");
        View {
            // SAFETY: in bounds by the assert above.
            ptr: unsafe { self.ptr.offset(start as isize * self.row_stride) },
            rows: len,
            ..self
        }
    }
}

/// How many threads a product of `flops` multiply-adds should use, at most `max_parts`.
fn parts_for(flops: usize, max_parts: usize) -> usize {
    (flops / MIN_FLOPS_PER_PART).clamp(1, max_parts.max(1))
}

/// `dst[m, n] += lhs[m, k] · rhs[k, n]` on the calling thread, dst row-major with `n` columns.
fn gemm_acc_serial(dst: &mut [f32], lhs: View, rhs: View) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions differ");
    assert_eq!(dst.len(), m * n, "destination size");
    // SAFETY: shapes and strides were checked against the slice lengths by the callers' asserts
    // (every view covers exactly rows x cols elements of a live slice), and dst is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Splits `dst` (`[rows, n]`) into at most `parts` blocks of whole rows and runs `f(block,
/// first_row)` on each in parallel. One fork-join per call: gemm's own threading synchronises
/// several times per product, which on a couple of cores costs as much as the small products.
fn for_row_blocks(
    dst: &mut [f32],
    n: usize,
    parts: usize,
    f: impl Fn(&mut [f32], usize) + Send + Sync,
) {
    let rows = dst.len() / n.max(1);
    let per_part = rows
        .div_ceil(parts.max(1))
        .next_multiple_of(ROW_ALIGN)
        .max(1);
    if per_part >= rows {
        f(dst, 0);
        return;
    }
    dst.par_chunks_mut(per_part * n)
        .enumerate()
        .for_each(|(i, block)| f(block, i * per_part));
}

/// `dst[m, n] += lhs[m, k] · rhs[k, n]`, split over rows of `dst` across up to `max_parts` threads.
fn gemm_acc(dst: &mut [f32], lhs: View, rhs: View, max_parts: usize) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(dst.len(), m * n, "destination size");
    let parts = parts_for(m * n * k, max_parts);
    for_row_blocks(dst, n, parts, |block, row| {
        gemm_acc_serial(block, lhs.rows(row, block.len() / n), rhs)
    });
}

fn row_major(data: &[f32], rows: usize, cols: usize) -> View {
    assert_eq!(data.len(), rows * cols);
    View {
        ptr: data.as_ptr(),
        rows,
        cols,
        row_stride: cols as isize,
        col_stride: 1,
    }
}

fn transposed(data: &[f32], rows: usize, cols: usize) -> View {
    // `data` is row-major `[cols, rows]`; the view is its transpose `[rows, cols]`.
    assert_eq!(data.len(), rows * cols);
    View {
        ptr: data.as_ptr(),
        rows,
        cols,
        row_stride: 1,
        col_stride: rows as isize,
    }
}

/// Applies `act` in place; the match sits outside the loop so each arm vectorises.
fn activate(act: Activation, y: &mut [f32]) {
    match act {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Sigmoid => y
            .iter_mut()
            .for_each(|v| *v = Activation::Sigmoid.apply(*v)),
    }
}

/// Forward pass into `y` (`[batch, out]`, contents overwritten): bias, product, activation, each
/// thread doing all three on its own block of rows while they are hot in cache.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    batch: usize,
    n_in: usize,
    n_out: usize,
    act: Activation,
    y: &mut [f32],
) {
    assert_eq!(y.len(), batch * n_out, "output size");
    let (x, w) = (row_major(x, batch, n_in), transposed(w, n_in, n_out));
    let parts = parts_for(batch * n_in * n_out, rayon::current_num_threads());
    for_row_blocks(y, n_out, parts, |block, row| {
        block
            .chunks_exact_mut(n_out)
            .for_each(|r| r.copy_from_slice(b));
        gemm_acc_serial(block, x.rows(row, block.len() / n_out), w);
        activate(act, block);
    });
}

/// `dz = dy ⊙ act'(y)`, with the match outside the loop so each arm vectorises.
fn pre_activation_grad(act: Activation, dy: &[f32], y: &[f32]) -> Vec<f32> {
    let scaled = |f: fn(f32) -> f32| dy.iter().zip(y).map(|(&d, &y)| d * f(y)).collect();
    match act {
        Activation::Identity => dy.to_vec(),
        Activation::Relu => scaled(|y| if y > 0.0 { 1.0 } else { 0.0 }),
        Activation::Sigmoid => scaled(|y| y * (1.0 - y)),
    }
}

/// Saved forward values the backward pass reads.
struct Saved {
    x: Vec<f32>,
    w: Vec<f32>,
    y: Vec<f32>,
}

impl LinearKernel for Cpu {
    fn linear_fused<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weight: &Vector<Self>,
        bias: &Vector<Self>,
        out_features: usize,
        activation: Activation,
        input_grad: bool,
    ) -> Result<Matrix<Self, T>, Self::Err> {
        let (batch, n_in) = *x.shape();
        let n_out = out_features;
        assert_eq!(weight.shape().0, n_in * n_out, "weight is not [out, in]");
        assert_eq!(bias.shape().0, n_out, "bias is not [out]");
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();

        let mut xs = vec![0.0; batch * n_in];
        x.copy_into(&mut xs);
        let mut ws = vec![0.0; n_in * n_out];
        weight.copy_into(&mut ws);
        let mut bs = vec![0.0; n_out];
        bias.copy_into(&mut bs);
        let mut y = vec![0.0; batch * n_out];
        forward(&xs, &ws, &bs, batch, n_in, n_out, activation, &mut y);

        if !T::OWNS_TAPE {
            return Ok(dev.tensor_from_vec(y, (batch, n_out)).put_tape(tape));
        }
        let saved = Arc::new(Saved {
            x: xs,
            w: ws,
            y: y.clone(),
        });
        let out = dev.tensor_from_vec(y, (batch, n_out));
        let (x_g, w_g, b_g, out_g) = (x.ghost(), weight.ghost(), bias.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let dz = pre_activation_grad(activation, grads.get_or_alloc_mut(&out_g)?, &saved.y);
            let gb = grads.get_or_alloc_mut(&b_g)?;
            for row in dz.chunks_exact(n_out) {
                for (g, &d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
            // dW[out, in] += dzᵀ[out, batch] · x[batch, in]
            let dw = |gw: &mut [f32], parts| {
                gemm_acc(
                    gw,
                    transposed(&dz, n_out, batch),
                    row_major(&saved.x, batch, n_in),
                    parts,
                )
            };
            let threads = rayon::current_num_threads();
            if !input_grad {
                dw(grads.get_or_alloc_mut(&w_g)?, threads);
                return Ok(());
            }
            // dW and dx cost the same, so each takes half the threads: one fork-join per layer
            // instead of one per product. dx goes to a scratch buffer because `grads` lends one
            // gradient at a time.
            let mut dx = vec![0.0; batch * n_in];
            let gw = grads.get_or_alloc_mut(&w_g)?;
            let half = threads.div_ceil(2);
            rayon::join(
                || dw(gw, half),
                // dx[batch, in] = dz[batch, out] · W[out, in]
                || {
                    gemm_acc(
                        &mut dx,
                        row_major(&dz, batch, n_out),
                        row_major(&saved.w, n_out, n_in),
                        half,
                    )
                },
            );
            let gx = grads.get_or_alloc_mut(&x_g)?;
            gx.iter_mut().zip(&dx).for_each(|(g, d)| *g += d);
            Ok(())
        });
        Ok(out.put_tape(tape))
    }
}
