//! Self-supervised pre-training on unlabeled images: an encoder trained by its pretexts
//! (reconstruction, denoising, masked patches, contrast, rotation, BYOL, DINO; see
//! [`pretext`]) on the shared training loop. Generic over the dfdx device; it returns its
//! history and prints nothing, callers render progress through [`Hooks`].
//!
//! Data-parallel with [`Hooks::replicas`]: every replica draws the whole global batch's views
//! and trains on its share of the rows; the loop sums the gradients, each pretext weighs its
//! loss by the share (the contrastive term and VICReg gather the projections so that they see
//! the whole global batch), and batch norms are synchronised by default
//! ([`PretrainConfig::sync_batch_norm`]).

mod config;
mod old_keys;
pub mod pretext;
mod views;

pub use config::{Noise, PretrainConfig};
pub use pretext::PretextConfig;

use dfdx::prelude::*;
use imprint_collective::{share, single, Replicas};
use imprint_data::{ImageShape, Normalize, Pixels};
use imprint_nn::infer::over_images;
use imprint_nn::knn::{Bank, KnnSettings};
use imprint_nn::tree::{join, ParamsExt};
use imprint_nn::{
    Decoder, Encoder, ImprintDevice, Matrix, NamedTensor, Optimizer, Pass, Var, Vector,
};
use imprint_train::{train, Flow, Group, Loss, Run, Task, TrainError};
use pretext::{Batch, Codes, Pretext, Progress, Share};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use views::{draw_views, ViewPlan};

#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("invalid pre-training setting `{key}`: {message}")]
    Config { key: String, message: String },
    /// A NaN or infinite loss, naming the setting most likely to blame.
    #[error("pre-training seed {seed}: {source}")]
    Diverged { seed: u64, source: TrainError },
    /// Saving an epoch checkpoint failed.
    #[error("{0}")]
    Checkpoint(String),
    /// A snapshot that is not of this run.
    #[error("cannot resume from this checkpoint: {0}")]
    Resume(String),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Nn(#[from] imprint_nn::NnError),
}

pub type Result<T> = std::result::Result<T, PretrainError>;

/// What one epoch did; the loop reports it through a hook as it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    /// Loss on the held-out images, without corruption; `None` when nothing is held out or
    /// nothing is reconstructed.
    pub heldout_loss: Option<f64>,
    pub images_per_second: f64,
    pub seconds: f64,
    /// Accuracy of the k-nearest-neighbour vote of the monitor's labeled images, when there is a
    /// monitor.
    #[serde(default)]
    pub knn_accuracy: Option<f64>,
}

/// Labeled images to score the encoder on at every epoch end, by a k-nearest-neighbour vote of
/// the `bank` images' features for each query: pretexts and settings compared in minutes, with
/// no fine-tuning.
pub struct Monitor<'a> {
    pub bank: &'a Pixels,
    pub bank_labels: &'a [usize],
    pub queries: &'a Pixels,
    pub query_labels: &'a [usize],
    pub classes: usize,
    pub knn: KnnSettings,
    /// Bytes of memory the features are computed within (see [`Encoder::chunks_within`]).
    pub memory_budget: u64,
}

impl Monitor<'_> {
    /// The share of the queries the vote gets right.
    fn accuracy<D: ImprintDevice>(&self, dev: &D, encoder: &mut Encoder<D>) -> f64 {
        let chunks = encoder.chunks_within(self.memory_budget);
        let mut features = |images: &Pixels| {
            let mut out = Vec::new();
            encoder.infer_each(dev, images, chunks, |f| f, |_, v| out.extend(v));
            out
        };
        let bank_features = features(self.bank);
        let query_features = features(self.queries);
        let bank = Bank::new(
            dev,
            bank_features,
            encoder.features(),
            self.bank_labels,
            self.classes,
        );
        let predicted = bank.predict(&query_features, self.knn);
        let right = predicted
            .iter()
            .zip(self.query_labels)
            .filter(|((p, _), &l)| *p == l)
            .count();
        right as f64 / self.query_labels.len().max(1) as f64
    }
}

pub struct Pretrained<D: ImprintDevice> {
    pub encoder: Encoder<D>,
    /// `None` when the pretexts reconstruct nothing.
    pub decoder: Option<Decoder<D>>,
    pub history: Vec<EpochStats>,
    /// Indices (into the given images) held out for the loss curve, e.g. to show reconstructions.
    pub heldout: Vec<usize>,
}

/// Progress within an epoch, for progress bars: (epoch, batches done, batches in the epoch, running loss).
pub type BatchProgress<'a> = dyn FnMut(usize, usize, usize, f64) + 'a;

/// Receives each epoch end's snapshot, e.g. to write it to disk; an error stops the run.
pub type SaveCheckpoint<'a> = dyn FnMut(&Snapshot) -> Result<()> + 'a;

/// What the caller hears of a run as it goes; each hook is optional.
#[derive(Default)]
pub struct Hooks<'a> {
    pub on_batch: Option<&'a mut BatchProgress<'a>>,
    pub on_epoch: Option<&'a mut dyn FnMut(&EpochStats)>,
    /// At each epoch end, everything needed to continue from there; an error stops the run.
    pub on_checkpoint: Option<&'a mut SaveCheckpoint<'a>>,
    /// Scores the encoder at each epoch end, into [`EpochStats::knn_accuracy`].
    pub monitor: Option<Monitor<'a>>,
    /// The replicas of a data-parallel run this process is one of; `None`: this process alone.
    pub replicas: Option<Replicas>,
}

/// The run's state at an epoch end: resuming from it gives what the uninterrupted run gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Weights (`encoder.*` and the pretexts' own: `decoder.*`, `projection.*`, `byol.*`,
    /// `dino.*`, ..., teachers and their statistics included) and the optimizer's moments
    /// (`optimizer.m1.<weight>`, ...).
    pub tensors: Vec<NamedTensor>,
    pub state: TrainingState,
}

/// The non-tensor part of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    pub seed: u64,
    pub epochs_done: usize,
    pub optimizer_steps: i32,
    /// Position in the seed's random stream (shuffles and noise draws so far).
    pub rng_word_pos: u128,
    /// Training images in the order the last epoch shuffled them to (the next shuffles start
    /// from it).
    pub train_order: Vec<usize>,
    pub history: Vec<EpochStats>,
}

/// The encoder and its pretexts' nets, in the order of `[pretrain] pretexts`.
struct Nets<D: ImprintDevice> {
    encoder: Encoder<D>,
    pretexts: Vec<Box<dyn Pretext<D>>>,
}

// The pretexts name their own tensors (`decoder`, `projection`, `byol.teacher`, ...), each
// method once in a run.
impl<D: ImprintDevice> imprint_nn::Params<D> for Nets<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        self.encoder.visit(&join(prefix, "encoder"), f);
        for p in &self.pretexts {
            p.visit(prefix, f);
        }
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        self.encoder.visit_mut(&join(prefix, "encoder"), f);
        for p in &mut self.pretexts {
            p.visit_mut(prefix, f);
        }
    }
}

impl<D: ImprintDevice> Nets<D> {
    /// The encoder drawn from `rng` (or `start`'s, reading images through `normalize`), then
    /// the pretexts' nets in the registry's order (see [`PretextConfig::rank`]); a teacher
    /// starts as a copy of the encoder.
    fn new(
        dev: &D,
        cfg: &PretrainConfig,
        input: ImageShape,
        normalize: Option<&Normalize>,
        start: Option<&Encoder<D>>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self> {
        let mut encoder = Encoder::new(dev, &cfg.architecture, input, rng)?;
        if let Some(from) = start {
            if from.architecture != cfg.architecture || from.input != input {
                return Err(PretrainError::Config {
                    key: "architecture".into(),
                    message: format!(
                        "the encoder to start from is {}, pre-training asks for {}",
                        from.architecture.describe(from.input),
                        cfg.architecture.describe(input)
                    ),
                });
            }
            encoder = from.clone();
        }
        encoder.normalize = normalize.cloned();
        // Drawn in the registry's order, kept in the list's.
        let mut order: Vec<usize> = (0..cfg.pretexts.len()).collect();
        order.sort_by_key(|&i| cfg.pretexts[i].rank());
        let mut built: Vec<Option<Box<dyn Pretext<D>>>> = order.iter().map(|_| None).collect();
        for i in order {
            built[i] = Some(cfg.pretexts[i].build(dev, &encoder, rng)?);
        }
        let pretexts = built.into_iter().flatten().collect();
        Ok(Self { encoder, pretexts })
    }

    /// The mean reconstruction loss of the uncorrupted `ids`, without a tape; `None` when no
    /// pretext reconstructs.
    fn heldout_loss(&mut self, dev: &D, images: &Pixels, ids: &[usize]) -> Option<f64> {
        let len = images.image_len();
        let mut total = 0.0;
        for chunk in ids.chunks(self.encoder.inference_chunks().images) {
            let mut buf = vec![0.0; chunk.len() * len];
            images.gather(chunk, &mut buf);
            let x: Matrix<D> = dev.tensor_from_vec(buf, (chunk.len(), len));
            let encoder = &mut self.encoder;
            let value = self
                .pretexts
                .iter_mut()
                .find_map(|p| p.heldout_loss(encoder, x.clone()))?;
            total += value as f64 * chunk.len() as f64;
        }
        Some(total / ids.len().max(1) as f64)
    }
}

/// One pre-training run as the training loop sees it.
struct Pretraining<'a, 'h, D: ImprintDevice> {
    dev: &'a D,
    images: &'a Pixels,
    input: ImageShape,
    cfg: &'a PretrainConfig,
    seed: u64,
    nets: Nets<D>,
    /// The views each step draws.
    plan: ViewPlan,
    rng: ChaCha8Rng,
    /// Dropout's masks, a stream of their own so that layers with dropout leave the batch
    /// order and noise draws as they were.
    pass_rng: ChaCha8Rng,
    train: Vec<usize>,
    heldout: Vec<usize>,
    batch: usize,
    steps_per_epoch: usize,
    /// Of the whole run, for the pretexts' schedules.
    steps: usize,
    history: Vec<EpochStats>,
    epoch_loss: f64,
    epoch_start: Instant,
    hooks: Hooks<'h>,
    /// The replicas of a data-parallel run, [`imprint_collective::single`] alone.
    replicas: Replicas,
}

impl<D: ImprintDevice> Pretraining<'_, '_, D> {
    fn epoch_and_step(&self, step: usize) -> (usize, usize) {
        (step / self.steps_per_epoch, step % self.steps_per_epoch)
    }

    fn snapshot(&mut self, optimizer: &mut Optimizer<D>) -> Result<Snapshot> {
        let mut tensors = self.nets.named_tensors("");
        let mut params: Vec<(String, Vector<D>)> = self
            .nets
            .trainable_mut("")
            .into_iter()
            .map(|(name, v)| (name, v.clone()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let named: Vec<(String, &Vector<D>)> = params.iter().map(|(n, v)| (n.clone(), v)).collect();
        tensors.extend(optimizer.state(&named)?);
        Ok(Snapshot {
            tensors,
            state: TrainingState {
                seed: self.seed,
                epochs_done: self.history.len(),
                optimizer_steps: optimizer.steps(),
                rng_word_pos: self.rng.get_word_pos(),
                train_order: self.train.clone(),
                history: self.history.clone(),
            },
        })
    }
}

impl<D: ImprintDevice> Task<D> for Pretraining<'_, '_, D> {
    type Error = PretrainError;

    /// The views of the whole batch are drawn on every replica (so that their generators move
    /// alike); each encodes its share of the rows.
    fn loss(&mut self, step: usize) -> Result<Loss<D>> {
        let (_, within) = self.epoch_and_step(step);
        if within == 0 {
            self.train.shuffle(&mut self.rng);
            self.epoch_loss = 0.0;
            self.epoch_start = Instant::now();
        }
        let len = self.input.len();
        let batch = |k: usize| &self.train[k * self.batch..(k + 1) * self.batch];
        let mut original = vec![0.0f32; self.batch * len];
        self.images.gather(batch(within), &mut original);
        if within + 1 < self.steps_per_epoch {
            self.images.prefetch(batch(within + 1));
        }
        let views = draw_views(
            &original,
            self.input,
            &self.plan,
            &self.cfg.augment,
            self.cfg.noise,
            &mut self.rng,
        );
        let rows = share(self.batch, self.replicas.rank(), self.replicas.size());
        let views = match rows.len() == self.batch {
            true => views,
            false => views.rows(rows.clone(), self.batch),
        };
        let dev = self.dev;
        let mut pass = Pass::train(&mut self.pass_rng).for_rows(rows.clone(), self.batch);
        let encoder = &mut self.nets.encoder;
        let mut code = |view: &Vec<f32>, shape: ImageShape| {
            let x: Matrix<D> = dev.tensor_from_vec(view.clone(), (rows.len(), shape.len()));
            encoder.forward_at(x.leaky_trace(), shape, &mut pass)
        };
        let global = views.global.iter().map(|v| code(v, self.input)).collect();
        let local = match self.plan.local {
            Some((_, shape, _)) => views.local.iter().map(|v| code(v, shape)).collect(),
            None => Vec::new(),
        };
        let codes = Codes { global, local };
        let batch = Batch {
            views: &views,
            codes: &codes,
            at: Progress {
                step,
                steps: self.steps,
            },
            share: Share {
                rows: rows.clone(),
                total: self.batch,
                replicas: self.replicas.clone(),
            },
        };
        let mut total: Option<Loss<D>> = None;
        for pretext in &mut self.nets.pretexts {
            let loss = pretext.loss(&batch, &mut pass);
            total = Some(match total {
                None => loss,
                Some(t) => loss + t,
            });
        }
        let total = total.expect("validation keeps at least one pretext");
        // The pretexts read copies of the codes: the codes' own tapes hold the encoder's part,
        // without which the encoder would get no gradient.
        let (total, mut tape) = total.split_tape();
        for code in codes.global.into_iter().chain(codes.local) {
            tape = tape.merge(code.split_tape().1);
        }
        Ok(total.put_tape(tape))
    }

    fn groups(&mut self, _step: usize) -> Vec<Group<'_, D>> {
        vec![Group {
            lr_scale: 1.0,
            params: self
                .nets
                .trainable_mut("")
                .into_iter()
                .map(|(_, v)| v)
                .collect(),
        }]
    }

    fn batch_norm_statistics(&mut self) -> Vec<&mut Vector<D>> {
        self.nets.batch_norm_statistics_mut()
    }

    fn position(&self, step: usize) -> String {
        // 1-based, as the progress lines and loss.csv count epochs.
        let (epoch, within) = self.epoch_and_step(step);
        format!("epoch {}, step {}", epoch + 1, within + 1)
    }

    fn after_step(&mut self, step: usize, loss: f32, optimizer: &mut Optimizer<D>) -> Result<Flow> {
        let at = Progress {
            step,
            steps: self.steps,
        };
        for pretext in &mut self.nets.pretexts {
            pretext.after_step(&self.nets.encoder, at);
        }
        let (epoch, within) = self.epoch_and_step(step);
        self.epoch_loss += loss as f64;
        if let Some(f) = self.hooks.on_batch.as_mut() {
            f(
                epoch,
                within + 1,
                self.steps_per_epoch,
                self.epoch_loss / (within + 1) as f64,
            );
        }
        if within + 1 < self.steps_per_epoch {
            return Ok(Flow::Continue);
        }
        let seconds = self.epoch_start.elapsed().as_secs_f64();
        let heldout_loss = if self.heldout.is_empty() {
            None
        } else {
            self.nets.heldout_loss(self.dev, self.images, &self.heldout)
        };
        let knn_accuracy = self
            .hooks
            .monitor
            .as_ref()
            .map(|m| m.accuracy(self.dev, &mut self.nets.encoder));
        let stats = EpochStats {
            epoch,
            train_loss: self.epoch_loss / self.steps_per_epoch as f64,
            heldout_loss,
            images_per_second: (self.steps_per_epoch * self.batch) as f64 / seconds.max(1e-9),
            seconds,
            knn_accuracy,
        };
        if let Some(f) = self.hooks.on_epoch.as_mut() {
            f(&stats);
        }
        self.history.push(stats);
        if self.hooks.on_checkpoint.is_some() {
            let snapshot = self.snapshot(optimizer)?;
            if let Some(save) = self.hooks.on_checkpoint.as_mut() {
                save(&snapshot)?;
            }
        }
        Ok(Flow::Continue)
    }
}

/// The unlabeled images pre-training reads.
#[derive(Clone, Copy)]
pub struct Images<'a> {
    /// Images of `shape`, read as values in [0, 1] a batch at a time.
    pub pixels: &'a Pixels,
    pub shape: ImageShape,
    /// What the encoder applies to them before its first layer.
    pub normalize: Option<&'a Normalize>,
}

impl<'a> Images<'a> {
    pub fn new(pixels: &'a Pixels, shape: ImageShape) -> Self {
        Self {
            pixels,
            shape,
            normalize: None,
        }
    }
}

/// Where pre-training starts.
#[derive(Clone, Copy)]
pub enum Start<'a, D: ImprintDevice> {
    /// A fresh init drawn from the seed.
    Fresh,
    /// This encoder's weights (one trained elsewhere, pre-trained further here); the rest of
    /// the nets are drawn from the seed as for a fresh start.
    From(&'a Encoder<D>),
    /// A snapshot of the same run, to continue it.
    Resume(&'a Snapshot),
}

/// Trains an encoder on `images` from `start`. Every random draw (init, held-out split,
/// shuffles, noise) follows from `seed`. The products of every op it runs (training, the
/// held-out loss, the monitor) are in `cfg.precision`.
pub fn pretrain<D: ImprintDevice>(
    dev: &D,
    images: Images,
    cfg: &PretrainConfig,
    seed: u64,
    start: Start<'_, D>,
    hooks: Hooks<'_>,
) -> Result<Pretrained<D>> {
    imprint_nn::with_precision(cfg.precision, || {
        pretrain_in_precision(dev, images, cfg, seed, start, hooks)
    })
}

fn pretrain_in_precision<D: ImprintDevice>(
    dev: &D,
    images: Images,
    cfg: &PretrainConfig,
    seed: u64,
    start: Start<'_, D>,
    hooks: Hooks<'_>,
) -> Result<Pretrained<D>> {
    let (mut task, mut optimizer) = Pretraining::prepare(dev, images, cfg, seed, start, hooks)?;
    let run = Run {
        settings: &cfg.optim,
        steps: task.steps,
        lr_key: "pretrain.lr",
        replicas: &task.replicas.clone(),
        sync_batch_norm: cfg.synced_batch_norm(),
    };
    let first = task.history.len() * task.steps_per_epoch;
    train(&mut task, &run, first..run.steps, &mut optimizer).map_err(|e| match e {
        PretrainError::Train(source @ TrainError::Diverged { .. }) => {
            PretrainError::Diverged { seed, source }
        }
        e => e,
    })?;
    let decoder = task
        .nets
        .pretexts
        .into_iter()
        .find_map(|p| p.into_decoder());
    Ok(Pretrained {
        encoder: task.nets.encoder,
        decoder,
        history: task.history,
        heldout: task.heldout,
    })
}

impl<'a, 'h, D: ImprintDevice> Pretraining<'a, 'h, D> {
    /// The run of [`pretrain`] before its first step, with its optimizer (restored from a
    /// snapshot when resuming).
    fn prepare(
        dev: &'a D,
        images: Images<'a>,
        cfg: &'a PretrainConfig,
        seed: u64,
        start: Start<'_, D>,
        hooks: Hooks<'h>,
    ) -> Result<(Self, Optimizer<D>)> {
        cfg.validate()?;
        let Images {
            pixels: images,
            shape: input,
            normalize,
        } = images;
        let n = images.len();
        if n == 0 {
            return Err(PretrainError::Config {
                key: "data".into(),
                message: "no unlabeled images to pre-train on".into(),
            });
        }
        let plan = ViewPlan::new(cfg.view_needs()?, input);
        if let Some((_, crop, _)) = plan.local {
            if let Err(message) = cfg.architecture.validate(crop) {
                let with_crops = cfg
                    .pretexts
                    .iter()
                    .find(|p| p.method().views().local.is_some());
                return Err(PretrainError::Config {
                    key: format!(
                        "pretexts.{}.local_size",
                        with_crops.map_or("", |p| p.kind())
                    ),
                    message: format!("the encoder cannot read crops of {crop}: {message}"),
                });
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let from = match start {
            Start::From(encoder) => Some(encoder),
            _ => None,
        };
        let nets = Nets::new(dev, cfg, input, normalize, from, &mut rng)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let n_heldout = ((n as f64) * cfg.holdout_fraction).round() as usize;
        let heldout: Vec<usize> = order[..n_heldout].to_vec();
        let train_ids: Vec<usize> = order[n_heldout..].to_vec();
        let batch = cfg.batch_size.min(train_ids.len()).max(1);
        let steps_per_epoch = (train_ids.len() / batch).max(1);
        let replicas = hooks.replicas.clone().unwrap_or_else(single);
        if batch < replicas.size() {
            return Err(PretrainError::Config {
                key: "batch_size".into(),
                message: format!(
                    "batches of {batch} images cannot be shared by {} processes; use at least \
                     one image per process",
                    replicas.size()
                ),
            });
        }
        let mut task = Pretraining {
            dev,
            images,
            input,
            cfg,
            seed,
            nets,
            plan,
            rng,
            pass_rng: ChaCha8Rng::seed_from_u64(seed ^ 0xd209_0a75),
            train: train_ids,
            heldout,
            batch,
            steps_per_epoch,
            steps: cfg.epochs * steps_per_epoch,
            history: Vec::new(),
            epoch_loss: 0.0,
            epoch_start: Instant::now(),
            hooks,
            replicas,
        };
        let mut optimizer = Optimizer::new(cfg.optim.rule());
        if let Start::Resume(snapshot) = start {
            restore(snapshot, cfg, &mut task, &mut optimizer)?;
        }
        Ok((task, optimizer))
    }
}

/// Loads `snapshot` into a freshly built run after checking that it is a snapshot of this run:
/// same seed, no more epochs than asked for, the same training images.
fn restore<D: ImprintDevice>(
    snapshot: &Snapshot,
    cfg: &PretrainConfig,
    task: &mut Pretraining<'_, '_, D>,
    optimizer: &mut Optimizer<D>,
) -> Result<()> {
    let state = &snapshot.state;
    let mismatch = |message: String| Err(PretrainError::Resume(message));
    if state.seed != task.seed {
        return mismatch(format!("it is of seed {}, not {}", state.seed, task.seed));
    }
    if state.epochs_done > cfg.epochs || state.history.len() != state.epochs_done {
        return mismatch(format!(
            "it holds {} epochs, more than the {} asked for",
            state.epochs_done, cfg.epochs
        ));
    }
    let (mut saved, mut ours) = (state.train_order.clone(), task.train.clone());
    saved.sort_unstable();
    ours.sort_unstable();
    if saved != ours {
        return mismatch("it was trained on other images".into());
    }
    let tensors: BTreeMap<String, NamedTensor> = snapshot
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    task.nets.load_named("", &tensors, "checkpoint")?;
    let params: Vec<(String, Vector<D>)> = task
        .nets
        .trainable_mut("")
        .into_iter()
        .map(|(name, v)| (name, v.clone()))
        .collect();
    let named: Vec<(String, &Vector<D>)> = params.iter().map(|(n, v)| (n.clone(), v)).collect();
    optimizer
        .restore(state.optimizer_steps, &tensors, &named)
        .map_err(|e| PretrainError::Resume(e.to_string()))?;
    task.train = state.train_order.clone();
    task.rng.set_word_pos(state.rng_word_pos);
    task.history = state.history.clone();
    Ok(())
}

/// Reconstructions (in [0,1]) of the given images, for pictures.
pub fn reconstruct<D: ImprintDevice>(
    dev: &D,
    encoder: &mut Encoder<D>,
    decoder: &mut Decoder<D>,
    images: &[f32],
    len: usize,
) -> Vec<f32> {
    let chunk = encoder.inference_chunks().images;
    over_images(dev, images, len, chunk, |x| {
        let z = encoder.forward(x, &mut Pass::eval());
        decoder.forward(z, &mut Pass::eval()).sigmoid()
    })
}

#[cfg(test)]
mod tests;
