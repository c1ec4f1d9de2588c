//! BYOL (Grill et al. 2020, "Bootstrap your own latent"): the online net (encoder, projector,
//! predictor) predicts, from one view, the projection a momentum teacher (a copy of encoder
//! and projector that the optimizer never sees) gives the other view. The loss is the mean
//! squared distance between the two after normalising each to unit length, `2 - 2 cos`,
//! summed over both directions (the paper's symmetrised loss). After each optimizer step the
//! teacher moves towards the online net with a momentum rising from `momentum` to 1 on a
//! cosine over the run's steps (section 3.2).

use super::{ema, frozen, mlp_bn, project, weighted, Batch, Method, Pretext, Progress, ViewNeeds};
use crate::{PretrainConfig, Result};
use dfdx::prelude::*;
use imprint_nn::loss::unit_rows;
use imprint_nn::{Encoder, ImprintDevice, Matrix, Pass, Sequential};
use imprint_train::Loss;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `{ kind = "byol", weight = 1.0, hidden = 1024, dim = 256, momentum = 0.99 }`; the widths
/// and momentum are lightly's CIFAR-10 benchmark's (solo-learn's CIFAR BYOL also starts at
/// 0.99; the paper's ImageNet runs at 0.996 with 4096 hidden).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub weight: f64,
    /// Width of the projector's and predictor's hidden layer.
    pub hidden: usize,
    /// Width of the projections the loss compares.
    pub dim: usize,
    /// The teacher's momentum at the first step; it rises to 1 at the last.
    pub momentum: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            weight: 1.0,
            hidden: 1024,
            dim: 256,
            momentum: 0.99,
        }
    }
}

impl Method for Settings {
    fn weight(&self) -> f64 {
        self.weight
    }

    fn views(&self) -> ViewNeeds {
        ViewNeeds {
            global: 2,
            ..ViewNeeds::default()
        }
    }

    fn problem(&self, _cfg: &PretrainConfig) -> Option<(&'static str, String)> {
        if self.hidden == 0 {
            return Some(("hidden", "must be at least 1".into()));
        }
        if self.dim == 0 {
            return Some(("dim", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Some(("momentum", "must be in [0, 1]".into()));
        }
        None
    }

    fn describe(&self) -> String {
        format!(
            "BYOL x{} (projections of {} through {} hidden, teacher momentum {} -> 1)",
            self.weight, self.dim, self.hidden, self.momentum
        )
    }

    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>> {
        let projector = mlp_bn(dev, &[encoder.features(), self.hidden, self.dim], rng);
        let predictor = mlp_bn(dev, &[self.dim, self.hidden, self.dim], rng);
        Ok(Box::new(Net {
            teacher: Teacher {
                encoder: frozen(encoder),
                projector: frozen(&projector),
            },
            projector,
            predictor,
            settings: self.clone(),
        }))
    }
}

/// The momentum copy of the online encoder and projector.
struct Teacher<D: ImprintDevice> {
    encoder: Encoder<D>,
    projector: Sequential<D>,
}

imprint_nn::params!(Teacher { encoder, projector });

pub(crate) struct Net<D: ImprintDevice> {
    projector: Sequential<D>,
    predictor: Sequential<D>,
    teacher: Teacher<D>,
    settings: Settings,
}

imprint_nn::params!(Net {
    projector as "byol.projector",
    predictor as "byol.predictor",
    teacher as "byol.teacher",
});

impl<D: ImprintDevice> Pretext<D> for Net<D> {
    fn loss(&mut self, batch: &Batch<'_, D>, pass: &mut Pass) -> Loss<D> {
        let mut predict = |view: usize, pass: &mut Pass| {
            let z = project(&mut self.projector, batch.codes.global(view), pass);
            project(&mut self.predictor, z, pass)
        };
        let (p0, p1) = (predict(0, pass), predict(1, pass));
        let (dev, rows) = (p0.device().clone(), p0.shape().0);
        let teacher = &mut self.teacher;
        let mut target = |view: usize, pass: &mut Pass| {
            let pixels = &batch.views.global[view];
            let x: Matrix<D> = dev.tensor_from_vec(pixels.clone(), (rows, pixels.len() / rows));
            let code = teacher.encoder.forward(x, pass);
            project(&mut teacher.projector, code, pass)
        };
        let (z0, z1) = (target(0, pass), target(1, pass));
        let loss = normalized_mse(p0, z1) + normalized_mse(p1, z0);
        // A mean over the rows: each replica's share of it adds up to the global batch's.
        weighted(batch.share.weigh(loss), self.settings.weight)
    }

    fn after_step(&mut self, student: &Encoder<D>, at: Progress) {
        let momentum = at.cosine(self.settings.momentum, 1.0) as f32;
        ema(&mut self.teacher.encoder, student, momentum);
        ema(&mut self.teacher.projector, &self.projector, momentum);
    }
}

/// BYOL's loss of predictions `p` against targets `z` (both `[batch, dim]`): the mean over the
/// rows of `|p/|p| - z/|z||² = 2 - 2 cos(p, z)`.
pub(crate) fn normalized_mse<D: ImprintDevice>(
    p: Matrix<D, OwnedTape<f32, D>>,
    z: Matrix<D>,
) -> Loss<D> {
    let cosines = (unit_rows(p) * unit_rows(z)).sum::<(usize,), Axis<1>>();
    cosines.mean::<(), _>() * -2.0 + 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, values: Vec<f32>) -> Matrix<Cpu> {
        let cols = values.len() / rows;
        Cpu::default().tensor_from_vec(values, (rows, cols))
    }

    /// Rows (3, 4) against (4, 3): cos 24/25, so 2 - 48/25 = 0.08; (1, 0) against (0, 2):
    /// cos 0, so 2; their mean 1.04. The lengths do not matter, only the directions.
    #[test]
    fn normalized_mse_by_hand() {
        let p = matrix(2, vec![3.0, 4.0, 1.0, 0.0]);
        let z = matrix(2, vec![4.0, 3.0, 0.0, 2.0]);
        let loss = normalized_mse(p.leaky_trace(), z).as_vec()[0];
        assert!((loss - 1.04).abs() < 1e-6, "{loss}");
        let same = normalized_mse(matrix(1, vec![2.0, 0.0]).leaky_trace(), matrix(1, vec![5.0, 0.0]));
        assert!(same.as_vec()[0].abs() < 1e-6);
    }

    #[test]
    fn normalized_mse_gradient_matches_finite_differences() {
        let values: Vec<f32> = (0..12).map(|i| ((i * 7 + 3) % 11) as f32 / 5.0 - 1.0).collect();
        let z: Vec<f32> = (0..12).map(|i| ((i * 5 + 1) % 9) as f32 / 4.0 - 1.0).collect();
        let p = matrix(3, values.clone());
        let grads = normalized_mse(p.leaky_trace(), matrix(3, z.clone())).backward();
        let analytic = grads.get(&p).as_vec();
        let eps = 1e-3;
        for i in 0..values.len() {
            let at = |d: f32| {
                let mut v = values.clone();
                v[i] += d;
                normalized_mse(matrix(3, v).leaky_trace(), matrix(3, z.clone())).as_vec()[0]
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "element {i}: finite differences {numeric}, backward {}",
                analytic[i]
            );
        }
    }
}
