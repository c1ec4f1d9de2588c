//! The one training loop of the toolkit, shared by pre-training and fine-tuning. A [`Task`]
//! owns the models and the data and says what one step computes; [`train`] runs the steps: the
//! loss, its gradients, the learning rate of each parameter group under the schedule, the
//! optimizer step, and a stop naming the setting to change when the loss turns NaN or infinite.
//! Batches, validation, progress and checkpoints are the task's, through [`Task::after_step`].
//! The loop prints nothing.
//!
//! Data parallelism is the loop's too: with several replicas ([`Run::replicas`]), each runs
//! the same task on its share of every global batch, and the loop sums their gradients (and
//! their shares of the loss) before every replica takes the same optimizer step; batch norms
//! either normalise by the whole global batch ([`Run::sync_batch_norm`]) or by each share, with
//! their running statistics then averaged over the replicas after each step. Every replica so
//! holds the same model at every step.

pub mod schedule;
mod settings;

pub use schedule::Schedule;
pub use settings::{OptimSettings, OptimizerKind};

use dfdx::prelude::*;
use imprint_collective::Replicas;
use imprint_nn::{ImprintDevice, NnError, Optimizer, ParamGroup, Vector};
use std::collections::HashSet;
use std::ops::Range;
use std::rc::Rc;

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

/// The loss of one step, on a tape. With several replicas, this replica's share of the global
/// batch's loss: the replicas' shares (and their gradients) add up to it.
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

    /// The loss of `step` (0-based): the task draws its batch and runs its models; with
    /// several replicas, its share of the batch, and its share of the loss ([`Loss`]).
    fn loss(&mut self, step: usize) -> Result<Loss<D>, Self::Error>;

    /// What `step` trains, in groups with their rate multipliers.
    fn groups(&mut self, step: usize) -> Vec<Group<'_, D>>;

    /// Whether `step` starts with a fresh optimizer (a phase that adds parameters).
    fn fresh_optimizer(&self, _step: usize) -> bool {
        false
    }

    /// Where `step` is, for messages: "epoch 2, step 5" or "step 41".
    fn position(&self, step: usize) -> String;

    /// The running statistics of the task's batch norms, which training moves by each
    /// replica's share of the batch unless the batch norms are synchronised.
    fn batch_norm_statistics(&mut self) -> Vec<&mut Vector<D>> {
        Vec::new()
    }

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
    /// The replicas this process is one of ([`imprint_collective::single`] alone).
    pub replicas: &'a Replicas,
    /// Whether training-mode batch norms take their statistics over every replica's share of
    /// the batch (as one process would over the whole batch), or over each share.
    pub sync_batch_norm: bool,
}

/// Runs `steps` (a range of the run's steps, so that a resumed run continues where it stopped)
/// of `task` with `optimizer`.
pub fn train<D: ImprintDevice, T: Task<D>>(
    task: &mut T,
    run: &Run,
    steps: Range<usize>,
    optimizer: &mut Optimizer<D>,
) -> Result<(), T::Error> {
    let several = run.replicas.size() > 1;
    let synced = (several && run.sync_batch_norm).then(|| {
        let replicas = Rc::clone(run.replicas);
        let sum: imprint_ops::SumOverReplicas = Rc::new(move |v| replicas.sum_f64(v));
        sum
    });
    for step in steps {
        if task.fresh_optimizer(step) {
            *optimizer = Optimizer::new(optimizer.rule());
        }
        let mut forward_backward = || -> Result<(f32, Gradients<f32, D>), T::Error> {
            let loss = task.loss(step)?;
            Ok((loss.as_vec()[0], loss.backward()))
        };
        let (mut value, mut grads) = match &synced {
            Some(sum) => imprint_ops::with_synced_statistics(Rc::clone(sum), forward_backward)?,
            None => forward_backward()?,
        };
        let mut groups: Vec<ParamGroup<'_, D>> = task
            .groups(step)
            .into_iter()
            .map(|g| ParamGroup {
                lr: run.settings.rate(g.lr_scale, step, run.steps),
                weight_decay: run.settings.weight_decay,
                params: g.params,
            })
            .collect();
        if several {
            value = sum_over_replicas(run.replicas, &groups, &mut grads, value)
                .map_err(TrainError::from)?;
        }
        // Checked after the sum, so that every replica stops at the same step.
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                value,
                position: task.position(step),
                lr_key: run.lr_key,
                lr: run.settings.lr,
            }
            .into());
        }
        optimizer
            .step(&mut groups, &mut grads)
            .map_err(TrainError::from)?;
        drop(groups);
        if several && !run.sync_batch_norm {
            average_over_replicas(run.replicas, task.batch_norm_statistics());
        }
        if task.after_step(step, value, optimizer)? == Flow::Stop {
            break;
        }
    }
    Ok(())
}

/// Replaces the gradients of the parameters of `groups` by their sums over the replicas, and
/// returns the loss summed likewise: one buffer, one sum.
fn sum_over_replicas<D: ImprintDevice>(
    replicas: &Replicas,
    groups: &[ParamGroup<'_, D>],
    grads: &mut Gradients<f32, D>,
    loss: f32,
) -> Result<f32, NnError> {
    let device = |e| NnError::Device(format!("{e:?}"));
    let all = || groups.iter().flat_map(|g| g.params.iter().map(|p| &**p));
    // A parameter this replica's share left without a gradient contributes zeros. Every entry
    // first: a map that gains none moves none, so the addresses below stay put.
    for p in all() {
        grads.try_alloc_for(p).map_err(device)?;
    }
    // Clones of one tensor share its gradient buffer: each buffer is summed once.
    let mut seen = HashSet::new();
    let mut params: Vec<&Vector<D>> = Vec::new();
    for p in all() {
        let buffer = grads.get_or_alloc_mut(p).map_err(device)? as *const _ as usize;
        if seen.insert(buffer) {
            params.push(p);
        }
    }
    let mut flat = Vec::with_capacity(params.iter().map(|p| p.shape().0).sum::<usize>() + 1);
    for &p in &params {
        flat.extend(grads.get(p).as_vec());
    }
    flat.push(loss);
    replicas.sum(&mut flat);
    let mut at = 0;
    for &p in &params {
        let n = p.shape().0;
        D::write_buffer(
            grads.get_or_alloc_mut(p).map_err(device)?,
            &flat[at..at + n],
        );
        at += n;
    }
    Ok(flat[at])
}

/// Replaces `tensors` by their means over the replicas.
fn average_over_replicas<D: ImprintDevice>(replicas: &Replicas, tensors: Vec<&mut Vector<D>>) {
    if tensors.is_empty() {
        return;
    }
    let mut flat: Vec<f32> = tensors.iter().flat_map(|t| t.as_vec()).collect();
    replicas.sum(&mut flat);
    let n = replicas.size() as f32;
    let mut at = 0;
    for t in tensors {
        let len = t.shape().0;
        let mean: Vec<f32> = flat[at..at + len].iter().map(|v| v / n).collect();
        t.copy_from(&mean);
        at += len;
    }
}
