//! `imprint bench`: throughput and peak memory of pre-training (the dense or convolutional
//! autoencoder), fine-tuning (a classifier on the dense, convolutional or ResNet-20 encoder) or
//! inference (that classifier's predictions), and the PyTorch peer's on the identical net, batch
//! and data size. Each measurement runs in a fresh process, ours and the peer's alternating one
//! each per pair so that load hits both alike; the load average is printed before the first and
//! after every pair, and a busy machine is refused unless asked.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dfdx::prelude::Cpu;
use imprint_data::{Dataset, ImageShape, Pixels};
use imprint_finetune::{finetune, Classifier, FinetuneConfig, Strategy};
use imprint_nn::{Architecture, Encoder};
use imprint_pipeline::named_architecture;
use imprint_pipeline::provenance::threads_phrase;
use imprint_pretrain::{pretrain, Hooks, Images, PretrainConfig, Start};
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::time::Instant;

/// What a measurement times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Autoencoder training steps (dense and conv).
    Pretrain,
    /// Classifier training steps: the encoder and a 10-class head, all trained (Adam).
    Finetune,
    /// The classifier's class probabilities in eval mode, without a tape, in chunks of 1024.
    Infer,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Training steps per measurement.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Image side (square, one channel; ResNet-20 takes 3x32x32 whatever this says).
    #[arg(long, default_value_t = 28)]
    side: usize,
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    latent: usize,
    /// `dense` or `conv` (an autoencoder: 3x3 stride-2 convolutions with `--channels` filters,
    /// then linear), or `resnet20` (a 10-class classifier on 3x32x32 images, Adam).
    #[arg(long, default_value = "dense")]
    arch: String,
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    channels: Vec<usize>,
    /// Alternated pairs of measurements (ours, then the peer's); medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// A Python with PyTorch: also time the same net there (e.g. ~/peer/bin/python).
    #[arg(long)]
    peer: Option<String>,
    /// Refuse to start when the 1-minute load average is above this: another job on the
    /// cores measures the load, not the code.
    #[arg(long, default_value_t = 1.5)]
    max_load: f64,
    /// Measure even on a busy machine (the figures are then marked as such).
    #[arg(long)]
    busy_ok: bool,
    /// What to time; pretrain for dense and conv, finetune for resnet20 when not given.
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// Number format of our convolution and linear products: f32, or bf16 with f32 sums (the
    /// peer runs f32 either way).
    #[arg(long, default_value = "f32")]
    precision: imprint_nn::Precision,
    /// Run one measurement of ours in this process and print images/s and peak memory (the
    /// parent starts one such process per pair).
    #[arg(long, hide = true)]
    worker: bool,
    /// Measure loading and pre-training at scale instead, on data generated (once) in this
    /// folder: a folder of PNGs and an idx file of 3x32x32 images.
    #[arg(long, value_name = "DIR")]
    data: Option<std::path::PathBuf>,
    /// With --data: PNG images in the folder.
    #[arg(long, default_value_t = 200_000)]
    png_images: usize,
    /// With --data: images in the idx file.
    #[arg(long, default_value_t = 1_000_000)]
    idx_images: usize,
    /// With --data: the memory budget (MiB) the idx file is read within.
    #[arg(long, default_value_t = imprint_data::DEFAULT_MEMORY_BUDGET_MB)]
    idx_budget_mb: u64,
}

/// The PyTorch twin of each net: the same layers, batch, data size, optimizer and loss.
const PEER: &str = r#"
import resource, sys, time, torch, torch.nn as nn, torch.nn.functional as F
batch, steps, side, latent = (int(a) for a in sys.argv[1:5])
widths = [int(h) for h in sys.argv[5].split(',')]
kind, task = sys.argv[6], sys.argv[7]
torch.manual_seed(0)

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.b2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if cin != cout else 0
        self.stride = stride
    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        s = x
        if self.stride != 1 or self.pad:
            s = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + s)

def resnet20():
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for i, w in enumerate([16, 32, 64]):
        for b in range(3):
            layers.append(Block(cin, w, 2 if i > 0 and b == 0 else 1)); cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

if kind == 'resnet20':
    net = resnet20()
    x = torch.rand(steps * batch, 3, 32, 32)
    y = torch.randint(0, 10, (steps * batch,))
    params = list(net.parameters())
    def loss_of(idx): return F.cross_entropy(net(x[idx]), y[idx])
elif kind == 'dense':
    dims = [side * side] + widths + [latent]
    enc, dec = [], []
    for i in range(len(dims) - 1):
        enc += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        dec += [nn.Linear(dims[-1 - i], dims[-2 - i]), nn.ReLU()]
    enc, dec = nn.Sequential(*enc[:-1]), nn.Sequential(*dec[:-1], nn.Sigmoid())
    x = torch.rand(steps * batch, side * side)
    params = list(enc.parameters()) + list(dec.parameters())
    def loss_of(idx): return F.mse_loss(dec(enc(x[idx])), x[idx])
else:
    chans, sizes = [1] + widths, [side]
    for _ in widths: sizes.append((sizes[-1] - 1) // 2 + 1)
    enc = []
    for i in range(len(widths)): enc += [nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1), nn.ReLU()]
    flat = chans[-1] * sizes[-1] ** 2
    enc = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, latent))
    dec = [nn.Linear(latent, flat), nn.ReLU(), nn.Unflatten(1, (chans[-1], sizes[-1], sizes[-1]))]
    for i in reversed(range(len(widths))):
        op = sizes[i] - ((sizes[i + 1] - 1) * 2 + 3 - 2)
        dec += [nn.ConvTranspose2d(chans[i + 1], chans[i], 3, 2, 1, output_padding=op), nn.ReLU()]
    dec = nn.Sequential(*dec[:-1], nn.Sigmoid(), nn.Flatten())
    x = torch.rand(steps * batch, side * side)
    params = list(enc.parameters()) + list(dec.parameters())
    def loss_of(idx): return F.mse_loss(dec(enc(x[idx].view(-1, 1, side, side))), x[idx])
if task != 'pretrain' and kind != 'resnet20':
    # a classifier: the encoder and a 10-class head
    net = nn.Sequential(enc, nn.Linear(latent, 10))
    y = torch.randint(0, 10, (len(x),))
    params = list(net.parameters())
    shaped = (lambda v: v) if kind == 'dense' else (lambda v: v.view(-1, 1, side, side))
    def loss_of(idx): return F.cross_entropy(net(shaped(x[idx])), y[idx])
opt = torch.optim.Adam(params, 1e-3)
def epoch():
    perm = torch.randperm(len(x))
    for i in range(0, len(x), batch):
        loss = loss_of(perm[i:i + batch])
        opt.zero_grad(); loss.backward(); opt.step(); loss.item()
def infer():
    net.eval()
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            v = x[i:i + 1024]
            F.softmax(net(v if kind != 'conv' else v.view(-1, 1, side, side)), 1).numpy()
run = infer if task == 'infer' else epoch
run()
t = time.time(); run(); el = time.time() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{steps * batch / el:.1f} {torch.get_num_threads()} {peak}")
"#;

impl BenchArgs {
    fn architecture(&self) -> Result<Architecture> {
        Ok(match self.arch.as_str() {
            "dense" => Architecture::Dense(imprint_nn::DenseNet {
                hidden: self.hidden.clone(),
                latent: self.latent,
            }),
            "conv" => Architecture::Conv(imprint_nn::ConvNet {
                channels: self.channels.clone(),
                kernel: 3,
                stride: 2,
                latent: self.latent,
            }),
            "resnet20" => named_architecture(&self.arch).map_err(anyhow::Error::msg)?,
            other => bail!("unknown --arch `{other}` (dense, conv or resnet20)"),
        })
    }

    fn widths(&self) -> &[usize] {
        if self.arch == "conv" {
            &self.channels
        } else {
            &self.hidden
        }
    }

    fn shape(&self) -> ImageShape {
        if self.arch == "resnet20" {
            ImageShape {
                channels: 3,
                height: 32,
                width: 32,
            }
        } else {
            ImageShape {
                channels: 1,
                height: self.side,
                width: self.side,
            }
        }
    }
}

impl BenchArgs {
    fn task(&self) -> Task {
        self.task.unwrap_or(if self.arch == "resnet20" {
            Task::Finetune
        } else {
            Task::Pretrain
        })
    }
}

/// Our images/s on `images`: an autoencoder's second pre-training epoch (the first warms caches
/// and the allocator, as the peer's first does), a classifier's training steps after a short
/// warm-up, or its predictions over the images after one warm-up pass.
fn ours(args: &BenchArgs, images: &Pixels) -> Result<f64> {
    let shape = args.shape();
    let dev = Cpu::default();
    if args.task() == Task::Pretrain {
        let cfg = PretrainConfig {
            batch_size: args.batch,
            holdout_fraction: 0.0,
            precision: args.precision,
            ..PretrainConfig::new(args.architecture()?, 2)
        };
        let images = Images::new(images, shape);
        let run = pretrain(&dev, images, &cfg, 0, Start::Fresh, Hooks::default())?;
        return Ok(run.history.last().map_or(0.0, |h| h.images_per_second));
    }
    let n = images.len();
    let data = Dataset {
        shape,
        pixels: images.clone(),
        labels: Some((0..n).map(|i| i % 10).collect()),
        classes: (0..10).map(|c| c.to_string()).collect(),
        items: (0..n).map(|i| format!("#{i}")).collect(),
        source: Default::default(),
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let encoder = Encoder::new(&dev, &args.architecture()?, shape, &mut rng)?;
    let train = |steps| -> Result<Classifier<Cpu>> {
        let cfg = FinetuneConfig {
            steps,
            batch_size: args.batch,
            checkpoint_every: 0,
            precision: args.precision,
            ..FinetuneConfig::default()
        };
        let trained = finetune(&dev, encoder.clone(), &data, None, &cfg, Strategy::FULL, 0)?;
        Ok(trained.0)
    };
    let mut model = train(5)?;
    let start = Instant::now();
    if args.task() == Task::Infer {
        return Ok(imprint_nn::with_precision(args.precision, || {
            model.predict(&dev, images);
            let start = Instant::now();
            model.predict(&dev, images);
            n as f64 / start.elapsed().as_secs_f64()
        }));
    }
    train(args.steps)?;
    Ok((args.steps * args.batch) as f64 / start.elapsed().as_secs_f64())
}

/// The images every measurement runs on (the same seeded noise on both sides' sizes), as the
/// bytes a dataset holds.
fn images(args: &BenchArgs) -> Pixels {
    let len = args.shape().len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let bytes = (0..args.steps * args.batch * len)
        .map(|_| rng.gen())
        .collect();
    Pixels::from_bytes(bytes, len)
}

/// This process's peak resident memory in KiB (`VmHWM`).
fn peak_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/self/status: no VmHWM line")
}

/// One measurement of ours in a fresh process (this program, `--worker`): images/s and peak
/// memory in KiB.
fn ours_in_child() -> Result<(f64, u64)> {
    let exe = std::env::current_exe().context("cannot find this program to run a measurement")?;
    let out = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--worker")
        .output()
        .context("cannot run a measurement")?;
    if !out.status.success() {
        bail!(
            "a measurement failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<f64>);
    match (words.next(), words.next()) {
        (Some(Ok(speed)), Some(Ok(peak))) => Ok((speed, peak as u64)),
        _ => bail!("unexpected measurement output `{}`", text.trim()),
    }
}

/// The peer's images/s, thread count and peak memory in KiB.
fn peer(python: &str, args: &BenchArgs) -> Result<(f64, usize, u64)> {
    let widths: Vec<String> = args.widths().iter().map(|h| h.to_string()).collect();
    let out = Command::new(python)
        .args(["-c", PEER])
        .args([args.batch, args.steps, args.side, args.latent].map(|v| v.to_string()))
        .arg(widths.join(","))
        .arg(&args.arch)
        .arg(format!("{:?}", args.task()).to_lowercase())
        .output()
        .with_context(|| format!("cannot run the peer `{python}`"))?;
    if !out.status.success() {
        bail!(
            "the peer `{python}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace().map(str::parse::<f64>);
    match (words.next(), words.next(), words.next()) {
        (Some(Ok(speed)), Some(Ok(threads)), Some(Ok(peak))) => {
            Ok((speed, threads as usize, peak as u64))
        }
        _ => bail!("unexpected peer output `{}`", text.trim()),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> Result<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").context("/proc/loadavg")?;
    let mut v = text.split_whitespace().map(|w| w.parse::<f64>());
    let mut next = || -> Result<f64> {
        v.next()
            .context("/proc/loadavg: too short")?
            .context("/proc/loadavg: not a number")
    };
    Ok([next()?, next()?, next()?])
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.task() == Task::Pretrain && args.arch == "resnet20" {
        bail!(
            "--task pretrain times the autoencoders (dense, conv); resnet20 has finetune and infer"
        );
    }
    if args.worker {
        let speed = ours(args, &images(args))?;
        println!("{speed} {}", peak_kib()?);
        return Ok(());
    }
    let load = load_average()?;
    println!(
        "load average {:.2} {:.2} {:.2} (1, 5, 15 min) before the first measurement",
        load[0], load[1], load[2]
    );
    if load[0] > args.max_load {
        if !args.busy_ok {
            bail!(
                "the machine is busy (load {:.2} > --max-load {}): another job on the cores \
                 would measure the load, not the code; wait, or pass --busy-ok to measure anyway",
                load[0],
                args.max_load
            );
        }
        println!("WARNING: busy machine; these figures measure the load as much as the code");
    }
    if let Some(dir) = &args.data {
        let sizes = crate::data_bench::Sizes {
            png: args.png_images,
            idx: args.idx_images,
            idx_budget_mb: args.idx_budget_mb,
        };
        return crate::data_bench::run(dir, &sizes);
    }
    let shape = args.shape();
    let net = match args.task() {
        Task::Pretrain => format!(
            "autoencoder {} (mirrored decoder), pre-training",
            args.architecture()?.describe(shape)
        ),
        task => format!(
            "classifier {} + 10-class head, {}",
            args.architecture()?.describe(shape),
            if task == Task::Infer {
                "inference in chunks of 1024"
            } else {
                "fine-tuning (Adam)"
            }
        ),
    };
    println!(
        "{net}, batch {}, {} images per measurement, {}; ours: {}",
        args.batch,
        args.steps * args.batch,
        threads_phrase(rayon::current_num_threads()),
        imprint_nn::Choice::of(args.precision)
    );
    let (mut ours_runs, mut peer_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_peak, mut peer_peak) = (0, 0);
    for i in 0..args.repeats.max(1) {
        let (o, peak) = ours_in_child()?;
        ours_peak = ours_peak.max(peak);
        print!(
            "pair {}: imprint {o:.0} images/s ({:.0} MiB)",
            i + 1,
            mib(peak)
        );
        ours_runs.push(o);
        if let Some(python) = &args.peer {
            let (p, threads, peak) = peer(python, args)?;
            peer_peak = peer_peak.max(peak);
            print!(
                ", PyTorch ({}) {p:.0} images/s ({:.0} MiB), ratio {:.2}x",
                threads_phrase(threads),
                mib(peak),
                o / p
            );
            peer_runs.push(p);
            ratios.push(o / p);
        }
        println!(" (load {:.2})", load_average()?[0]);
    }
    let o = median(ours_runs);
    print!(
        "median: imprint {o:.0} images/s, peak {:.0} MiB",
        mib(ours_peak)
    );
    if !peer_runs.is_empty() {
        let p = median(peer_runs);
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        print!(
            "; PyTorch {p:.0} images/s, peak {:.0} MiB; ratio of medians {:.2}x, median of \
             ratios {:.2}x (pairs {lo:.2}-{hi:.2}x)",
            mib(peer_peak),
            o / p,
            median(ratios)
        );
    }
    println!();
    Ok(())
}
