//! Times forward and backward of the convolutional autoencoder layers used as the PyTorch
//! reference (batch 128, 28x28x1):
//!
//! conv 1->32 k3 s2 p1 (14x14), conv 32->64 k3 s2 p1 (7x7),
//! convT 64->32 k4 s2 p1 (14x14), convT 32->1 k4 s2 p1 (28x28).
//!
//! `cargo run --release -p imprint-ops --example conv_speed [iterations] [--cpu-time]`
//!
//! `--cpu-time` times by process CPU time instead of the wall clock (meaningful with
//! `RAYON_NUM_THREADS=1` on a busy machine).

use dfdx::prelude::*;
use imprint_ops::{conv2d, conv_transpose2d, Conv2dSpec, ConvTranspose2dSpec, Tensor1, Tensor4};
mod common;
use common::{median, Clock};

const BATCH: usize = 128;

enum Layer {
    Conv(Conv2dSpec),
    Up(ConvTranspose2dSpec),
}

struct Params {
    layer: Layer,
    w: Tensor1<Cpu>,
    b: Tensor1<Cpu>,
}

impl Params {
    fn new(dev: &Cpu, layer: Layer) -> Self {
        let (len, out) = match &layer {
            Layer::Conv(s) => (s.weight_len(), s.out_channels),
            Layer::Up(s) => (s.weight_len(), s.out_channels),
        };
        Self {
            w: dev.sample_uniform_like(&(len,)) * 0.2 - 0.1,
            b: dev.sample_uniform_like(&(out,)) * 0.2 - 0.1,
            layer,
        }
    }

    fn name(&self) -> String {
        match &self.layer {
            Layer::Conv(s) => format!(
                "conv  {:>2}->{:<2} k{} s{} p{}",
                s.in_channels, s.out_channels, s.kernel.0, s.stride.0, s.padding.0
            ),
            Layer::Up(s) => format!(
                "convT {:>2}->{:<2} k{} s{} p{}",
                s.in_channels, s.out_channels, s.kernel.0, s.stride.0, s.padding.0
            ),
        }
    }

    fn forward<T: Tape<f32, Cpu>>(&self, x: Tensor4<Cpu, T>) -> Tensor4<Cpu, T> {
        match &self.layer {
            Layer::Conv(s) => conv2d(x, &self.w, Some(&self.b), s).unwrap(),
            Layer::Up(s) => conv_transpose2d(x, &self.w, Some(&self.b), s).unwrap(),
        }
    }
}

fn main() {
    imprint_ops::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iters: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10);
    let clock = Clock::from_args(&args);
    let dev = Cpu::seed_from_u64(0);
    let layers = [
        Params::new(
            &dev,
            Layer::Conv(Conv2dSpec::new(1, 32, 3).stride(2).padding(1)),
        ),
        Params::new(
            &dev,
            Layer::Conv(Conv2dSpec::new(32, 64, 3).stride(2).padding(1)),
        ),
        Params::new(
            &dev,
            Layer::Up(ConvTranspose2dSpec::new(64, 32, 4).stride(2).padding(1)),
        ),
        Params::new(
            &dev,
            Layer::Up(ConvTranspose2dSpec::new(32, 1, 4).stride(2).padding(1)),
        ),
    ];
    let inputs = [(1, 28), (32, 14), (64, 7), (32, 14)];
    println!(
        "batch {BATCH}, {} rayon threads, median of {iters} runs",
        rayon::current_num_threads()
    );
    let mut total = (0.0, 0.0);
    for (p, &(c, hw)) in layers.iter().zip(&inputs) {
        let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, c, hw, hw));
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for i in 0..iters + 2 {
            let t = clock.now();
            let y = p.forward(x.leaky_trace());
            let f = clock.now() - t;
            let t = clock.now();
            let grads = y.sum().backward();
            let b = clock.now() - t;
            std::hint::black_box(grads);
            if i >= 2 {
                fwd.push(f);
                bwd.push(b);
            }
        }
        let (f, b) = (median(fwd) * 1e3, median(bwd) * 1e3);
        total = (total.0 + f, total.1 + b);
        println!("{}  fwd {f:7.2} ms  bwd {b:7.2} ms", p.name());
    }
    println!(
        "sum of layers      fwd {:7.2} ms  bwd {:7.2} ms  -> {:.0} images/s",
        total.0,
        total.1,
        BATCH as f64 / ((total.0 + total.1) / 1e3)
    );

    // The four layers chained with ReLU between, forward + backward of a squared error.
    let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, 1, 28, 28));
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        let t = clock.now();
        let mut h = x.leaky_trace();
        for (k, p) in layers.iter().enumerate() {
            h = p.forward(h);
            if k + 1 < layers.len() {
                h = h.relu();
            }
        }
        let grads = (h - x.clone()).square().mean().backward();
        std::hint::black_box(grads);
        if i >= 2 {
            times.push(clock.now() - t);
        }
    }
    let step = median(times);
    println!(
        "chained step (fwd+bwd, ReLU, MSE)  {:7.2} ms  -> {:.0} images/s",
        step * 1e3,
        BATCH as f64 / step
    );
}
