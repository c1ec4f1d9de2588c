use super::{Activation, LinearKernel};
use crate::cpu_util::{gemm, row_major, transpose, transposed, View};
use crate::matmul::matmul;
use crate::precision::{current_kernel, ProductKernel};
use crate::{Matrix, Tensor1 as Vector};
use dfdx::prelude::*;
use std::sync::Arc;

/// `dst[m, n] += lhs[m, k] · rhs[k, n]` on `kernel`, on the rayon pool. The product is split
/// between threads inside, sharing the packed operands, which measured faster than handing
/// each thread a block of rows (each repacks all of `rhs`).
fn gemm_acc(kernel: ProductKernel, dst: &mut [f32], lhs: View, rhs: View) {
    matmul(kernel).product(dst, lhs, rhs, true, rayon::current_num_threads());
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

/// Below this many units on either side of a layer, `x·Wᵀ` beats `(W·xᵀ)ᵀ` (see [`forward`]).
const TRANSPOSED_PRODUCT_MIN_UNITS: usize = 128;

/// Forward pass into `y` (`[batch, out]`, contents overwritten): product on `kernel`, bias,
/// activation. Plain slices and sizes rather than a struct, so tests can call it on hand-made
/// data.
///
/// The bf16 kernels pack both operands themselves, whatever their layout. For f32, which
/// layout gemm runs faster depends on the layer (`examples/gemm_layouts.rs`, batch 128):
/// with a few hundred units on both sides, `yᵀ = W·xᵀ` with both operands row-major ran
/// 1.2-2x faster than `x·Wᵀ` with `W` read transposed, the two transposes included; with 64
/// units on one side, `x·Wᵀ` ran about twice as fast.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    batch: usize,
    n_in: usize,
    n_out: usize,
    act: Activation,
    kernel: ProductKernel,
    y: &mut [f32],
) {
    assert_eq!(y.len(), batch * n_out, "output size");
    // Elementwise passes run on the calling thread: at these sizes they are a few microseconds,
    // less than waking the pool.
    if kernel == ProductKernel::F32 && n_in.min(n_out) >= TRANSPOSED_PRODUCT_MIN_UNITS {
        let mut xt = vec![0.0; n_in * batch];
        transpose(x, batch, n_in, &mut xt);
        let mut yt = vec![0.0; n_out * batch];
        gemm(
            &mut yt,
            row_major(w, n_out, n_in),
            row_major(&xt, n_in, batch),
            false,
            rayon::current_num_threads(),
        );
        transpose(&yt, n_out, batch, y);
        y.chunks_exact_mut(n_out)
            .for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
    } else {
        y.chunks_exact_mut(n_out).for_each(|r| r.copy_from_slice(b));
        let (lhs, rhs) = (row_major(x, batch, n_in), transposed(w, n_in, n_out));
        gemm_acc(kernel, y, lhs, rhs);
    }
    activate(act, y);
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
        let kernel = current_kernel();
        forward(
            &xs, &ws, &bs, batch, n_in, n_out, activation, kernel, &mut y,
        );

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
            // Each product is split by gemm over all threads; running dW and dx side by side,
            // one thread each, measured slower here.
            // dW[out, in] += dzᵀ[out, batch] · x[batch, in]
            gemm_acc(
                kernel,
                grads.get_or_alloc_mut(&w_g)?,
                transposed(&dz, n_out, batch),
                row_major(&saved.x, batch, n_in),
            );
            if input_grad {
                // dx[batch, in] += dz[batch, out] · W[out, in]
                gemm_acc(
                    kernel,
                    grads.get_or_alloc_mut(&x_g)?,
                    row_major(&dz, batch, n_out),
                    row_major(&saved.w, n_out, n_in),
                );
            }
            Ok(())
        });
        Ok(out.put_tape(tape))
    }
}
