//! The `[pretrain]` settings of a pipeline file.

use crate::old_keys::OldKeys;
use crate::pretext::{reconstruction, PretextConfig, ViewNeeds};
use crate::{PretrainError, Result};
use imprint_data::augment::Augment;
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
#[serde(try_from = "Written")]
pub struct PretrainConfig {
    pub architecture: Architecture,
    /// Corruption of every view the encoder reads (the reconstruction target stays clean).
    pub noise: Noise,
    pub epochs: usize,
    pub batch_size: usize,
    /// `lr`, `weight_decay`, `optimizer`, `momentum`, `nesterov`, `schedule`, `warmup_fraction`.
    #[serde(flatten)]
    pub optim: OptimSettings,
    /// Share of the unlabeled images kept out of training to report a held-out loss.
    pub holdout_fraction: f64,
    /// `augment_shift`, `augment_rotate`, `augment_flip`, `augment_scale`, `augment_crop_*`,
    /// `augment_jitter*`, ...: drawn afresh for each view before the corruption, so the encoder
    /// sees the variety fine-tuning's augmentation brings.
    #[serde(flatten)]
    pub augment: Augment,
    /// What pre-training asks of the encoder: each entry a method (`kind`) with its settings,
    /// their weighted losses summed in this order. Absent: reconstruction alone.
    pub pretexts: Vec<PretextConfig>,
    /// Labeled images per class whose features vote (k nearest neighbours) for the classes of
    /// `monitor_queries` others at every epoch end, a score in `loss.csv` to compare pretexts
    /// and settings without fine-tuning; 0 = no monitor. Both come from the labeled pool, never
    /// the test set.
    pub monitor_labels_per_class: usize,
    /// Labeled images the monitor classifies, as evenly spread over the classes as they allow.
    pub monitor_queries: usize,
    /// Number format of the convolution and linear products: `f32`, or `bf16` (inputs rounded
    /// to bf16, sums in f32; weights, optimizer state and batch-norm statistics stay f32).
    pub precision: Precision,
    /// In a data-parallel run, whether batch norms take their statistics over the whole global
    /// batch, every process's share together, as one process would (true), or over each share
    /// (false). Left out: synchronised when a pretext compares the images of the batch or
    /// normalises its heads over it (every one but reconstruction and rotation), per share
    /// otherwise. Left out of the file when left out, so that
    /// checkpoints written before it read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_batch_norm: Option<bool>,
}

/// `[pretrain]` as a file writes it: the settings, and the keys that named the pretexts before
/// `pretexts` did, translated into it ([`crate::old_keys`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    architecture: Architecture,
    #[serde(default = "default_noise")]
    noise: Noise,
    epochs: usize,
    #[serde(default = "default_batch")]
    batch_size: usize,
    #[serde(flatten)]
    optim: OptimSettings,
    #[serde(default = "default_holdout")]
    holdout_fraction: f64,
    #[serde(flatten)]
    augment: Augment,
    #[serde(default)]
    pretexts: Option<Vec<PretextConfig>>,
    #[serde(default)]
    monitor_labels_per_class: usize,
    #[serde(default = "default_monitor_queries")]
    monitor_queries: usize,
    #[serde(default)]
    precision: Precision,
    #[serde(default)]
    sync_batch_norm: Option<bool>,
    #[serde(flatten)]
    old: OldKeys,
}

impl TryFrom<Written> for PretrainConfig {
    type Error = String;

    fn try_from(w: Written) -> std::result::Result<Self, String> {
        let pretexts = w.old.pretexts(w.pretexts)?;
        Ok(Self {
            architecture: w.architecture,
            noise: w.noise,
            epochs: w.epochs,
            batch_size: w.batch_size,
            optim: w.optim,
            holdout_fraction: w.holdout_fraction,
            augment: w.augment,
            pretexts,
            monitor_labels_per_class: w.monitor_labels_per_class,
            monitor_queries: w.monitor_queries,
            precision: w.precision,
            sync_batch_norm: w.sync_batch_norm,
        })
    }
}

fn default_noise() -> Noise {
    Noise::None
}
fn default_batch() -> usize {
    128
}
fn default_holdout() -> f64 {
    0.05
}
fn default_monitor_queries() -> usize {
    1000
}

impl PretrainConfig {
    /// A plain autoencoder trained for `epochs`, every other setting at the default a pipeline
    /// file gets when it leaves the key out.
    pub fn new(architecture: Architecture, epochs: usize) -> Self {
        Self {
            architecture,
            noise: default_noise(),
            epochs,
            batch_size: default_batch(),
            optim: OptimSettings::default(),
            holdout_fraction: default_holdout(),
            augment: Augment::default(),
            pretexts: vec![PretextConfig::Reconstruction(Default::default())],
            monitor_labels_per_class: 0,
            monitor_queries: default_monitor_queries(),
            precision: Precision::F32,
            sync_batch_norm: None,
        }
    }

    /// The reconstruction pretext's settings, when there is one: it trains a decoder (saved).
    pub fn reconstruction(&self) -> Option<&reconstruction::Settings> {
        self.pretexts.iter().find_map(|p| match p {
            PretextConfig::Reconstruction(r) => Some(r),
            _ => None,
        })
    }

    /// Whether the batch norms of a data-parallel run are synchronised ([`Self::sync_batch_norm`]).
    pub fn synced_batch_norm(&self) -> bool {
        self.sync_batch_norm.unwrap_or_else(|| {
            self.pretexts.iter().any(|p| {
                !matches!(
                    p,
                    PretextConfig::Reconstruction(_) | PretextConfig::Rotation(_)
                )
            })
        })
    }

    /// Whether a decoder is trained (and saved).
    pub fn reconstructs(&self) -> bool {
        self.reconstruction().is_some()
    }

    /// The views a step draws for all the pretexts; an error names a pretext whose small
    /// crops differ from another's (the crops are drawn once for all).
    pub(crate) fn view_needs(&self) -> Result<ViewNeeds> {
        let mut all = ViewNeeds::default();
        let mut crops_of: Option<&'static str> = None;
        for p in &self.pretexts {
            let needs = p.method().views();
            all.global = all.global.max(needs.global);
            all.turned |= needs.turned;
            all.original_target |= needs.original_target;
            if let Some(crops) = needs.local {
                match (all.local, crops_of) {
                    (Some(other), Some(first)) if other != crops => {
                        return Err(PretrainError::Config {
                            key: format!("pretexts.{}.local_crops", p.kind()),
                            message: format!(
                                "the small crops differ from those of pretexts.{first}; a step \
                                 draws one set for every pretext"
                            ),
                        });
                    }
                    _ => {
                        all.local = Some(crops);
                        crops_of = Some(p.kind());
                    }
                }
            }
        }
        Ok(all)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: &str| {
            Err(PretrainError::Config {
                key: key.to_string(),
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
        if let Noise::Gaussian { std } = self.noise {
            if !(std >= 0.0 && std.is_finite()) {
                return bad("noise.std", "must be a non-negative number");
            }
        }
        if let Some((key, message)) = self.augment.problem() {
            return bad(key, message);
        }
        if self.monitor_labels_per_class > 0 && self.monitor_queries == 0 {
            return bad("monitor_queries", "must be at least 1 with a monitor");
        }
        self.architecture
            .check_widths()
            .map_err(|message| PretrainError::Config {
                key: "architecture".into(),
                message,
            })?;
        self.validate_pretexts()
    }

    fn validate_pretexts(&self) -> Result<()> {
        if self.pretexts.is_empty() {
            return Err(PretrainError::Config {
                key: "pretexts".into(),
                message: "nothing would be trained: name at least one, e.g. \
                          [{ kind = \"reconstruction\" }] (the keys from before `pretexts` \
                          name none when `reconstruction_weight`, `contrast_weight` and \
                          `rotation_weight` are all 0)"
                    .into(),
            });
        }
        for (i, p) in self.pretexts.iter().enumerate() {
            let kind = p.kind();
            let bad = |key: &str, message: String| {
                Err(PretrainError::Config {
                    key: format!("pretexts.{kind}{key}"),
                    message,
                })
            };
            if self.pretexts[..i].iter().any(|q| q.kind() == kind) {
                return bad(
                    "",
                    "is named twice; give each method once, with its weight".into(),
                );
            }
            let method = p.method();
            let weight = method.weight();
            if !(weight > 0.0 && weight.is_finite()) {
                return bad(
                    ".weight",
                    "must be a positive number (leave the pretext out to turn it off)".into(),
                );
            }
            if let Some((key, message)) = method.problem(self) {
                let key = if key.is_empty() {
                    String::new()
                } else {
                    format!(".{key}")
                };
                return bad(&key, message);
            }
            let needs = method.views();
            if needs.global > 1 && self.augment.is_identity() && self.noise == Noise::None {
                return bad(
                    "",
                    "needs two different views of each image: set augmentation or noise".into(),
                );
            }
            if needs.local.is_some() && !self.architecture.any_size() {
                return bad(
                    ".local_crops",
                    "need an encoder that reads any image size, as a ResNet does (its maps \
                     pooled): architecture = { kind = \"resnet\", ... }"
                        .into(),
                );
            }
        }
        self.view_needs().map(drop)
    }

    /// The settings in a phrase for reports, e.g. "15 epochs of 128 images (lr 0.001, 4x4
    /// patches 50% hidden, shifts ±2 px, BCE loss on the hidden pixels)".
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
        parts.extend(self.augment.describe());
        parts.extend(self.pretexts.iter().map(|p| p.method().describe()));
        format!(
            "{} epochs of {} images ({})",
            self.epochs,
            self.batch_size,
            parts.join(", ")
        )
    }
}
