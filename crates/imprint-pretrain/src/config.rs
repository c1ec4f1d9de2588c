//! The `[pretrain]` settings of a pipeline file.

use crate::{PretrainError, Result};
use imprint_data::augment::Augment;
use imprint_nn::loss::Reconstruction;
use imprint_nn::{Architecture, Precision};
use imprint_train::OptimSettings;
use serde::{Deserialize, Serialize};

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
    /// `lr`, `weight_decay`, `optimizer`, `momentum`, `nesterov`, `schedule`, `warmup_fraction`.
    #[serde(flatten)]
    pub optim: OptimSettings,
    /// Share of the unlabeled images kept out of training to report a held-out loss.
    #[serde(default = "default_holdout")]
    pub holdout_fraction: f64,
    /// With `Patches` noise: score only the hidden pixels, as masked autoencoders do.
    #[serde(default)]
    pub loss_on_hidden_only: bool,
    /// `augment_shift`, `augment_rotate`, `augment_flip`, `augment_scale`: applied to input and
    /// target alike before the corruption, so the encoder sees the variety fine-tuning's
    /// augmentation brings.
    #[serde(flatten)]
    pub augment: Augment,
    /// Make the augmentation part of the corruption: the encoder sees the moved image, the
    /// decoder must draw the original, so the code learns to ignore the moves, as a classifier
    /// must. Off: input and target move alike.
    #[serde(default)]
    pub augment_as_noise: bool,
    /// Weight of the reconstruction loss; 0 trains no decoder (a contrastive pretext alone).
    #[serde(default = "one")]
    pub reconstruction_weight: f64,
    /// Weight of a contrastive term (NT-Xent, SimCLR's loss) added to the reconstruction loss:
    /// the codes of two views of each image (augmentation and corruption drawn twice) must pick
    /// each other out of all views of the batch, which pulls the images a classifier should tell
    /// apart away from each other. 0 = off.
    #[serde(default)]
    pub contrast_weight: f64,
    /// Temperature of the contrastive term's cosine similarities.
    #[serde(default = "default_temperature")]
    pub contrast_temperature: f64,
    /// Weight of rotation prediction (RotNet): the first view's images are each turned by a
    /// multiple of 90° (180° for oblong ones), and a head on the code must tell which; 0 = off.
    #[serde(default)]
    pub rotation_weight: f64,
    /// Labeled images per class whose features vote (k nearest neighbours) for the classes of
    /// `monitor_queries` others at every epoch end, a score in `loss.csv` to compare pretexts
    /// and settings without fine-tuning; 0 = no monitor. Both come from the labeled pool, never
    /// the test set.
    #[serde(default)]
    pub monitor_labels_per_class: usize,
    /// Labeled images the monitor classifies, as evenly spread over the classes as they allow.
    #[serde(default = "default_monitor_queries")]
    pub monitor_queries: usize,
    /// Number format of the convolution and linear products: `f32`, or `bf16` (inputs rounded
    /// to bf16, sums in f32; weights, optimizer state and batch-norm statistics stay f32).
    #[serde(default)]
    pub precision: Precision,
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
fn default_holdout() -> f64 {
    0.05
}
fn one() -> f64 {
    1.0
}
fn default_monitor_queries() -> usize {
    1000
}
// With ten classes a tenth of a batch's negatives are the same digit; 0.1 pushes those apart as
// hard as the rest, and left MNIST's frozen codes 1.6-1.8 points worse than 0.5 at k = 10, on the
// test set and on a dev split (pipelines/mnist-conv.md).
fn default_temperature() -> f64 {
    0.5
}

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
            optim: OptimSettings::default(),
            holdout_fraction: default_holdout(),
            loss_on_hidden_only: false,
            augment: Augment::default(),
            augment_as_noise: false,
            reconstruction_weight: 1.0,
            contrast_weight: 0.0,
            contrast_temperature: default_temperature(),
            rotation_weight: 0.0,
            monitor_labels_per_class: 0,
            monitor_queries: default_monitor_queries(),
            precision: Precision::F32,
        }
    }

    /// Whether a decoder is trained (and saved).
    pub fn reconstructs(&self) -> bool {
        self.reconstruction_weight > 0.0
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |key, message: &str| {
            Err(PretrainError::Config {
                key,
                message: message.to_string(),
            })
        };
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if let Some((key, message)) = self.optim.problem() {
            return bad(key, message);
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
        if let Some((key, message)) = self.augment.problem() {
            return bad(key, message);
        }
        if self.augment_as_noise && self.augment.is_identity() {
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
        if !(self.reconstruction_weight >= 0.0 && self.reconstruction_weight.is_finite()) {
            return bad("reconstruction_weight", "must be a non-negative number");
        }
        if !(self.contrast_weight >= 0.0 && self.contrast_weight.is_finite()) {
            return bad("contrast_weight", "must be a non-negative number");
        }
        if !(self.rotation_weight >= 0.0 && self.rotation_weight.is_finite()) {
            return bad("rotation_weight", "must be a non-negative number");
        }
        if !self.reconstructs() && self.contrast_weight == 0.0 && self.rotation_weight == 0.0 {
            return bad(
                "reconstruction_weight",
                "is 0 and so are contrast_weight and rotation_weight: nothing would be trained",
            );
        }
        if self.monitor_labels_per_class > 0 && self.monitor_queries == 0 {
            return bad("monitor_queries", "must be at least 1 with a monitor");
        }
        if !(self.contrast_temperature > 0.0 && self.contrast_temperature.is_finite()) {
            return bad("contrast_temperature", "must be a positive number");
        }
        if self.contrast_weight > 0.0 && self.augment.is_identity() && self.noise == Noise::None {
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
        let mut parts = self.optim.describe();
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
        if self.reconstructs() {
            parts.push(if self.loss_on_hidden_only {
                format!("{loss} on the hidden pixels")
            } else {
                loss.to_string()
            });
        }
        let augment = self.augment.describe();
        if self.augment_as_noise {
            parts.push(format!(
                "{} as noise (the original the target)",
                augment.join(", ")
            ));
        } else {
            parts.extend(augment);
        }
        if self.rotation_weight > 0.0 {
            parts.push(format!("rotation prediction x{}", self.rotation_weight));
        }
        if self.contrast_weight > 0.0 {
            let term = if self.reconstructs() {
                "contrastive term"
            } else {
                "contrastive loss alone"
            };
            parts.push(format!(
                "{term} x{} at temperature {}",
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
}
