//! Fine-tuning: an encoder (pre-trained, or fresh for the `scratch` baseline) plus a new head
//! sized to the labeled classes, trained by one of several strategies. The loop is generic over
//! the dfdx device, prints nothing, and returns the model and its metrics.

mod metrics;

pub use metrics::{evaluate, Metrics};

use dfdx::prelude::*;
use imprint_data::augment::{augment_batch, Augment};
use imprint_data::split::stratified_split;
use imprint_data::{Dataset, ImageShape};
use imprint_nn::checkpoint::NamedTensor;
use imprint_nn::loss::{check_finite, cross_entropy};
use imprint_nn::optim::adam_config;
use imprint_nn::{Activation, Adam, Dense, Encoder, ImprintDevice, Matrix, ParamGroup};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("invalid fine-tuning setting `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("{0}")]
    Data(String),
    #[error(transparent)]
    Nn(#[from] imprint_nn::NnError),
}

pub type Result<T> = std::result::Result<T, FinetuneError>;

/// How the classifier is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Same architecture from a fresh init, everything trained: the baseline.
    Scratch,
    /// Pre-trained encoder frozen, only the head trained (linear probe).
    Probe,
    /// Everything trained; the encoder at `lr * encoder_lr_scale`.
    Full,
    /// Head alone for `probe_fraction` of the steps, then everything as in `Full`.
    ProbeThenFull,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [
        Strategy::Scratch,
        Strategy::Probe,
        Strategy::Full,
        Strategy::ProbeThenFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Scratch => "scratch",
            Strategy::Probe => "probe",
            Strategy::Full => "full",
            Strategy::ProbeThenFull => "probe-then-full",
        }
    }

    /// Whether the strategy starts from the pre-trained encoder.
    pub fn uses_pretrained(self) -> bool {
        self != Strategy::Scratch
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown strategy `{s}` (expected scratch, probe, full or probe-then-full)")
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Optimizer steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Images per step; 0 = the whole labeled set each step.
    #[serde(default)]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled (AdamW) weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Encoder learning rate relative to the head's, for `full` and `probe-then-full`.
    #[serde(default = "one")]
    pub encoder_lr_scale: f64,
    /// Share of the steps spent training the head alone in `probe-then-full`.
    #[serde(default = "default_probe_fraction")]
    pub probe_fraction: f64,
    /// Random shifts of up to this many pixels each step; 0 = no augmentation.
    #[serde(default)]
    pub augment_shift: usize,
    /// Random rotations of up to this many degrees either way each step; 0 = none.
    #[serde(default)]
    pub augment_rotate: f64,
    /// Random left-right mirroring each step (only where that keeps the label).
    #[serde(default)]
    pub augment_flip: bool,
    /// Random zooms by a factor in `[1 - s, 1 + s]` each step; 0 = none.
    #[serde(default)]
    pub augment_scale: f64,
    /// Probability of zeroing each feature the head sees, in training only (inverted dropout:
    /// survivors are scaled by 1 / (1 - p)); 0 = none.
    #[serde(default)]
    pub dropout: f64,
    /// Share of each class's labeled images held out for early stopping; 0 = none, train on all.
    #[serde(default)]
    pub validation_fraction: f64,
    /// Steps between validation checks (with a validation split).
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Checks without improvement, once every part trains, before stopping; 0 = run every
    /// step. Either way the model returned is the best one validated.
    #[serde(default)]
    pub patience: usize,
    /// Learning-rate schedule over the steps.
    #[serde(default)]
    pub schedule: Schedule,
    /// Share of the steps over which the rate ramps up linearly from 0 (with any schedule).
    #[serde(default)]
    pub warmup_fraction: f64,
    /// Steps of self-training after the labeled training: a student trains on batches half
    /// labeled, half pseudo-labeled by the model just trained; 0 = none.
    #[serde(default)]
    pub self_train_steps: usize,
    /// Share of the unlabeled images the student sees pseudo-labeled: each class keeps at most
    /// `fraction / classes` of them, those the teacher is surest of.
    #[serde(default = "default_self_train_fraction")]
    pub self_train_fraction: f64,
}

/// How the learning rate evolves over the fine-tuning steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    /// Half a cosine from the full rate down to 0 after the warm-up.
    Cosine,
}

impl FinetuneConfig {
    /// Multiplier of the learning rate at `step` (0-based).
    pub fn lr_factor(&self, step: usize) -> f64 {
        self.lr_factor_over(step, self.steps)
    }

    /// The same schedule stretched over `steps` (the self-training round has its own).
    fn lr_factor_over(&self, step: usize, steps: usize) -> f64 {
        let warmup = (steps as f64 * self.warmup_fraction).round() as usize;
        if step < warmup {
            return (step + 1) as f64 / warmup as f64;
        }
        match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let span = (steps - warmup).max(1) as f64;
                0.5 * (1.0 + (std::f64::consts::PI * (step - warmup) as f64 / span).cos())
            }
        }
    }
}

fn default_steps() -> usize {
    300
}
fn default_lr() -> f64 {
    1e-3
}
fn one() -> f64 {
    1.0
}
fn default_probe_fraction() -> f64 {
    0.3
}
fn default_eval_every() -> usize {
    20
}
fn default_self_train_fraction() -> f64 {
    1.0
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            batch_size: 0,
            lr: default_lr(),
            weight_decay: 0.0,
            encoder_lr_scale: 1.0,
            probe_fraction: default_probe_fraction(),
            augment_shift: 0,
            augment_rotate: 0.0,
            augment_flip: false,
            augment_scale: 0.0,
            dropout: 0.0,
            validation_fraction: 0.0,
            eval_every: default_eval_every(),
            patience: 0,
            schedule: Schedule::Constant,
            warmup_fraction: 0.0,
            self_train_steps: 0,
            self_train_fraction: default_self_train_fraction(),
        }
    }
}

impl FinetuneConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |key, message: &str| {
            Err(FinetuneError::Config {
                key,
                message: message.to_string(),
            })
        };
        if self.steps == 0 {
            return bad("steps", "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if !(self.encoder_lr_scale >= 0.0 && self.encoder_lr_scale.is_finite()) {
            return bad("encoder_lr_scale", "must be a non-negative number");
        }
        if !(0.0..=1.0).contains(&self.probe_fraction) {
            return bad("probe_fraction", "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad("warmup_fraction", "must be in [0, 1)");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight_decay", "must be a non-negative number");
        }
        if let Some((key, message)) = self.augment().problem() {
            return bad(key, message);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad("validation_fraction", "must be in [0, 1)");
        }
        if self.eval_every == 0 {
            return bad("eval_every", "must be at least 1");
        }
        if !(self.self_train_fraction > 0.0 && self.self_train_fraction <= 1.0) {
            return bad("self_train_fraction", "must be in (0, 1]");
        }
        if self.self_train_steps > 0 && self.batch_size < 2 {
            return bad(
                "self_train_steps",
                "needs a batch_size of at least 2 (half labeled, half pseudo-labeled images)",
            );
        }
        Ok(())
    }

    /// The settings in a phrase for reports, e.g. "1000 steps of 128 images (lr 0.003, encoder
    /// lr x1, cosine schedule, shifts ±2 px, rotations ±12°)".
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("lr {}", self.lr),
            format!("encoder lr x{}", self.encoder_lr_scale),
        ];
        if self.warmup_fraction > 0.0 {
            parts.push(format!("{:.0}% warm-up", self.warmup_fraction * 100.0));
        }
        if self.schedule == Schedule::Cosine {
            parts.push("cosine schedule".into());
        }
        if self.weight_decay > 0.0 {
            parts.push(format!("weight decay {}", self.weight_decay));
        }
        parts.extend(self.augment().describe());
        if self.dropout > 0.0 {
            parts.push(format!("dropout {}", self.dropout));
        }
        if self.validation_fraction > 0.0 {
            parts.push(format!(
                "early stopping on {:.0}% of the labels held out, checked every {} steps, patience {}",
                self.validation_fraction * 100.0,
                self.eval_every,
                self.patience
            ));
        }
        let steps = match self.batch_size {
            0 => format!("{} full-batch steps", self.steps),
            b => format!("{} steps of {b} images", self.steps),
        };
        let pool = if self.self_train_fraction == 1.0 {
            "the unlabeled images".to_string()
        } else {
            format!(
                "the teacher's most confident {}% of the unlabeled images",
                imprint_data::percent(self.self_train_fraction)
            )
        };
        let self_training = match self.self_train_steps {
            0 => String::new(),
            n => format!(
                ", then a student trained {n} steps on half labeled, half pseudo-labeled \
                 batches ({pool}, an equal share per class at most)"
            ),
        };
        format!("{steps} ({}){self_training}", parts.join(", "))
    }

    pub fn augment(&self) -> Augment {
        Augment {
            shift: self.augment_shift,
            rotate_degrees: self.augment_rotate,
            flip: self.augment_flip,
            scale: self.augment_scale,
        }
    }
}

/// Encoder plus a linear head over its features.
#[derive(Clone, Debug)]
pub struct Classifier<D: ImprintDevice> {
    pub encoder: Encoder<D>,
    pub head: Dense<D>,
    pub classes: Vec<String>,
    pub shape: ImageShape,
}

impl<D: ImprintDevice> Classifier<D> {
    /// A new head for `classes` on `encoder`, initialised from `seed`.
    pub fn new(
        dev: &D,
        encoder: Encoder<D>,
        classes: Vec<String>,
        shape: ImageShape,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let head = Dense::new(
            dev,
            encoder.architecture.latent(),
            classes.len(),
            Activation::Identity,
            &mut rng,
        );
        Self {
            encoder,
            head,
            classes,
            shape,
        }
    }

    /// Class logits `[batch, classes]` on a tape; `train_encoder = false` keeps the encoder off
    /// it. `dropout` multiplies the features before the head (a mask of 0 and 1 / (1 - p)).
    fn train_logits(
        &self,
        x: Matrix<D>,
        train_encoder: bool,
        dropout: Option<Matrix<D>>,
    ) -> Matrix<D, OwnedTape<f32, D>> {
        let features = if train_encoder {
            self.encoder.forward(x.leaky_trace(), false)
        } else {
            self.encoder.forward(x, false).leaky_trace()
        };
        let features = match dropout {
            Some(mask) => features * mask,
            None => features,
        };
        self.head.forward(features, train_encoder)
    }

    /// Class logits `[batch, classes]` without a tape.
    pub fn logits(&self, x: Matrix<D>) -> Matrix<D> {
        self.head.forward(self.encoder.forward(x, false), false)
    }

    /// Predicted class and its softmax probability for each image (`n * shape.len()` floats).
    pub fn predict(&self, dev: &D, images: &[f32]) -> Vec<(usize, f32)> {
        let len = self.shape.len();
        let mut out = Vec::with_capacity(images.len() / len.max(1));
        for chunk in images.chunks(1024 * len) {
            let n = chunk.len() / len;
            let x: Matrix<D> = dev.tensor_from_vec(chunk.to_vec(), (n, len));
            let probs = self.logits(x).softmax::<dfdx::shapes::Axis<1>>().as_vec();
            out.extend(probs.chunks_exact(self.classes.len()).map(best_class));
        }
        out
    }

    /// `encoder.*` as in the pre-training checkpoint, plus `head.weight` `[classes, latent]` and `head.bias`.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut tensors = self.encoder.named_tensors("encoder");
        tensors.push(NamedTensor {
            name: "head.weight".into(),
            shape: vec![self.head.out_features, self.head.in_features],
            data: self.head.weight.as_vec(),
        });
        tensors.push(NamedTensor {
            name: "head.bias".into(),
            shape: vec![self.head.out_features],
            data: self.head.bias.as_vec(),
        });
        tensors
    }

    /// Loads weights saved by [`Classifier::named_tensors`], checking names and shapes.
    pub fn load_named(
        &mut self,
        tensors: &BTreeMap<String, NamedTensor>,
        source: &str,
    ) -> Result<()> {
        self.encoder.load_named("encoder", tensors, source)?;
        for (name, param, shape) in [
            (
                "head.weight",
                &mut self.head.weight,
                vec![self.head.out_features, self.head.in_features],
            ),
            (
                "head.bias",
                &mut self.head.bias,
                vec![self.head.out_features],
            ),
        ] {
            match tensors.get(name) {
                Some(t) if t.shape == shape => param.copy_from(&t.data),
                Some(t) => {
                    return Err(FinetuneError::Data(format!(
                        "{source}: tensor `{name}` has shape {:?}, the model needs {shape:?}",
                        t.shape
                    )))
                }
                None => {
                    return Err(FinetuneError::Data(format!(
                        "{source}: missing tensor `{name}`"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The index and value of the largest score in `row` (the first, on a tie).
fn best_class(row: &[f32]) -> (usize, f32) {
    row.iter().enumerate().fold(
        (0, f32::MIN),
        |acc, (i, &p)| if p > acc.1 { (i, p) } else { acc },
    )
}

/// Loss after each step, for curves, and the validation checks when early stopping.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub train_loss: Vec<f64>,
    pub validation: Vec<Validation>,
    /// Steps taken (fewer than asked for when stopped early).
    pub steps_run: usize,
    /// Steps taken by the model returned (the best validated one), with a validation split.
    pub best_step: Option<usize>,
    /// Unlabeled images the self-training student saw pseudo-labeled (0 without self-training).
    #[serde(default)]
    pub pseudo_labels: usize,
}

/// One validation check: after `step` steps, accuracy (fraction) and mean cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub step: usize,
    pub accuracy: f64,
    pub loss: f64,
}

/// Trains `encoder` (pre-trained, or fresh for `Scratch`) with a new head on the labeled `train`
/// set. All randomness (validation split, head init, batches, augmentation) follows from `seed`.
/// With `validation_fraction > 0`, that share of each class is held out, the model is checked
/// on it every `eval_every` steps, and the best checked model is returned.
///
/// With `self_train_steps > 0` the model so trained is a teacher: it labels the `unlabeled`
/// images, and a student, started afresh from the same encoder and head init, trains on batches
/// that are half labeled images and half the teacher's most confident pseudo-labels. The student
/// is returned.
pub fn finetune<D: ImprintDevice>(
    dev: &D,
    encoder: Encoder<D>,
    train: &Dataset,
    unlabeled: Option<&Dataset>,
    cfg: &FinetuneConfig,
    strategy: Strategy,
    seed: u64,
) -> Result<(Classifier<D>, History)> {
    cfg.validate()?;
    let labels = train
        .labels
        .as_ref()
        .ok_or_else(|| FinetuneError::Data("the fine-tuning data has no labels".into()))?;
    if train.is_empty() {
        return Err(FinetuneError::Data("the labeled set is empty".into()));
    }
    if encoder.input != train.shape {
        return Err(FinetuneError::Data(format!(
            "the encoder takes {} images, the labeled images are {}: set the preprocessing to match",
            encoder.input, train.shape
        )));
    }
    let pool = match (cfg.self_train_steps, unlabeled) {
        (0, _) => None,
        (_, Some(pool)) if pool.shape != train.shape => {
            return Err(FinetuneError::Data(format!(
                "self-training: the unlabeled images are {}, the labeled images are {}",
                pool.shape, train.shape
            )))
        }
        (_, Some(pool)) if !pool.is_empty() => Some(pool),
        _ => {
            return Err(FinetuneError::Data(
                "self_train_steps needs unlabeled images to pseudo-label, and there are none"
                    .into(),
            ))
        }
    };
    let (fit, held_out) = validation_split(train, labels, cfg.validation_fraction, seed)?;
    let validation = (!held_out.is_empty()).then(|| train.subset(&held_out));
    let student_encoder = pool.is_some().then(|| encoder.clone());
    let mut model = Classifier::new(dev, encoder, train.classes.clone(), train.shape, seed);
    let batch = match cfg.batch_size {
        0 => fit.len(),
        b => b.min(fit.len()),
    };
    let labeled = Source::new(train, labels, fit);
    let teacher = Round {
        steps: cfg.steps,
        first_step: 0,
        streams: seed,
    };
    let mut history = History::default();
    teacher.run(
        dev,
        &mut model,
        cfg,
        strategy,
        &mut [(labeled.clone(), batch)],
        validation.as_ref(),
        &mut history,
    )?;
    let (Some(pool), Some(encoder)) = (pool, student_encoder) else {
        return Ok((model, history));
    };
    let (ids, pseudo) = pseudo_labels(dev, &model, pool, cfg.self_train_fraction);
    if ids.is_empty() {
        return Err(FinetuneError::Data(format!(
            "self_train_fraction {} of {} unlabeled images leaves no class a pseudo-label; raise it",
            cfg.self_train_fraction,
            pool.len()
        )));
    }
    history.pseudo_labels = ids.len();
    let mut student = Classifier::new(dev, encoder, train.classes.clone(), train.shape, seed);
    let half = cfg.batch_size / 2;
    let round = Round {
        steps: cfg.self_train_steps,
        first_step: history.steps_run,
        streams: seed ^ 0x5e1f_7a1b,
    };
    round.run(
        dev,
        &mut student,
        cfg,
        strategy,
        &mut [
            (labeled, half),
            (Source::new(pool, &pseudo, ids), cfg.batch_size - half),
        ],
        validation.as_ref(),
        &mut history,
    )?;
    Ok((student, history))
}

/// The images a round draws its batches from, in a reshuffled cycle: `ids` index `data`, and
/// `labels[i]` is image `i`'s label.
#[derive(Clone)]
struct Source<'a> {
    data: &'a Dataset,
    labels: &'a [usize],
    ids: Vec<usize>,
    cursor: usize,
}

impl<'a> Source<'a> {
    fn new(data: &'a Dataset, labels: &'a [usize], ids: Vec<usize>) -> Self {
        let cursor = ids.len();
        Self {
            data,
            labels,
            ids,
            cursor,
        }
    }

    /// Appends `count` images and their labels; all of them in order when `count` is the
    /// whole source (full-batch training), else the next ones of the shuffled cycle.
    fn draw(
        &mut self,
        count: usize,
        rng: &mut ChaCha8Rng,
        images: &mut Vec<f32>,
        labels: &mut Vec<usize>,
    ) {
        let mut take = |i: usize| {
            images.extend_from_slice(self.data.image(i));
            labels.push(self.labels[i]);
        };
        if count == self.ids.len() {
            self.ids.iter().for_each(|&i| take(i));
            return;
        }
        for _ in 0..count {
            if self.cursor == self.ids.len() {
                self.ids.shuffle(rng);
                self.cursor = 0;
            }
            take(self.ids[self.cursor]);
            self.cursor += 1;
        }
    }
}

/// One training run of a model by a strategy: `steps` steps, numbered from `first_step` in the
/// history, random streams drawn from `streams`.
struct Round {
    steps: usize,
    first_step: usize,
    streams: u64,
}

impl Round {
    /// Trains `model` on batches made of `count` images from each source, keeping the best
    /// validated model when there is a validation set.
    #[allow(clippy::too_many_arguments)]
    fn run<D: ImprintDevice>(
        &self,
        dev: &D,
        model: &mut Classifier<D>,
        cfg: &FinetuneConfig,
        strategy: Strategy,
        sources: &mut [(Source, usize)],
        validation: Option<&Dataset>,
        history: &mut History,
    ) -> Result<()> {
        let seed = self.streams;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f1e7);
        // Its own stream, so that switching dropout on leaves the batch order unchanged.
        let mut dropout_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xd209_0a75);
        let latent = model.encoder.architecture.latent();
        let shape = model.shape;
        let len = shape.len();
        let batch: usize = sources.iter().map(|(_, count)| count).sum();
        let probe_steps = match strategy {
            Strategy::Probe => self.steps,
            Strategy::ProbeThenFull => (self.steps as f64 * cfg.probe_fraction).round() as usize,
            Strategy::Scratch | Strategy::Full => 0,
        };
        let encoder_lr = match strategy {
            Strategy::Scratch => cfg.lr,
            _ => cfg.lr * cfg.encoder_lr_scale,
        };
        let augment = cfg.augment();
        let mut images = Vec::with_capacity(batch * len);
        let mut augmented = vec![0.0f32; batch * len];
        let mut batch_labels = Vec::with_capacity(batch);
        let mut best: Option<(Validation, Classifier<D>)> = None;
        let mut checks_without_gain = 0;
        let mut opt = Adam::new();
        for step in 0..self.steps {
            let f = cfg.lr_factor_over(step, self.steps);
            let head_cfg = adam_config(cfg.lr * f, cfg.weight_decay, true);
            let encoder_cfg = adam_config(encoder_lr * f, cfg.weight_decay, true);
            if step == probe_steps && probe_steps > 0 {
                // A fresh optimizer when the encoder joins, as a new optimizer would in PyTorch:
                // the head's moment estimates would otherwise dwarf the encoder's first steps.
                opt = Adam::new();
            }
            images.clear();
            batch_labels.clear();
            for (source, count) in sources.iter_mut() {
                source.draw(*count, &mut rng, &mut images, &mut batch_labels);
            }
            let input = if augment.is_identity() {
                &images
            } else {
                let step_seed = seed.wrapping_mul(1_000_003).wrapping_add(step as u64);
                augment_batch(&images, shape, &augment, step_seed, &mut augmented);
                &augmented
            };
            let x: Matrix<D> = dev.tensor_from_vec(input.clone(), (batch, len));
            let train_encoder = step >= probe_steps;
            let mask = (cfg.dropout > 0.0)
                .then(|| dropout_mask(dev, (batch, latent), cfg.dropout, &mut dropout_rng));
            let loss = cross_entropy(model.train_logits(x, train_encoder, mask), &batch_labels);
            let value = check_finite(loss.as_vec()[0], 0, self.first_step + step)?;
            history.train_loss.push(value as f64);
            let mut grads = loss.backward();
            let mut groups = vec![ParamGroup {
                config: head_cfg,
                params: vec![&mut model.head.weight, &mut model.head.bias],
            }];
            if train_encoder {
                groups.push(ParamGroup {
                    config: encoder_cfg,
                    params: model.encoder.params_mut(),
                });
            }
            opt.step(&mut groups, &mut grads)?;
            let done = self.first_step + step + 1;
            history.steps_run = done;

            let Some(held_out) = validation else {
                continue;
            };
            if (step + 1) % cfg.eval_every != 0 && step + 1 != self.steps {
                continue;
            }
            let check = validate(dev, model, held_out, done);
            history.validation.push(check);
            // Better: more accurate, or as accurate with a lower loss (small validation sets tie).
            let better = best.as_ref().is_none_or(|(b, _)| {
                check.accuracy > b.accuracy || (check.accuracy == b.accuracy && check.loss < b.loss)
            });
            if better {
                best = Some((check, model.clone()));
                checks_without_gain = 0;
            } else if train_encoder {
                checks_without_gain += 1;
                if cfg.patience > 0 && checks_without_gain >= cfg.patience {
                    break;
                }
            }
        }
        if let Some((check, best_model)) = best {
            history.best_step = Some(check.step);
            *model = best_model;
        }
        Ok(())
    }
}

/// The teacher's pseudo-labels for the `pool`: image ids and a label for every pool image (only
/// those in `ids` count). Each class keeps at most `fraction * pool / classes` images, those it
/// is most confident of, so that no class crowds out the others.
fn pseudo_labels<D: ImprintDevice>(
    dev: &D,
    teacher: &Classifier<D>,
    pool: &Dataset,
    fraction: f64,
) -> (Vec<usize>, Vec<usize>) {
    let predicted = teacher.predict(dev, &pool.pixels);
    let classes = teacher.classes.len();
    let quota = (fraction * pool.len() as f64 / classes as f64).round() as usize;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &(class, _)) in predicted.iter().enumerate() {
        by_class[class].push(i);
    }
    let mut ids = Vec::new();
    for mut members in by_class {
        // Most confident first; ties by index, so the choice does not depend on the sort.
        members.sort_by(|&a, &b| predicted[b].1.total_cmp(&predicted[a].1).then(a.cmp(&b)));
        members.truncate(quota);
        ids.extend(members);
    }
    ids.sort_unstable();
    (ids, predicted.into_iter().map(|(class, _)| class).collect())
}

/// An inverted-dropout mask: each entry 0 with probability `p`, else 1 / (1 - p). Not dfdx's
/// `dropout`: that draws from the device's generator, which every run of a comparison shares, so
/// a run's result would depend on the runs before it (and change on `--resume`).
fn dropout_mask<D: ImprintDevice>(
    dev: &D,
    shape: (usize, usize),
    p: f64,
    rng: &mut ChaCha8Rng,
) -> Matrix<D> {
    let keep = 1.0 / (1.0 - p) as f32;
    let mask = (0..shape.0 * shape.1)
        .map(|_| if rng.gen_bool(p) { 0.0 } else { keep })
        .collect();
    dev.tensor_from_vec(mask, shape)
}

/// Indices of `train` to fit on and to validate on: `fraction` of each class held out (rounded),
/// an error if that leaves a class nothing to train on.
fn validation_split(
    train: &Dataset,
    labels: &[usize],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if fraction == 0.0 {
        return Ok(((0..train.len()).collect(), Vec::new()));
    }
    let (fit, held_out) = stratified_split(labels, train.classes.len(), fraction, seed);
    for (c, name) in train.classes.iter().enumerate() {
        if !fit.iter().any(|&i| labels[i] == c) {
            let count = held_out.iter().filter(|&&i| labels[i] == c).count();
            return Err(FinetuneError::Data(format!(
                "validation_fraction {fraction} leaves class `{name}` ({count} labeled images) \
                 nothing to train on; label more or lower it"
            )));
        }
    }
    Ok((fit, held_out))
}

/// Accuracy and mean cross-entropy of `model` on the labeled `held_out` images, without a tape.
fn validate<D: ImprintDevice>(
    dev: &D,
    model: &Classifier<D>,
    held_out: &Dataset,
    step: usize,
) -> Validation {
    let labels = held_out.labels.as_deref().unwrap_or_default();
    let x: Matrix<D> =
        dev.tensor_from_vec(held_out.pixels.clone(), (labels.len(), model.shape.len()));
    let logits = model.logits(x);
    let correct = logits
        .as_vec()
        .chunks_exact(model.classes.len())
        .zip(labels)
        .filter(|&(row, &label)| best_class(row).0 == label)
        .count();
    Validation {
        step,
        accuracy: correct as f64 / labels.len() as f64,
        loss: cross_entropy(logits, labels).as_vec()[0] as f64,
    }
}

#[cfg(test)]
mod tests;
