//! Strategies: how a classifier is trained, as a list of phases (what trains, at which rate,
//! with a fresh optimizer or not), beside where its encoder starts. A new strategy is one entry
//! of [`STRATEGIES`].

use crate::FinetuneConfig;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where the encoder of a strategy starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A fresh init of the same architecture: the baseline.
    Fresh,
    /// The encoder given to fine-tuning (pre-trained, or imported).
    Given,
}

/// What the encoder does in a phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EncoderRole {
    /// Frozen, in eval mode: only the head trains.
    Frozen,
    /// Trained at `lr_scale` times the head's rate.
    Trained { lr_scale: f64 },
}

/// One phase of a strategy: it runs until `end` (a share of the steps) and restarts the
/// optimizer when it begins if `fresh_optimizer`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    pub end: f64,
    pub encoder: EncoderRole,
    pub fresh_optimizer: bool,
}

/// How a strategy makes its classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// A linear head (and maybe the encoder) trained through the phases.
    Train,
    /// No training: the labeled images' frozen features vote (weighted k-nearest neighbours).
    Knn,
}

pub struct Definition {
    pub name: &'static str,
    pub about: &'static str,
    pub start: Start,
    pub fit: Fit,
    phases: fn(&FinetuneConfig) -> Vec<Phase>,
}

fn whole(encoder: EncoderRole) -> Vec<Phase> {
    vec![Phase {
        end: 1.0,
        encoder,
        fresh_optimizer: false,
    }]
}

pub const STRATEGIES: [Definition; 5] = [
    Definition {
        name: "scratch",
        about: "the same architecture from a fresh init, everything trained: the baseline",
        start: Start::Fresh,
        fit: Fit::Train,
        phases: |_| whole(EncoderRole::Trained { lr_scale: 1.0 }),
    },
    Definition {
        name: "probe",
        about: "the encoder frozen, a new head trained (linear probe)",
        start: Start::Given,
        fit: Fit::Train,
        phases: |_| whole(EncoderRole::Frozen),
    },
    Definition {
        name: "full",
        about: "everything trained, the encoder at lr * encoder_lr_scale",
        start: Start::Given,
        fit: Fit::Train,
        phases: |cfg| {
            whole(EncoderRole::Trained {
                lr_scale: cfg.encoder_lr_scale,
            })
        },
    },
    Definition {
        name: "probe-then-full",
        about: "the head alone for probe_fraction of the steps, then everything as in full \
                (with a fresh optimizer, as a new one would start in PyTorch)",
        start: Start::Given,
        fit: Fit::Train,
        phases: |cfg| {
            vec![
                Phase {
                    end: cfg.probe_fraction,
                    encoder: EncoderRole::Frozen,
                    fresh_optimizer: false,
                },
                Phase {
                    end: 1.0,
                    encoder: EncoderRole::Trained {
                        lr_scale: cfg.encoder_lr_scale,
                    },
                    // The head's moment estimates would otherwise dwarf the encoder's first steps.
                    fresh_optimizer: true,
                },
            ]
        },
    },
    Definition {
        name: "knn",
        about:
            "no training: the frozen encoder's L2-normalised features of the labeled images \
                vote for their class (the knn_k nearest, weighted by exp(cosine / knn_temperature))",
        start: Start::Given,
        fit: Fit::Knn,
        phases: |_| Vec::new(),
    },
];

/// A strategy: an entry of [`STRATEGIES`], written by its name in files and on command lines.
#[derive(Clone, Copy)]
pub struct Strategy(&'static Definition);

impl Strategy {
    pub const SCRATCH: Strategy = Strategy(&STRATEGIES[0]);
    pub const PROBE: Strategy = Strategy(&STRATEGIES[1]);
    pub const FULL: Strategy = Strategy(&STRATEGIES[2]);
    pub const PROBE_THEN_FULL: Strategy = Strategy(&STRATEGIES[3]);
    pub const KNN: Strategy = Strategy(&STRATEGIES[4]);

    pub fn all() -> impl Iterator<Item = Strategy> {
        STRATEGIES.iter().map(Strategy)
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// What the strategy does, in a phrase.
    pub fn about(self) -> &'static str {
        self.0.about
    }

    pub fn start(self) -> Start {
        self.0.start
    }

    pub fn fit(self) -> Fit {
        self.0.fit
    }

    /// Whether the strategy starts from the encoder given to fine-tuning.
    pub fn uses_pretrained(self) -> bool {
        self.0.start == Start::Given
    }

    /// The phases with their step ranges over `steps`: a phase rounding to no steps is skipped.
    pub fn phases(
        self,
        cfg: &FinetuneConfig,
        steps: usize,
    ) -> Vec<(std::ops::Range<usize>, Phase)> {
        let mut begin = 0;
        let mut out = Vec::new();
        for phase in (self.0.phases)(cfg) {
            let end = ((steps as f64 * phase.end).round() as usize).min(steps);
            if end > begin {
                out.push((begin..end, phase));
                begin = end;
            }
        }
        out
    }

    /// Every strategy's name, for messages and help.
    pub fn names() -> String {
        let names: Vec<&str> = STRATEGIES.iter().map(|d| d.name).collect();
        names.join(", ")
    }
}

impl PartialEq for Strategy {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}
impl Eq for Strategy {}
impl std::hash::Hash for Strategy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl std::fmt::Debug for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Strategy::all().find(|k| k.name() == s).ok_or_else(|| {
            format!(
                "unknown strategy `{s}` (expected one of {})",
                Strategy::names()
            )
        })
    }
}

impl Serialize for Strategy {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<De: Deserializer<'de>>(d: De) -> std::result::Result<Self, De::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_split_the_steps() {
        let cfg = FinetuneConfig::default();
        let ranges = |s: Strategy, steps| -> Vec<std::ops::Range<usize>> {
            s.phases(&cfg, steps).into_iter().map(|(r, _)| r).collect()
        };
        assert_eq!(ranges(Strategy::PROBE_THEN_FULL, 100), [0..30, 30..100]);
        assert_eq!(ranges(Strategy::FULL, 100), vec![(0..100)]);
        // A probe share that rounds to no steps leaves one phase, and no optimizer restart.
        let short = FinetuneConfig {
            probe_fraction: 0.001,
            ..cfg.clone()
        };
        let p = Strategy::PROBE_THEN_FULL.phases(&short, 100);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, 0..100);
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for s in Strategy::all() {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
        }
        let e = "probe-full".parse::<Strategy>().unwrap_err();
        assert_eq!(
            e,
            "unknown strategy `probe-full` (expected one of scratch, probe, full, probe-then-full, knn)"
        );
    }
}
