//! `imprint bench`: pre-training throughput of the dense autoencoder, and the PyTorch peer's on
//! the identical net, batch and data size, alternated in one run so machine load hits both.

use anyhow::{bail, Context, Result};
use clap::Args;
use dfdx::prelude::Cpu;
use imprint_data::ImageShape;
use imprint_nn::Architecture;
use imprint_pipeline::provenance::threads_phrase;
use imprint_pretrain::{pretrain, Hooks, Images, PretrainConfig, Start};
use rand::{Rng, SeedableRng};
use std::process::Command;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Training steps per measurement.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Image side (square, one channel).
    #[arg(long, default_value_t = 28)]
    side: usize,
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    latent: usize,
    /// `dense`, or `conv` (3x3 stride-2 convolutions with `--channels` filters, then linear).
    #[arg(long, default_value = "dense")]
    arch: String,
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    channels: Vec<usize>,
    /// Measurements of each side; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// A Python with PyTorch: also time the same net there (e.g. ~/peer/bin/python).
    #[arg(long)]
    peer: Option<String>,
}

const PEER: &str = r#"
import sys, time, torch, torch.nn as nn, torch.nn.functional as F
batch, steps, side, latent = (int(a) for a in sys.argv[1:5])
widths = [int(h) for h in sys.argv[5].split(',')]
torch.manual_seed(0)
if sys.argv[6] == 'dense':
    dims = [side * side] + widths + [latent]
    enc, dec = [], []
    for i in range(len(dims) - 1):
        enc += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        dec += [nn.Linear(dims[-1 - i], dims[-2 - i]), nn.ReLU()]
    enc, dec = nn.Sequential(*enc[:-1]), nn.Sequential(*dec[:-1], nn.Sigmoid())
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
opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), 1e-3)
x = torch.rand(steps * batch, side * side)
def epoch():
    perm = torch.randperm(len(x))
    for i in range(0, len(x), batch):
        xb = x[perm[i:i + batch]]
        inp = xb if sys.argv[6] == 'dense' else xb.view(-1, 1, side, side)
        loss = F.mse_loss(dec(enc(inp)), xb)
        opt.zero_grad(); loss.backward(); opt.step(); loss.item()
epoch()
t = time.time(); epoch(); el = time.time() - t
print(f"{steps * batch / el:.1f} {torch.get_num_threads()}")
"#;

impl BenchArgs {
    fn architecture(&self) -> Result<Architecture> {
        Ok(match self.arch.as_str() {
            "dense" => Architecture::Dense {
                hidden: self.hidden.clone(),
                latent: self.latent,
            },
            "conv" => Architecture::Conv {
                channels: self.channels.clone(),
                kernel: 3,
                stride: 2,
                latent: self.latent,
            },
            other => bail!("unknown --arch `{other}` (dense or conv)"),
        })
    }

    fn widths(&self) -> &[usize] {
        if self.arch == "conv" {
            &self.channels
        } else {
            &self.hidden
        }
    }
}

fn shape(args: &BenchArgs) -> ImageShape {
    ImageShape {
        channels: 1,
        height: args.side,
        width: args.side,
    }
}

fn ours(args: &BenchArgs, images: &[f32]) -> Result<f64> {
    let cfg = PretrainConfig {
        batch_size: args.batch,
        holdout_fraction: 0.0,
        ..PretrainConfig::new(args.architecture()?, 2)
    };
    let run = pretrain(
        &Cpu::default(),
        Images::new(images, shape(args)),
        &cfg,
        0,
        Start::Fresh,
        Hooks::default(),
    )?;
    // The first epoch warms caches and the allocator, as the peer's warm-up epoch does.
    Ok(run.history.last().map_or(0.0, |h| h.images_per_second))
}

/// The peer's images/s and its thread count (`None` where it printed none).
fn peer(python: &str, args: &BenchArgs) -> Result<(f64, Option<usize>)> {
    let widths: Vec<String> = args.widths().iter().map(|h| h.to_string()).collect();
    let out = Command::new(python)
        .args(["-c", PEER])
        .args([args.batch, args.steps, args.side, args.latent].map(|v| v.to_string()))
        .arg(widths.join(","))
        .arg(&args.arch)
        .output()
        .with_context(|| format!("cannot run the peer `{python}`"))?;
    if !out.status.success() {
        bail!(
            "the peer `{python}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let speed = words
        .next()
        .and_then(|w| w.parse().ok())
        .context("unexpected peer output")?;
    Ok((speed, words.next().and_then(|w| w.parse().ok())))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let len = args.side * args.side;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let images: Vec<f32> = (0..args.steps * args.batch * len)
        .map(|_| rng.gen())
        .collect();
    println!(
        "autoencoder {} (mirrored decoder), batch {}, {} steps per measurement, {}",
        args.architecture()?.describe(shape(args)),
        args.batch,
        args.steps,
        threads_phrase(rayon::current_num_threads())
    );
    let (mut ours_runs, mut peer_runs) = (Vec::new(), Vec::new());
    for i in 0..args.repeats.max(1) {
        let o = ours(args, &images)?;
        print!("run {}: imprint {o:.0} images/s", i + 1);
        ours_runs.push(o);
        if let Some(python) = &args.peer {
            let (p, threads) = peer(python, args)?;
            let threads = threads.map_or_else(|| "? threads".to_string(), threads_phrase);
            print!(", PyTorch ({threads}) {p:.0} images/s");
            peer_runs.push(p);
        }
        println!();
    }
    let o = median(ours_runs);
    print!("median: imprint {o:.0} images/s");
    if !peer_runs.is_empty() {
        let p = median(peer_runs);
        print!(", PyTorch {p:.0} images/s, ratio {:.2}x", o / p);
    }
    println!();
    Ok(())
}
