//! `imprint bench`: throughput and peak memory of pre-training (the dense or convolutional
//! autoencoder, or SimCLR's contrastive step on a ResNet), fine-tuning (a classifier on the
//! dense, convolutional or residual encoder) or inference (that classifier's predictions), and
//! the PyTorch peer's on the identical net, batch, optimizer and data size, in its plain fp32
//! mode and in its fastest one on this CPU (bf16 autocast with channels_last where oneDNN has
//! bf16, else fp32 channels_last). Each measurement runs in a fresh process, ours and the
//! peer's alternating within each pair so that load hits both alike; the load average is
//! printed before the first and after every pair, and a busy machine is refused unless asked.
//! The CPU, its vector extensions and the kernels each side ran are printed with the figures.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dfdx::prelude::Cpu;
use imprint_data::{Dataset, ImageShape, Pixels};
use imprint_finetune::{finetune, Classifier, FinetuneConfig, Strategy};
use imprint_nn::infer::Chunks;
use imprint_nn::models::Layout;
use imprint_nn::{Architecture, Encoder};
use imprint_pipeline::named_architecture;
use imprint_pipeline::provenance::threads_phrase;
use imprint_pretrain::pretext::contrastive;
use imprint_pretrain::{pretrain, Hooks, Images, PretextConfig, PretrainConfig, Start};
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::process::Command;
use std::time::Instant;

/// What a measurement times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Task {
    /// Autoencoder training steps (dense and conv).
    Pretrain,
    /// SimCLR training steps (ResNets): two views of each image through the encoder, a
    /// projection head features -> features -> 64, NT-Xent at --temperature (Adam), as the
    /// contrastive pretext runs them. Each view is the image flipped or not at random: the
    /// pipelines' crops and colour jitter are timed on neither side.
    Simclr,
    /// Classifier training steps: the encoder and a 10-class head, all trained (Adam).
    Finetune,
    /// The classifier's class probabilities in eval mode, without a tape, in the chunks the
    /// default memory budget allows.
    Infer,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Pretrain => "pretrain",
            Task::Simclr => "simclr",
            Task::Finetune => "finetune",
            Task::Infer => "infer",
        }
    }
}

/// The PyTorch mode timed beside its plain fp32 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PeerFast {
    /// bf16cl where oneDNN has bf16 on this CPU (and --avx2 is not given), else cl.
    Auto,
    /// bf16 autocast with channels_last tensors.
    Bf16cl,
    /// bf16 autocast.
    Bf16,
    /// fp32 with channels_last tensors.
    Cl,
    /// fp32 alone.
    None,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Training steps per measurement (images: steps x batch).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Image side: one channel for dense and conv, three for the ImageNet-layout ResNets; the
    /// CIFAR-layout ResNets take 3x32x32 whatever this says.
    #[arg(long, default_value_t = 28)]
    side: usize,
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    latent: usize,
    /// `dense` or `conv` (an autoencoder: 3x3 stride-2 convolutions with `--channels` filters,
    /// then linear), or a ResNet: `resnet20` (32, 44, 56, 110; CIFAR layout, 3x32x32 images),
    /// `resnet18` or `resnet34` (ImageNet layout, 3 x --side x --side images).
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
    /// The peer's mode timed beside its plain fp32 one: its fastest on this CPU by default.
    #[arg(long, value_enum, default_value = "auto")]
    peer_fast: PeerFast,
    /// Time the path of a CPU without AVX-512: ours with AVX-512 switched off
    /// (IMPRINT_NO_AVX512=1), the peer with ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2
    /// and MKL_ENABLE_INSTRUCTIONS=AVX2.
    #[arg(long)]
    avx2: bool,
    /// NT-Xent temperature of --task simclr (the CIFAR pipeline's).
    #[arg(long, default_value_t = 0.2)]
    temperature: f64,
    /// Refuse to start when the 1-minute load average is above this: another job on the
    /// cores measures the load, not the code.
    #[arg(long, default_value_t = 1.5)]
    max_load: f64,
    /// Measure even on a busy machine (the figures are then marked as such).
    #[arg(long)]
    busy_ok: bool,
    /// What to time; pretrain for dense and conv, finetune for the ResNets when not given.
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

/// The PyTorch twin of each measurement (see the file's head).
const PEER: &str = include_str!("bench_peer.py");

/// Environment that keeps PyTorch to AVX2: ATen's own kernels, oneDNN's and MKL's.
const PEER_AVX2_ENV: [(&str, &str); 3] = [
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
];

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
            name if name.starts_with("resnet") => {
                named_architecture(name).map_err(anyhow::Error::msg)?
            }
            other => bail!("unknown --arch `{other}` (dense, conv, resnet20, resnet18, ...)"),
        })
    }

    /// The ResNet's layout and depth, for a ResNet.
    fn resnet(&self) -> Result<Option<(Layout, usize)>> {
        Ok(match self.architecture()? {
            Architecture::Resnet(r) => Some((r.layout, r.depth)),
            _ => None,
        })
    }

    fn widths(&self) -> &[usize] {
        if self.arch == "conv" {
            &self.channels
        } else {
            &self.hidden
        }
    }

    fn shape(&self) -> Result<ImageShape> {
        let (channels, side) = match self.resnet()? {
            Some((Layout::Cifar, _)) => (3, 32),
            Some((Layout::Imagenet, _)) => (3, self.side),
            None => (1, self.side),
        };
        Ok(ImageShape {
            channels,
            height: side,
            width: side,
        })
    }

    fn task(&self) -> Task {
        self.task.unwrap_or(if self.arch.starts_with("resnet") {
            Task::Finetune
        } else {
            Task::Pretrain
        })
    }

    /// How our inference cuts the images, within the default memory budget: the peer runs
    /// chunks of as many images.
    fn chunks(&self) -> Result<Chunks> {
        let (arch, shape) = (self.architecture()?, self.shape()?);
        Ok(Chunks::within(
            imprint_data::DEFAULT_MEMORY_BUDGET_MB << 20,
            shape.len(),
            arch.widest(shape),
            arch.widest_row(shape),
        ))
    }
}

/// Our images/s on `images`: an autoencoder's second pre-training epoch (the first warms caches
/// and the allocator, as the peer's first does), SimCLR's or a classifier's training steps
/// after 5 warm-up steps, or a classifier's predictions over the images after one warm-up pass.
fn ours(args: &BenchArgs, images: &Pixels) -> Result<f64> {
    let shape = args.shape()?;
    let dev = Cpu::default();
    match args.task() {
        Task::Pretrain => {
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
        Task::Simclr => {
            let cfg = PretrainConfig {
                batch_size: args.batch,
                holdout_fraction: 0.0,
                precision: args.precision,
                pretexts: vec![PretextConfig::Contrastive(contrastive::Settings::new(
                    1.0,
                    args.temperature,
                ))],
                augment: imprint_data::augment::Augment {
                    flip: true,
                    ..Default::default()
                },
                ..PretrainConfig::new(args.architecture()?, 1)
            };
            let warm: Vec<usize> = (0..(5 * args.batch).min(images.len())).collect();
            let warm = images.subset(&warm);
            pretrain(
                &dev,
                Images::new(&warm, shape),
                &cfg,
                0,
                Start::Fresh,
                Hooks::default(),
            )?;
            let images = Images::new(images, shape);
            let run = pretrain(&dev, images, &cfg, 0, Start::Fresh, Hooks::default())?;
            return Ok(run.history.last().map_or(0.0, |h| h.images_per_second));
        }
        Task::Finetune | Task::Infer => {}
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
fn images(args: &BenchArgs) -> Result<Pixels> {
    let len = args.shape()?.len();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let bytes = (0..args.steps * args.batch * len)
        .map(|_| rng.gen())
        .collect();
    Ok(Pixels::from_bytes(bytes, len))
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
fn ours_in_child(args: &BenchArgs) -> Result<(f64, u64)> {
    let exe = std::env::current_exe().context("cannot find this program to run a measurement")?;
    let mut child = Command::new(exe);
    child.args(std::env::args_os().skip(1)).arg("--worker");
    if args.avx2 {
        child.env(imprint_ops::NO_AVX512_VAR, "1");
    }
    let out = child.output().context("cannot run a measurement")?;
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

/// What the peer says of PyTorch on this CPU.
#[derive(Debug, Deserialize)]
struct PeerCapabilities {
    torch: String,
    /// ATen's CPU capability (`torch.backends.cpu.get_cpu_capability()`): AVX512, AVX2, ...
    capability: String,
    /// Whether oneDNN runs bf16 on this CPU (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`).
    bf16: bool,
    /// Whether the CPU has AMX tiles (`torch.cpu._is_amx_tile_supported()`).
    amx: bool,
}

/// One measurement of the peer.
#[derive(Debug, Deserialize)]
struct PeerRun {
    images_per_second: f64,
    threads: usize,
    peak_kib: u64,
    /// The oneDNN kernels one more step ran: `kind implementation source-type`.
    kernels: Vec<String>,
}

/// Runs the peer with `settings` (its `task`, `mode` and the net) and reads its JSON line.
fn run_peer<T: for<'de> Deserialize<'de>>(
    python: &str,
    args: &BenchArgs,
    settings: serde_json::Value,
) -> Result<T> {
    let mut peer = Command::new(python);
    peer.args(["-c", PEER]).arg(settings.to_string());
    if args.avx2 {
        peer.envs(PEER_AVX2_ENV);
    }
    let out = peer
        .output()
        .with_context(|| format!("cannot run the peer `{python}`"))?;
    if !out.status.success() {
        bail!(
            "the peer `{python}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("unexpected peer output `{}`", text.trim()))
}

/// The peer's settings for one measurement in `mode`.
fn peer_settings(args: &BenchArgs, mode: &str) -> Result<serde_json::Value> {
    let (kind, layout, depth) = match args.resnet()? {
        Some((layout, depth)) => {
            let layout = match layout {
                Layout::Cifar => "cifar",
                Layout::Imagenet => "imagenet",
            };
            ("resnet", layout, depth)
        }
        None => (args.arch.as_str(), "", 0),
    };
    Ok(serde_json::json!({
        "task": args.task().name(),
        "mode": mode,
        "kind": kind,
        "layout": layout,
        "depth": depth,
        "batch": args.batch,
        "steps": args.steps,
        "side": args.shape()?.height,
        "latent": args.latent,
        "widths": args.widths(),
        "threads": rayon::current_num_threads(),
        "chunk": args.chunks()?.images,
        "temperature": args.temperature,
    }))
}

/// What a peer mode is, in words.
fn mode_words(mode: &str) -> &'static str {
    match mode {
        "fp32" => "plain fp32",
        "cl" => "fp32 with channels_last",
        "bf16" => "bf16 autocast",
        "bf16cl" => "bf16 autocast with channels_last",
        _ => "?",
    }
}

/// The CPU's model name and whether it has the vector extensions the kernels choose by, from
/// `/proc/cpuinfo` (a virtual machine's model name may say little: the flags say what runs).
fn cpu_line() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return "CPU: unknown (no /proc/cpuinfo)".into();
    };
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown model".into());
    let flags = field("flags").unwrap_or_default();
    let has: Vec<String> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "amx_bf16",
        "amx_tile",
    ]
    .iter()
    .map(|f| {
        let yes = flags.split_whitespace().any(|g| g == *f);
        format!("{f} {}", if yes { "yes" } else { "no" })
    })
    .collect();
    format!("CPU: {model} ({})", has.join(", "))
}

/// The kernels our side runs on this CPU, as the dispatch chooses them (`avx2`: with AVX-512
/// switched off, as the measurements' processes have it).
fn our_kernels(avx2: bool) -> &'static str {
    if imprint_ops::avx512() && !avx2 {
        "f32; convolutions of stride-aligned shapes on direct AVX-512 kernels, the rest on \
         im2col + gemm (AVX-512 micro-kernels); batch norm loops at AVX-512 width"
    } else if avx2 || imprint_ops::avx512_switched_off() {
        "f32; AVX-512 switched off (IMPRINT_NO_AVX512): convolutions of stride-aligned shapes \
         on direct AVX2 kernels, the rest on im2col + gemm (FMA micro-kernels at AVX2 width); \
         batch norm loops at AVX2 width"
    } else if imprint_ops::avx2() {
        "f32; convolutions of stride-aligned shapes on direct AVX2 kernels, the rest on \
         im2col + gemm (FMA micro-kernels at AVX2 width); batch norm loops at AVX2 width"
    } else {
        "f32; convolutions on im2col + gemm (the micro-kernels gemm picks for this CPU)"
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

/// The net and task, in words.
fn describe(args: &BenchArgs) -> Result<String> {
    let (arch, shape) = (args.architecture()?, args.shape()?);
    Ok(match args.task() {
        Task::Pretrain => format!(
            "autoencoder {} (mirrored decoder), pre-training (Adam)",
            arch.describe(shape)
        ),
        Task::Simclr => format!(
            "SimCLR on {}: two views of each image (random flips), projection head {l}-{l}-64, \
             NT-Xent at temperature {}, pre-training (Adam; images/s counts images, not views)",
            arch.describe(shape),
            args.temperature,
            l = arch.latent()
        ),
        Task::Finetune => format!(
            "classifier {} + 10-class head, fine-tuning (Adam)",
            arch.describe(shape)
        ),
        Task::Infer => format!(
            "classifier {} + 10-class head, inference in chunks of {} images",
            arch.describe(shape),
            args.chunks()?.images
        ),
    })
}

/// The peer's fast mode on this CPU, or `None` for fp32 alone.
fn fast_mode(args: &BenchArgs, caps: &PeerCapabilities) -> Option<&'static str> {
    match args.peer_fast {
        PeerFast::Auto if caps.bf16 && !args.avx2 => Some("bf16cl"),
        PeerFast::Auto | PeerFast::Cl => Some("cl"),
        PeerFast::Bf16cl => Some("bf16cl"),
        PeerFast::Bf16 => Some("bf16"),
        PeerFast::None => None,
    }
}

/// A peer mode's runs in one bench.
struct PeerSeries {
    mode: &'static str,
    speeds: Vec<f64>,
    ratios: Vec<f64>,
    peak_kib: u64,
    kernels: Vec<String>,
}

impl PeerSeries {
    fn new(mode: &'static str) -> Self {
        PeerSeries {
            mode,
            speeds: Vec::new(),
            ratios: Vec::new(),
            peak_kib: 0,
            kernels: Vec::new(),
        }
    }

    /// `median: ...` words for this mode against our median `o`.
    fn summary(&self, o: f64) -> String {
        let p = median(self.speeds.clone());
        let (lo, hi) = self
            .ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        format!(
            "PyTorch {} {p:.0} images/s, peak {:.0} MiB, ratio of medians {:.2}x, median of \
             ratios {:.2}x (pairs {lo:.2}-{hi:.2}x)",
            self.mode,
            mib(self.peak_kib),
            o / p,
            median(self.ratios.clone())
        )
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let task = args.task();
    let resnet = args.resnet()?.is_some();
    if task == Task::Pretrain && resnet {
        bail!("--task pretrain times the autoencoders (dense, conv); a ResNet has simclr, finetune and infer");
    }
    if task == Task::Simclr && !resnet {
        bail!("--task simclr times the ResNets (resnet20, resnet18, ...)");
    }
    if args.worker {
        let speed = ours(args, &images(args)?)?;
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
    let threads = rayon::current_num_threads();
    println!("{}", cpu_line());
    println!("imprint: {}", our_kernels(args.avx2));
    let mut series = Vec::new();
    if let Some(python) = &args.peer {
        let probe = serde_json::json!({ "task": "probe", "threads": threads });
        let caps: PeerCapabilities = run_peer(python, args, probe)?;
        let fast = fast_mode(args, &caps);
        println!(
            "PyTorch {}: ATen CPU capability {}{}, oneDNN bf16 {}, AMX tiles {}; timed in {}",
            caps.torch,
            caps.capability,
            if args.avx2 {
                " (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2)"
            } else {
                ""
            },
            if caps.bf16 { "yes" } else { "no" },
            if caps.amx { "yes" } else { "no" },
            match fast {
                Some(m) => format!("fp32 and {m} ({}, its fastest here)", mode_words(m)),
                None => "fp32 alone".into(),
            }
        );
        series.push(PeerSeries::new("fp32"));
        series.extend(fast.map(PeerSeries::new));
    }
    println!(
        "{}, batch {}, {} images per measurement, {} on both sides; ours: {}",
        describe(args)?,
        args.batch,
        args.steps * args.batch,
        threads_phrase(threads),
        imprint_nn::Choice::of(args.precision)
    );
    let (mut ours_runs, mut ours_peak) = (Vec::new(), 0);
    for i in 0..args.repeats.max(1) {
        let (o, peak) = ours_in_child(args)?;
        ours_peak = ours_peak.max(peak);
        let mut line = format!(
            "pair {}: imprint {o:.0} images/s ({:.0} MiB)",
            i + 1,
            mib(peak)
        );
        ours_runs.push(o);
        for s in &mut series {
            let python = args.peer.as_deref().expect("a peer series needs a peer");
            let run: PeerRun = run_peer(python, args, peer_settings(args, s.mode)?)?;
            s.peak_kib = s.peak_kib.max(run.peak_kib);
            s.kernels = run.kernels;
            let p = run.images_per_second;
            line.push_str(&format!(
                ", PyTorch {} ({}) {p:.0} images/s ({:.0} MiB), ratio {:.2}x",
                s.mode,
                threads_phrase(run.threads),
                mib(run.peak_kib),
                o / p
            ));
            s.speeds.push(p);
            s.ratios.push(o / p);
        }
        println!("{line} (load {:.2})", load_average()?[0]);
    }
    for s in &series {
        let kernels = match s.kernels.is_empty() {
            true => "no oneDNN convolution or matmul (ATen's own kernels)".to_string(),
            false => s.kernels.join(", "),
        };
        println!(
            "PyTorch {} ran (oneDNN's log of one more step): {kernels}",
            s.mode
        );
    }
    let o = median(ours_runs);
    let mut summary = format!(
        "median: imprint {o:.0} images/s, peak {:.0} MiB",
        mib(ours_peak)
    );
    for s in &series {
        summary.push_str("; ");
        summary.push_str(&s.summary(o));
    }
    println!("{summary}");
    Ok(())
}
