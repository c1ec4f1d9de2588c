//! The fused op against plain loops (forward) and central finite differences (backward).

use super::*;
use crate::precision::ProductKernel;
use crate::test_util::{check_finite_differences, gradients, random, rng};
use crate::{Matrix, Tensor1 as Vector};

/// The CPU kernel's forward pass on plain data of `(batch, n_in, n_out)`.
fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dims: (usize, usize, usize),
    act: Activation,
) -> Vec<f32> {
    let (batch, n_in, n_out) = dims;
    let mut y = vec![0.0; batch * n_out];
    super::cpu_kernel::forward(x, w, b, batch, n_in, n_out, act, ProductKernel::F32, &mut y);
    y
}

#[test]
fn forward_matches_hand_computed() {
    let dev = Cpu::default();
    // x = [[1, 2]], W = [[1, 0], [0, 1], [1, 1]] ([out=3, in=2]), b = [0.5, -3, 0]
    let x: Matrix<Cpu> = dev.tensor_from_vec(vec![1.0, 2.0], (1, 2));
    let w: Vector<Cpu> = dev.tensor_from_vec(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], (6,));
    let b: Vector<Cpu> = dev.tensor_from_vec(vec![0.5, -3.0, 0.0], (3,));
    let y = linear(x.clone(), &w, &b, 3, Activation::Identity, false).unwrap();
    assert_eq!(y.as_vec(), vec![1.5, -1.0, 3.0]);
    let y = linear(x, &w, &b, 3, Activation::Relu, false).unwrap();
    assert_eq!(y.as_vec(), vec![1.5, 0.0, 3.0]);
}

#[test]
fn forward_matches_naive_loops_on_odd_sizes() {
    let mut rng = rng(1);
    // The last two take the transposed product (both sides of at least 128 units).
    let sizes = [
        (1, 1, 1),
        (3, 5, 7),
        (17, 33, 9),
        (130, 70, 65),
        (5, 129, 130),
        (33, 200, 131),
    ];
    for &(batch, n_in, n_out) in &sizes {
        let x = random(&mut rng, batch * n_in);
        let w = random(&mut rng, n_out * n_in);
        let b = random(&mut rng, n_out);
        let y = forward(&x, &w, &b, (batch, n_in, n_out), Activation::Sigmoid);
        for i in 0..batch {
            for o in 0..n_out {
                let z: f32 = b[o]
                    + (0..n_in)
                        .map(|k| x[i * n_in + k] * w[o * n_in + k])
                        .sum::<f32>();
                let expect = 1.0 / (1.0 + (-z).exp());
                assert!(
                    (y[i * n_out + o] - expect).abs() < 1e-5,
                    "({batch},{n_in},{n_out})"
                );
            }
        }
    }
}

fn check_gradients(batch: usize, n_in: usize, n_out: usize, act: Activation, seed: u64) {
    let dev = Cpu::default();
    let mut rng = rng(seed);
    let x = random(&mut rng, batch * n_in);
    let w = random(&mut rng, n_out * n_in);
    let b = random(&mut rng, n_out);
    let r = random(&mut rng, batch * n_out);
    let dims = (batch, n_in, n_out);
    let xt: Matrix<Cpu> = dev.tensor_from_vec(x.clone(), (batch, n_in));
    let wt: Vector<Cpu> = dev.tensor_from_vec(w.clone(), (w.len(),));
    let bt: Vector<Cpu> = dev.tensor_from_vec(b.clone(), (n_out,));
    let rt: Matrix<Cpu> = dev.tensor_from_vec(r.clone(), (batch, n_out));
    let y = linear(xt.leaky_trace(), &wt, &bt, n_out, act, true).unwrap();
    let grads = (y * rt).sum().backward();
    let analytic = gradients!(grads, &xt, &wt, &bt);
    // Loss `Σ y ⊙ r` for a fixed random `r`, so every output element gets a distinct
    // upstream gradient.
    check_finite_differences(
        &format!("{act:?} dims {dims:?}"),
        &[x, w, b],
        &analytic,
        &r,
        |p| forward(&p[0], &p[1], &p[2], dims, act),
    );
}

#[test]
fn gradients_match_finite_differences() {
    check_gradients(3, 4, 5, Activation::Identity, 2);
    check_gradients(7, 5, 3, Activation::Sigmoid, 3);
    check_gradients(2, 9, 6, Activation::Identity, 4);
}

#[test]
fn relu_gradients_match_finite_differences_away_from_kinks() {
    // Finite differences straddling z = 0 are meaningless; with these seeds no |z| < eps.
    check_gradients(4, 6, 5, Activation::Relu, 5);
}

#[test]
fn input_gradient_is_skipped_when_not_needed() {
    let dev = Cpu::default();
    let x: Matrix<Cpu> = dev.tensor_from_vec(vec![1.0, 2.0], (1, 2));
    let w: Vector<Cpu> = dev.tensor_from_vec(vec![1.0, 1.0], (2,));
    let b: Vector<Cpu> = dev.tensor_from_vec(vec![0.0], (1,));
    let mut grads = linear(x.leaky_trace(), &w, &b, 1, Activation::Identity, false)
        .unwrap()
        .sum()
        .backward();
    assert_eq!(grads.get(&w).as_vec(), vec![1.0, 2.0]);
    let dx = grads.get_or_alloc_mut(&x).unwrap();
    assert_eq!(dx.as_slice(), &[0.0, 0.0], "dx never computed");
}

/// Every bf16 kernel this CPU has: output, `dL/dx` and `dL/dW` (with `L = Σ y · r`) within the
/// bound of rounding the inputs to bf16, at sizes off the kernels' blocks; an identity
/// activation, so that the output's error is the product's.
#[test]
fn bf16_kernels_stay_within_the_rounding_bound() {
    use crate::test_util::{bf16_bound, bf16_kernels};
    let dev = Cpu::default();
    let mut rng = rng(9);
    for kernel in bf16_kernels("linear bf16_kernels_stay_within_the_rounding_bound") {
        for (batch, n_in, n_out) in [
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 9),
            (130, 70, 65),
            (64, 300, 200),
        ] {
            let (x, w, b) = (
                random(&mut rng, batch * n_in),
                random(&mut rng, n_out * n_in),
                random(&mut rng, n_out),
            );
            let r = random(&mut rng, batch * n_out);
            let xt: Matrix<Cpu> = dev.tensor_from_vec(x.clone(), (batch, n_in));
            let wt: Vector<Cpu> = dev.tensor_from_vec(w.clone(), (w.len(),));
            let bt: Vector<Cpu> = dev.tensor_from_vec(b.clone(), (n_out,));
            let rt: Matrix<Cpu> = dev.tensor_from_vec(r.clone(), (batch, n_out));
            let [y, gx, gw] = crate::with_kernel(kernel, || {
                let y = linear(
                    xt.leaky_trace(),
                    &wt,
                    &bt,
                    n_out,
                    Activation::Identity,
                    true,
                )
                .unwrap();
                let y_vals = y.as_vec();
                let grads = (y * rt.clone()).sum().backward();
                let [gx, gw] = gradients!(grads, &xt, &wt);
                [y_vals, gx, gw]
            });
            let label = format!("{} ({batch}, {n_in}, {n_out})", kernel.name());
            let exact = |terms: &mut dyn Iterator<Item = (f32, f32)>| {
                terms.fold((0.0f64, 0.0f64, 0usize), |(s, a, k), (u, v)| {
                    let p = u as f64 * v as f64;
                    (s + p, a + p.abs(), k + 1)
                })
            };
            let within = |what: &str, got: f32, (sum, abs, k): (f64, f64, usize), shift: f64| {
                let err = (got as f64 - shift - sum).abs();
                let bound = bf16_bound(abs, k) + (abs + shift.abs()) * 2f64.powi(-23);
                assert!(
                    err <= bound,
                    "{label}: {what} = {got}, exact {}: error {err:e} over {bound:e}",
                    sum + shift
                );
            };
            for i in 0..batch {
                for o in 0..n_out {
                    let e = exact(&mut (0..n_in).map(|k| (x[i * n_in + k], w[o * n_in + k])));
                    within("y", y[i * n_out + o], e, b[o] as f64);
                }
                for k in 0..n_in {
                    let e = exact(&mut (0..n_out).map(|o| (r[i * n_out + o], w[o * n_in + k])));
                    within("dx", gx[i * n_in + k], e, 0.0);
                }
            }
            for o in 0..n_out {
                for k in 0..n_in {
                    let e = exact(&mut (0..batch).map(|i| (r[i * n_out + o], x[i * n_in + k])));
                    within("dW", gw[o * n_in + k], e, 0.0);
                }
            }
        }
    }
}
