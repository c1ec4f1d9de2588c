//! Fine-tuning: an encoder (pre-trained, or fresh for the `scratch` baseline) plus a new head
//! sized to the labeled classes, trained by a strategy's phases on the shared training loop.
//! Generic over the dfdx device, it prints nothing and returns the model and its history.

mod classifier;
mod config;
mod metrics;
mod round;
mod self_train;
mod strategy;

pub use classifier::{Classifier, Head, Init, OldHead};
pub use config::FinetuneConfig;
pub use metrics::{evaluate, Metrics};
pub use strategy::{Definition, EncoderRole, Fit, Phase, Start, Strategy, STRATEGIES};

use imprint_collective::Replicas;
use imprint_data::split::stratified_split;
use imprint_data::Dataset;
use imprint_nn::knn::Bank;
use imprint_nn::ParamsExt;
use imprint_nn::{Encoder, ImprintDevice};
use imprint_train::TrainError;
use round::{Checkpoints, Round, Source};
use self_train::pseudo_labels;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("invalid fine-tuning setting `{key}`: {message}")]
    Config { key: &'static str, message: String },
    #[error("{0}")]
    Data(String),
    /// A NaN or infinite loss, naming the setting to change.
    #[error("fine-tuning: {0}")]
    Train(#[from] TrainError),
    #[error(transparent)]
    Nn(#[from] imprint_nn::NnError),
}

pub type Result<T> = std::result::Result<T, FinetuneError>;

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
    /// Whether the head started from the rows of the given network's head ([`OldHead`]).
    #[serde(default)]
    pub head_from_init: bool,
    /// The validation check at the end of a head-only phase that precedes training the
    /// encoder (`probe-then-full`, with a validation split): what the frozen network scored.
    #[serde(default)]
    pub frozen_phase: Option<Validation>,
}

impl History {
    /// The last validation check, when it scored below the check that ended the head-only
    /// phase: training the encoder lost what the frozen network knew, on the validation labels.
    /// (The model returned is the best checked one either way.)
    pub fn below_frozen_phase(&self) -> Option<(Validation, Validation)> {
        let frozen = self.frozen_phase?;
        let last = *self.validation.last()?;
        (last.step > frozen.step && last.accuracy < frozen.accuracy).then_some((frozen, last))
    }
}

/// Receives each checkpoint of a fine-tuning, e.g. to write it to disk; an error stops the run.
pub type SaveFinetuneCheckpoint<'a> = dyn FnMut(&FinetuneSnapshot) -> Result<()> + 'a;

/// Progress after each optimizer step: steps done and in all (every round of the run
/// together), and the step's loss.
pub type StepProgress<'a> = dyn FnMut(usize, usize, f32) + 'a;

/// What the caller hears of a fine-tuning as it goes: checkpoints every `every` steps (0 =
/// never), handed to `on_checkpoint`, and each step's progress; and the replicas of a
/// data-parallel run this process is one of.
#[derive(Default)]
pub struct FinetuneHooks<'a> {
    pub every: usize,
    pub on_checkpoint: Option<&'a mut SaveFinetuneCheckpoint<'a>>,
    pub on_step: Option<&'a mut StepProgress<'a>>,
    /// `None`: this process alone.
    pub replicas: Option<Replicas>,
}

/// A fine-tuning's state after some steps of one of its rounds: resuming from it gives what the
/// uninterrupted run gives. Tensors: the model (`model.*`), the best validated one (`best.*`),
/// the self-training teacher in the student's round (`teacher.*`), the optimizer's moments.
#[derive(Clone, Debug, PartialEq)]
pub struct FinetuneSnapshot {
    pub tensors: Vec<imprint_nn::NamedTensor>,
    pub state: FinetuneState,
}

/// The non-tensor part of a [`FinetuneSnapshot`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneState {
    pub seed: u64,
    /// 0 for the labeled round, 1 for the self-training student's.
    pub round: usize,
    /// Steps of earlier rounds (the history numbers this round's steps from there).
    pub first_step: usize,
    pub steps_done: usize,
    pub optimizer_steps: i32,
    pub rng_word_pos: u128,
    pub dropout_word_pos: u128,
    /// Each batch source's image order and position in it.
    pub sources: Vec<(Vec<usize>, usize)>,
    pub history: History,
    pub best: Option<Validation>,
    pub checks_without_gain: usize,
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
    init: impl Into<Init<D>>,
    train: &Dataset,
    unlabeled: Option<&Dataset>,
    cfg: &FinetuneConfig,
    strategy: Strategy,
    seed: u64,
) -> Result<(Classifier<D>, History)> {
    let hooks = FinetuneHooks::default();
    finetune_with(
        dev, init, train, unlabeled, cfg, strategy, seed, hooks, None,
    )
}

/// [`finetune`], checkpointing through `hooks` and continuing from `resume`, a snapshot of the
/// same run. The products of every op it runs (training, validation, the teacher's
/// pseudo-labels) are in `cfg.precision`.
#[allow(clippy::too_many_arguments)]
pub fn finetune_with<D: ImprintDevice>(
    dev: &D,
    init: impl Into<Init<D>>,
    train: &Dataset,
    unlabeled: Option<&Dataset>,
    cfg: &FinetuneConfig,
    strategy: Strategy,
    seed: u64,
    hooks: FinetuneHooks<'_>,
    resume: Option<&FinetuneSnapshot>,
) -> Result<(Classifier<D>, History)> {
    imprint_nn::with_precision(cfg.precision, || {
        finetune_in_precision(
            dev,
            init.into(),
            train,
            unlabeled,
            cfg,
            strategy,
            seed,
            hooks,
            resume,
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn finetune_in_precision<D: ImprintDevice>(
    dev: &D,
    init: Init<D>,
    train: &Dataset,
    unlabeled: Option<&Dataset>,
    cfg: &FinetuneConfig,
    strategy: Strategy,
    seed: u64,
    mut hooks: FinetuneHooks<'_>,
    resume: Option<&FinetuneSnapshot>,
) -> Result<(Classifier<D>, History)> {
    cfg.validate()?;
    let Init {
        encoder,
        head: old_head,
    } = init;
    if let Some(snapshot) = resume {
        if snapshot.state.seed != seed {
            return Err(FinetuneError::Data(format!(
                "cannot resume this fine-tuning: its checkpoint is of seed {}, not {seed}",
                snapshot.state.seed
            )));
        }
    }
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
    if strategy.fit() == Fit::Knn {
        return Ok((
            knn_classifier(dev, encoder, train, labels, cfg),
            History::default(),
        ));
    }
    let (fit, held_out) = validation_split(train, labels, cfg.validation_fraction, seed)?;
    let validation = (!held_out.is_empty()).then(|| train.subset(&held_out));
    let student_encoder = pool.is_some().then(|| encoder.clone());
    // The given network's head rows for these classes, when it has them and may lend them.
    let head_start = old_head
        .filter(|_| cfg.head_from_init && strategy.uses_pretrained())
        .and_then(|old| old.rows_for(dev, &train.classes, encoder.features()));
    let new_model = |encoder| {
        let mut model = Classifier::new(dev, encoder, train.classes.clone(), train.shape, seed);
        if let Some(head) = &head_start {
            model.head = Head::Linear(head.clone());
        }
        model
    };
    let mut model = new_model(encoder);
    let batch = match cfg.batch_size {
        0 => fit.len(),
        b => b.min(fit.len()),
    };
    let processes = hooks.replicas.as_ref().map_or(1, |r| r.size());
    if batch < processes {
        return Err(FinetuneError::Config {
            key: "batch_size",
            message: format!(
                "batches of {batch} images cannot be shared by {processes} processes; use at \
                 least one image per process"
            ),
        });
    }
    let labeled = Source::new(train, labels, fit);
    let teacher = Round {
        steps: cfg.steps,
        first_step: 0,
        streams: seed,
        index: 0,
        seed,
    };
    let mut history = History {
        head_from_init: head_start.is_some(),
        ..History::default()
    };
    let student_resumes = resume.filter(|s| s.state.round == 1);
    match student_resumes {
        // The teacher finished before the checkpoint: it is in the snapshot.
        Some(snapshot) => {
            let tensors: std::collections::BTreeMap<_, _> = snapshot
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect();
            model.load_named("teacher", &tensors, "checkpoint")?;
            history.steps_run = snapshot.state.first_step;
        }
        None => teacher.run(
            dev,
            &mut model,
            cfg,
            strategy,
            &mut [(labeled.clone(), batch)],
            validation.as_ref(),
            &mut history,
            Checkpoints {
                hooks: &mut hooks,
                carried: Vec::new(),
                resume,
            },
        )?,
    }
    let (Some(pool), Some(encoder)) = (pool, student_encoder) else {
        return Ok((model, history));
    };
    let (ids, pseudo) = pseudo_labels(dev, &mut model, pool, cfg.self_train_fraction);
    if ids.is_empty() {
        return Err(FinetuneError::Data(format!(
            "self_train_fraction {} of {} unlabeled images leaves no class a pseudo-label; raise it",
            cfg.self_train_fraction,
            pool.len()
        )));
    }
    history.pseudo_labels = ids.len();
    let mut student = new_model(encoder);
    let half = cfg.batch_size / 2;
    let round = Round {
        steps: cfg.self_train_steps,
        first_step: history.steps_run,
        streams: seed ^ 0x5e1f_7a1b,
        index: 1,
        seed,
    };
    let carried = model.named_tensors("teacher");
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
        Checkpoints {
            hooks: &mut hooks,
            carried,
            resume: student_resumes,
        },
    )?;
    Ok((student, history))
}

/// The `knn` strategy's classifier: the labeled images' frozen features, ready to vote.
fn knn_classifier<D: ImprintDevice>(
    dev: &D,
    encoder: Encoder<D>,
    train: &Dataset,
    labels: &[usize],
    cfg: &FinetuneConfig,
) -> Classifier<D> {
    let width = encoder.features();
    let classes = train.classes.clone();
    let mut model = Classifier::new(dev, encoder, classes.clone(), train.shape, 0);
    let features = model.features(dev, &train.pixels);
    let bank = Bank::new(dev, features, width, labels, classes.len());
    model.head = Head::Knn(bank, cfg.knn());
    model
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

#[cfg(test)]
mod tests;
