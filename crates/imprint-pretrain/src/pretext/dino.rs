//! DINO (Caron et al. 2021, "Emerging properties in self-supervised vision transformers"):
//! self-distillation without labels. A student (encoder and head) and a momentum teacher (a
//! copy of both that the optimizer never sees) each give a distribution over `output_dim`
//! outputs; the teacher's, on the two full-size views, is centred (its outputs less a running
//! mean `center`, which keeps one output from taking over) and sharpened by a low temperature
//! (which keeps the distribution from going flat); the student, at its own temperature, must
//! match it on every other view, small crops included: the cross-entropy over every (teacher
//! full-size view, student view) pair but a view with itself, as the paper's Algorithm 1 and
//! lightly's `DINOLoss`. After each optimizer step the centre moves towards the batch's mean
//! teacher output, and the teacher towards the student with a momentum rising to 1 on a
//! cosine over the run's steps.
//!
//! The head is lightly's CIFAR-10 benchmark's: a two-layer MLP with batch norm (ReLU where
//! lightly has GELU), normalised to unit length, then a weight-normalised linear layer without
//! bias whose rows keep length 1 (the paper's `norm_last_layer`).

use super::{
    ema, frozen, mlp_bn, project, weighted, Batch, LocalCrops, Method, Pretext, Progress,
    ViewNeeds,
};
use crate::{PretrainConfig, Result};
use dfdx::prelude::*;
use imprint_nn::loss::unit_rows;
use imprint_nn::{Encoder, ImprintDevice, Kind, Matrix, Pass, Sequential, Var, Vector};
use imprint_train::Loss;
use rand::distributions::{Distribution, Uniform};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `{ kind = "dino", weight = 1.0, ... }`, with optional small crops ([`LocalCrops`]). The
/// defaults: widths from lightly's CIFAR-10 benchmark (2048 hidden, 256 bottleneck, 2048
/// outputs); student temperature 0.1, teacher 0.04 rising to 0.07 over the first 30% of the
/// steps, centre momentum 0.9 and teacher momentum 0.996 from the paper (its warm-up is 30
/// epochs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub weight: f64,
    /// Width of the head's hidden layer.
    pub hidden: usize,
    /// Width of the unit-length rows before the last layer.
    pub bottleneck: usize,
    /// The number of outputs the distributions are over (the paper's K).
    pub output_dim: usize,
    pub student_temperature: f64,
    /// The teacher's temperature after the warm-up.
    pub teacher_temperature: f64,
    /// The teacher's temperature at the first step.
    pub teacher_temperature_start: f64,
    /// Share of the steps over which the teacher's temperature rises.
    pub teacher_warmup_fraction: f64,
    /// Momentum of the centre's running mean.
    pub center_momentum: f64,
    /// The teacher's momentum at the first step; it rises to 1 at the last.
    pub momentum: f64,
    #[serde(flatten)]
    pub crops: LocalCrops,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            weight: 1.0,
            hidden: 2048,
            bottleneck: 256,
            output_dim: 2048,
            student_temperature: 0.1,
            teacher_temperature: 0.07,
            teacher_temperature_start: 0.04,
            teacher_warmup_fraction: 0.3,
            center_momentum: 0.9,
            momentum: 0.996,
            crops: LocalCrops::default(),
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
            local: self.crops.some(),
            ..ViewNeeds::default()
        }
    }

    fn problem(&self, _cfg: &PretrainConfig) -> Option<(&'static str, String)> {
        let widths = [
            ("hidden", self.hidden),
            ("bottleneck", self.bottleneck),
            ("output_dim", self.output_dim),
        ];
        if let Some((key, _)) = widths.iter().find(|(_, w)| *w == 0) {
            return Some((key, "must be at least 1".into()));
        }
        let temperatures = [
            ("student_temperature", self.student_temperature),
            ("teacher_temperature", self.teacher_temperature),
            ("teacher_temperature_start", self.teacher_temperature_start),
        ];
        if let Some((key, _)) = temperatures
            .iter()
            .find(|(_, t)| !(*t > 0.0 && t.is_finite()))
        {
            return Some((key, "must be a positive number".into()));
        }
        let shares = [
            ("teacher_warmup_fraction", self.teacher_warmup_fraction),
            ("center_momentum", self.center_momentum),
            ("momentum", self.momentum),
        ];
        if let Some((key, _)) = shares.iter().find(|(_, s)| !(0.0..=1.0).contains(s)) {
            return Some((key, "must be in [0, 1]".into()));
        }
        self.crops.problem()
    }

    fn describe(&self) -> String {
        format!(
            "DINO x{} ({} outputs, student temperature {}, teacher {} -> {} over {}% of the \
             steps, teacher momentum {} -> 1{})",
            self.weight,
            self.output_dim,
            self.student_temperature,
            self.teacher_temperature_start,
            self.teacher_temperature,
            self.teacher_warmup_fraction * 100.0,
            self.momentum,
            self.crops.describe()
        )
    }

    fn build<D: ImprintDevice>(
        &self,
        dev: &D,
        encoder: &Encoder<D>,
        rng: &mut ChaCha8Rng,
    ) -> Result<Box<dyn Pretext<D>>> {
        let head = Head {
            mlp: mlp_bn(dev, &[encoder.features(), self.hidden, self.bottleneck], rng),
            last: NormedLinear::new(dev, self.bottleneck, self.output_dim, rng),
        };
        let center = Var::new(
            dev,
            vec![0.0; self.output_dim],
            &[self.output_dim],
            Kind::Buffer,
        );
        Ok(Box::new(Net {
            teacher: Teacher {
                encoder: frozen(encoder),
                head: frozen(&head),
            },
            head,
            center,
            batch_center: None,
            settings: self.clone(),
        }))
    }
}

/// A linear layer without bias whose weight rows are used at unit length:
/// `x · (W / |W|_rows)ᵀ`, weight normalisation with its scale fixed at 1.
#[derive(Clone, Debug)]
pub(crate) struct NormedLinear<D: ImprintDevice> {
    /// `[out, in]`.
    weight: Var<D>,
}

imprint_nn::params!(NormedLinear { weight });

impl<D: ImprintDevice> NormedLinear<D> {
    /// PyTorch's default init of `nn.Linear`'s weight: uniform in ±1/sqrt(in).
    fn new(dev: &D, input: usize, output: usize, rng: &mut ChaCha8Rng) -> Self {
        let bound = 1.0 / (input as f32).sqrt();
        let dist = Uniform::new_inclusive(-bound, bound);
        let values = (0..input * output).map(|_| dist.sample(rng)).collect();
        Self {
            weight: Var::new(dev, values, &[output, input], Kind::Param),
        }
    }

    fn forward<T: Tape<f32, D> + Merge<T>>(&self, x: Matrix<D, T>) -> Matrix<D, T> {
        let shape = (self.weight.shape[0], self.weight.shape[1]);
        // A copy of the weight under its own id: the gradient reaches the parameter.
        let w = self.weight.value.clone().retaped::<T>().reshape_like(&shape);
        x.matmul(unit_rows(w).permute::<_, Axes2<1, 0>>())
    }
}

#[derive(Clone, Debug)]
struct Head<D: ImprintDevice> {
    mlp: Sequential<D>,
    last: NormedLinear<D>,
}

imprint_nn::params!(Head { mlp, last });

impl<D: ImprintDevice> Head<D> {
    fn forward<T: Tape<f32, D> + Merge<T>>(&mut self, z: Matrix<D, T>, pass: &mut Pass) -> Matrix<D, T> {
        self.last.forward(unit_rows(project(&mut self.mlp, z, pass)))
    }
}

/// The momentum copy of the student's encoder and head.
struct Teacher<D: ImprintDevice> {
    encoder: Encoder<D>,
    head: Head<D>,
}

imprint_nn::params!(Teacher { encoder, head });

pub(crate) struct Net<D: ImprintDevice> {
    head: Head<D>,
    teacher: Teacher<D>,
    /// The running mean of the teacher's outputs, `[output_dim]`.
    center: Var<D>,
    /// This step's mean teacher output, for the centre's move after the step.
    batch_center: Option<Vector<D>>,
    settings: Settings,
}

imprint_nn::params!(Net {
    head as "dino.head",
    teacher as "dino.teacher",
    center as "dino.center",
});

impl<D: ImprintDevice> Pretext<D> for Net<D> {
    fn loss(&mut self, batch: &Batch<'_, D>, pass: &mut Pass) -> Loss<D> {
        let s = &self.settings;
        let teacher_temperature =
            batch
                .at
                .warm_up(s.teacher_temperature_start, s.teacher_temperature, s.teacher_warmup_fraction);
        let dev = self.center.value.device().clone();
        let rows = batch.codes.global[0].shape().0;
        let mut teacher = Vec::with_capacity(2);
        for view in &batch.views.global[..2] {
            let x: Matrix<D> = dev.tensor_from_vec(view.clone(), (rows, view.len() / rows));
            let code = self.teacher.encoder.forward(x, pass);
            teacher.push(self.teacher.head.forward(code, pass));
        }
        // The centre moves towards the mean over the global batch: every replica's sums.
        let mut batch_sum = teacher
            .iter()
            .map(|t| t.clone().sum::<(usize,), Axis<0>>())
            .reduce(|a, b| a + b)
            .expect("two views")
            .as_vec();
        batch.share.replicas.sum(&mut batch_sum);
        let global_rows = teacher.len() * batch.share.total;
        let batch_sum: Vector<D> = dev.tensor_from_vec(batch_sum, (s.output_dim,));
        self.batch_center = Some(batch_sum / global_rows as f32);
        let students: Vec<_> = batch
            .codes
            .all()
            .into_iter()
            .map(|code| self.head.forward(code, pass))
            .collect();
        let loss = dino_loss(
            &teacher,
            students,
            &self.center.value,
            teacher_temperature as f32,
            self.settings.student_temperature as f32,
        );
        // A mean over the rows: each replica's share of it adds up to the global batch's.
        weighted(batch.share.weigh(loss), self.settings.weight)
    }

    fn after_step(&mut self, student: &Encoder<D>, at: Progress) {
        if let Some(batch_center) = self.batch_center.take() {
            let m = self.settings.center_momentum as f32;
            self.center.value = self.center.value.clone() * m + batch_center * (1.0 - m);
        }
        let momentum = at.cosine(self.settings.momentum, 1.0) as f32;
        ema(&mut self.teacher.encoder, student, momentum);
        ema(&mut self.teacher.head, &self.head, momentum);
    }
}

/// DINO's loss: `teacher` holds the teacher's outputs on the full-size views, `students` the
/// student's on every view, the full-size ones first (in the same order), each `[batch,
/// outputs]`. The teacher's distributions are `softmax((t - center) / teacher_temperature)`,
/// the student's log-probabilities `log_softmax(s / student_temperature)`; the loss is the mean
/// over the rows and over every (teacher view i, student view j) pair with `i != j` of the
/// cross-entropy `-Σ_k p_i[k] log q_j[k]`.
pub(crate) fn dino_loss<D: ImprintDevice>(
    teacher: &[Matrix<D>],
    students: Vec<Matrix<D, OwnedTape<f32, D>>>,
    center: &Vector<D>,
    teacher_temperature: f32,
    student_temperature: f32,
) -> Loss<D> {
    let (rows, outputs) = *teacher[0].shape();
    let center = center
        .clone()
        .broadcast_like::<(usize, usize), Axis<0>>(&(rows, outputs));
    let targets: Vec<Matrix<D>> = teacher
        .iter()
        .map(|t| ((t.clone() - center.clone()) / teacher_temperature).softmax::<Axis<1>>())
        .collect();
    let pairs = teacher.len() * students.len() - teacher.len().min(students.len());
    let mut total: Option<Loss<D>> = None;
    for (j, student) in students.into_iter().enumerate() {
        // A student view meets the teacher's of every other full-size view at once: the sum
        // of their distributions.
        let Some(target) = targets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != j)
            .map(|(_, t)| t.clone())
            .reduce(|a, b| a + b)
        else {
            continue;
        };
        let log_q = (student / student_temperature).log_softmax::<Axis<1>>();
        let term = (log_q * target).sum::<(), _>();
        total = Some(match total {
            None => term,
            Some(t) => t + term,
        });
    }
    total.expect("a pair of distinct views") * (-1.0 / (pairs * rows) as f32)
}

#[cfg(test)]
mod tests;
