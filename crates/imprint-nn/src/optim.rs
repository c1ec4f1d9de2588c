//! Adam over parameter groups, each with its own settings (e.g. a smaller learning rate for a
//! pre-trained encoder than for a fresh head). The update itself is dfdx's Adam kernel.

use crate::{NnError, Result, Vector};
use dfdx::prelude::*;
pub use dfdx::tensor_ops::{AdamConfig, WeightDecay};
use rayon::prelude::*;

/// Writing host values into a device buffer, for optimizer state restored from a checkpoint
/// (reading goes through dfdx's own tensors).
pub trait HostBuffer: Storage<f32> {
    fn write_buffer(buffer: &mut Self::Vec, values: &[f32]);
}

impl HostBuffer for Cpu {
    fn write_buffer(buffer: &mut Self::Vec, values: &[f32]) {
        buffer.copy_from_slice(values);
    }
}

/// Adam's state for a list of parameters, in their order: enough to continue training exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub step: i32,
    /// First and second moment of each parameter.
    pub moments: Vec<[Vec<f32>; 2]>,
}

/// Parameters updated with one configuration.
pub struct ParamGroup<'a, D: Device<f32>> {
    pub config: AdamConfig,
    pub params: Vec<&'a mut Vector<D>>,
}

/// Adam moments for every parameter it has seen, keyed by tensor identity.
pub struct Adam<D: Device<f32>> {
    step: i32,
    moment1: Gradients<f32, D>,
    moment2: Gradients<f32, D>,
}

impl<D: Device<f32>> Default for Adam<D> {
    fn default() -> Self {
        Self {
            step: 0,
            moment1: Gradients::leaky(),
            moment2: Gradients::leaky(),
        }
    }
}

/// A gradient or moment buffer of one parameter, handed to the thread that updates it.
struct Entry<V>(*mut V);

// SAFETY: an `Entry` is only created for a buffer that no other `Entry` in the same step points
// to (checked in `Adam::step`), so moving it to another thread shares nothing.
unsafe impl<V: Send> Send for Entry<V> {}

type Buffer<D> = <D as Storage<f32>>::Vec;

/// One parameter's update: its settings, the tensor, and its gradient and moment buffers.
struct Update<'a, D: Device<f32>> {
    config: AdamConfig,
    param: &'a mut Vector<D>,
    grad: Entry<Buffer<D>>,
    moment1: Entry<Buffer<D>>,
    moment2: Entry<Buffer<D>>,
}

impl<D: Device<f32>> Update<'_, D> {
    fn apply(self, t: i32) -> std::result::Result<(), D::Err> {
        // SAFETY: the pointers come from live map entries that nothing else touches until the
        // step ends; each is used by one update at a time (in turn when shared).
        unsafe {
            self.config.try_update(
                t,
                self.param,
                &mut *self.moment1.0,
                &mut *self.moment2.0,
                &*self.grad.0,
            )
        }
    }
}

impl<D: Device<f32> + Send + Sync> Adam<D> {
    pub fn new() -> Self {
        Self::default()
    }

    /// One update of every parameter in `groups` from `grads`; a parameter without a gradient
    /// (frozen, or unused this step) is left as it is. Parameters are updated in parallel:
    /// dfdx's kernel runs on one thread, and on its own took a tenth of a dense training step.
    pub fn step(
        &mut self,
        groups: &mut [ParamGroup<'_, D>],
        grads: &mut Gradients<f32, D>,
    ) -> Result<()> {
        self.step += 1;
        // Every entry is created first: a map that gains no entry moves none, so the pointers
        // taken below stay valid until the updates are done.
        for param in groups.iter().flat_map(|g| g.params.iter()) {
            grads.try_alloc_for(&**param).map_err(NnError::device)?;
            self.moment1
                .try_alloc_for(&**param)
                .map_err(NnError::device)?;
            self.moment2
                .try_alloc_for(&**param)
                .map_err(NnError::device)?;
        }
        let mut updates = Vec::new();
        for group in groups.iter_mut() {
            for param in group.params.iter_mut() {
                let entry = |map: &mut Gradients<f32, D>| {
                    map.get_or_alloc_mut(&**param)
                        .map(|v| Entry(v as *mut Buffer<D>))
                        .map_err(NnError::device)
                };
                let (grad, moment1, moment2) = (
                    entry(grads)?,
                    entry(&mut self.moment1)?,
                    entry(&mut self.moment2)?,
                );
                updates.push(Update {
                    config: group.config,
                    param: &mut **param,
                    grad,
                    moment1,
                    moment2,
                });
            }
        }
        // Clones of one tensor share its identity, hence its buffers: update those in turn.
        let mut buffers: Vec<usize> = updates.iter().map(|u| u.grad.0 as usize).collect();
        buffers.sort_unstable();
        let t = self.step;
        let apply = |u: Update<'_, D>| u.apply(t).map_err(NnError::device);
        if buffers.windows(2).any(|w| w[0] == w[1]) {
            updates.into_iter().try_for_each(apply)
        } else {
            updates.into_par_iter().try_for_each(apply)
        }
    }
}

impl<D: Device<f32> + HostBuffer> Adam<D> {
    /// The step count and the moments of `params` (zeros for one never updated).
    pub fn state(&mut self, params: &[&Vector<D>]) -> Result<AdamState> {
        let mut moments = Vec::with_capacity(params.len());
        for &param in params {
            let read = |map: &mut Gradients<f32, D>| -> Result<Vec<f32>> {
                map.try_alloc_for(param).map_err(NnError::device)?;
                Ok(map.get(param).as_vec())
            };
            moments.push([read(&mut self.moment1)?, read(&mut self.moment2)?]);
        }
        Ok(AdamState {
            step: self.step,
            moments,
        })
    }

    /// Continues from `state`, taken by [`Adam::state`] for parameters of the same sizes in the
    /// same order.
    pub fn restore(&mut self, state: &AdamState, params: &[&Vector<D>]) -> Result<()> {
        if state.moments.len() != params.len() {
            return Err(NnError::OptimizerState(format!(
                "optimizer state holds {} parameters, the model {}",
                state.moments.len(),
                params.len()
            )));
        }
        for (i, (&param, [m1, m2])) in params.iter().zip(&state.moments).enumerate() {
            let len = param.shape().0;
            if m1.len() != len || m2.len() != len {
                return Err(NnError::OptimizerState(format!(
                    "optimizer state of parameter {i} has {} values, the parameter {len}",
                    m1.len()
                )));
            }
            for (map, values) in [(&mut self.moment1, m1), (&mut self.moment2, m2)] {
                D::write_buffer(
                    map.get_or_alloc_mut(param).map_err(NnError::device)?,
                    values,
                );
            }
        }
        self.step = state.step;
        Ok(())
    }
}

/// Adam settings in PyTorch's terms: `weight_decay` is decoupled (AdamW) when `decoupled`.
pub fn adam_config(lr: f64, weight_decay: f64, decoupled: bool) -> AdamConfig {
    AdamConfig {
        lr,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: match (weight_decay > 0.0, decoupled) {
            (false, _) => None,
            (true, true) => Some(WeightDecay::Decoupled(weight_decay)),
            (true, false) => Some(WeightDecay::L2(weight_decay)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel step gives exactly what dfdx's Adam gives one parameter at a time, in two
    /// groups with different settings, over several steps.
    #[test]
    fn parallel_step_matches_dfdx_update() {
        let dev = Cpu::default();
        let init = |n: usize, k: f32| -> Vector<Cpu> {
            dev.tensor_from_vec((0..n).map(|i| (i as f32 * k).sin()).collect(), (n,))
        };
        let (mut a, mut b, mut c) = (init(300, 0.1), init(7, 0.7), init(50, 1.3));
        let (mut ra, mut rb, mut rc) = (a.clone(), b.clone(), c.clone());
        let head = adam_config(1e-2, 1e-3, true);
        let body = adam_config(1e-3, 1e-2, false);
        let mut opt = Adam::new();
        let mut moments: Vec<[Gradients<f32, Cpu>; 2]> = (0..3)
            .map(|_| [Gradients::leaky(), Gradients::leaky()])
            .collect();
        for t in 1..=4 {
            let loss = |x: &Vector<Cpu>, y: &Vector<Cpu>, z: &Vector<Cpu>| {
                let (x, y, z) = (x.leaky_trace(), y.leaky_trace(), z.leaky_trace());
                x.square().sum::<(), _>() + y.sin().sum::<(), _>() + z.exp().mean::<(), _>()
            };
            let mut grads = loss(&a, &b, &c).backward();
            opt.step(
                &mut [
                    ParamGroup {
                        config: head,
                        params: vec![&mut a],
                    },
                    ParamGroup {
                        config: body,
                        params: vec![&mut b, &mut c],
                    },
                ],
                &mut grads,
            )
            .unwrap();

            let mut grads = loss(&ra, &rb, &rc).backward();
            for ((param, cfg), [m1, m2]) in [(&mut ra, head), (&mut rb, body), (&mut rc, body)]
                .into_iter()
                .zip(moments.iter_mut())
            {
                let g = grads.get_or_alloc_mut(&*param).unwrap().clone();
                let (m1, m2) = (
                    m1.get_or_alloc_mut(&*param).unwrap(),
                    m2.get_or_alloc_mut(&*param).unwrap(),
                );
                cfg.try_update(t, param, m1, m2, &g).unwrap();
            }
            assert_eq!(a.as_vec(), ra.as_vec(), "step {t}");
            assert_eq!(b.as_vec(), rb.as_vec(), "step {t}");
            assert_eq!(c.as_vec(), rc.as_vec(), "step {t}");
        }
    }
}
