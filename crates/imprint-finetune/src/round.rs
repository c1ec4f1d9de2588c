//! One training round of a classifier by a strategy, as a task of the shared training loop:
//! batches drawn from one or more sources, augmentation, dropout, the strategy's phases, and
//! early stopping on a validation set.

use crate::classifier::{best_class, Classifier};
use crate::strategy::{EncoderRole, Phase, Strategy};
use crate::{
    FinetuneConfig, FinetuneError, FinetuneHooks, FinetuneSnapshot, FinetuneState, Head, History,
    Result, Validation,
};
use dfdx::prelude::*;
use imprint_collective::{share, single, Replicas};
use imprint_data::augment::augment_batch;
use imprint_data::Dataset;
use imprint_nn::loss::cross_entropy;
use imprint_nn::tree::ParamsExt;
use imprint_nn::{ImprintDevice, Matrix, Mode, Optimizer, Pass};
use imprint_nn::{NamedTensor, Vector};
use imprint_train::{train, Flow, Group, Loss, Run, Task};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::ops::Range;

/// The images a round draws its batches from, in a reshuffled cycle: `ids` index `data`, and
/// `labels[i]` is image `i`'s label.
#[derive(Clone)]
pub(crate) struct Source<'a> {
    data: &'a Dataset,
    labels: &'a [usize],
    ids: Vec<usize>,
    cursor: usize,
}

impl<'a> Source<'a> {
    pub fn new(data: &'a Dataset, labels: &'a [usize], ids: Vec<usize>) -> Self {
        let cursor = ids.len();
        Self {
            data,
            labels,
            ids,
            cursor,
        }
    }

    /// The next `count` images (indices into `data`): all of them in order when `count` is the
    /// whole source (full-batch training), else the next ones of the shuffled cycle.
    fn draw(&mut self, count: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
        if count == self.ids.len() {
            return self.ids.clone();
        }
        (0..count)
            .map(|_| {
                if self.cursor == self.ids.len() {
                    self.ids.shuffle(rng);
                    self.cursor = 0;
                }
                self.cursor += 1;
                self.ids[self.cursor - 1]
            })
            .collect()
    }
}

/// One training run of a model by a strategy: `steps` steps, numbered from `first_step` in the
/// history, random streams drawn from `streams`.
pub(crate) struct Round {
    pub steps: usize,
    pub first_step: usize,
    pub streams: u64,
    /// Which round of the run this is (0 the labeled one, 1 the self-training student's).
    pub index: usize,
    /// The run's seed, which checkpoints record.
    pub seed: u64,
}

/// Where a fine-tuning checkpoint is taken and where one continues.
pub(crate) struct Checkpoints<'c, 'h> {
    pub hooks: &'c mut FinetuneHooks<'h>,
    /// Tensors of earlier rounds the snapshot must carry (the teacher of a student round).
    pub carried: Vec<NamedTensor>,
    /// The snapshot to continue this round from.
    pub resume: Option<&'c FinetuneSnapshot>,
}

struct Training<'a, 's, 'h, D: ImprintDevice> {
    dev: &'a D,
    model: &'a mut Classifier<D>,
    cfg: &'a FinetuneConfig,
    phases: Vec<(Range<usize>, Phase)>,
    sources: &'a mut [(Source<'s>, usize)],
    validation: Option<&'a Dataset>,
    history: &'a mut History,
    round: &'a Round,
    rng: ChaCha8Rng,
    dropout_rng: ChaCha8Rng,
    best: Option<(Validation, Classifier<D>)>,
    checks_without_gain: usize,
    /// Each source's images through the frozen encoder, when nothing changes them between
    /// steps (a probe without augmentation): the encoder then runs once, not every step.
    features: Option<Vec<Vec<f32>>>,
    checkpoints: Checkpoints<'a, 'h>,
    /// Batch norm in eval mode while the encoder trains: `freeze_bn`, for a given network
    /// (a fresh one's statistics hold nothing to keep).
    freeze_bn: bool,
    replicas: Replicas,
}

impl<D: ImprintDevice> Training<'_, '_, '_, D> {
    /// The trainable tensors by checkpoint name, copied (dfdx tensors share their storage, so
    /// a copy is cheap), for the optimizer's state to be read or written by name.
    fn trainable_copies(&mut self) -> Vec<(String, Vector<D>)> {
        let params = self.model.trainable_mut("model");
        params.into_iter().map(|(n, v)| (n, v.clone())).collect()
    }

    /// Everything needed to continue after `steps` steps of this round.
    fn snapshot(&mut self, steps: usize, optimizer: &mut Optimizer<D>) -> Result<FinetuneSnapshot> {
        let mut tensors = self.model.named_tensors("model");
        if let Some((_, best)) = &self.best {
            tensors.extend(best.named_tensors("best"));
        }
        tensors.extend(self.checkpoints.carried.iter().cloned());
        let params = self.trainable_copies();
        let named: Vec<(String, &Vector<D>)> = params.iter().map(|(n, v)| (n.clone(), v)).collect();
        tensors.extend(optimizer.state(&named)?);
        Ok(FinetuneSnapshot {
            tensors,
            state: FinetuneState {
                seed: self.round.seed,
                round: self.round.index,
                first_step: self.round.first_step,
                steps_done: steps,
                optimizer_steps: optimizer.steps(),
                rng_word_pos: self.rng.get_word_pos(),
                dropout_word_pos: self.dropout_rng.get_word_pos(),
                sources: self
                    .sources
                    .iter()
                    .map(|(s, _)| (s.ids.clone(), s.cursor))
                    .collect(),
                history: self.history.clone(),
                best: self.best.as_ref().map(|(check, _)| *check),
                checks_without_gain: self.checks_without_gain,
            },
        })
    }

    /// Loads `snapshot` (of this round) into the fresh round, returning the step to go on from.
    fn restore(
        &mut self,
        snapshot: &FinetuneSnapshot,
        optimizer: &mut Optimizer<D>,
    ) -> Result<usize> {
        let state = &snapshot.state;
        let tensors: BTreeMap<String, NamedTensor> = snapshot
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        self.model.load_named("model", &tensors, "checkpoint")?;
        self.best = match state.best {
            Some(check) => {
                let mut best = self.model.clone();
                best.load_named("best", &tensors, "checkpoint")?;
                Some((check, best))
            }
            None => None,
        };
        // The optimizer holds what the phase the snapshot was taken in trains.
        let params = self.trainable_copies();
        let named: Vec<(String, &Vector<D>)> = params
            .iter()
            .filter(|(n, _)| tensors.contains_key(&format!("optimizer.m1.{n}")))
            .map(|(n, v)| (n.clone(), v))
            .collect();
        optimizer
            .restore(state.optimizer_steps, &tensors, &named)
            .map_err(|e| FinetuneError::Data(format!("cannot resume this fine-tuning: {e}")))?;
        self.rng.set_word_pos(state.rng_word_pos);
        self.dropout_rng.set_word_pos(state.dropout_word_pos);
        if state.sources.len() != self.sources.len() {
            return Err(FinetuneError::Data(
                "cannot resume this fine-tuning: it drew from other sources".into(),
            ));
        }
        for ((source, _), (ids, cursor)) in self.sources.iter_mut().zip(&state.sources) {
            let (mut saved, mut ours) = (ids.clone(), source.ids.clone());
            saved.sort_unstable();
            ours.sort_unstable();
            if saved != ours {
                return Err(FinetuneError::Data(
                    "cannot resume this fine-tuning: it was trained on other images".into(),
                ));
            }
            source.ids = ids.clone();
            source.cursor = *cursor;
        }
        *self.history = state.history.clone();
        self.checks_without_gain = state.checks_without_gain;
        Ok(state.steps_done)
    }

    fn phase(&self, step: usize) -> (&Range<usize>, &Phase) {
        let (range, phase) = self
            .phases
            .iter()
            .find(|(r, _)| r.contains(&step))
            .expect("the phases cover every step");
        (range, phase)
    }
}

impl<D: ImprintDevice> Task<D> for Training<'_, '_, '_, D> {
    type Error = FinetuneError;

    /// The batch of `step` is drawn whole on every replica (so their generators move alike);
    /// each trains on its share of the rows, and its loss is weighted by that share.
    fn loss(&mut self, step: usize) -> Result<Loss<D>> {
        let shape = self.model.shape;
        let mut drawn = Vec::new();
        for (k, (source, count)) in self.sources.iter_mut().enumerate() {
            drawn.extend(
                source
                    .draw(*count, &mut self.rng)
                    .into_iter()
                    .map(|i| (k, i)),
            );
        }
        let total = drawn.len();
        let rows = share(total, self.replicas.rank(), self.replicas.size());
        let labels: Vec<usize> = drawn[rows.clone()]
            .iter()
            .map(|&(k, i)| self.sources[k].0.labels[i])
            .collect();
        let encoder = match self.phase(step).1.encoder {
            EncoderRole::Frozen => None,
            EncoderRole::Trained { .. } if self.freeze_bn => Some(Mode::Eval),
            EncoderRole::Trained { .. } => Some(Mode::Train),
        };
        let mut pass = Pass::train(&mut self.dropout_rng).for_rows(rows.clone(), total);
        let weighted = |loss: Loss<D>| match rows.len() == total {
            true => loss,
            false => loss * (rows.len() as f32 / total as f32),
        };
        if let Some(features) = &self.features {
            let width = self.model.encoder.features();
            let cached: Vec<f32> = drawn[rows.clone()]
                .iter()
                .flat_map(|&(k, i)| features[k][i * width..(i + 1) * width].iter().copied())
                .collect();
            let features: Matrix<D> = self.dev.tensor_from_vec(cached, (labels.len(), width));
            let logits = self
                .model
                .head_logits(features.leaky_trace(), &mut pass, false);
            return Ok(weighted(cross_entropy(logits, &labels)));
        }
        let image = |&(k, i): &(usize, usize)| self.sources[k].0.data.image(i);
        let images: Vec<f32> = if self.cfg.augment.is_identity() {
            drawn[rows.clone()].iter().flat_map(image).collect()
        } else {
            // Each image's draw follows from its place in the whole batch: the whole batch is
            // moved, and this replica keeps its rows.
            let step_seed = self
                .round
                .streams
                .wrapping_mul(1_000_003)
                .wrapping_add(step as u64);
            let images: Vec<f32> = drawn.iter().flat_map(image).collect();
            let mut augmented = vec![0.0f32; images.len()];
            augment_batch(&images, shape, &self.cfg.augment, step_seed, &mut augmented);
            augmented[rows.start * shape.len()..rows.end * shape.len()].to_vec()
        };
        let x: Matrix<D> = self
            .dev
            .tensor_from_vec(images, (labels.len(), shape.len()));
        let logits = self.model.train_logits(x, encoder, &mut pass);
        Ok(weighted(cross_entropy(logits, &labels)))
    }

    fn groups(&mut self, step: usize) -> Vec<Group<'_, D>> {
        let role = self.phase(step).1.encoder;
        let model = &mut *self.model;
        let Head::Linear(head) = &mut model.head else {
            unreachable!("only linear heads are trained")
        };
        let mut groups = vec![Group {
            lr_scale: 1.0,
            params: head.trainable_mut("").into_iter().map(|(_, v)| v).collect(),
        }];
        if let EncoderRole::Trained { lr_scale } = role {
            let decay = self.cfg.layer_decay;
            if decay == 1.0 {
                groups.push(Group {
                    lr_scale,
                    params: model
                        .encoder
                        .trainable_mut("")
                        .into_iter()
                        .map(|(_, v)| v)
                        .collect(),
                });
            } else {
                let units = model.encoder.units();
                let mut by_unit: Vec<Vec<_>> = units.iter().map(|_| Vec::new()).collect();
                for (name, v) in model.encoder.trainable_mut("") {
                    let unit = units
                        .iter()
                        .position(|u| name.starts_with(&format!("{u}.")))
                        .expect("every tensor of the encoder lies in one of its units");
                    by_unit[unit].push(v);
                }
                let depth = units.len();
                for (i, params) in by_unit.into_iter().enumerate() {
                    groups.push(Group {
                        lr_scale: lr_scale * decay.powi((depth - i) as i32),
                        params,
                    });
                }
            }
        }
        groups
    }

    fn fresh_optimizer(&self, step: usize) -> bool {
        let (range, phase) = self.phase(step);
        phase.fresh_optimizer && range.start == step && step > 0
    }

    fn position(&self, step: usize) -> String {
        format!("step {}", self.round.first_step + step + 1)
    }

    fn batch_norm_statistics(&mut self) -> Vec<&mut Vector<D>> {
        self.model.encoder.batch_norm_statistics_mut()
    }

    fn after_step(&mut self, step: usize, loss: f32, optimizer: &mut Optimizer<D>) -> Result<Flow> {
        let flow = self.record_step(step, loss)?;
        if let Some(report) = self.checkpoints.hooks.on_step.as_mut() {
            let total = self.cfg.steps + self.cfg.self_train_steps;
            report(self.round.first_step + step + 1, total, loss);
        }
        let every = self.checkpoints.hooks.every;
        if flow == Flow::Continue
            && every > 0
            && (step + 1).is_multiple_of(every)
            && step + 1 < self.round.steps
        {
            let snapshot = self.snapshot(step + 1, optimizer)?;
            if let Some(save) = self.checkpoints.hooks.on_checkpoint.as_mut() {
                save(&snapshot)?;
            }
        }
        Ok(flow)
    }
}

impl<D: ImprintDevice> Training<'_, '_, '_, D> {
    /// The step's loss into the history, and the validation check when one is due.
    fn record_step(&mut self, step: usize, loss: f32) -> Result<Flow> {
        self.history.train_loss.push(loss as f64);
        let done = self.round.first_step + step + 1;
        self.history.steps_run = done;
        let Some(held_out) = self.validation else {
            return Ok(Flow::Continue);
        };
        // The end of a head-only phase before the encoder trains is checked too: what the
        // frozen network scored, for the end of the run to be read against.
        let (range, phase) = self.phase(step);
        let ends_frozen_phase = phase.encoder == EncoderRole::Frozen
            && range.end == step + 1
            && step + 1 < self.round.steps;
        if !(step + 1).is_multiple_of(self.cfg.eval_every)
            && step + 1 != self.round.steps
            && !ends_frozen_phase
        {
            return Ok(Flow::Continue);
        }
        let check = validate(self.dev, self.model, held_out, done);
        self.history.validation.push(check);
        if ends_frozen_phase {
            self.history.frozen_phase = Some(check);
        }
        // Better: more accurate, or as accurate with a lower loss (small validation sets tie).
        let better = self.best.as_ref().is_none_or(|(b, _)| {
            check.accuracy > b.accuracy || (check.accuracy == b.accuracy && check.loss < b.loss)
        });
        let trains_encoder = matches!(self.phase(step).1.encoder, EncoderRole::Trained { .. });
        if better {
            self.best = Some((check, self.model.clone()));
            self.checks_without_gain = 0;
        } else if trains_encoder {
            self.checks_without_gain += 1;
            if self.cfg.patience > 0 && self.checks_without_gain >= self.cfg.patience {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }
}

impl Round {
    /// Trains `model` on batches made of `count` images from each source, keeping the best
    /// validated model when there is a validation set.
    #[allow(clippy::too_many_arguments)]
    pub fn run<D: ImprintDevice>(
        &self,
        dev: &D,
        model: &mut Classifier<D>,
        cfg: &FinetuneConfig,
        strategy: Strategy,
        sources: &mut [(Source, usize)],
        validation: Option<&Dataset>,
        history: &mut History,
        checkpoints: Checkpoints<'_, '_>,
    ) -> Result<()> {
        let seed = self.streams;
        let replicas = checkpoints.hooks.replicas.clone().unwrap_or_else(single);
        model.dropout.p = cfg.dropout;
        let phases = strategy.phases(cfg, self.steps);
        let frozen = phases.iter().all(|(_, p)| p.encoder == EncoderRole::Frozen);
        let features = (frozen && cfg.augment.is_identity()).then(|| {
            sources
                .iter()
                .map(|(source, _)| model.features(dev, &source.data.pixels))
                .collect()
        });
        let mut task = Training {
            dev,
            model,
            cfg,
            phases,
            sources,
            validation,
            history,
            round: self,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f1e7),
            // Its own stream, so that switching dropout on leaves the batch order unchanged.
            dropout_rng: ChaCha8Rng::seed_from_u64(seed ^ 0xd209_0a75),
            best: None,
            checks_without_gain: 0,
            features,
            checkpoints,
            freeze_bn: cfg.freeze_bn && strategy.uses_pretrained(),
            replicas,
        };
        let run = Run {
            settings: &cfg.optim,
            steps: self.steps,
            lr_key: "finetune.lr",
            replicas: &task.replicas.clone(),
            sync_batch_norm: cfg.sync_batch_norm,
        };
        let mut optimizer = Optimizer::new(cfg.optim.rule());
        let first = match task.checkpoints.resume {
            Some(snapshot) => task.restore(snapshot, &mut optimizer)?,
            None => 0,
        };
        train(&mut task, &run, first..self.steps, &mut optimizer)?;
        if let Some((check, best_model)) = task.best {
            task.history.best_step = Some(check.step);
            *task.model = best_model;
        }
        Ok(())
    }
}

/// Accuracy and mean cross-entropy of `model` on the labeled `held_out` images, without a tape.
fn validate<D: ImprintDevice>(
    dev: &D,
    model: &mut Classifier<D>,
    held_out: &Dataset,
    step: usize,
) -> Validation {
    let labels = held_out.labels.as_deref().unwrap_or_default();
    let mut logits = Vec::new();
    model.logits_each(dev, &held_out.pixels, |_, v| logits.extend(v));
    let classes = model.classes.len();
    let correct = logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|&(row, &label)| best_class(row).0 == label)
        .count();
    let logits: Matrix<D> = dev.tensor_from_vec(logits, (labels.len(), classes));
    Validation {
        step,
        accuracy: correct as f64 / labels.len() as f64,
        loss: cross_entropy(logits, labels).as_vec()[0] as f64,
    }
}
