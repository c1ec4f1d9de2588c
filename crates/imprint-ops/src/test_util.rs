//! Helpers shared by the op tests: random data, references and finite differences.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

pub fn assert_close(label: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{label}: element {i}: got {g}, want {w}"
        );
    }
}

/// Checks `analytic[k]` against central finite differences of `loss = Σ f(inputs) ⊙ r`
/// (accumulated in f64) with respect to every element of `inputs[k]`.
pub fn check_finite_differences(
    label: &str,
    inputs: &[Vec<f32>],
    analytic: &[Vec<f32>],
    r: &[f32],
    f: impl Fn(&[Vec<f32>]) -> Vec<f32>,
) {
    let eps = 1e-2f32;
    assert_eq!(inputs.len(), analytic.len());
    for (which, base) in inputs.iter().enumerate() {
        assert_eq!(
            base.len(),
            analytic[which].len(),
            "{label}: gradient {which} size"
        );
        for i in 0..base.len() {
            let mut plus = inputs.to_vec();
            let mut minus = inputs.to_vec();
            plus[which][i] += eps;
            minus[which][i] -= eps;
            let numeric = (dot(&f(&plus), r) - dot(&f(&minus), r)) / (2.0 * eps as f64);
            let got = analytic[which][i] as f64;
            assert!(
                (numeric - got).abs() <= 2e-3 + 2e-3 * numeric.abs(),
                "{label}: input {which} element {i}: analytic {got}, numeric {numeric}"
            );
        }
    }
}
