//! Batch norm: statistics, eval vs train, the fused ops against the separate ones, and
//! gradients of x, gamma and beta against finite differences. The running averages are the
//! layer's (`imprint-nn`), tested there.

use super::*;
use crate::test_util::*;
use rand_chacha::ChaCha8Rng;

/// `[n, c, h, w]`.
type Shape = (usize, usize, usize, usize);

/// Per-channel mean and biased variance of `[n, c, h, w]` data, in f64.
fn stats(x: &[f32], (n, c, h, w): Shape) -> (Vec<f64>, Vec<f64>) {
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

fn params(dev: &Cpu, gamma: &[f32], beta: &[f32]) -> (Tensor1<Cpu>, Tensor1<Cpu>) {
    (
        dev.tensor_from_vec(gamma.to_vec(), (gamma.len(),)),
        dev.tensor_from_vec(beta.to_vec(), (beta.len(),)),
    )
}

/// `x`, gamma and beta as tensors.
fn tensors(
    dev: &Cpu,
    [x, g, b]: [&[f32]; 3],
    shape: Shape,
) -> (Tensor4<Cpu>, Tensor1<Cpu>, Tensor1<Cpu>) {
    let (g, b) = params(dev, g, b);
    (dev.tensor_from_vec(x.to_vec(), shape), g, b)
}

/// `values` spread by `scale` about `centre`.
fn spread(values: Vec<f32>, scale: f32, centre: f32) -> Vec<f32> {
    values.into_iter().map(|v| v * scale + centre).collect()
}

/// Random `x` (spread by `scale` about `centre`), gamma about 1.5 and beta for `shape`.
fn random_inputs(rng: &mut ChaCha8Rng, shape: Shape, (scale, centre): (f32, f32)) -> [Vec<f32>; 3] {
    let (c, len) = (shape.1, shape.0 * shape.1 * shape.2 * shape.3);
    let x = spread(random(rng, len), scale, centre);
    let gamma = random(rng, c).iter().map(|v| v + 1.5).collect();
    [x, gamma, random(rng, c)]
}

#[test]
fn train_output_is_normalised_per_channel_and_returns_the_batch_statistics() {
    let dev = Cpu::default();
    let shape = (3, 2, 4, 5);
    let x = spread(random(&mut rng(1), 120), 3.0, 1.0);
    let (g, b) = params(&dev, &[2.0, 0.5], &[1.0, -1.0]);
    let (y, batch_mean, batch_var, count) =
        batch_norm2d_train(dev.tensor_from_vec(x.clone(), shape), &g, &b, 1e-5).unwrap();
    assert_eq!(count, 3 * 4 * 5);
    let (mean, var) = stats(&y.as_vec(), shape);
    assert!(
        (mean[0] - 1.0).abs() < 1e-5 && (mean[1] + 1.0).abs() < 1e-5,
        "{mean:?}"
    );
    // var(y) = gamma² var / (var + eps)
    let (xmean, xvar) = stats(&x, shape);
    for (ch, g) in [2.0f64, 0.5].into_iter().enumerate() {
        let want = g * g * xvar[ch] / (xvar[ch] + 1e-5);
        assert!(
            (var[ch] - want).abs() < 1e-4,
            "channel {ch}: {} vs {want}",
            var[ch]
        );
        // the statistics the running averages are built from: mean and biased variance
        assert!((batch_mean[ch] as f64 - xmean[ch]).abs() < 1e-5);
        assert!((batch_var[ch] as f64 - xvar[ch]).abs() < 1e-5);
    }
}

#[test]
fn eval_uses_the_given_statistics_and_matches_train_on_the_batch_statistics() {
    let dev = Cpu::default();
    let shape = (4, 2, 3, 3);
    let x = spread(random(&mut rng(2), 72), 1.5, -0.3);
    let (g, b) = params(&dev, &[1.5, -0.7], &[0.2, 0.4]);
    let input = || dev.tensor_from_vec(x.clone(), shape);
    // Fresh running stats (0, 1): eval is the affine map x / sqrt(1 + eps) * gamma + beta.
    let y = batch_norm2d_eval(input(), &g, &b, &[0.0; 2], &[1.0; 2], 1e-5)
        .unwrap()
        .as_vec();
    for (i, (yv, xv)) in y.iter().zip(&x).enumerate() {
        let ch = (i / 9) % 2;
        let (g, b) = ([1.5, -0.7][ch], [0.2, 0.4][ch]);
        assert!((yv - (xv / (1.0f32 + 1e-5).sqrt() * g + b)).abs() < 1e-6);
    }
    // With the batch's mean and biased variance, eval == train.
    let (y_train, mean, var, _) = batch_norm2d_train(input(), &g, &b, 1e-5).unwrap();
    let y_eval = batch_norm2d_eval(input(), &g, &b, &mean, &var, 1e-5).unwrap();
    assert_close("eval vs train", &y_eval.as_vec(), &y_train.as_vec(), 1e-5);
}

fn check_gradients(train: bool, shape: Shape, seed: u64) {
    let dev = Cpu::default();
    let mut rng = rng(seed);
    let c = shape.1;
    let [x, gamma, beta] = random_inputs(&mut rng, shape, (2.0, 0.5));
    let r = random(&mut rng, x.len());
    let mean: Vec<f32> = random(&mut rng, c);
    let var: Vec<f32> = random(&mut rng, c).iter().map(|v| v + 1.2).collect();
    let forward = |x: Tensor4<Cpu, OwnedTape<f32, Cpu>>, g: &Tensor1<Cpu>, b: &Tensor1<Cpu>| {
        if train {
            batch_norm2d_train(x, g, b, 1e-5).unwrap().0
        } else {
            batch_norm2d_eval(x, g, b, &mean, &var, 1e-5).unwrap()
        }
    };
    let (xt, gt, bt) = tensors(&dev, [&x, &gamma, &beta], shape);
    let rt: Tensor4<Cpu> = dev.tensor_from_vec(r.clone(), shape);
    let grads = (forward(xt.leaky_trace(), &gt, &bt) * rt).sum().backward();
    let analytic = gradients!(grads, &xt, &gt, &bt);
    check_finite_differences(
        &format!("train={train}"),
        &[x, gamma, beta],
        &analytic,
        &r,
        |p| {
            let (xt, g, b) = tensors(&dev, [&p[0], &p[1], &p[2]], shape);
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
    let (g, b) = params(&dev, &[1.0; 2], &[0.0; 2]);
    let x: Tensor4<Cpu> = dev.tensor_from_vec(vec![1.0, 2.0], (1, 2, 1, 1));
    let _ = batch_norm2d_train(x, &g, &b, 1e-5);
}

/// The op of the given kind on a traced `x`: plain, with ReLU after it, or with `residual`
/// added before the ReLU.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Plain,
    Relu,
    AddRelu,
}

type Traced = Tensor4<Cpu, OwnedTape<f32, Cpu>>;

fn fused(kind: Kind, x: Traced, r: Traced, g: &Tensor1<Cpu>, b: &Tensor1<Cpu>) -> Traced {
    match kind {
        Kind::Plain => batch_norm2d_train(x, g, b, 1e-5).unwrap().0,
        Kind::Relu => batch_norm2d_relu_train(x, g, b, 1e-5).unwrap().0,
        Kind::AddRelu => batch_norm2d_add_relu_train(x, r, g, b, 1e-5).unwrap().0,
    }
}

fn unfused(kind: Kind, x: Traced, r: Traced, g: &Tensor1<Cpu>, b: &Tensor1<Cpu>) -> Traced {
    let y = batch_norm2d_train(x, g, b, 1e-5).unwrap().0;
    match kind {
        Kind::Plain => y,
        Kind::Relu => y.relu(),
        Kind::AddRelu => (y + r).relu(),
    }
}

/// `x`, gamma, beta and a residual for a test of the given shape.
fn inputs(seed: u64, shape: Shape) -> Vec<Vec<f32>> {
    let mut rng = rng(seed);
    let [x, gamma, beta] = random_inputs(&mut rng, shape, (1.0, 0.0));
    let residual = random(&mut rng, x.len());
    vec![x, gamma, beta, residual]
}

/// The output of `kind` on `p` (from [`inputs`]) and the gradients of `Σ output ⊙ w` with
/// respect to `x`, gamma, beta and, where one is added, the residual; `separate` builds the
/// op from batch norm, ReLU and add.
fn run_op(kind: Kind, separate: bool, p: &[Vec<f32>], shape: Shape, w: &[f32]) -> Vec<Vec<f32>> {
    let dev = Cpu::default();
    let (x, g, b) = tensors(&dev, [&p[0], &p[1], &p[2]], shape);
    let r: Tensor4<Cpu> = dev.tensor_from_vec(p[3].clone(), shape);
    let wt: Tensor4<Cpu> = dev.tensor_from_vec(w.to_vec(), shape);
    // The residual on the same tape as `x`, as in a residual block.
    let (xt, rt) = (x.leaky_trace(), r.clone().put_tape(Default::default()));
    let y = match separate {
        true => unfused(kind, xt, rt, &g, &b),
        false => fused(kind, xt, rt, &g, &b),
    };
    let values = y.as_vec();
    let grads = (y * wt).sum().backward();
    let mut out = vec![values, grads.get(&x).as_vec(), grads.get(&g).as_vec()];
    out.push(grads.get(&b).as_vec());
    if kind == Kind::AddRelu {
        out.push(grads.get(&r).as_vec());
    }
    out
}

/// The fused ops give the numbers of batch norm, ReLU and add as separate ops, the same on any
/// thread count.
#[test]
fn fused_ops_match_the_separate_ops() {
    for kind in [Kind::Relu, Kind::AddRelu] {
        for (seed, shape) in [(3, 2, 5, 7), (8, 16, 4, 4)].into_iter().enumerate() {
            let p = inputs(seed as u64, shape);
            let w = random(&mut rng(60), p[0].len());
            let want = run_op(kind, true, &p, shape, &w);
            let got = run_op(kind, false, &p, shape, &w);
            let on = |threads| on_threads(threads, || run_op(kind, false, &p, shape, &w));
            assert!(on(1) == on(3), "{kind:?} {shape:?}: thread count");
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{kind:?} {shape:?} output {k}"), g, w, 1e-6);
            }
        }
    }
}

/// `bn(x)`, plus the residual for [`Kind::AddRelu`]: what the ReLU sees.
fn pre_activation(kind: Kind, p: &[Vec<f32>], shape: Shape) -> Vec<f32> {
    let y = run_op(Kind::Plain, false, p, shape, &vec![0.0; p[0].len()]).swap_remove(0);
    match kind {
        Kind::AddRelu => y.iter().zip(&p[3]).map(|(a, b)| a + b).collect(),
        _ => y,
    }
}

#[test]
fn fused_gradients_match_finite_differences() {
    let shape = (2, 3, 3, 2);
    for kind in [Kind::Relu, Kind::AddRelu] {
        // The first inputs whose ReLU inputs all lie clear of the kink, which the differences
        // of 1e-2 would otherwise cross.
        let p = (0..)
            .map(|seed| inputs(seed, shape))
            .find(|p| {
                pre_activation(kind, p, shape)
                    .iter()
                    .all(|v| v.abs() > 0.05)
            })
            .unwrap();
        let w = random(&mut rng(61), p[0].len());
        let out = run_op(kind, false, &p, shape, &w);
        assert!(out[0].contains(&0.0) && out[0].iter().any(|&v| v > 0.0));
        let wrt = if kind == Kind::AddRelu { 4 } else { 3 };
        check_finite_differences(&format!("{kind:?}"), &p[..wrt], &out[1..], &w, |q| {
            let full: Vec<Vec<f32>> = q.iter().chain(&p[wrt..]).cloned().collect();
            run_op(kind, false, &full, shape, &w).swap_remove(0)
        });
    }
}

/// The training forward and backward written out plainly, with sequential f64 sums: the
/// formulas of the op, for comparing on full-size layers.
fn reference_train(x: &[f32], g: &[f32], b: &[f32], dy: &[f32], shape: Shape) -> [Vec<f32>; 4] {
    let (n, c, h, w) = shape;
    let plane = h * w;
    let m = (n * plane) as f64;
    let at = |i: usize, ch: usize, p: usize| (i * c + ch) * plane + p;
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|i| (0..plane).map(move |p| at(i, ch, p)))
            .collect();
        let mean = idx.iter().map(|&k| x[k] as f64).sum::<f64>() / m;
        let var = (idx
            .iter()
            .map(|&k| (x[k] as f64 - mean).powi(2))
            .sum::<f64>()
            / m) as f32;
        let (mean, inv_std) = (mean as f32, 1.0 / (var + 1e-5).sqrt());
        let scale = g[ch] * inv_std;
        let shift = b[ch] - mean * scale;
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for &k in &idx {
            y[k] = x[k] * scale + shift;
            sdy += dy[k] as f64;
            sdyx += (dy[k] * ((x[k] - mean) * inv_std)) as f64;
        }
        let (mean_dy, mean_dyx) = ((sdy / m) as f32, (sdyx / m) as f32);
        for &k in &idx {
            let xhat = (x[k] - mean) * inv_std;
            dx[k] = g[ch] * inv_std * (dy[k] - mean_dy - xhat * mean_dyx);
        }
        (dg[ch], db[ch]) = (sdyx as f32, sdy as f32);
    }
    [y, dx, dg, db]
}

/// On ResNet-20's batch-norm shapes the op computes the plain formulas up to the order of its
/// sums, and gives the same bits in pools of one and three threads.
#[test]
fn train_matches_the_reference_on_resnet_shapes_on_any_thread_count() {
    let dev = Cpu::default();
    for (seed, shape) in [(4, 16, 32, 32), (4, 32, 16, 16), (8, 64, 8, 8)]
        .into_iter()
        .enumerate()
    {
        let mut rng = rng(80 + seed as u64);
        let [x, g, b] = random_inputs(&mut rng, shape, (3.0, 0.5));
        let dy = random(&mut rng, x.len());
        let run = || {
            let (xt, gt, bt) = tensors(&dev, [&x, &g, &b], shape);
            let wt: Tensor4<Cpu> = dev.tensor_from_vec(dy.clone(), shape);
            let y = batch_norm2d_train(xt.leaky_trace(), &gt, &bt, 1e-5)
                .unwrap()
                .0;
            let values = y.as_vec();
            let grads = (y * wt).sum().backward();
            let [gx, gg, gb] = gradients!(grads, &xt, &gt, &bt);
            [values, gx, gg, gb]
        };
        let got = on_threads(1, run);
        assert!(got == on_threads(3, run), "{shape:?}: thread count");
        let want = reference_train(&x, &g, &b, &dy, shape);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = relative_difference(g, w);
            assert!(d < 1e-5, "{shape:?} output {k}: relative difference {d}");
        }
    }
}

/// Synchronised over two replicas, each with half the batch in a thread of its own, the op
/// gives each half of the whole batch's output and input gradients, and gradients of gamma and
/// beta that add up to the whole batch's; only the order of the sums differs.
#[test]
fn synced_halves_match_the_whole_batch() {
    use imprint_collective::{local_group, share, Collective};
    let shape = (6, 4, 3, 5);
    let p = inputs(90, shape);
    let w = random(&mut rng(91), p[0].len());
    let want = run_op(Kind::AddRelu, false, &p, shape, &w);
    let image = shape.1 * shape.2 * shape.3;
    let halves: Vec<(Vec<Vec<f32>>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = local_group(2)
            .into_iter()
            .map(|member| {
                let (p, w) = (&p, &w);
                s.spawn(move || {
                    let rows = share(shape.0, member.rank(), 2);
                    let part = |v: &Vec<f32>| v[rows.start * image..rows.end * image].to_vec();
                    let mine = vec![part(&p[0]), p[1].clone(), p[2].clone(), part(&p[3])];
                    let local = (rows.len(), shape.1, shape.2, shape.3);
                    let sum: SumOverReplicas = std::rc::Rc::new(move |v| member.sum_f64(v));
                    with_synced_statistics(sum, || {
                        let dev = Cpu::default();
                        let (g, b) = params(&dev, &mine[1], &mine[2]);
                        let x: Tensor4<Cpu> = dev.tensor_from_vec(mine[0].clone(), local);
                        let count = batch_norm2d_train(x, &g, &b, 1e-5).unwrap().3;
                        (run_op(Kind::AddRelu, false, &mine, local, &part(w)), count)
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (_, count) in &halves {
        assert_eq!(*count, shape.0 * shape.2 * shape.3);
    }
    let joined = |k: usize| -> Vec<f32> { halves.iter().flat_map(|(h, _)| h[k].clone()).collect() };
    let added = |k: usize| -> Vec<f32> {
        let (a, b) = (&halves[0].0[k], &halves[1].0[k]);
        a.iter().zip(b).map(|(a, b)| a + b).collect()
    };
    // Output, dL/dx, dL/dgamma, dL/dbeta, dL/dresidual.
    let got = [joined(0), joined(1), added(2), added(3), joined(4)];
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = relative_difference(g, w);
        assert!(d < 1e-6, "output {k}: relative difference {d}");
    }
}
