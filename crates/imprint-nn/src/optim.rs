//! Optimizers over parameter groups, each group with its own learning rate and weight decay
//! (e.g. a smaller rate for a pre-trained encoder than for a fresh head). The updates are dfdx's
//! Adam and SGD kernels; weight decay is decoupled for both (AdamW, SGDW: `p -= lr * wd * p`
//! beside the gradient step), the one meaning it has everywhere in this toolkit.

use crate::checkpoint::NamedTensor;
use crate::{NnError, Result, Vector};
use dfdx::prelude::*;
use dfdx::tensor_ops::{AdamConfig, Momentum, SgdConfig, WeightDecay};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Adam with PyTorch's defaults (betas 0.9, 0.999; eps 1e-8).
    Adam,
    /// SGD with (heavy-ball, or Nesterov) momentum; `momentum = 0` is plain SGD.
    Sgd { momentum: f64, nesterov: bool },
}

impl Rule {
    /// Moment buffers per parameter: Adam keeps two, SGD its velocity.
    fn moments(self) -> usize {
        match self {
            Rule::Adam => 2,
            Rule::Sgd { .. } => 1,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Rule::Adam => "Adam".into(),
            Rule::Sgd { momentum, nesterov } if momentum > 0.0 => format!(
                "SGD with {}momentum {momentum}",
                if nesterov { "Nesterov " } else { "" }
            ),
            Rule::Sgd { .. } => "SGD".into(),
        }
    }
}

/// Parameters updated with one learning rate and weight decay.
pub struct ParamGroup<'a, D: Device<f32>> {
    pub lr: f64,
    pub weight_decay: f64,
    pub params: Vec<&'a mut Vector<D>>,
}

/// Moment buffers for every parameter it has seen, keyed by tensor identity.
pub struct Optimizer<D: Device<f32>> {
    rule: Rule,
    step: i32,
    moments: [Gradients<f32, D>; 2],
}

/// A gradient or moment buffer of one parameter, handed to the thread that updates it.
struct Entry<V>(*mut V);

// SAFETY: an `Entry` is only created for a buffer that no other `Entry` in the same step points
// to (checked in `Optimizer::step`), so moving it to another thread shares nothing.
unsafe impl<V: Send> Send for Entry<V> {}

type Buffer<D> = <D as Storage<f32>>::Vec;

/// One parameter's update: its settings, the tensor, and its gradient and moment buffers.
struct Update<'a, D: Device<f32>> {
    rule: Rule,
    lr: f64,
    weight_decay: f64,
    param: &'a mut Vector<D>,
    grad: Entry<Buffer<D>>,
    moments: [Option<Entry<Buffer<D>>>; 2],
}

impl<D: Device<f32>> Update<'_, D> {
    fn apply(self, t: i32) -> std::result::Result<(), D::Err> {
        let weight_decay =
            (self.weight_decay > 0.0).then_some(WeightDecay::Decoupled(self.weight_decay));
        // SAFETY: the pointers come from live map entries that nothing else touches until the
        // step ends; each is used by one update at a time (in turn when shared).
        unsafe {
            let grad = &*self.grad.0;
            match (self.rule, self.moments) {
                (Rule::Adam, [Some(m1), Some(m2)]) => AdamConfig {
                    lr: self.lr,
                    betas: [0.9, 0.999],
                    eps: 1e-8,
                    weight_decay,
                }
                .try_update(t, self.param, &mut *m1.0, &mut *m2.0, grad),
                (Rule::Sgd { momentum, nesterov }, [Some(velocity), _]) => SgdConfig {
                    lr: self.lr,
                    momentum: (momentum > 0.0).then_some(if nesterov {
                        Momentum::Nesterov(momentum)
                    } else {
                        Momentum::Classic(momentum)
                    }),
                    weight_decay,
                }
                .try_update(self.param, &mut *velocity.0, grad),
                _ => unreachable!("moments are allocated for the rule"),
            }
        }
    }
}

impl<D: Device<f32> + Send + Sync> Optimizer<D> {
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            step: 0,
            moments: [Gradients::leaky(), Gradients::leaky()],
        }
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// Steps taken.
    pub fn steps(&self) -> i32 {
        self.step
    }

    /// One update of every parameter in `groups` from `grads`; a parameter without a gradient
    /// (frozen, or unused this step) is left as it is. Parameters are updated in parallel:
    /// dfdx's kernels run on one thread, and on their own took a tenth of a dense training step.
    pub fn step(
        &mut self,
        groups: &mut [ParamGroup<'_, D>],
        grads: &mut Gradients<f32, D>,
    ) -> Result<()> {
        self.step += 1;
        let used = self.rule.moments();
        // Every entry is created first: a map that gains no entry moves none, so the pointers
        // taken below stay valid until the updates are done.
        for param in groups.iter().flat_map(|g| g.params.iter()) {
            grads.try_alloc_for(&**param).map_err(NnError::device)?;
            for map in &mut self.moments[..used] {
                map.try_alloc_for(&**param).map_err(NnError::device)?;
            }
        }
        let mut updates = Vec::new();
        for group in groups.iter_mut() {
            for param in group.params.iter_mut() {
                let entry = |map: &mut Gradients<f32, D>| {
                    map.get_or_alloc_mut(&**param)
                        .map(|v| Entry(v as *mut Buffer<D>))
                        .map_err(NnError::device)
                };
                let grad = entry(grads)?;
                let [m1, m2] = &mut self.moments;
                let moments = [
                    Some(entry(m1)?),
                    (used == 2).then(|| entry(m2)).transpose()?,
                ];
                updates.push(Update {
                    rule: self.rule,
                    lr: group.lr,
                    weight_decay: group.weight_decay,
                    param: &mut **param,
                    grad,
                    moments,
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

/// The snapshot name of moment `which` (0 or 1) of the parameter named `param`.
fn moment_name(which: usize, param: &str) -> String {
    format!("optimizer.m{}.{param}", which + 1)
}

impl<D: Device<f32> + HostBuffer + Send + Sync> Optimizer<D> {
    /// The moments of the named `params` (zeros for one never updated), named
    /// `optimizer.m1.<param>` (and `m2` for Adam), to save beside the weights.
    pub fn state(&mut self, params: &[(String, &Vector<D>)]) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for (which, map) in self.moments[..self.rule.moments()].iter_mut().enumerate() {
            for (name, param) in params {
                map.try_alloc_for(*param).map_err(NnError::device)?;
                let data = map.get(*param).as_vec();
                out.push(NamedTensor {
                    name: moment_name(which, name),
                    shape: vec![data.len()],
                    data,
                });
            }
        }
        Ok(out)
    }

    /// Continues from a state taken by [`Optimizer::state`] after `step` steps, for parameters
    /// of the same names and sizes.
    pub fn restore(
        &mut self,
        step: i32,
        tensors: &BTreeMap<String, NamedTensor>,
        params: &[(String, &Vector<D>)],
    ) -> Result<()> {
        let used = self.rule.moments();
        for (which, map) in self.moments[..used].iter_mut().enumerate() {
            for (name, param) in params {
                let key = moment_name(which, name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| NnError::OptimizerState(format!("it lacks `{key}`")))?;
                if t.data.len() != param.shape().0 {
                    return Err(NnError::OptimizerState(format!(
                        "`{key}` has {} values, the parameter {}",
                        t.data.len(),
                        param.shape().0
                    )));
                }
                D::write_buffer(
                    map.get_or_alloc_mut(*param).map_err(NnError::device)?,
                    &t.data,
                );
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(dev: &Cpu, n: usize, k: f32) -> Vector<Cpu> {
        dev.tensor_from_vec((0..n).map(|i| (i as f32 * k).sin()).collect(), (n,))
    }

    fn loss(x: &Vector<Cpu>, y: &Vector<Cpu>, z: &Vector<Cpu>) -> Gradients<f32, Cpu> {
        let (x, y, z) = (x.leaky_trace(), y.leaky_trace(), z.leaky_trace());
        (x.square().sum::<(), _>() + y.sin().sum::<(), _>() + z.exp().mean::<(), _>()).backward()
    }

    /// The parallel step gives exactly what dfdx's kernels give one parameter at a time, in two
    /// groups with different settings, over several steps, for both rules.
    #[test]
    fn parallel_step_matches_dfdx_update() {
        let dev = Cpu::default();
        let sgd = Rule::Sgd {
            momentum: 0.9,
            nesterov: true,
        };
        for rule in [Rule::Adam, sgd] {
            let (mut a, mut b, mut c) = (
                init(&dev, 300, 0.1),
                init(&dev, 7, 0.7),
                init(&dev, 50, 1.3),
            );
            let (mut ra, mut rb, mut rc) = (a.clone(), b.clone(), c.clone());
            let mut opt = Optimizer::new(rule);
            let mut moments: Vec<[Gradients<f32, Cpu>; 2]> = (0..3)
                .map(|_| [Gradients::leaky(), Gradients::leaky()])
                .collect();
            for t in 1..=4 {
                let mut grads = loss(&a, &b, &c);
                opt.step(
                    &mut [
                        ParamGroup {
                            lr: 1e-2,
                            weight_decay: 1e-3,
                            params: vec![&mut a],
                        },
                        ParamGroup {
                            lr: 1e-3,
                            weight_decay: 1e-2,
                            params: vec![&mut b, &mut c],
                        },
                    ],
                    &mut grads,
                )
                .unwrap();

                let mut grads = loss(&ra, &rb, &rc);
                for ((param, (lr, wd)), [m1, m2]) in [
                    (&mut ra, (1e-2, 1e-3)),
                    (&mut rb, (1e-3, 1e-2)),
                    (&mut rc, (1e-3, 1e-2)),
                ]
                .into_iter()
                .zip(moments.iter_mut())
                {
                    let g = grads.get_or_alloc_mut(&*param).unwrap().clone();
                    let (m1, m2) = (
                        m1.get_or_alloc_mut(&*param).unwrap(),
                        m2.get_or_alloc_mut(&*param).unwrap(),
                    );
                    let weight_decay = Some(WeightDecay::Decoupled(wd));
                    match rule {
                        Rule::Adam => AdamConfig {
                            lr,
                            betas: [0.9, 0.999],
                            eps: 1e-8,
                            weight_decay,
                        }
                        .try_update(t, param, m1, m2, &g)
                        .unwrap(),
                        Rule::Sgd { .. } => SgdConfig {
                            lr,
                            momentum: Some(Momentum::Nesterov(0.9)),
                            weight_decay,
                        }
                        .try_update(param, m1, &g)
                        .unwrap(),
                    }
                }
                assert_eq!(a.as_vec(), ra.as_vec(), "{rule:?} step {t}");
                assert_eq!(b.as_vec(), rb.as_vec(), "{rule:?} step {t}");
                assert_eq!(c.as_vec(), rc.as_vec(), "{rule:?} step {t}");
            }
        }
    }

    /// A state saved after two steps and restored into a fresh optimizer continues exactly.
    #[test]
    fn restored_state_continues_exactly() {
        let dev = Cpu::default();
        for rule in [
            Rule::Adam,
            Rule::Sgd {
                momentum: 0.5,
                nesterov: false,
            },
        ] {
            let (mut a, b, c) = (init(&dev, 20, 0.3), init(&dev, 3, 0.1), init(&dev, 3, 0.2));
            let mut opt = Optimizer::new(rule);
            let step = |opt: &mut Optimizer<Cpu>, a: &mut Vector<Cpu>| {
                let mut grads = loss(a, &b, &c);
                opt.step(
                    &mut [ParamGroup {
                        lr: 1e-2,
                        weight_decay: 0.0,
                        params: vec![a],
                    }],
                    &mut grads,
                )
                .unwrap();
            };
            step(&mut opt, &mut a);
            step(&mut opt, &mut a);
            let saved: BTreeMap<String, NamedTensor> = opt
                .state(&[("a".into(), &a)])
                .unwrap()
                .into_iter()
                .map(|t| (t.name.clone(), t))
                .collect();
            let mut b_copy = a.clone();
            let mut resumed = Optimizer::new(rule);
            resumed
                .restore(2, &saved, &[("a".into(), &b_copy)])
                .unwrap();
            step(&mut opt, &mut a);
            step(&mut resumed, &mut b_copy);
            assert_eq!(a.as_vec(), b_copy.as_vec(), "{rule:?}");
        }
    }
}
