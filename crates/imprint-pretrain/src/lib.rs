//! Autoencoder pre-training on unlabeled images. The loop is generic over the dfdx device,
//! returns its history and prints nothing; callers render progress from [`EpochStats`].

use dfdx::prelude::*;
use imprint_data::augment::{augment_batch, Augment};
use imprint_data::ImageShape;
use imprint_nn::loss::{
    check_finite, contrastive_loss, reconstruction_loss, weighted_reconstruction_loss,
    Reconstruction,
};
use imprint_nn::optim::adam_config;
use imprint_nn::{
    Activation, Adam, AdamState, Architecture, Decoder, Encoder, ImprintDevice, Matrix, Mlp,
    NamedTensor, ParamGroup, Vector,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("invalid pre-training setting `{key}`: {message}")]
    Config { key: &'static str, message: String },
    /// A NaN or infinite loss, with the setting most likely to blame.
    #[error("pre-training seed {seed}: {source} (pretrain.lr is {lr})")]
    Diverged {
        seed: u64,
        lr: f64,
        source: imprint_nn::NnError,
    },
    /// Saving an epoch checkpoint failed.
    #[error("{0}")]
    Checkpoint(String),
    /// A snapshot that is not of this run.
    #[error("cannot resume from this checkpoint: {0}")]
    Resume(String),
    #[error(transparent)]
    Nn(#[from] imprint_nn::NnError),
}

pub type Result<T> = std::result::Result<T, PretrainError>;

/// Corruption applied to the input (never to the target) in denoising pre-training.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Noise {
    None,
    /// Each pixel set to 0 with probability `fraction`.
    Masking {
        fraction: f32,
    },
    /// Adds N(0, std²) to every pixel, clipped to [0, 1].
    Gaussian {
        std: f32,
    },
    /// Masked autoencoding: the image is cut into `patch` x `patch` squares and `fraction` of
    /// them (drawn per image) are hidden; the whole image is reconstructed.
    Patches {
        patch: usize,
        fraction: f32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub architecture: Architecture,
    #[serde(default = "default_noise")]
    pub noise: Noise,
    #[serde(default = "default_loss")]
    pub loss: Reconstruction,
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Share of the unlabeled images kept out of training to report a held-out loss.
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    /// With `Patches` noise: score only the hidden pixels, as masked autoencoders do.
    #[serde(default)]
    pub loss_on_hidden_only: bool,
    /// Random shifts of up to this many pixels, applied to input and target alike before the
    /// corruption; 0 = none. The encoder then sees the variety fine-tuning's augmentation brings.
    #[serde(default)]
    pub augment_shift: usize,
    /// Random rotations of up to this many degrees either way; 0 = none.
    #[serde(default)]
    pub augment_rotate: f64,
    /// Random left-right mirroring (only where the data allows it).
    #[serde(default)]
    pub augment_flip: bool,
    /// Random zooms by a factor in `[1 - s, 1 + s]`; 0 = none.
    #[serde(default)]
    pub augment_scale: f64,
    /// Make the augmentation part of the corruption: the encoder sees the moved image, the
    /// decoder must draw the original, so the code learns to ignore the moves, as a classifier
    /// must. Off: input and target move alike.
    #[serde(default)]
    pub augment_as_noise: bool,
    /// Weight of a contrastive term (NT-Xent, SimCLR's loss) added to the reconstruction loss:
    /// the codes of two views of each image (augmentation and corruption drawn twice) must pick
    /// each other out of all views of the batch, which pulls the images a classifier should tell
    /// apart away from each other. 0 = off.
    #[serde(default)]
    pub contrast_weight: f64,
    /// Temperature of the contrastive term's cosine similarities.
    #[serde(default = "default_temperature")]
    pub contrast_temperature: f64,
}

fn default_noise() -> Noise {
    Noise::None
}
fn default_loss() -> Reconstruction {
    Reconstruction::Mse
}
fn default_batch() -> usize {
    128
}
fn default_lr() -> f64 {
    1e-3
}
fn default_holdout() -> f64 {
    0.05
}
// With ten classes a tenth of a batch's negatives are the same digit; 0.1 pushes those apart as
// hard as the rest, and left MNIST's frozen codes 1.6-1.8 points worse than 0.5 at k = 10, on the
// test set and on a dev split (pipelines/mnist-conv.md).
fn default_temperature() -> f64 {
    0.5
}
/// Width of the projection head the contrastive term sees (thrown away after pre-training).
const PROJECTION_WIDTH: usize = 64;

impl PretrainConfig {
    /// A plain autoencoder trained for `epochs`, every other setting at the default a pipeline
    /// file gets when it leaves the key out.
    pub fn new(architecture: Architecture, epochs: usize) -> Self {
        Self {
            architecture,
            noise: default_noise(),
            loss: default_loss(),
            epochs,
            batch_size: default_batch(),
            lr: default_lr(),
            weight_decay: 0.0,
            holdout_fraction: default_holdout(),
            loss_on_hidden_only: false,
            augment_shift: 0,
            augment_rotate: 0.0,
            augment_flip: false,
            augment_scale: 0.0,
            augment_as_noise: false,
            contrast_weight: 0.0,
            contrast_temperature: default_temperature(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |key, message: &str| {
            Err(PretrainError::Config {
                key,
                message: message.to_string(),
            })
        };
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if !(0.0..0.5).contains(&self.holdout_fraction) {
            return bad("holdout_fraction", "must be in [0, 0.5)");
        }
        if let Noise::Masking { fraction } = self.noise {
            if !(0.0..1.0).contains(&fraction) {
                return bad("noise.fraction", "must be in [0, 1)");
            }
        }
        if let Noise::Patches { patch, fraction } = self.noise {
            if patch == 0 || !(0.0..1.0).contains(&fraction) || fraction == 0.0 {
                return bad("noise", "patches need patch >= 1 and fraction in (0, 1)");
            }
        }
        if self.loss_on_hidden_only && !matches!(self.noise, Noise::Patches { .. }) {
            return bad(
                "loss_on_hidden_only",
                "needs noise = { kind = \"patches\", ... }",
            );
        }
        if let Noise::Gaussian { std } = self.noise {
            if !(std >= 0.0 && std.is_finite()) {
                return bad("noise.std", "must be a non-negative number");
            }
        }
        if let Some((key, message)) = self.augment().problem() {
            return bad(key, message);
        }
        if self.augment_as_noise && self.augment().is_identity() {
            return bad(
                "augment_as_noise",
                "needs augmentation (augment_shift, augment_rotate, augment_flip or augment_scale)",
            );
        }
        if self.augment_as_noise && self.loss_on_hidden_only {
            return bad(
                "augment_as_noise",
                "cannot go with loss_on_hidden_only: the hidden pixels are those of the moved \
                 image, the target is the original",
            );
        }
        if !(self.contrast_weight >= 0.0 && self.contrast_weight.is_finite()) {
            return bad("contrast_weight", "must be a non-negative number");
        }
        if !(self.contrast_temperature > 0.0 && self.contrast_temperature.is_finite()) {
            return bad("contrast_temperature", "must be a positive number");
        }
        if self.contrast_weight > 0.0 && self.augment().is_identity() && self.noise == Noise::None {
            return bad(
                "contrast_weight",
                "needs two different views of each image: set augmentation or noise",
            );
        }
        self.architecture
            .check_widths()
            .map_err(|message| PretrainError::Config {
                key: "architecture",
                message,
            })
    }

    /// The settings in a phrase for reports, e.g. "15 epochs of 128 images (lr 0.001, 4x4
    /// patches 50% hidden, BCE loss on the hidden pixels, shifts ±2 px)".
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("lr {}", self.lr)];
        if self.weight_decay > 0.0 {
            parts.push(format!("weight decay {}", self.weight_decay));
        }
        parts.push(match self.noise {
            Noise::None => "no noise".into(),
            Noise::Masking { fraction } => format!("{:.0}% of pixels masked", fraction * 100.0),
            Noise::Gaussian { std } => format!("gaussian noise std {std}"),
            Noise::Patches { patch, fraction } => {
                format!("{patch}x{patch} patches {:.0}% hidden", fraction * 100.0)
            }
        });
        let loss = match self.loss {
            Reconstruction::Mse => "MSE loss",
            Reconstruction::Bce => "BCE loss",
        };
        parts.push(if self.loss_on_hidden_only {
            format!("{loss} on the hidden pixels")
        } else {
            loss.to_string()
        });
        let augment = self.augment().describe();
        if self.augment_as_noise {
            parts.push(format!(
                "{} as noise (the original the target)",
                augment.join(", ")
            ));
        } else {
            parts.extend(augment);
        }
        if self.contrast_weight > 0.0 {
            parts.push(format!(
                "contrastive term x{} at temperature {}",
                self.contrast_weight, self.contrast_temperature
            ));
        }
        format!(
            "{} epochs of {} images ({})",
            self.epochs,
            self.batch_size,
            parts.join(", ")
        )
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

/// What one epoch did; the loop reports it through a callback as it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub train_loss: f64,
    /// Loss on the held-out images, without corruption; `None` when nothing is held out.
    pub heldout_loss: Option<f64>,
    pub images_per_second: f64,
    pub seconds: f64,
}

pub struct Pretrained<D: ImprintDevice> {
    pub encoder: Encoder<D>,
    pub decoder: Decoder<D>,
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
}

/// The loop's state at an epoch end: resuming from it gives what the uninterrupted run gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Weights (`encoder.*`, `decoder.*`, and `projection.*` with the contrastive term) and Adam
    /// moments (`adam.m1.{i}`, `adam.m2.{i}`, in the order of those parameters).
    pub tensors: Vec<NamedTensor>,
    pub state: TrainingState,
}

/// The non-tensor part of a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    pub seed: u64,
    pub epochs_done: usize,
    pub adam_step: i32,
    /// Position in the seed's random stream (shuffles and noise draws so far).
    pub rng_word_pos: u128,
    /// Training images in the order the last epoch shuffled them to (the next shuffles start
    /// from it).
    pub train_order: Vec<usize>,
    pub history: Vec<EpochStats>,
}

/// Trains an autoencoder on `images` (`n` images of `input`'s shape, in [0,1]) from a fresh init
/// drawn from `seed`, or continues from `resume`, a snapshot of the same run. Every random draw
/// (init, held-out split, shuffles, noise) follows from `seed`.
pub fn pretrain<D: ImprintDevice>(
    dev: &D,
    images: &[f32],
    input: ImageShape,
    cfg: &PretrainConfig,
    seed: u64,
    resume: Option<&Snapshot>,
    mut hooks: Hooks<'_>,
) -> Result<Pretrained<D>> {
    cfg.validate()?;
    let input_len = input.len();
    let n = images.len() / input_len.max(1);
    if n == 0 {
        return Err(PretrainError::Config {
            key: "data",
            message: "no unlabeled images to pre-train on".into(),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let encoder = Encoder::new(dev, &cfg.architecture, input, &mut rng)?;
    let decoder = Decoder::new(dev, &cfg.architecture, input, &mut rng)?;
    // Drawn only when used, so runs without the term keep their random stream.
    let projection = (cfg.contrast_weight > 0.0).then(|| {
        let latent = cfg.architecture.latent();
        Mlp::new(
            dev,
            &[latent, latent, PROJECTION_WIDTH],
            Activation::Relu,
            Activation::Identity,
            &mut rng,
        )
    });
    let mut nets = Nets {
        encoder,
        decoder,
        projection,
    };

    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let n_heldout = ((n as f64) * cfg.holdout_fraction).round() as usize;
    let heldout: Vec<usize> = order[..n_heldout].to_vec();
    let mut train: Vec<usize> = order[n_heldout..].to_vec();
    let batch = cfg.batch_size.min(train.len()).max(1);
    let steps_per_epoch = (train.len() / batch).max(1);

    let config = adam_config(cfg.lr, cfg.weight_decay, false);
    let mut opt = Adam::new();
    let mut history = Vec::with_capacity(cfg.epochs);
    if let Some(snapshot) = resume {
        restore(snapshot, seed, cfg.epochs, &mut nets, &mut opt, &mut train)?;
        rng.set_word_pos(snapshot.state.rng_word_pos);
        history = snapshot.state.history.clone();
    }
    let input_shape = input;
    let mut input = vec![0.0f32; batch * input_len];
    let mut target = vec![0.0f32; batch * input_len];
    let mut hidden = vec![0.0f32; batch * input_len];
    let augment = cfg.augment();
    let mut original = vec![0.0f32; batch * input_len];
    let mut view = vec![0.0f32; batch * input_len];
    let mut view_hidden = vec![0.0f32; batch * input_len];
    for epoch in history.len()..cfg.epochs {
        let start = Instant::now();
        train.shuffle(&mut rng);
        let mut total = 0.0f64;
        for step in 0..steps_per_epoch {
            let ids = &train[step * batch..(step + 1) * batch];
            gather(images, input_len, ids, &mut original);
            move_batch(&original, input_shape, &augment, &mut rng, &mut target);
            input.copy_from_slice(&target);
            if cfg.augment_as_noise {
                target.copy_from_slice(&original);
            }
            corrupt(&mut input, input_shape, cfg.noise, &mut rng, &mut hidden);
            let x: Matrix<D> = dev.tensor_from_vec(input.clone(), (batch, input_len));
            let y: Matrix<D> = dev.tensor_from_vec(target.clone(), (batch, input_len));
            let Nets {
                encoder,
                decoder,
                projection,
            } = &nets;
            let z = encoder.forward(x.leaky_trace(), false);
            // The second view: augmentation and corruption drawn afresh from the original.
            let contrast = projection.as_ref().map(|head| {
                move_batch(&original, input_shape, &augment, &mut rng, &mut view);
                corrupt(
                    &mut view,
                    input_shape,
                    cfg.noise,
                    &mut rng,
                    &mut view_hidden,
                );
                let x2: Matrix<D> = dev.tensor_from_vec(view.clone(), (batch, input_len));
                let z2 = encoder.forward(x2.leaky_trace(), false);
                // The head reads `z` as the decoder does; the retaped copy keeps its id, so
                // both losses' gradients meet in the encoder.
                contrastive_loss(
                    head.forward(z.retaped(), true),
                    head.forward(z2, true),
                    cfg.contrast_temperature as f32,
                )
            });
            let logits = decoder.forward(z);
            let mut loss = if cfg.loss_on_hidden_only {
                let mask: Matrix<D> = dev.tensor_from_vec(hidden.clone(), (batch, input_len));
                weighted_reconstruction_loss(cfg.loss, logits, y, mask)
            } else {
                reconstruction_loss(cfg.loss, logits, y)
            };
            if let Some(contrast) = contrast {
                loss = loss + contrast * cfg.contrast_weight as f32;
            }
            // 1-based, as the progress lines and loss.csv count epochs.
            let value = check_finite(loss.as_vec()[0], epoch + 1, step + 1).map_err(|source| {
                PretrainError::Diverged {
                    seed,
                    lr: cfg.lr,
                    source,
                }
            })?;
            let mut grads = loss.backward();
            let params = nets.params_mut();
            opt.step(&mut [ParamGroup { config, params }], &mut grads)?;
            total += value as f64;
            if let Some(f) = hooks.on_batch.as_mut() {
                f(epoch, step + 1, steps_per_epoch, total / (step + 1) as f64);
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch,
            train_loss: total / steps_per_epoch as f64,
            heldout_loss: (!heldout.is_empty()).then(|| {
                evaluate_loss(
                    dev,
                    &nets.encoder,
                    &nets.decoder,
                    images,
                    input_len,
                    &heldout,
                    cfg.loss,
                )
            }),
            images_per_second: (steps_per_epoch * batch) as f64 / seconds.max(1e-9),
            seconds,
        };
        if let Some(f) = hooks.on_epoch.as_mut() {
            f(&stats);
        }
        history.push(stats);
        if let Some(save) = hooks.on_checkpoint.as_mut() {
            let mut tensors = nets.named_tensors();
            let params = nets.params_mut();
            let params: Vec<&Vector<D>> = params.into_iter().map(|p| &*p).collect();
            let adam = opt.state(&params)?;
            for (i, [m1, m2]) in adam.moments.into_iter().enumerate() {
                for (which, data) in [("m1", m1), ("m2", m2)] {
                    tensors.push(NamedTensor {
                        name: moment_name(which, i),
                        shape: vec![data.len()],
                        data,
                    });
                }
            }
            save(&Snapshot {
                tensors,
                state: TrainingState {
                    seed,
                    epochs_done: history.len(),
                    adam_step: adam.step,
                    rng_word_pos: rng.get_word_pos(),
                    train_order: train.clone(),
                    history: history.clone(),
                },
            })?;
        }
    }
    Ok(Pretrained {
        encoder: nets.encoder,
        decoder: nets.decoder,
        history,
        heldout,
    })
}

/// Everything pre-training trains; the projection head only with the contrastive term.
struct Nets<D: ImprintDevice> {
    encoder: Encoder<D>,
    decoder: Decoder<D>,
    projection: Option<Mlp<D>>,
}

impl<D: ImprintDevice> Nets<D> {
    /// In the order Adam's moments are saved: encoder, decoder, projection.
    fn params_mut(&mut self) -> Vec<&mut Vector<D>> {
        let mut params = self.encoder.params_mut();
        params.extend(self.decoder.params_mut());
        if let Some(head) = &mut self.projection {
            params.extend(head.params_mut());
        }
        params
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        let mut tensors = self.encoder.named_tensors("encoder");
        tensors.extend(self.decoder.named_tensors("decoder"));
        if let Some(head) = &self.projection {
            tensors.extend(head.named_tensors("projection"));
        }
        tensors
    }

    fn load_named(&mut self, tensors: &BTreeMap<String, NamedTensor>) -> Result<()> {
        self.encoder.load_named("encoder", tensors, "checkpoint")?;
        self.decoder.load_named("decoder", tensors, "checkpoint")?;
        if let Some(head) = &mut self.projection {
            head.load_named("projection", tensors, "checkpoint")?;
        }
        Ok(())
    }
}

/// The snapshot's name of Adam moment `which` (`m1` or `m2`) of parameter `i`.
fn moment_name(which: &str, i: usize) -> String {
    format!("adam.{which}.{i}")
}

/// Loads `snapshot` into a freshly built run, after checking that it is a snapshot of this run:
/// same seed, no more epochs than asked for, the same training images.
fn restore<D: ImprintDevice>(
    snapshot: &Snapshot,
    seed: u64,
    epochs: usize,
    nets: &mut Nets<D>,
    opt: &mut Adam<D>,
    train: &mut Vec<usize>,
) -> Result<()> {
    let state = &snapshot.state;
    let mismatch = |message: String| Err(PretrainError::Resume(message));
    if state.seed != seed {
        return mismatch(format!("it is of seed {}, not {seed}", state.seed));
    }
    if state.epochs_done > epochs || state.history.len() != state.epochs_done {
        return mismatch(format!(
            "it holds {} epochs, more than the {epochs} asked for",
            state.epochs_done
        ));
    }
    let (mut saved, mut ours) = (state.train_order.clone(), train.clone());
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
    nets.load_named(&tensors)?;
    let params = nets.params_mut();
    let moment = |which: &str, i: usize| {
        tensors
            .get(&moment_name(which, i))
            .map(|t| t.data.clone())
            .ok_or_else(|| PretrainError::Resume(format!("it lacks `{}`", moment_name(which, i))))
    };
    let moments = (0..params.len())
        .map(|i| Ok([moment("m1", i)?, moment("m2", i)?]))
        .collect::<Result<Vec<_>>>()?;
    let params: Vec<&Vector<D>> = params.into_iter().map(|p| &*p).collect();
    opt.restore(
        &AdamState {
            step: state.adam_step,
            moments,
        },
        &params,
    )?;
    *train = state.train_order.clone();
    Ok(())
}

/// `original` moved by `augment` into `out`; a plain copy, with nothing drawn from `rng`, when
/// there is no augmentation.
fn move_batch(
    original: &[f32],
    shape: ImageShape,
    augment: &Augment,
    rng: &mut impl Rng,
    out: &mut [f32],
) {
    if augment.is_identity() {
        out.copy_from_slice(original);
    } else {
        augment_batch(original, shape, augment, rng.gen(), out);
    }
}

fn gather(images: &[f32], len: usize, ids: &[usize], out: &mut [f32]) {
    for (dst, &i) in out.chunks_exact_mut(len).zip(ids) {
        dst.copy_from_slice(&images[i * len..(i + 1) * len]);
    }
}

/// Corrupts a batch of images in place; `hidden` gets 1 where a `Patches` mask hid a pixel.
fn corrupt(x: &mut [f32], shape: ImageShape, noise: Noise, rng: &mut impl Rng, hidden: &mut [f32]) {
    match noise {
        Noise::None => {}
        Noise::Patches { patch, fraction } => {
            let (rows, cols) = (shape.height.div_ceil(patch), shape.width.div_ceil(patch));
            let mut order: Vec<usize> = (0..rows * cols).collect();
            let hide = ((rows * cols) as f32 * fraction).round().max(1.0) as usize;
            hidden.fill(0.0);
            for (img, mask) in x
                .chunks_exact_mut(shape.len())
                .zip(hidden.chunks_exact_mut(shape.len()))
            {
                order.shuffle(rng);
                for &p in &order[..hide] {
                    let (r0, c0) = ((p / cols) * patch, (p % cols) * patch);
                    for c in 0..shape.channels {
                        for r in r0..(r0 + patch).min(shape.height) {
                            let row = (c * shape.height + r) * shape.width;
                            for i in row + c0..row + (c0 + patch).min(shape.width) {
                                img[i] = 0.0;
                                mask[i] = 1.0;
                            }
                        }
                    }
                }
            }
        }
        Noise::Masking { fraction } => x.iter_mut().for_each(|v| {
            if rng.gen::<f32>() < fraction {
                *v = 0.0
            }
        }),
        Noise::Gaussian { std } => {
            let normal = rand::distributions::Uniform::new(0.0f32, 1.0);
            x.iter_mut().for_each(|v| {
                // Box-Muller from two uniforms keeps us on the `rand` crate alone.
                let (u1, u2): (f32, f32) = (rng.sample(normal).max(1e-7), rng.sample(normal));
                let g = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
                *v = (*v + std * g).clamp(0.0, 1.0);
            })
        }
    }
}

/// Mean reconstruction loss of uncorrupted `ids`, in batches, without a tape.
pub fn evaluate_loss<D: ImprintDevice>(
    dev: &D,
    encoder: &Encoder<D>,
    decoder: &Decoder<D>,
    images: &[f32],
    len: usize,
    ids: &[usize],
    loss: Reconstruction,
) -> f64 {
    let mut total = 0.0;
    for chunk in ids.chunks(1000) {
        let mut buf = vec![0.0; chunk.len() * len];
        gather(images, len, chunk, &mut buf);
        let x: Matrix<D> = dev.tensor_from_vec(buf, (chunk.len(), len));
        let value =
            reconstruction_loss(loss, decoder.forward(encoder.forward(x.clone(), false)), x);
        total += value.as_vec()[0] as f64 * chunk.len() as f64;
    }
    total / ids.len().max(1) as f64
}

/// Reconstructions (in [0,1]) of the given images, for pictures.
pub fn reconstruct<D: ImprintDevice>(
    dev: &D,
    encoder: &Encoder<D>,
    decoder: &Decoder<D>,
    images: &[f32],
    len: usize,
) -> Vec<f32> {
    let n = images.len() / len;
    let x: Matrix<D> = dev.tensor_from_vec(images.to_vec(), (n, len));
    decoder
        .forward(encoder.forward(x, false))
        .sigmoid()
        .as_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images with structure an autoencoder can learn: bars at random positions.
    fn bars(n: usize, side: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = vec![0.0; n * side * side];
        for img in out.chunks_exact_mut(side * side) {
            let row = rng.gen_range(0..side);
            let col = rng.gen_range(0..side);
            for k in 0..side {
                img[row * side + k] = 1.0;
                img[k * side + col] = 1.0;
            }
        }
        out
    }

    const SIDE8: ImageShape = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };

    #[test]
    fn conv_autoencoder_loss_falls() {
        let dev = Cpu::default();
        let images = bars(400, 8, 1);
        let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
        cfg.architecture = Architecture::Conv {
            channels: vec![8, 16],
            kernel: 3,
            stride: 2,
            latent: 8,
        };
        for masked in [false, true] {
            if masked {
                cfg.noise = Noise::Patches {
                    patch: 2,
                    fraction: 0.25,
                };
                cfg.loss_on_hidden_only = true;
            }
            let run = pretrain(&dev, &images, SIDE8, &cfg, 3, None, Hooks::default()).unwrap();
            let (first, last) = (&run.history[0], run.history.last().unwrap());
            // Scored on hidden pixels only, the net is never asked to copy the visible ones, so
            // the whole-image held-out loss falls less.
            let factor = if masked { 0.85 } else { 0.8 };
            assert!(
                last.heldout_loss.unwrap() < factor * first.heldout_loss.unwrap(),
                "masked {masked}: held-out loss {:?} -> {:?}",
                first.heldout_loss,
                last.heldout_loss
            );
        }
    }

    #[test]
    fn patches_hide_whole_squares_and_mark_them() {
        let shape = ImageShape {
            channels: 1,
            height: 6,
            width: 6,
        };
        let mut x = vec![1.0f32; 2 * 36];
        let mut hidden = vec![0.0f32; 2 * 36];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        corrupt(
            &mut x,
            shape,
            Noise::Patches {
                patch: 3,
                fraction: 0.5,
            },
            &mut rng,
            &mut hidden,
        );
        for (img, mask) in x.chunks(36).zip(hidden.chunks(36)) {
            // 4 patches of 3x3, half hidden: 18 pixels, each zeroed exactly where marked.
            assert_eq!(mask.iter().filter(|&&m| m == 1.0).count(), 18);
            assert!(img
                .iter()
                .zip(mask)
                .all(|(v, m)| (*v == 0.0) == (*m == 1.0)));
        }
    }

    fn config(noise: Noise, loss: Reconstruction) -> PretrainConfig {
        let dense = Architecture::Dense {
            hidden: vec![32],
            latent: 8,
        };
        PretrainConfig {
            noise,
            loss,
            batch_size: 32,
            lr: 3e-3,
            holdout_fraction: 0.1,
            ..PretrainConfig::new(dense, 8)
        }
    }

    /// A run stopped after an epoch and resumed from its snapshot ends with the weights and
    /// losses of the run that never stopped, for a dense and a conv net with noise (and, for the
    /// conv net, augmentation and the contrastive term's second view) drawn each step: the
    /// random stream must continue, not restart, and the projection head's weights and moments
    /// come back too.
    #[test]
    fn resumed_run_equals_uninterrupted_run() {
        let dev = Cpu::default();
        let images = bars(300, 8, 2);
        let mut cfg = config(Noise::Masking { fraction: 0.3 }, Reconstruction::Bce);
        cfg.epochs = 4;
        for conv in [false, true] {
            if conv {
                cfg.architecture = Architecture::Conv {
                    channels: vec![4, 8],
                    kernel: 3,
                    stride: 2,
                    latent: 8,
                };
                cfg.augment_shift = 1;
                cfg.augment_rotate = 10.0;
                cfg.contrast_weight = 0.5;
            }
            let weights = |run: &Pretrained<Cpu>| {
                let mut t = run.encoder.named_tensors("encoder");
                t.extend(run.decoder.named_tensors("decoder"));
                t
            };
            let losses = |run: &Pretrained<Cpu>| {
                let h = run.history.iter();
                h.map(|h| (h.train_loss, h.heldout_loss))
                    .collect::<Vec<_>>()
            };
            let whole = pretrain(&dev, &images, SIDE8, &cfg, 5, None, Hooks::default()).unwrap();

            let mut saved = None;
            let mut crash_after_second = |s: &Snapshot| {
                saved = Some(s.clone());
                if s.state.epochs_done == 2 {
                    return Err(PretrainError::Checkpoint("simulated crash".into()));
                }
                Ok(())
            };
            let hooks = Hooks {
                on_checkpoint: Some(&mut crash_after_second),
                ..Hooks::default()
            };
            let crashed = pretrain(&dev, &images, SIDE8, &cfg, 5, None, hooks);
            assert!(crashed.is_err());
            let snapshot = saved.expect("a snapshot after epoch 2");
            assert_eq!(snapshot.state.epochs_done, 2);

            let resumed = pretrain(
                &dev,
                &images,
                SIDE8,
                &cfg,
                5,
                Some(&snapshot),
                Hooks::default(),
            )
            .unwrap();
            assert_eq!(weights(&resumed), weights(&whole), "conv {conv}");
            assert_eq!(losses(&resumed), losses(&whole), "conv {conv}");

            let err = pretrain(
                &dev,
                &images,
                SIDE8,
                &cfg,
                6,
                Some(&snapshot),
                Hooks::default(),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains("seed 5, not 6"), "{err}");
        }
    }

    #[test]
    fn loss_falls_and_runs_are_reproducible() {
        let dev = Cpu::default();
        let images = bars(600, 8, 0);
        for (noise, loss) in [
            (Noise::None, Reconstruction::Mse),
            (Noise::Masking { fraction: 0.3 }, Reconstruction::Bce),
            (Noise::Gaussian { std: 0.2 }, Reconstruction::Mse),
        ] {
            let cfg = config(noise, loss);
            let run = || pretrain(&dev, &images, SIDE8, &cfg, 7, None, Hooks::default()).unwrap();
            let a = run();
            let first = a.history.first().unwrap();
            let last = a.history.last().unwrap();
            assert!(
                last.heldout_loss.unwrap() < 0.7 * first.heldout_loss.unwrap(),
                "{noise:?} {loss:?}: held-out loss {:?} -> {:?}",
                first.heldout_loss,
                last.heldout_loss
            );
            let b = run();
            let losses =
                |p: &Pretrained<Cpu>| p.history.iter().map(|h| h.train_loss).collect::<Vec<_>>();
            assert_eq!(losses(&a), losses(&b), "same seed, same losses");
        }
    }

    /// Augmented inputs and targets change what is learned, yet the net still learns to
    /// reconstruct (the held-out images are not augmented) and a seed still fixes the run.
    #[test]
    fn augmented_pretraining_learns_and_repeats() {
        let dev = Cpu::default();
        let images = bars(600, 8, 4);
        let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
        let losses = |cfg: &PretrainConfig| {
            let run = pretrain(&dev, &images, SIDE8, cfg, 7, None, Hooks::default()).unwrap();
            run.history
                .iter()
                .map(|h| (h.train_loss, h.heldout_loss.unwrap()))
                .collect::<Vec<_>>()
        };
        let plain = losses(&cfg);
        cfg.augment_shift = 1;
        cfg.augment_rotate = 8.0;
        let augmented = losses(&cfg);
        assert_ne!(augmented, plain);
        assert_eq!(augmented, losses(&cfg), "same seed, same losses");
        let (first, last) = (augmented[0].1, augmented.last().unwrap().1);
        assert!(last < 0.8 * first, "held-out loss {first} -> {last}");
    }

    /// With the augmentation as noise the autoencoder learns to undo the moves: fed moved
    /// images, it draws something nearer the originals than one trained to copy the moves does.
    #[test]
    fn augmentation_as_noise_learns_to_undo_the_moves() {
        // A bar through the centre, across or down, of random brightness: the centre is the
        // one place the moves can be undone to.
        let centred = |n: usize, seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut out = vec![0.0; n * 64];
            for img in out.chunks_exact_mut(64) {
                let (across, value) = (rng.gen_bool(0.5), rng.gen_range(0.5..1.0));
                for k in 0..8 {
                    img[if across { 24 + k } else { 8 * k + 3 }] = value;
                }
            }
            out
        };
        let dev = Cpu::default();
        let images = centred(600, 4);
        let mut cfg = config(Noise::None, Reconstruction::Bce);
        cfg.augment_shift = 2;
        let originals = centred(100, 9);
        let mut moved = vec![0.0; originals.len()];
        augment_batch(&originals, SIDE8, &cfg.augment(), 3, &mut moved);
        let error_to_originals = |cfg: &PretrainConfig| {
            let run = pretrain(&dev, &images, SIDE8, cfg, 7, None, Hooks::default()).unwrap();
            let drawn = reconstruct(&dev, &run.encoder, &run.decoder, &moved, SIDE8.len());
            let squares = drawn.iter().zip(&originals).map(|(a, b)| (a - b).powi(2));
            squares.sum::<f32>() / drawn.len() as f32
        };
        let copies_the_moves = error_to_originals(&cfg);
        cfg.augment_as_noise = true;
        let undoes_them = error_to_originals(&cfg);
        assert!(
            undoes_them < 0.5 * copies_the_moves,
            "error to the originals: {undoes_them} as noise, {copies_the_moves} moved alike"
        );
    }

    /// With the contrastive term the codes of two views of an image find each other: among the
    /// codes of 64 distinct images' second views, the nearest (by cosine) to a first view's code
    /// is its own more often than for the autoencoder alone (58 against 49 when written).
    #[test]
    fn contrastive_term_makes_views_of_an_image_find_each_other() {
        let dev = Cpu::default();
        let images = bars(600, 8, 5);
        // Views differ by rotation and masked pixels (a shift would turn one cross into
        // another, so there would be nothing to find).
        let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
        cfg.augment_rotate = 20.0;
        cfg.epochs = 20;
        // Telling single images apart is what a low temperature weighs most (the default 0.5
        // trades some of it for codes that group alike images: 40 found against 49 here).
        cfg.contrast_temperature = 0.1;
        // Every bar cross once: row r, column c.
        let mut distinct = vec![0.0f32; 64 * 64];
        for (i, img) in distinct.chunks_exact_mut(64).enumerate() {
            for k in 0..8 {
                img[(i / 8) * 8 + k] = 1.0;
                img[k * 8 + i % 8] = 1.0;
            }
        }
        let views: Vec<Vec<f32>> = (0..2u64)
            .map(|v| {
                let mut rng = ChaCha8Rng::seed_from_u64(v);
                let mut view = vec![0.0; distinct.len()];
                augment_batch(&distinct, SIDE8, &cfg.augment(), rng.gen(), &mut view);
                let mut hidden = vec![0.0; view.len()];
                corrupt(&mut view, SIDE8, cfg.noise, &mut rng, &mut hidden);
                view
            })
            .collect();
        let found = |cfg: &PretrainConfig| {
            let run = pretrain(&dev, &images, SIDE8, cfg, 7, None, Hooks::default()).unwrap();
            let codes: Vec<Vec<Vec<f32>>> = views
                .iter()
                .map(|v| {
                    let x: Matrix<Cpu> = dev.tensor_from_vec(v.clone(), (64, 64));
                    let z = run.encoder.forward(x, false).as_vec();
                    z.chunks(z.len() / 64)
                        .map(|c| {
                            let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                            c.iter().map(|v| v / norm).collect()
                        })
                        .collect()
                })
                .collect();
            let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            (0..64)
                .filter(|&i| {
                    let nearest = (0..64)
                        .max_by(|&a, &b| {
                            let (sa, sb) = (
                                cosine(&codes[0][i], &codes[1][a]),
                                cosine(&codes[0][i], &codes[1][b]),
                            );
                            sa.total_cmp(&sb)
                        })
                        .unwrap();
                    nearest == i
                })
                .count()
        };
        let alone = found(&cfg);
        cfg.contrast_weight = 1.0;
        let with_term = found(&cfg);
        assert!(
            with_term >= alone + 5,
            "views that found each other, of 64: {with_term} with the term, {alone} without"
        );
    }

    /// `new` is what a pipeline file naming only the architecture and epochs gets.
    #[test]
    fn new_matches_the_pipeline_defaults() {
        let from_file: PretrainConfig = toml::from_str(
            "epochs = 3\narchitecture = { kind = \"dense\", hidden = [32], latent = 8 }",
        )
        .unwrap();
        let dense = Architecture::Dense {
            hidden: vec![32],
            latent: 8,
        };
        assert_eq!(PretrainConfig::new(dense, 3), from_file);
    }

    #[test]
    fn description_names_the_settings_in_use() {
        let mut cfg = config(
            Noise::Patches {
                patch: 4,
                fraction: 0.5,
            },
            Reconstruction::Bce,
        );
        cfg.loss_on_hidden_only = true;
        cfg.augment_rotate = 12.0;
        assert_eq!(
            cfg.describe(),
            "8 epochs of 32 images (lr 0.003, 4x4 patches 50% hidden, BCE loss on the hidden \
             pixels, rotations ±12°)"
        );
        cfg.loss_on_hidden_only = false;
        cfg.augment_as_noise = true;
        assert!(
            cfg.describe()
                .ends_with("BCE loss, rotations ±12° as noise (the original the target))"),
            "{}",
            cfg.describe()
        );
        cfg.contrast_weight = 0.5;
        assert!(
            cfg.describe()
                .ends_with("target), contrastive term x0.5 at temperature 0.5)"),
            "{}",
            cfg.describe()
        );
        let plain = config(Noise::None, Reconstruction::Mse).describe();
        assert_eq!(
            plain,
            "8 epochs of 32 images (lr 0.003, no noise, MSE loss)"
        );
    }

    #[test]
    fn bad_settings_are_rejected_by_name() {
        let mut cfg = config(Noise::None, Reconstruction::Mse);
        cfg.batch_size = 0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("batch_size"), "{e}");
        cfg.batch_size = 4;
        cfg.noise = Noise::Masking { fraction: 1.5 };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("noise.fraction"));
        cfg.noise = Noise::None;
        cfg.augment_rotate = 200.0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("augment_rotate"), "{e}");
        cfg.augment_rotate = 0.0;
        cfg.augment_as_noise = true;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("augment_as_noise") && e.contains("needs augmentation"),
            "{e}"
        );
        cfg.augment_shift = 2;
        cfg.noise = Noise::Patches {
            patch: 2,
            fraction: 0.5,
        };
        cfg.loss_on_hidden_only = true;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("loss_on_hidden_only"), "{e}");
        let mut cfg = config(Noise::None, Reconstruction::Mse);
        cfg.contrast_weight = 1.0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("contrast_weight") && e.contains("two different views"),
            "{e}"
        );
        cfg.noise = Noise::Masking { fraction: 0.2 };
        cfg.contrast_temperature = 0.0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("contrast_temperature"), "{e}");
        cfg.contrast_temperature = 0.1;
        cfg.contrast_weight = -1.0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("contrast_weight"), "{e}");
    }
}
