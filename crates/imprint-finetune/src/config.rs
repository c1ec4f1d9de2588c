//! The `[finetune]` settings of a pipeline file.

use crate::{FinetuneError, Result};
use imprint_data::augment::Augment;
use imprint_nn::knn::KnnSettings;
use imprint_nn::Precision;
use imprint_train::OptimSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Optimizer steps.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Images per step; 0 = the whole labeled set each step.
    #[serde(default)]
    pub batch_size: usize,
    /// `lr`, `weight_decay`, `optimizer`, `momentum`, `nesterov`, `schedule`, `warmup_fraction`.
    #[serde(flatten)]
    pub optim: OptimSettings,
    /// Encoder learning rate relative to the head's, for `full` and `probe-then-full`.
    #[serde(default = "one")]
    pub encoder_lr_scale: f64,
    /// Share of the steps spent training the head alone in `probe-then-full`.
    #[serde(default = "default_probe_fraction")]
    pub probe_fraction: f64,
    /// `augment_shift`, `augment_rotate`, `augment_flip`, `augment_scale`, drawn each step.
    #[serde(flatten)]
    pub augment: Augment,
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
    /// Steps of self-training after the labeled training: a student trains on batches half
    /// labeled, half pseudo-labeled by the model just trained; 0 = none.
    #[serde(default)]
    pub self_train_steps: usize,
    /// Share of the unlabeled images the student sees pseudo-labeled: each class keeps at most
    /// `fraction / classes` of them, those the teacher is surest of.
    #[serde(default = "default_self_train_fraction")]
    pub self_train_fraction: f64,
    /// Keep batch norm's running statistics frozen (eval mode) while the encoder of a given
    /// network trains (not `scratch`'s, whose fresh statistics hold nothing); a frozen encoder
    /// (`probe`) always keeps them.
    #[serde(default)]
    pub freeze_bn: bool,
    /// Layer-wise learning-rate decay: the encoder's layers (a ResNet's blocks) train at
    /// `decay^d` times its rate, `d` their distance from the head (1 for the last); 1 = off.
    #[serde(default = "one")]
    pub layer_decay: f64,
    /// Steps between checkpoints a fine-tuning interrupted can continue from (`--resume`);
    /// 0 = none.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// When fine-tuning starts from a classifier whose classes include every labeled class (by
    /// name), its head's rows for them start the new head instead of a random init (every
    /// strategy that starts from the given network).
    #[serde(default = "yes")]
    pub head_from_init: bool,
    /// Neighbours that vote in the `knn` strategy.
    #[serde(default = "default_knn_k")]
    pub knn_k: usize,
    /// Temperature of the `knn` strategy's vote weights `exp(cosine / t)`.
    #[serde(default = "default_knn_temperature")]
    pub knn_temperature: f64,
    /// Number format of the convolution and linear products: `f32`, or `bf16` (inputs rounded
    /// to bf16, sums in f32; weights, optimizer state and batch-norm statistics stay f32).
    #[serde(default)]
    pub precision: Precision,
    /// In a data-parallel run, batch norms take their statistics over the whole global batch,
    /// every process's share together, as one process would; off, each over its own share.
    /// Left out when off, so that pipelines and checkpoints written before it read as before.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sync_batch_norm: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_steps() -> usize {
    300
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
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
fn default_checkpoint_every() -> usize {
    500
}
fn default_knn_k() -> usize {
    KnnSettings::default().k
}
fn default_knn_temperature() -> f64 {
    KnnSettings::default().temperature as f64
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            steps: default_steps(),
            batch_size: 0,
            optim: OptimSettings::default(),
            encoder_lr_scale: 1.0,
            probe_fraction: default_probe_fraction(),
            augment: Augment::default(),
            dropout: 0.0,
            validation_fraction: 0.0,
            eval_every: default_eval_every(),
            patience: 0,
            self_train_steps: 0,
            self_train_fraction: default_self_train_fraction(),
            freeze_bn: false,
            layer_decay: 1.0,
            checkpoint_every: default_checkpoint_every(),
            head_from_init: true,
            knn_k: default_knn_k(),
            knn_temperature: default_knn_temperature(),
            precision: Precision::F32,
            sync_batch_norm: false,
        }
    }
}

impl FinetuneConfig {
    pub fn knn(&self) -> KnnSettings {
        KnnSettings {
            k: self.knn_k,
            temperature: self.knn_temperature as f32,
        }
    }

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
        if let Some((key, message)) = self.optim.problem() {
            return bad(key, message);
        }
        if !(self.encoder_lr_scale >= 0.0 && self.encoder_lr_scale.is_finite()) {
            return bad("encoder_lr_scale", "must be a non-negative number");
        }
        if !(0.0..=1.0).contains(&self.probe_fraction) {
            return bad("probe_fraction", "must be in [0, 1]");
        }
        if let Some((key, message)) = self.augment.problem() {
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
        if !(self.layer_decay > 0.0 && self.layer_decay <= 1.0) {
            return bad("layer_decay", "must be in (0, 1]");
        }
        if self.knn_k == 0 {
            return bad("knn_k", "must be at least 1");
        }
        if !(self.knn_temperature > 0.0 && self.knn_temperature.is_finite()) {
            return bad("knn_temperature", "must be a positive number");
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
        let mut parts = self.optim.describe();
        parts.insert(1, format!("encoder lr x{}", self.encoder_lr_scale));
        parts.extend(self.augment.describe());
        if self.dropout > 0.0 {
            parts.push(format!("dropout {}", self.dropout));
        }
        if self.freeze_bn {
            parts.push("batch-norm statistics frozen".into());
        }
        if self.sync_batch_norm {
            parts.push("batch norm synchronised across processes".into());
        }
        if self.layer_decay < 1.0 {
            parts.push(format!("layer-wise lr decay {}", self.layer_decay));
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
}
