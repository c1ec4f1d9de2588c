//! Batch norm: statistics, running averages as PyTorch keeps them, eval vs train, and
//! gradients of x, gamma and beta against finite differences.

use super::*;
use crate::test_util::*;

/// Per-channel mean and biased variance of `[n, c, h, w]` data, in f64.
fn stats(x: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
    let plane = h * w;
    let m = (n * plane) as f64;
    let vals = |ch: usize| {
        (0..n).flat_map(move |i| {
            x[(i * c + ch) * plane..(i * c + ch + 1) * plane]
                .iter()
                .map(|&v| v as f64)
        })
    };
    let mean: Vec<f64> = (0..c).map(|ch| vals(ch).sum::<f64>() / m).collect();
    let var = (0..c)
        .map(|ch| vals(ch).map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m)
        .collect();
    (mean, var)
}

fn layer(dev: &Cpu, gamma: &[f32], beta: &[f32]) -> BatchNorm2d<Cpu> {
    let mut bn = BatchNorm2d::new(dev, gamma.len());
    bn.gamma = dev.tensor_from_vec(gamma.to_vec(), (gamma.len(),));
    bn.beta = dev.tensor_from_vec(beta.to_vec(), (beta.len(),));
    bn
}

#[test]
fn train_output_is_normalised_per_channel() {
    let dev = Cpu::default();
    let shape = (3, 2, 4, 5);
    let x: Vec<f32> = random(&mut rng(1), 120)
        .iter()
        .map(|v| v * 3.0 + 1.0)
        .collect();
    let mut bn = layer(&dev, &[2.0, 0.5], &[1.0, -1.0]);
    let y = bn
        .forward_train(dev.tensor_from_vec(x.clone(), shape))
        .as_vec();
    let (mean, var) = stats(&y, shape);
    assert!(
        (mean[0] - 1.0).abs() < 1e-5 && (mean[1] + 1.0).abs() < 1e-5,
        "{mean:?}"
    );
    // var(y) = gamma² var / (var + eps)
    let (_, xvar) = stats(&x, shape);
    for (ch, g) in [2.0f64, 0.5].into_iter().enumerate() {
        let want = g * g * xvar[ch] / (xvar[ch] + 1e-5);
        assert!(
            (var[ch] - want).abs() < 1e-4,
            "channel {ch}: {} vs {want}",
            var[ch]
        );
    }
}

#[test]
fn running_stats_follow_pytorch() {
    // running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance
    // var * m / (m - 1) (m = n * h * w) entering running_var; starts at mean 0, var 1.
    let dev = Cpu::default();
    let shape = (2, 3, 3, 2);
    let m = 12.0;
    let mut bn: BatchNorm2d<Cpu> = BatchNorm2d::new(&dev, 3);
    let (mut want_mean, mut want_var) = (vec![0.0f64; 3], vec![1.0f64; 3]);
    for step in 0..3 {
        let x: Vec<f32> = random(&mut rng(10 + step), 36)
            .iter()
            .map(|v| v * 2.0 + 0.7)
            .collect();
        let _ = bn.forward_train(dev.tensor_from_vec(x.clone(), shape));
        let (mean, var) = stats(&x, shape);
        for ch in 0..3 {
            want_mean[ch] = 0.9 * want_mean[ch] + 0.1 * mean[ch];
            want_var[ch] = 0.9 * want_var[ch] + 0.1 * var[ch] * m / (m - 1.0);
        }
    }
    for ch in 0..3 {
        assert!((bn.running_mean[ch] as f64 - want_mean[ch]).abs() < 1e-5);
        assert!((bn.running_var[ch] as f64 - want_var[ch]).abs() < 1e-5);
    }
}

#[test]
fn eval_uses_running_stats_and_matches_train_on_the_same_statistics() {
    let dev = Cpu::default();
    let shape = (4, 2, 3, 3);
    let x: Vec<f32> = random(&mut rng(2), 72)
        .iter()
        .map(|v| v * 1.5 - 0.3)
        .collect();
    let mut bn = layer(&dev, &[1.5, -0.7], &[0.2, 0.4]);
    // Fresh running stats (0, 1): eval is the affine map x / sqrt(1 + eps) * gamma + beta, and
    // does not touch the running stats.
    let before = (bn.running_mean.clone(), bn.running_var.clone());
    let y = bn
        .forward_eval(dev.tensor_from_vec(x.clone(), shape))
        .as_vec();
    for (i, (yv, xv)) in y.iter().zip(&x).enumerate() {
        let ch = (i / 9) % 2;
        let (g, b) = ([1.5, -0.7][ch], [0.2, 0.4][ch]);
        assert!((yv - (xv / (1.0f32 + 1e-5).sqrt() * g + b)).abs() < 1e-6);
    }
    assert_eq!((bn.running_mean.clone(), bn.running_var.clone()), before);
    // With the running stats set to the batch's mean and biased variance, eval == train.
    let y_train = bn
        .forward_train(dev.tensor_from_vec(x.clone(), shape))
        .as_vec();
    let (mean, var) = stats(&x, shape);
    bn.running_mean = mean.iter().map(|&v| v as f32).collect();
    bn.running_var = var.iter().map(|&v| v as f32).collect();
    let y_eval = bn.forward_eval(dev.tensor_from_vec(x, shape)).as_vec();
    assert_close("eval vs train", &y_eval, &y_train, 1e-5);
}

fn check_gradients(train: bool, shape: (usize, usize, usize, usize), seed: u64) {
    let dev = Cpu::default();
    let mut rng = rng(seed);
    let c = shape.1;
    let len = shape.0 * c * shape.2 * shape.3;
    let x: Vec<f32> = random(&mut rng, len)
        .iter()
        .map(|v| v * 2.0 + 0.5)
        .collect();
    let gamma: Vec<f32> = random(&mut rng, c).iter().map(|v| v + 1.5).collect();
    let beta = random(&mut rng, c);
    let r = random(&mut rng, len);
    let mean: Vec<f32> = random(&mut rng, c);
    let var: Vec<f32> = random(&mut rng, c).iter().map(|v| v + 1.2).collect();
    let forward = |x: Tensor4<Cpu, OwnedTape<f32, Cpu>>, g: &Tensor1<Cpu>, b: &Tensor1<Cpu>| {
        if train {
            batch_norm2d_train(x, g, b, 1e-5).unwrap().0
        } else {
            batch_norm2d_eval(x, g, b, &mean, &var, 1e-5).unwrap()
        }
    };
    let xt: Tensor4<Cpu> = dev.tensor_from_vec(x.clone(), shape);
    let gt = dev.tensor_from_vec(gamma.clone(), (c,));
    let bt = dev.tensor_from_vec(beta.clone(), (c,));
    let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), shape);
    let grads = (forward(xt.leaky_trace(), &gt, &bt) * rt).sum().backward();
    let analytic = [
        grads.get(&xt).as_vec(),
        grads.get(&gt).as_vec(),
        grads.get(&bt).as_vec(),
    ];
    check_finite_differences(
        &format!("train={train}"),
        &[x, gamma, beta],
        &analytic,
        &r,
        |p| {
            let xt: Tensor4<Cpu> = dev.tensor_from_vec(p[0].clone(), shape);
            let g = dev.tensor_from_vec(p[1].clone(), (c,));
            let b = dev.tensor_from_vec(p[2].clone(), (c,));
            if train {
                batch_norm2d_train(xt, &g, &b, 1e-5).unwrap().0.as_vec()
            } else {
                batch_norm2d_eval(xt, &g, &b, &mean, &var, 1e-5)
                    .unwrap()
                    .as_vec()
            }
        },
    );
}

#[test]
fn train_gradients_match_finite_differences() {
    check_gradients(true, (3, 2, 3, 2), 3);
    check_gradients(true, (2, 3, 2, 3), 4);
}

#[test]
fn eval_gradients_match_finite_differences() {
    check_gradients(false, (2, 3, 3, 2), 5);
}

#[test]
#[should_panic(expected = "more than one value per channel")]
fn training_on_a_single_value_per_channel_panics() {
    let dev = Cpu::default();
    let mut bn: BatchNorm2d<Cpu> = BatchNorm2d::new(&dev, 2);
    let _ = bn.forward_train(dev.tensor_from_vec(vec![1.0, 2.0], (1, 2, 1, 1)));
}
