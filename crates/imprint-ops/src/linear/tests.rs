//! The fused op against plain loops (forward) and central finite differences (backward).

use super::*;
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
    super::cpu_kernel::forward(x, w, b, batch, n_in, n_out, act, &mut y);
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
