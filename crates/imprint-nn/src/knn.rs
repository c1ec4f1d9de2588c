//! Weighted k-nearest-neighbour classification on features, as self-supervised learning scores
//! a frozen encoder (Wu et al. 2018, InstDisc; lightly's benchmarks): features are
//! L2-normalised, each query's `k` most cosine-similar bank items vote for their class with
//! weight `exp(similarity / temperature)`.

use crate::tree::{join, Kind, Params, Var};
use crate::{ImprintDevice, Matrix};
use dfdx::prelude::*;

/// InstDisc's and lightly's settings: 200 neighbours, temperature 0.1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnSettings {
    pub k: usize,
    pub temperature: f32,
}

impl Default for KnnSettings {
    fn default() -> Self {
        Self {
            k: 200,
            temperature: 0.1,
        }
    }
}

/// Labelled features to vote with, kept as buffers so a kNN classifier saves and loads like
/// any other (`bank` `[n, dim]`, `labels` `[n]`).
#[derive(Clone, Debug)]
pub struct Bank<D: ImprintDevice> {
    /// Each row L2-normalised.
    bank: Var<D>,
    /// Class indices, as floats.
    labels: Var<D>,
    classes: usize,
}

impl<D: ImprintDevice> Params<D> for Bank<D> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a Var<D>)) {
        f(&join(prefix, "bank"), &self.bank);
        f(&join(prefix, "labels"), &self.labels);
    }
    fn visit_mut<'a>(&'a mut self, prefix: &str, f: &mut dyn FnMut(&str, &'a mut Var<D>)) {
        f(&join(prefix, "bank"), &mut self.bank);
        f(&join(prefix, "labels"), &mut self.labels);
    }
}

/// Divides each `dim`-wide row by its Euclidean norm (a zero row stays zero).
pub fn unit_rows(mut features: Vec<f32>, dim: usize) -> Vec<f32> {
    for row in features.chunks_exact_mut(dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    features
}

impl<D: ImprintDevice> Bank<D> {
    /// `features` holds `labels.len()` rows of `dim` values; they are normalised here.
    pub fn new(dev: &D, features: Vec<f32>, dim: usize, labels: &[usize], classes: usize) -> Self {
        assert_eq!(
            features.len(),
            labels.len() * dim,
            "one feature row per label"
        );
        let n = labels.len();
        Self {
            bank: Var::new(dev, unit_rows(features, dim), &[n, dim], Kind::Buffer),
            labels: Var::new(
                dev,
                labels.iter().map(|&l| l as f32).collect(),
                &[n],
                Kind::Buffer,
            ),
            classes,
        }
    }

    /// A bank of `n` zero rows, to load a saved one into.
    pub fn empty(dev: &D, n: usize, dim: usize, classes: usize) -> Self {
        Self::new(dev, vec![0.0; n * dim], dim, &vec![0; n], classes)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    fn dim(&self) -> usize {
        self.bank.shape[1]
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The predicted class of each query row and its share of the vote.
    pub fn predict(&self, queries: &[f32], settings: KnnSettings) -> Vec<(usize, f32)> {
        self.votes(queries, settings)
            .iter()
            .map(|row| {
                let (best, share) = row.iter().enumerate().fold((0, f64::MIN), |acc, (c, &v)| {
                    if v > acc.1 {
                        (c, v)
                    } else {
                        acc
                    }
                });
                (best, share as f32)
            })
            .collect()
    }

    /// Each query row's share of the vote per class (`classes` values a row, summing to 1, or
    /// to 0 from an empty bank).
    pub fn shares(&self, queries: &[f32], settings: KnnSettings) -> Vec<f32> {
        self.votes(queries, settings)
            .iter()
            .flat_map(|row| row.iter().map(|&v| v as f32))
            .collect()
    }

    /// Each query row's shares of the vote, one per class.
    fn votes(&self, queries: &[f32], settings: KnnSettings) -> Vec<Vec<f64>> {
        let dim = self.dim();
        let q = queries.len() / dim.max(1);
        if q == 0 || self.is_empty() {
            // An empty bank casts no vote.
            return vec![vec![0.0; self.classes.max(1)]; q];
        }
        let dev = self.bank.value.device();
        let queries: Matrix<D> = dev.tensor_from_vec(unit_rows(queries.to_vec(), dim), (q, dim));
        let bank: Matrix<D> = self.bank.value.clone().reshape_like(&(self.len(), dim));
        let similarity = queries.matmul(bank.permute::<_, Axes2<1, 0>>()).as_vec();
        let labels: Vec<usize> = self
            .labels
            .value
            .as_vec()
            .iter()
            .map(|&l| l as usize)
            .collect();
        let k = settings.k.clamp(1, self.len());
        similarity
            .chunks_exact(self.len())
            .map(|row| self.vote(row, &labels, k, settings.temperature))
            .collect()
    }

    /// The weighted votes of the `k` nearest bank rows, as shares per class.
    fn vote(&self, similarity: &[f32], labels: &[usize], k: usize, temperature: f32) -> Vec<f64> {
        let mut order: Vec<usize> = (0..similarity.len()).collect();
        // Nearest first; ties by index so the choice does not depend on the sort.
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            similarity[b].total_cmp(&similarity[a]).then(a.cmp(&b))
        });
        let mut votes = vec![0.0f64; self.classes];
        for &i in &order[..k] {
            votes[labels[i].min(self.classes - 1)] += ((similarity[i] / temperature) as f64).exp();
        }
        let total: f64 = votes.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        votes.iter().map(|v| v / total).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_by_cosine_and_weights_nearer_neighbours() {
        let dev = Cpu::default();
        // Class 0 along x, class 1 along y; lengths do not matter, directions do.
        let features = vec![1.0, 0.0, 5.0, 0.1, 0.0, 1.0, 0.1, 3.0];
        let bank = Bank::new(&dev, features, 2, &[0, 0, 1, 1], 2);
        let settings = KnnSettings {
            k: 3,
            temperature: 0.1,
        };
        let p = bank.predict(&[10.0, 1.0, 0.2, 2.0], settings);
        assert_eq!(p[0].0, 0);
        assert_eq!(p[1].0, 1);
        // Three neighbours: two of its own class, one of the other, far less similar.
        assert!(p[0].1 > 0.9 && p[0].1 < 1.0, "{p:?}");
        // k larger than the bank uses the whole bank.
        let all = bank.predict(
            &[1.0, 1.0],
            KnnSettings {
                k: 50,
                temperature: 1.0,
            },
        );
        assert!((all[0].1 - 0.5).abs() < 0.05, "{all:?}");
    }
}
