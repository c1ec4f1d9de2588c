//! Every bf16 kernel this CPU has against exact (f64) products, within the error bound of
//! rounding the inputs to bf16.

use super::*;
use crate::cpu_util::{row_major, transposed};
use crate::test_util::{bf16_bound, bf16_kernels, random, rng};

/// Exact `lhs · rhs` and the sums of absolute terms, row-major `[m, n]`.
fn exact(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let (mut sum, mut abs) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for j in 0..n {
            for t in 0..k {
                let p = a[i * k + t] as f64 * b[t * n + j] as f64;
                sum[i * n + j] += p;
                abs[i * n + j] += p.abs();
            }
        }
    }
    (sum, abs)
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    crate::cpu_util::transpose(v, rows, cols, &mut t);
    t
}

#[test]
fn rounding_to_bf16_is_to_nearest_even() {
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to the even 1.
    assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
    assert_eq!(
        from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
        1.0 + 2.0 * 2f32.powi(-7)
    );
    assert_eq!(
        from_bf16(to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20))),
        1.0 + 2f32.powi(-7)
    );
    assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
    let mut r = rng(1);
    for v in random(&mut r, 1000) {
        let back = from_bf16(to_bf16(v));
        assert!((back - v).abs() <= v.abs() * 2f32.powi(-8), "{v} -> {back}");
    }
}

/// Odd sizes around the blocks of both kernels (8 x 32, 16 x 64, inner steps of 2 and 32),
/// both operand layouts, overwrite and accumulate, one thread and several.
#[test]
fn bf16_products_stay_within_the_rounding_bound() {
    let sizes = [
        (1, 1, 1),
        (1, 3, 1),
        (3, 5, 7),
        (8, 32, 32),
        (16, 64, 64),
        (17, 33, 65),
        (9, 144, 130),
        (64, 576, 20),
        (130, 70, 9),
    ];
    let mut r = rng(2);
    for kernel in bf16_kernels("bf16_products_stay_within_the_rounding_bound") {
        let mm = matmul(kernel);
        let mut worst = 0.0f64;
        for &(m, k, n) in &sizes {
            let (a, b) = (random(&mut r, m * k), random(&mut r, k * n));
            let (want, abs) = exact(&a, &b, (m, k, n));
            let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
            let start = random(&mut r, m * n);
            for (layout, lhs, rhs) in [
                ("row-major", row_major(&a, m, k), row_major(&b, k, n)),
                ("transposed", transposed(&at, m, k), transposed(&bt, k, n)),
            ] {
                for (accumulate, threads) in [(false, 1), (true, 1), (false, 3)] {
                    let mut got = if accumulate {
                        start.clone()
                    } else {
                        vec![f32::NAN; m * n]
                    };
                    mm.product(&mut got, lhs, rhs, accumulate, threads);
                    for e in 0..m * n {
                        let base = if accumulate { start[e] as f64 } else { 0.0 };
                        let err = (got[e] as f64 - base - want[e]).abs();
                        let bound = bf16_bound(abs[e], k) + base.abs() * 2f64.powi(-24);
                        assert!(
                            err <= bound,
                            "{}: {m}x{k}x{n} {layout}, accumulate {accumulate}, {threads} \
                             threads, element {e}: error {err:e} over the bound {bound:e}",
                            kernel.name()
                        );
                        worst = worst.max(err / abs[e].max(f64::MIN_POSITIVE));
                    }
                }
            }
        }
        println!(
            "{}: largest error {worst:.2e} of the absolute terms' sum (bound about {:.2e})",
            kernel.name(),
            2f64.powi(-7)
        );
        // The inputs were rounded: an f32 product would be a thousand times closer.
        assert!(worst > 2f64.powi(-14), "{} looks like f32", kernel.name());
    }
}

/// A product in bf16 is the f32 product of the inputs rounded to bf16, to f32 rounding of the
/// sums: the kernels compute what they claim, not merely something close.
#[test]
fn bf16_products_equal_f32_products_of_rounded_inputs() {
    let (m, k, n) = (19, 100, 37);
    let mut r = rng(3);
    let (a, b) = (random(&mut r, m * k), random(&mut r, k * n));
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| from_bf16(to_bf16(x))).collect() };
    let (ar, br) = (round(&a), round(&b));
    let (want, abs) = exact(&ar, &br, (m, k, n));
    for kernel in bf16_kernels("bf16_products_equal_f32_products_of_rounded_inputs") {
        let mut got = vec![0.0; m * n];
        let (lhs, rhs) = (row_major(&a, m, k), row_major(&b, k, n));
        matmul(kernel).product(&mut got, lhs, rhs, false, 1);
        for e in 0..m * n {
            let err = (got[e] as f64 - want[e]).abs();
            assert!(
                err <= abs[e] * (k as f64 + 1.0) * 2f64.powi(-24),
                "{}: element {e}: {} against {}",
                kernel.name(),
                got[e],
                want[e]
            );
        }
    }
}

#[test]
fn the_f32_kernel_is_the_gemm_crate() {
    let (m, k, n) = (5, 7, 3);
    let mut r = rng(4);
    let (a, b) = (random(&mut r, m * k), random(&mut r, k * n));
    let (mut via_trait, mut direct) = (vec![0.0; m * n], vec![0.0; m * n]);
    let (lhs, rhs) = (row_major(&a, m, k), row_major(&b, k, n));
    matmul(ProductKernel::F32).product(&mut via_trait, lhs, rhs, false, 1);
    gemm(&mut direct, lhs, rhs, false, 1);
    assert_eq!(via_trait, direct);
}
