//! The optimizer settings of a training run: one struct, flattened into both `[pretrain]` and
//! `[finetune]` of a pipeline file (keys `lr`, `weight_decay`, `optimizer`, `momentum`,
//! `nesterov`, `schedule`, `warmup_fraction`).

use crate::schedule::Schedule;
use imprint_nn::Rule;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    #[default]
    Adam,
    Sgd,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimSettings {
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay (AdamW, SGDW): each step shrinks weights by `lr * weight_decay`.
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// SGD's momentum (ignored by Adam).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default)]
    pub schedule: Schedule,
    /// Share of the steps over which the rate ramps up (with any schedule).
    #[serde(default)]
    pub warmup_fraction: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_momentum() -> f64 {
    0.9
}

impl Default for OptimSettings {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            weight_decay: 0.0,
            optimizer: OptimizerKind::Adam,
            momentum: default_momentum(),
            nesterov: false,
            schedule: Schedule::Constant,
            warmup_fraction: 0.0,
        }
    }
}

impl OptimSettings {
    pub fn rule(&self) -> Rule {
        match self.optimizer {
            OptimizerKind::Adam => Rule::Adam,
            OptimizerKind::Sgd => Rule::Sgd {
                momentum: self.momentum,
                nesterov: self.nesterov,
            },
        }
    }

    /// The setting (its key) that is out of range, and why; `None` if all are usable.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Some(("lr", "must be a positive number"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Some(("weight_decay", "must be a non-negative number"));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Some(("momentum", "must be in [0, 1)"));
        }
        if self.nesterov && (self.optimizer != OptimizerKind::Sgd || self.momentum == 0.0) {
            return Some((
                "nesterov",
                "needs optimizer = \"sgd\" and a momentum above 0",
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return Some(("warmup_fraction", "must be in [0, 1)"));
        }
        if self.schedule == Schedule::OneCycle && self.warmup_fraction == 0.0 {
            return Some((
                "warmup_fraction",
                "the one-cycle schedule needs the share of steps that rises to the peak, e.g. 0.15",
            ));
        }
        None
    }

    /// The settings in phrases for reports ("lr 0.001", "SGD with Nesterov momentum 0.9", ...).
    pub fn describe(&self) -> Vec<String> {
        let mut parts = vec![format!("lr {}", self.lr)];
        if self.optimizer != OptimizerKind::Adam {
            parts.push(self.rule().describe());
        }
        if self.warmup_fraction > 0.0 {
            parts.push(format!("{:.0}% warm-up", self.warmup_fraction * 100.0));
        }
        parts.extend(self.schedule.describe().map(String::from));
        if self.weight_decay > 0.0 {
            parts.push(format!("weight decay {}", self.weight_decay));
        }
        parts
    }

    /// Rate at `step` of `steps` for a group at `scale` times the base rate.
    pub fn rate(&self, scale: f64, step: usize, steps: usize) -> f64 {
        self.lr * scale * crate::schedule::factor(self.schedule, self.warmup_fraction, step, steps)
    }
}
