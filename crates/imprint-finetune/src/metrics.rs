//! Test metrics of a classifier: accuracy, macro-F1 and the confusion matrix.

use crate::Classifier;
use imprint_data::Dataset;
use imprint_nn::ImprintDevice;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Unweighted mean of per-class F1 (a class never predicted nor present counts 0).
    pub macro_f1: f64,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

impl Metrics {
    pub fn from_predictions(truth: &[usize], predicted: &[usize], classes: usize) -> Self {
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let f1: f64 = (0..classes)
            .map(|c| {
                let tp = confusion[c][c] as f64;
                let actual: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let denom = (actual + predicted) as f64;
                if denom == 0.0 {
                    0.0
                } else {
                    2.0 * tp / denom
                }
            })
            .sum();
        Self {
            accuracy: correct as f64 / truth.len().max(1) as f64,
            macro_f1: f1 / classes.max(1) as f64,
            confusion,
        }
    }
}

/// Metrics of `model` on a labeled `test` set whose classes were aligned to the model's.
pub fn evaluate<D: ImprintDevice>(
    dev: &D,
    model: &mut Classifier<D>,
    test: &Dataset,
) -> Option<Metrics> {
    let truth = test.labels.as_ref()?;
    let predicted: Vec<usize> = model
        .predict(dev, &test.pixels)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    Some(Metrics::from_predictions(
        truth,
        &predicted,
        model.classes.len(),
    ))
}
