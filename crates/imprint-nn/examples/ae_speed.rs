use dfdx::prelude::*;
use imprint_nn::*;
use rand::SeedableRng;
use std::time::Instant;
fn main() {
    // As the CLI does: run on a pool worker, so parallel products do not wake this thread.
    rayon::ThreadPoolBuilder::new()
        .build()
        .unwrap()
        .install(train);
}

fn train() {
    let dev = Cpu::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut enc = Mlp::new(
        &dev,
        &[784, 512, 256, 64],
        Activation::Relu,
        Activation::Identity,
        &mut rng,
    );
    let mut dec = Mlp::new(
        &dev,
        &[64, 256, 512, 784],
        Activation::Relu,
        Activation::Identity,
        &mut rng,
    );
    let b = 128;
    let data: Vec<f32> = (0..b * 784)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    let mut opt = Adam::new();
    let cfg = optim::adam_config(1e-3, 0.0, false);
    // Like the PyTorch peer: 20 untimed steps (thread pool, allocator caches, Adam moments) first.
    let (warmup, steps) = (20, 200);
    let (mut tf, mut tb, mut to) = (0.0, 0.0, 0.0);
    let mut t = Instant::now();
    for i in 0..warmup + steps {
        if i == warmup {
            (tf, tb, to) = (0.0, 0.0, 0.0);
            t = Instant::now();
        }
        let t0 = Instant::now();
        let x: Matrix<Cpu> = dev.tensor_from_vec(data.clone(), (b, 784));
        let z = enc.forward(x.clone().leaky_trace(), false);
        let logits = dec.forward(z, true);
        let loss = loss::reconstruction_loss(loss::Reconstruction::Mse, logits, x);
        let t1 = Instant::now();
        let mut grads = loss.backward();
        let t2 = Instant::now();
        let mut ps = enc.params_mut();
        ps.extend(dec.params_mut());
        opt.step(
            &mut [ParamGroup {
                config: cfg,
                params: ps,
            }],
            &mut grads,
        )
        .unwrap();
        let t3 = Instant::now();
        tf += (t1 - t0).as_secs_f64();
        tb += (t2 - t1).as_secs_f64();
        to += (t3 - t2).as_secs_f64();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "{:.0} img/s; per step ms: fwd {:.2} bwd {:.2} opt {:.2}",
        (steps * b) as f64 / el,
        tf * 1e3 / steps as f64,
        tb * 1e3 / steps as f64,
        to * 1e3 / steps as f64
    );
}
