//! The one training loop of the toolkit, shared by pre-training and fine-tuning. A [`Task`]
//! owns the models and the data and says what one step computes; [`train`] runs the steps: the
//! loss, its gradients, the learning rate of each parameter group under the schedule, the
//! optimizer step, and a stop naming the setting to change when the loss turns NaN or infinite.
//! Batches, validation, progress and checkpoints are the task's, through [`Task::after_step`].
//! The loop prints nothing.

pub mod schedule;
mod settings;

pub use schedule::Schedule;
pub use settings::{OptimSettings, OptimizerKind};

use dfdx::prelude::*;
use imprint_nn::{ImprintDevice, Optimizer, ParamGroup, Vector};
use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A NaN or infinite loss: training cannot recover from it.
    #[error("loss became {value} at {position}; lower {lr_key} (now {})", short_number(*lr))]
    Diverged {
        value: f32,
        position: String,
        lr_key: &'static str,
        lr: f64,
    },
    #[error(transparent)]
    Nn(#[from] imprint_nn::NnError),
}

/// `x` as a pipeline file would hold it, in exponent form when plain digits would run long
/// (`1e30`, not thirty-one digits).
fn short_number(x: f64) -> String {
    if x != 0.0 && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// The loss of one step, on a tape.
pub type Loss<D> = Tensor<(), f32, D, OwnedTape<f32, D>>;

/// Parameters trained at `lr_scale` times the base rate.
pub struct Group<'a, D: ImprintDevice> {
    pub lr_scale: f64,
    pub params: Vec<&'a mut Vector<D>>,
}

/// Whether to go on after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// What a training run computes; [`train`] calls these in turn for each step.
pub trait Task<D: ImprintDevice> {
    type Error: From<TrainError>;

    /// The loss of `step` (0-based): the task draws its batch and runs its models.
    fn loss(&mut self, step: usize) -> Result<Loss<D>, Self::Error>;

    /// What `step` trains, in groups with their rate multipliers.
    fn groups(&mut self, step: usize) -> Vec<Group<'_, D>>;

    /// Whether `step` starts with a fresh optimizer (a phase that adds parameters).
    fn fresh_optimizer(&self, _step: usize) -> bool {
        false
    }

    /// Where `step` is, for messages: "epoch 2, step 5" or "step 41".
    fn position(&self, step: usize) -> String;

    /// After the optimizer step: progress, validation, checkpoints (the optimizer's state is
    /// there to save).
    fn after_step(
        &mut self,
        step: usize,
        loss: f32,
        optimizer: &mut Optimizer<D>,
    ) -> Result<Flow, Self::Error>;
}

/// The run's settings as the loop needs them.
pub struct Run<'a> {
    pub settings: &'a OptimSettings,
    /// The steps of the whole run, over which the schedule is laid.
    pub steps: usize,
    /// The setting a diverged run should change, as a user writes it: `pretrain.lr`.
    pub lr_key: &'static str,
}

/// Runs `steps` (a range of the run's steps, so that a resumed run continues where it stopped)
/// of `task` with `optimizer`.
pub fn train<D: ImprintDevice, T: Task<D>>(
    task: &mut T,
    run: &Run,
    steps: Range<usize>,
    optimizer: &mut Optimizer<D>,
) -> Result<(), T::Error> {
    for step in steps {
        if task.fresh_optimizer(step) {
            *optimizer = Optimizer::new(optimizer.rule());
        }
        let loss = task.loss(step)?;
        let value = loss.as_vec()[0];
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                value,
                position: task.position(step),
                lr_key: run.lr_key,
                lr: run.settings.lr,
            }
            .into());
        }
        let mut grads = loss.backward();
        let mut groups: Vec<ParamGroup<'_, D>> = task
            .groups(step)
            .into_iter()
            .map(|g| ParamGroup {
                lr: run.settings.rate(g.lr_scale, step, run.steps),
                weight_decay: run.settings.weight_decay,
                params: g.params,
            })
            .collect();
        optimizer
            .step(&mut groups, &mut grads)
            .map_err(TrainError::from)?;
        drop(groups);
        if task.after_step(step, value, optimizer)? == Flow::Stop {
            break;
        }
    }
    Ok(())
}
