//! dfdx's own dropout is generic over the shape, so it works unchanged on runtime-shaped NCHW
//! tensors on stable Rust; these tests pin that down.

use crate::Tensor4;
use dfdx::prelude::*;

#[test]
fn dfdx_dropout_works_on_runtime_nchw_shapes() {
    let dev = Cpu::seed_from_u64(7);
    let shape = (4, 3, 10, 10);
    let n = 4 * 3 * 10 * 10;
    let x: Tensor4<Cpu> = dev.tensor_from_vec(vec![1.5; n], shape);
    let y = x.leaky_trace().dropout(0.25);
    assert_eq!(*y.shape(), shape);
    let kept = y.as_vec();
    // Survivors are scaled by 1 / (1 - p); the rest are zero.
    assert!(kept.iter().all(|&v| v == 0.0 || (v - 2.0).abs() < 1e-6));
    let zeros = kept.iter().filter(|&&v| v == 0.0).count();
    assert!(
        (200..400).contains(&zeros),
        "{zeros} of {n} dropped at p = 0.25"
    );
    // The gradient is the same mask and scale.
    let grads = y.sum().backward();
    let g = grads.get(&x).as_vec();
    for (gv, yv) in g.iter().zip(&kept) {
        assert_eq!(*gv, if *yv == 0.0 { 0.0 } else { 1.0 / 0.75 });
    }
}

#[test]
fn dfdx_dropout_with_zero_probability_is_identity() {
    let dev = Cpu::seed_from_u64(1);
    let x: Tensor4<Cpu> = dev.tensor_from_vec((0..24).map(|v| v as f32).collect(), (2, 3, 2, 2));
    assert_eq!(x.clone().dropout(0.0).as_vec(), x.as_vec());
}
