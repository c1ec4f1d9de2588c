use super::BatchNorm2dKernel;
use crate::{Tensor1, Tensor4};
use dfdx::prelude::*;
use rayon::prelude::*;

fn read(t: &Tensor1<Cpu>, channels: usize, what: &str) -> Vec<f32> {
    assert_eq!(
        t.shape().0,
        channels,
        "batch_norm2d: {what} has {} elements but the input has {channels} channels",
        t.shape().0
    );
    let mut v = vec![0.0; channels];
    t.copy_into(&mut v);
    v
}

/// `f(channel)` for every channel, in parallel, collected in channel order.
fn per_channel<R: Send>(channels: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    (0..channels).into_par_iter().map(f).collect()
}

/// Iterates the planes (`h * w` values) of channel `c` across the batch.
fn planes(data: &[f32], c: usize, channels: usize, plane: usize) -> impl Iterator<Item = &[f32]> {
    data.chunks_exact(plane).skip(c).step_by(channels)
}

/// Per-channel affine map `y = x * scale_c + shift_c` into a new buffer.
fn affine(x: &[f32], scale: &[f32], shift: &[f32], plane: usize) -> Vec<f32> {
    let channels = scale.len();
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let (s, t) = (scale[i % channels], shift[i % channels]);
            yp.iter_mut().zip(xp).for_each(|(y, &x)| *y = x * s + t);
        });
    y
}

/// Saved for the training-mode backward pass.
struct Saved {
    x: Vec<f32>,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    plane: usize,
}

/// Training-mode backward on plain slices: returns `(dx, dgamma, dbeta)`.
///
/// With `x̂ = (x - mean) * inv_std` and `m` values per channel:
/// `dbeta = Σ dy`, `dgamma = Σ dy x̂`, `dx = gamma * inv_std / m * (m dy - dbeta - x̂ dgamma)`.
fn train_backward(s: &Saved, dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let channels = s.gamma.len();
    let m = (s.x.len() / channels) as f64;
    let sums = per_channel(channels, |c| {
        let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
        for (xp, dp) in planes(&s.x, c, channels, s.plane).zip(planes(dy, c, channels, s.plane)) {
            for (&x, &d) in xp.iter().zip(dp) {
                let xhat = (x - s.mean[c]) * s.inv_std[c];
                sdy += d as f64;
                sdyx += (d * xhat) as f64;
            }
        }
        (sdy, sdyx)
    });
    let mut dx = vec![0.0; s.x.len()];
    dx.par_chunks_mut(s.plane)
        .zip(s.x.par_chunks(s.plane).zip(dy.par_chunks(s.plane)))
        .enumerate()
        .for_each(|(i, (gp, (xp, dp)))| {
            let c = i % channels;
            let (sdy, sdyx) = sums[c];
            let k = s.gamma[c] * s.inv_std[c];
            let (mean_dy, mean_dyx) = ((sdy / m) as f32, (sdyx / m) as f32);
            for ((g, &x), &d) in gp.iter_mut().zip(xp).zip(dp) {
                let xhat = (x - s.mean[c]) * s.inv_std[c];
                *g = k * (d - mean_dy - xhat * mean_dyx);
            }
        });
    let dgamma = sums.iter().map(|&(_, v)| v as f32).collect();
    let dbeta = sums.iter().map(|&(v, _)| v as f32).collect();
    (dx, dgamma, dbeta)
}

fn add_into(acc: &mut [f32], v: &[f32]) {
    acc.iter_mut().zip(v).for_each(|(a, b)| *a += b);
}

impl BatchNorm2dKernel for Cpu {
    fn batch_norm2d_train<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        eps: f32,
    ) -> Result<(Tensor4<Self, T>, Vec<f32>, Vec<f32>), Self::Err> {
        let shape = *x.shape();
        let (n, channels, h, w) = shape;
        let plane = h * w;
        assert!(
            n * plane >= 2,
            "batch_norm2d: training needs more than one value per channel, got input {shape:?}"
        );
        let g = read(gamma, channels, "gamma");
        let b = read(beta, channels, "beta");
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();
        let mut xs = vec![0.0; x.shape().num_elements()];
        x.copy_into(&mut xs);

        // Two passes in f64: the mean, then the mean squared deviation (biased variance).
        let m = (n * plane) as f64;
        let stats = per_channel(channels, |c| {
            let sum: f64 = planes(&xs, c, channels, plane)
                .flatten()
                .map(|&v| v as f64)
                .sum();
            let mean = sum / m;
            let sq: f64 = planes(&xs, c, channels, plane)
                .flatten()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum();
            (mean as f32, (sq / m) as f32)
        });
        let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
        let var: Vec<f32> = stats.iter().map(|s| s.1).collect();
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f32> = (0..channels).map(|c| g[c] * inv_std[c]).collect();
        let shift: Vec<f32> = (0..channels).map(|c| b[c] - mean[c] * scale[c]).collect();
        let y = dev.try_tensor_from_vec(affine(&xs, &scale, &shift, plane), shape)?;
        if !T::OWNS_TAPE {
            return Ok((y.put_tape(tape), mean, var));
        }
        let saved = Saved {
            x: xs,
            gamma: g,
            mean: mean.clone(),
            inv_std,
            plane,
        };
        let (x_g, g_g, b_g, y_g) = (x.ghost(), gamma.ghost(), beta.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.to_vec();
            let (dx, dgamma, dbeta) = train_backward(&saved, &dy);
            add_into(grads.get_or_alloc_mut(&x_g)?, &dx);
            add_into(grads.get_or_alloc_mut(&g_g)?, &dgamma);
            add_into(grads.get_or_alloc_mut(&b_g)?, &dbeta);
            Ok(())
        });
        Ok((y.put_tape(tape), mean, var))
    }

    fn batch_norm2d_eval<T: Tape<f32, Self>>(
        x: Tensor4<Self, T>,
        gamma: &Tensor1<Self>,
        beta: &Tensor1<Self>,
        mean: &[f32],
        var: &[f32],
        eps: f32,
    ) -> Result<Tensor4<Self, T>, Self::Err> {
        let shape = *x.shape();
        let (_, channels, h, w) = shape;
        let plane = h * w;
        let g = read(gamma, channels, "gamma");
        let b = read(beta, channels, "beta");
        assert_eq!(mean.len(), channels, "batch_norm2d: mean per channel");
        assert_eq!(var.len(), channels, "batch_norm2d: variance per channel");
        let dev = x.device().clone();
        let (x, mut tape) = x.split_tape();
        let mut xs = vec![0.0; x.shape().num_elements()];
        x.copy_into(&mut xs);
        let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let scale: Vec<f32> = (0..channels).map(|c| g[c] * inv_std[c]).collect();
        let shift: Vec<f32> = (0..channels).map(|c| b[c] - mean[c] * scale[c]).collect();
        let y = dev.try_tensor_from_vec(affine(&xs, &scale, &shift, plane), shape)?;
        if !T::OWNS_TAPE {
            return Ok(y.put_tape(tape));
        }
        let mean = mean.to_vec();
        let (x_g, g_g, b_g, y_g) = (x.ghost(), gamma.ghost(), beta.ghost(), y.ghost());
        tape.add_backward_op(move |grads| {
            let dy = grads.get_or_alloc_mut(&y_g)?.to_vec();
            // y = x * scale + shift: dx = dy * scale, dgamma = Σ dy x̂, dbeta = Σ dy.
            let zero = vec![0.0; channels];
            let dx = affine(&dy, &scale, &zero, plane);
            let sums = per_channel(channels, |c| {
                let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
                for (xp, dp) in planes(&xs, c, channels, plane).zip(planes(&dy, c, channels, plane))
                {
                    for (&x, &d) in xp.iter().zip(dp) {
                        sdy += d as f64;
                        sdyx += (d * (x - mean[c]) * inv_std[c]) as f64;
                    }
                }
                (sdy as f32, sdyx as f32)
            });
            add_into(grads.get_or_alloc_mut(&x_g)?, &dx);
            let dgamma: Vec<f32> = sums.iter().map(|s| s.1).collect();
            let dbeta: Vec<f32> = sums.iter().map(|s| s.0).collect();
            add_into(grads.get_or_alloc_mut(&g_g)?, &dgamma);
            add_into(grads.get_or_alloc_mut(&b_g)?, &dbeta);
            Ok(())
        });
        Ok(y.put_tape(tape))
    }
}
