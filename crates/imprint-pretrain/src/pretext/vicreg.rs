//! VICReg (Bardes, Ponce and LeCun 2022, "Variance-invariance-covariance regularization"): no
//! negatives and no teacher. An expander maps two views' codes, and the loss asks three things
//! of the two batches of outputs: that an image's two outputs agree (invariance: their mean
//! squared difference), that every output feature keep a standard deviation of at least 1 over
//! the batch (variance: a hinge, which stops the collapse to one point), and that the features
//! be uncorrelated (covariance: the squared off-diagonal covariances), weighted 25, 25 and 1,
//! as the paper and lightly's `VICRegLoss`.

use super::{
    gather_rows, mlp_bn, project, replicated, weighted, Batch, Method, Pretext, ViewNeeds,
};
use crate::{PretrainConfig, Result};
use dfdx::prelude::*;
use imprint_nn::{Encoder, ImprintDevice, Matrix, Pass, Sequential};
use imprint_train::Loss;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `{ kind = "vicreg", weight = 1.0, hidden = 2048, dim = 2048, invariance_weight = 25.0,
/// variance_weight = 25.0, covariance_weight = 1.0 }`: the expander's widths are solo-learn's
/// for CIFAR (`scripts/pretrain/cifar/vicreg.yaml`; the paper's ImageNet expander is 8192
/// wide), the three weights the paper's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub weight: f64,
    /// Width of the expander's two hidden layers.
    pub hidden: usize,
    /// Width of its output, which the loss reads.
    pub dim: usize,
    pub invariance_weight: f64,
    pub variance_weight: f64,
    pub covariance_weight: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            weight: 1.0,
            hidden: 2048,
            dim: 2048,
            invariance_weight: 25.0,
            variance_weight: 25.0,
            covariance_weight: 1.0,
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

    fn problem(&self, cfg: &PretrainConfig) -> Option<(&'static str, String)> {
        if self.hidden == 0 {
            return Some(("hidden", "must be at least 1".into()));
        }
        if self.dim == 0 {
            return Some(("dim", "must be at least 1".into()));
        }
        let terms = [
            ("invariance_weight", self.invariance_weight),
            ("variance_weight", self.variance_weight),
            ("covariance_weight", self.covariance_weight),
        ];
        if let Some((key, _)) = terms.iter().find(|(_, w)| !(*w >= 0.0 && w.is_finite())) {
            return Some((key, "must be a non-negative number".into()));
        }
        // The variances and covariances are over the batch, one image giving none.
        (cfg.batch_size < 2).then(|| {
            (
                "",
                "needs batch_size >= 2: the variance and covariance terms are over the batch".into(),
            )
        })
    }

    fn describe(&self) -> String {
        format!(
            "VICReg x{} (expander {} wide to {}, terms x{}/{}/{})",
            self.weight,
            self.hidden,
            self.dim,
            self.invariance_weight,
            self.variance_weight,
            self.covariance_weight
        )
    }

    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>> {
        let widths = [encoder.features(), self.hidden, self.hidden, self.dim];
        let off_diagonal = (0..self.dim * self.dim)
            .map(|i| if i / self.dim == i % self.dim { 0.0 } else { 1.0 })
            .collect();
        Ok(Box::new(Net {
            expander: mlp_bn(dev, &widths, rng),
            off_diagonal: dev.tensor_from_vec(off_diagonal, (self.dim, self.dim)),
            settings: self.clone(),
        }))
    }
}

struct Net<D: ImprintDevice> {
    expander: Sequential<D>,
    /// 1 off the diagonal of a `[dim, dim]` covariance matrix, 0 on it.
    off_diagonal: Matrix<D>,
    settings: Settings,
}

imprint_nn::params!(Net { expander as "vicreg.expander" });

impl<D: ImprintDevice> Pretext<D> for Net<D> {
    fn loss(&mut self, batch: &Batch<'_, D>, pass: &mut Pass) -> Loss<D> {
        let a = project(&mut self.expander, batch.codes.global(0), pass);
        let b = project(&mut self.expander, batch.codes.global(1), pass);
        let s = &self.settings;
        let terms = [
            s.invariance_weight as f32,
            s.variance_weight as f32,
            s.covariance_weight as f32,
        ];
        if batch.share.replicas.size() == 1 {
            return weighted(vicreg_loss(a, b, terms, &self.off_diagonal), s.weight);
        }
        // The variance and covariance are the global batch's: every replica takes the loss
        // whole on every share's expansions, its own rows carrying the gradient back.
        let (a, b) = (gather_rows(a, &batch.share), gather_rows(b, &batch.share));
        let loss = vicreg_loss(a, b, terms, &self.off_diagonal);
        weighted(replicated(loss, &batch.share), s.weight)
    }
}

/// The VICReg loss of the two views' outputs `a` and `b` (`[batch, dim]`, `batch >= 2`) with
/// the terms' weights `[invariance, variance, covariance]`, as lightly's `VICRegLoss`:
/// `mean((a - b)²)`; the mean over both views and the features of `relu(1 - sqrt(var + 1e-4))`
/// (unbiased variance over the batch); and, summed over both views, the squared off-diagonal
/// entries of the covariance matrix divided by `dim`. `off_diagonal` is 1 off the diagonal of a
/// `[dim, dim]` matrix, 0 on it.
pub(crate) fn vicreg_loss<D: ImprintDevice>(
    a: Matrix<D, OwnedTape<f32, D>>,
    b: Matrix<D, OwnedTape<f32, D>>,
    [invariance, variance, covariance]: [f32; 3],
    off_diagonal: &Matrix<D>,
) -> Loss<D> {
    let (rows, dim) = *a.shape();
    // Each output is read several times: by copies under its id, its own tape joining at the end.
    let agree = (a.retaped::<OwnedTape<f32, D>>() - b.retaped::<OwnedTape<f32, D>>()).square().mean::<(), _>();
    let spread = (hinge(a.retaped::<OwnedTape<f32, D>>(), rows, dim) + hinge(b.retaped::<OwnedTape<f32, D>>(), rows, dim)) * 0.5;
    let decorrelate = off_diagonal_squares(a.retaped::<OwnedTape<f32, D>>(), rows, dim, off_diagonal)
        + off_diagonal_squares(b.retaped::<OwnedTape<f32, D>>(), rows, dim, off_diagonal);
    let total = agree * invariance + spread * variance + decorrelate * covariance;
    let (total, tape) = total.split_tape();
    let tape = tape.merge(a.split_tape().1).merge(b.split_tape().1);
    total.put_tape(tape)
}

/// `x` less the mean of its rows.
fn centred<D: ImprintDevice>(
    x: Matrix<D, OwnedTape<f32, D>>,
    rows: usize,
    dim: usize,
) -> Matrix<D, OwnedTape<f32, D>> {
    let mean = x.retaped::<OwnedTape<f32, D>>().mean::<(usize,), Axis<0>>();
    x - mean.broadcast_like::<(usize, usize), Axis<0>>(&(rows, dim))
}

/// The mean over the features of `relu(1 - std)`, the standard deviation over the batch.
fn hinge<D: ImprintDevice>(x: Matrix<D, OwnedTape<f32, D>>, rows: usize, dim: usize) -> Loss<D> {
    let variance = centred(x, rows, dim).square().sum::<(usize,), Axis<0>>() / (rows - 1) as f32;
    ((variance + 1e-4).sqrt().negate() + 1.0)
        .relu()
        .mean::<(), _>()
}

/// The sum of the squared off-diagonal covariances of `x`'s features over the batch, over
/// `dim`.
fn off_diagonal_squares<D: ImprintDevice>(
    x: Matrix<D, OwnedTape<f32, D>>,
    rows: usize,
    dim: usize,
    off_diagonal: &Matrix<D>,
) -> Loss<D> {
    let c = centred(x, rows, dim);
    // dfdx's matmul needs two tensors of distinct ids, and a permute keeps the id: the right
    // side is a scaled copy, which carries the 1 / (rows - 1).
    let right = c.retaped::<OwnedTape<f32, D>>() / (rows - 1) as f32;
    let covariance = c.permute::<_, Axes2<1, 0>>().matmul(right);
    (covariance * off_diagonal.clone()).square().sum::<(), _>() / dim as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, values: Vec<f32>) -> Matrix<Cpu> {
        let cols = values.len() / rows;
        Cpu::default().tensor_from_vec(values, (rows, cols))
    }

    fn mask(dim: usize) -> Matrix<Cpu> {
        let values = (0..dim * dim).map(|i| (i / dim != i % dim) as u8 as f32).collect();
        matrix(dim, values)
    }

    /// a = [[1, 2], [3, 2]], b = [[1, 2], [3, 4]]: invariance (0 + 0 + 0 + 4) / 4 = 1. Variance
    /// over the batch (unbiased, of 2 rows): a's features 2 and 0, so standard deviations
    /// 1.414... and 0.01 (the 1e-4), hinges 0 and 0.99, mean 0.495; b's 2 and 2, hinges 0; the
    /// term (0.495 + 0) / 2 = 0.2475. Covariances: a's [[2, 0], [0, 0]] (off-diagonal 0), b's
    /// [[2, 2], [2, 2]] (off-diagonal squares 8, over dim 2: 4); the term 4. Weighted 25, 25, 1:
    /// 25 + 6.1875 + 4 = 35.1875.
    #[test]
    fn vicreg_loss_by_hand() {
        let a = matrix(2, vec![1.0, 2.0, 3.0, 2.0]);
        let b = matrix(2, vec![1.0, 2.0, 3.0, 4.0]);
        let loss = vicreg_loss(a.leaky_trace(), b.leaky_trace(), [25.0, 25.0, 1.0], &mask(2));
        let value = loss.as_vec()[0];
        assert!((value - 35.1875).abs() < 1e-4, "{value}");
        for (terms, part) in [([1.0, 0.0, 0.0], 1.0), ([0.0, 1.0, 0.0], 0.2475), ([0.0, 0.0, 1.0], 4.0)] {
            let loss = vicreg_loss(a.leaky_trace(), b.leaky_trace(), terms, &mask(2));
            assert!((loss.as_vec()[0] - part).abs() < 1e-5, "{terms:?}");
        }
    }

    #[test]
    fn vicreg_loss_gradient_matches_finite_differences() {
        let values = |seed: usize| -> Vec<f32> {
            (0..12).map(|i| ((i * 7 + seed * 5) % 13) as f32 / 8.0 - 0.7).collect()
        };
        let (va, vb) = (values(1), values(2));
        let loss_of = |a: &[f32], b: &[f32]| {
            let (a, b) = (matrix(4, a.to_vec()), matrix(4, b.to_vec()));
            vicreg_loss(a.leaky_trace(), b.leaky_trace(), [25.0, 25.0, 1.0], &mask(3)).as_vec()[0]
        };
        let (a, b) = (matrix(4, va.clone()), matrix(4, vb.clone()));
        let grads = vicreg_loss(a.leaky_trace(), b.leaky_trace(), [25.0, 25.0, 1.0], &mask(3))
            .backward();
        let (ga, gb) = (grads.get(&a).as_vec(), grads.get(&b).as_vec());
        let eps = 1e-3;
        for i in 0..12 {
            let shifted = |view: usize, d: f32| {
                let (mut a, mut b) = (va.clone(), vb.clone());
                if view == 0 {
                    a[i] += d
                } else {
                    b[i] += d
                }
                loss_of(&a, &b)
            };
            for (view, analytic) in [(0, ga[i]), (1, gb[i])] {
                let numeric = (shifted(view, eps) - shifted(view, -eps)) / (2.0 * eps);
                assert!(
                    (numeric - analytic).abs() < 5e-3 * (1.0 + analytic.abs()),
                    "view {view}, element {i}: finite differences {numeric}, backward {analytic}"
                );
            }
        }
    }
}
