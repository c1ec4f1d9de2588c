//! Times the ops of a CIFAR ResNet-20 (He et al. 2016, §4.2) at batch 128, layer type by layer
//! type and as a whole training step; `resnet_ops_torch.py` measures the same in PyTorch.
//!
//! Each layer line is the median forward and backward time, the backward pass that of
//! `y.sum()` (the sum itself untimed). The last
//! line is a whole step: ResNet-20 forward (option-A shortcuts), cross-entropy, backward of
//! every gradient and an Adam update.
//!
//! `cargo run --release -p imprint-ops --example resnet_ops [iterations] [--chain-only]
//! [--only=NAME_PART] [--cpu-time] [--separate] [--kernel=f32|bf16-avx512|bf16-amx]`
//!
//! `--kernel` names the kernel of the convolutions' and the linear layer's products (default
//! f32); a kernel this CPU lacks is refused.
//!
//! `--cpu-time` times by process CPU time instead of the wall clock (meaningful with
//! `RAYON_NUM_THREADS=1` on a busy machine). `--separate` runs the whole step with batch
//! norm, add and ReLU as separate ops instead of the fused ones.

use dfdx::prelude::*;
use imprint_ops::{
    avg_pool2d, batch_norm2d_add_relu_train, batch_norm2d_relu_train, batch_norm2d_train, conv2d,
    linear, with_kernel, Activation, Conv2dSpec, ProductKernel, Tensor1, Tensor4,
};
mod common;
use common::{median, Clock};

const BATCH: usize = 128;
const CLASSES: usize = 10;

type Taped = Tensor4<Cpu, OwnedTape<f32, Cpu>>;

fn uniform(dev: &Cpu, len: usize, scale: f32) -> Tensor1<Cpu> {
    dev.sample_uniform_like(&(len,)) * (2.0 * scale) - scale
}

fn conv3x3(cin: usize, cout: usize, stride: usize) -> Conv2dSpec {
    Conv2dSpec::new(cin, cout, 3).stride(stride).padding(1)
}

/// What to run: iterations, and the layers whose names contain `only` (all when empty).
struct Options {
    iters: usize,
    /// The whole step with batch norm, add and ReLU as separate ops rather than fused.
    separate: bool,
    clock: Clock,
    only: String,
    chain_only: bool,
}

/// Median forward and backward milliseconds of `f` applied to a traced `x`.
fn time_layer(name: &str, opts: &Options, x: &Tensor4<Cpu>, f: impl Fn(Taped) -> Taped) {
    if !name.contains(&opts.only) {
        return;
    }
    let (iters, clock) = (opts.iters, opts.clock);
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for i in 0..iters + 2 {
        let t = clock.now();
        let y = f(x.leaky_trace());
        let a = clock.now() - t;
        // The sum is dfdx's, and slow: left out of the timings.
        let loss = y.sum();
        let t = clock.now();
        let grads = loss.backward();
        let b = clock.now() - t;
        std::hint::black_box(grads);
        if i >= 2 {
            fwd.push(a);
            bwd.push(b);
        }
    }
    println!(
        "{name:28} fwd {:7.3} ms  bwd {:7.3} ms",
        median(fwd) * 1e3,
        median(bwd) * 1e3
    );
}

fn time_layers(dev: &Cpu, opts: &Options) {
    let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, 3, 32, 32));
    let w = uniform(dev, 16 * 3 * 9, 0.1);
    let spec = conv3x3(3, 16, 1).without_input_grad();
    time_layer("conv  3->16 s1 32x32 (data)", opts, &x, |x| {
        conv2d(x, &w, None, &spec).unwrap()
    });
    for (c, hw) in [(16, 32), (32, 16), (64, 8)] {
        let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, c, hw, hw));
        let w = uniform(dev, c * c * 9, 0.1);
        let spec = conv3x3(c, c, 1);
        let name = format!("conv {c:2}->{c:<2} s1 {hw}x{hw}");
        time_layer(&name, opts, &x, |x| conv2d(x, &w, None, &spec).unwrap());
    }
    for (c, hw) in [(16, 32), (32, 16)] {
        let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, c, hw, hw));
        let w = uniform(dev, 2 * c * c * 9, 0.1);
        let spec = conv3x3(c, 2 * c, 2);
        let name = format!("conv {c:2}->{:<2} s2 {hw}x{hw}", 2 * c);
        time_layer(&name, opts, &x, |x| conv2d(x, &w, None, &spec).unwrap());
    }
    for (c, hw) in [(16, 32), (32, 16), (64, 8)] {
        let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, c, hw, hw));
        let gamma: Tensor1<Cpu> = dev.ones_like(&(c,));
        let beta: Tensor1<Cpu> = dev.zeros_like(&(c,));
        time_layer(&format!("bn train {c} {hw}x{hw}"), opts, &x, |x| {
            batch_norm2d_train(x, &gamma, &beta, 1e-5).unwrap().0
        });
        time_layer(&format!("relu {c} {hw}x{hw}"), opts, &x, |x| x.relu());
        let r: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, c, hw, hw));
        time_layer(&format!("add {c} {hw}x{hw}"), opts, &x, |x| x + r.clone());
        time_layer(&format!("bn+relu {c} {hw}x{hw}"), opts, &x, |x| {
            batch_norm2d_relu_train(x, &gamma, &beta, 1e-5).unwrap().0
        });
        time_layer(&format!("bn+add+relu {c} {hw}x{hw}"), opts, &x, |x| {
            batch_norm2d_add_relu_train(x, r.clone(), &gamma, &beta, 1e-5)
                .unwrap()
                .0
        });
    }
}

/// What follows a batch norm in ResNet: ReLU, or the shortcut added and then ReLU.
enum After {
    Relu,
    AddRelu(Taped),
}

/// A convolution without bias and the batch norm after it.
struct ConvBn {
    spec: Conv2dSpec,
    weight: Tensor1<Cpu>,
    gamma: Tensor1<Cpu>,
    beta: Tensor1<Cpu>,
}

impl ConvBn {
    fn new(dev: &Cpu, cin: usize, cout: usize, stride: usize) -> Self {
        let spec = conv3x3(cin, cout, stride);
        Self {
            weight: uniform(dev, spec.weight_len(), (1.0 / (cin * 9) as f32).sqrt()),
            gamma: dev.ones_like(&(cout,)),
            beta: dev.zeros_like(&(cout,)),
            spec,
        }
    }

    fn conv(&self, x: Taped) -> Taped {
        conv2d(x, &self.weight, None, &self.spec).unwrap()
    }

    /// Convolution, batch norm, then `after`: ReLU, or the residual added and ReLU. Fused, or
    /// with batch norm, add and ReLU as separate ops.
    fn forward(&self, x: Taped, after: After, fused: bool) -> Taped {
        let y = self.conv(x);
        let (g, b) = (&self.gamma, &self.beta);
        match (after, fused) {
            (After::Relu, true) => batch_norm2d_relu_train(y, g, b, 1e-5).unwrap().0,
            (After::AddRelu(r), true) => batch_norm2d_add_relu_train(y, r, g, b, 1e-5).unwrap().0,
            (After::Relu, false) => batch_norm2d_train(y, g, b, 1e-5).unwrap().0.relu(),
            (After::AddRelu(r), false) => (batch_norm2d_train(y, g, b, 1e-5).unwrap().0 + r).relu(),
        }
    }

    fn params(&self) -> [&Tensor1<Cpu>; 3] {
        [&self.weight, &self.gamma, &self.beta]
    }
}

/// ResNet-20: a 3x3 stem, three stages of three basic blocks at 16, 32 and 64 channels, global
/// average pooling and a linear classifier.
struct ResNet20 {
    stem: ConvBn,
    /// Each basic block: conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU.
    blocks: Vec<(ConvBn, ConvBn)>,
    fc_weight: Tensor1<Cpu>,
    fc_bias: Tensor1<Cpu>,
}

impl ResNet20 {
    fn new(dev: &Cpu) -> Self {
        let mut blocks = Vec::new();
        let mut cin = 16;
        for (cout, stride) in [(16, 1), (32, 2), (64, 2)] {
            for i in 0..3 {
                let s = if i == 0 { stride } else { 1 };
                blocks.push((
                    ConvBn::new(dev, cin, cout, s),
                    ConvBn::new(dev, cout, cout, 1),
                ));
                cin = cout;
            }
        }
        let mut stem = ConvBn::new(dev, 3, 16, 1);
        // The images need no gradient.
        stem.spec = stem.spec.without_input_grad();
        Self {
            stem,
            blocks,
            fc_weight: uniform(dev, CLASSES * 64, 0.125),
            fc_bias: uniform(dev, CLASSES, 0.125),
        }
    }

    fn params(&self) -> Vec<&Tensor1<Cpu>> {
        let mut p: Vec<&Tensor1<Cpu>> = self.stem.params().to_vec();
        for (a, b) in &self.blocks {
            p.extend(a.params());
            p.extend(b.params());
        }
        p.extend([&self.fc_weight, &self.fc_bias]);
        p
    }

    fn params_mut(&mut self) -> Vec<&mut Tensor1<Cpu>> {
        let mut p: Vec<&mut Tensor1<Cpu>> = Vec::new();
        let Self {
            stem,
            blocks,
            fc_weight,
            fc_bias,
        } = self;
        p.extend([&mut stem.weight, &mut stem.gamma, &mut stem.beta]);
        for (a, b) in blocks.iter_mut() {
            p.extend([&mut a.weight, &mut a.gamma, &mut a.beta]);
            p.extend([&mut b.weight, &mut b.gamma, &mut b.beta]);
        }
        p.extend([fc_weight, fc_bias]);
        p
    }

    /// Logits `[n, CLASSES]` of `x`, `[n, 3, 32, 32]`, with fused batch-norm ops or separate
    /// ones.
    fn forward(
        &self,
        x: Taped,
        fused: bool,
    ) -> Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>> {
        let mut h = self.stem.forward(x, After::Relu, fused);
        for (a, b) in &self.blocks {
            let shortcut = option_a_shortcut(h.with_empty_tape(), b.spec.out_channels);
            let y = a.forward(h, After::Relu, fused);
            h = b.forward(y, After::AddRelu(shortcut), fused);
        }
        let n = h.shape().0;
        let pooled = avg_pool2d(h, (8, 8), (8, 8)).unwrap();
        let flat = pooled.reshape_like(&(n, 64));
        linear(
            flat,
            &self.fc_weight,
            &self.fc_bias,
            CLASSES,
            Activation::Identity,
            true,
        )
        .unwrap()
    }
}

/// The identity where the channel count stays; otherwise every second pixel in both
/// directions, with zero channels added on both sides up to `cout`.
fn option_a_shortcut(x: Taped, cout: usize) -> Taped {
    let (n, c, h, w) = *x.shape();
    if c == cout {
        return x;
    }
    let dev = x.device().clone();
    let sub = avg_pool2d(x, (1, 1), (2, 2)).unwrap();
    let pad = (cout - c) / 2;
    let zeros: Tensor4<Cpu> = dev.zeros_like(&(n, pad, h / 2, w / 2));
    let left = (sub, zeros.clone()).concat_along(Axis::<1>);
    (zeros.put_tape(Default::default()), left).concat_along(Axis::<1>)
}

/// Mean cross-entropy of `logits` against one-hot `targets`.
fn cross_entropy(
    logits: Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
    targets: &Tensor<(usize, usize), f32, Cpu>,
) -> Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>> {
    let n = logits.shape().0 as f32;
    (logits.log_softmax::<Axis<1>>() * targets.clone()).sum() * (-1.0 / n)
}

/// Adam with PyTorch's defaults, on plain copies of the parameters.
struct Adam {
    lr: f32,
    step: i32,
    moments: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Adam {
    fn new(params: &[&Tensor1<Cpu>], lr: f32) -> Self {
        let moments = params
            .iter()
            .map(|p| (vec![0.0; p.shape().0], vec![0.0; p.shape().0]))
            .collect();
        Self {
            lr,
            step: 0,
            moments,
        }
    }

    fn update(&mut self, params: Vec<&mut Tensor1<Cpu>>, grads: &Gradients<f32, Cpu>) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        self.step += 1;
        let (c1, c2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
        for (p, (m, v)) in params.into_iter().zip(&mut self.moments) {
            let g = grads.get(&*p).as_vec();
            let mut values = p.as_vec();
            for (((x, g), m), v) in values.iter_mut().zip(&g).zip(m).zip(v) {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *x -= self.lr * (*m / c1) / ((*v / c2).sqrt() + eps);
            }
            p.copy_from(&values);
        }
    }
}

fn time_train_step(dev: &Cpu, opts: &Options) {
    let (iters, clock) = (opts.iters, opts.clock);
    let mut net = ResNet20::new(dev);
    let mut adam = Adam::new(&net.params(), 1e-3);
    let x: Tensor4<Cpu> = dev.sample_uniform_like(&(BATCH, 3, 32, 32));
    let mut onehot = vec![0.0; BATCH * CLASSES];
    for i in 0..BATCH {
        onehot[i * CLASSES + (i * 7) % CLASSES] = 1.0;
    }
    let targets = dev.tensor_from_vec(onehot, (BATCH, CLASSES));
    let mut times = Vec::new();
    for i in 0..iters + 2 {
        let t = clock.now();
        let logits = net.forward(x.leaky_trace(), !opts.separate);
        let grads = cross_entropy(logits, &targets).backward();
        adam.update(net.params_mut(), &grads);
        if i >= 2 {
            times.push(clock.now() - t);
        }
    }
    let step = median(times);
    println!(
        "resnet20 train step{} {:8.2} ms  -> {:.0} images/s",
        if opts.separate { " (separate)" } else { "" },
        step * 1e3,
        BATCH as f64 / step
    );
}

fn main() {
    imprint_ops::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Options {
        iters: args.iter().find_map(|a| a.parse().ok()).unwrap_or(10),
        only: args
            .iter()
            .find_map(|a| a.strip_prefix("--only="))
            .unwrap_or("")
            .to_string(),
        chain_only: args.iter().any(|a| a == "--chain-only"),
        separate: args.iter().any(|a| a == "--separate"),
        clock: Clock::from_args(&args),
    };
    let kernel = match args.iter().find_map(|a| a.strip_prefix("--kernel=")) {
        None => ProductKernel::F32,
        Some(name) => ProductKernel::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| panic!("--kernel={name}: not f32, bf16-avx512 or bf16-amx")),
    };
    if !kernel.available() {
        eprintln!("error: --kernel={}: this CPU lacks it", kernel.name());
        std::process::exit(1);
    }
    let dev = Cpu::seed_from_u64(0);
    println!(
        "batch {BATCH}, {} rayon threads, median of {} runs, {}, {kernel}",
        rayon::current_num_threads(),
        opts.iters,
        match opts.clock {
            Clock::Wall => "wall clock",
            Clock::Cpu => "process CPU time",
        }
    );
    with_kernel(kernel, || {
        if !opts.chain_only {
            time_layers(&dev, &opts);
        }
        if opts.only.is_empty() {
            time_train_step(&dev, &opts);
        }
    });
}
