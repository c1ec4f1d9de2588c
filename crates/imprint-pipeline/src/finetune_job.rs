//! The `finetune` job and the fine-tuning run every comparison is made of: a labeled subset, a
//! classifier trained by a strategy, its test metrics.

use crate::provenance::{RunLog, VERSION};
use crate::resume_point;
use crate::sidecar::{read_sidecar, sidecar_path, write_json, KnnVote, MODEL_FORMAT};
use crate::{
    create_dir, EncoderSidecar, ModelSidecar, Pipeline, PipelineError, Prepared, Result, Sidecar,
};
use dfdx::prelude::Cpu;
use imprint_data::split::{sample_labeled, write_selection_csv, LabelBudget};
use imprint_data::{Dataset, ImageShape, Preprocess, SourceFile, SourceRecord};
use imprint_finetune::{
    evaluate, finetune_with, Classifier, FinetuneError, FinetuneHooks, FinetuneSnapshot, Head,
    Metrics, Strategy,
};
use imprint_nn::{save_tensors, Architecture, Encoder, ParamsExt};
use imprint_report::{self as report, RunRecord};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A checkpoint fine-tuning can start from: a pre-trained or imported encoder, or any
/// classifier, whose head is then dropped for a new one.
#[derive(Clone, Debug)]
pub struct StartPoint {
    pub weights: PathBuf,
    pub architecture: Architecture,
    pub input: ImageShape,
    pub preprocess: Preprocess,
    /// The file, its size and digest, for the new model's sidecar.
    pub source: SourceFile,
}

impl StartPoint {
    /// Reads the sidecar beside `weights`, an encoder's or a classifier's.
    pub fn read(weights: &Path) -> Result<Self> {
        let (architecture, input, preprocess) = match read_sidecar(&sidecar_path(weights))? {
            Sidecar::Encoder(s) => (s.architecture, s.input, s.preprocess),
            Sidecar::Model(s) => (s.architecture, s.input, s.preprocess),
        };
        let (bytes, sha256) = imprint_fs::size_and_sha256(weights)?;
        Ok(Self {
            weights: weights.to_path_buf(),
            architecture,
            input,
            preprocess,
            source: SourceFile {
                path: weights.display().to_string(),
                bytes,
                sha256,
            },
        })
    }

    /// Makes `p` fit this network: its architecture, and the input size and normalisation it
    /// was trained with (the pipeline's inversion stays).
    pub fn adopt(&self, p: &mut Pipeline) {
        p.pretrain.architecture = self.architecture.clone();
        let prep = &mut p.data.preprocess;
        prep.channels = Some(self.input.channels);
        prep.height = Some(self.input.height);
        prep.width = Some(self.input.width);
        prep.mean = self.preprocess.mean.clone();
        prep.std = self.preprocess.std.clone();
    }

    /// The encoder, refusing one whose architecture or input shape differs from what `p` and
    /// the data need.
    pub fn encoder_for(&self, p: &Pipeline, shape: ImageShape) -> Result<Encoder<Cpu>> {
        let input = |message: String| PipelineError::Input {
            path: self.weights.display().to_string(),
            message,
        };
        if self.architecture != p.pretrain.architecture {
            return Err(input(format!(
                "checkpoint architecture is {}, the pipeline asks for {} (architecture mismatch)",
                self.architecture.describe(self.input),
                p.pretrain.architecture.describe(shape)
            )));
        }
        if self.input != shape {
            return Err(input(format!(
                "checkpoint takes {} images, the data is {}; set [data.preprocess] to {}",
                self.input, shape, self.input
            )));
        }
        encoder_from(
            &self.weights,
            &self.architecture,
            self.input,
            &self.preprocess,
        )
    }
}

/// Loads a pre-trained encoder (or a classifier's), refusing one whose architecture or input
/// shape differs from what `p` and the data need.
pub fn load_encoder(weights: &Path, p: &Pipeline, shape: ImageShape) -> Result<Encoder<Cpu>> {
    StartPoint::read(weights)?.encoder_for(p, shape)
}

/// The encoder a sidecar describes, with the weights of `weights`.
pub(crate) fn encoder_of(weights: &Path, side: &EncoderSidecar) -> Result<Encoder<Cpu>> {
    encoder_from(weights, &side.architecture, side.input, &side.preprocess)
}

/// The `encoder.*` tensors of `weights` in an encoder of this architecture and input.
fn encoder_from(
    weights: &Path,
    architecture: &Architecture,
    input: ImageShape,
    preprocess: &Preprocess,
) -> Result<Encoder<Cpu>> {
    let tensors = crate::bounds::weights(weights)?;
    let mut encoder = Encoder::new(
        &Cpu::default(),
        architecture,
        input,
        &mut ChaCha8Rng::seed_from_u64(0),
    )?;
    encoder.load_named("encoder", &tensors, &weights.display().to_string())?;
    Ok(encoder.normalized(preprocess.normalize()))
}

/// A fresh encoder for the `scratch` baseline, its init drawn from `seed`.
pub(crate) fn fresh_encoder(p: &Pipeline, shape: ImageShape, seed: u64) -> Result<Encoder<Cpu>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000));
    let encoder = Encoder::new(&Cpu::default(), &p.pretrain.architecture, shape, &mut rng)?;
    Ok(encoder.normalized(p.data.preprocess.normalize()))
}

pub struct FinetuneOutcome {
    pub model: Classifier<Cpu>,
    pub metrics: Metrics,
    pub record: RunRecord,
}

/// The labeled images one `finetune` run trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Labels {
    /// A draw of this many of each class (seeded).
    PerClass(usize),
    /// Every labeled image, whatever each class holds; recorded as 0 labels per class.
    All,
}

impl Labels {
    /// The per-class budget its records and `[finetune_by_budget]` go by: 0 for every label.
    fn per_class(self) -> usize {
        match self {
            Labels::PerClass(k) => k,
            Labels::All => 0,
        }
    }
}

/// How a run's output says what it trained on.
impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Labels::PerClass(k) => write!(f, "{k} labels per class"),
            Labels::All => f.write_str("every label"),
        }
    }
}

/// The labeled images `ids` as a dataset, their list written to `selection_csv`.
fn selected(data: &Prepared, ids: &[usize], selection_csv: &Path) -> Result<Dataset> {
    if let Some(parent) = selection_csv.parent() {
        create_dir(parent)?;
    }
    write_selection_csv(selection_csv, &data.labeled, ids)?;
    Ok(data.labeled.subset(ids))
}

/// The labeled subset for (`labels_per_class`, `seed`), recorded in `selection_csv`.
pub(crate) fn labeled_subset(
    data: &Prepared,
    k: usize,
    seed: u64,
    selection_csv: &Path,
) -> Result<Dataset> {
    let labels = data.labeled.labels.as_deref().unwrap_or_default();
    let input = |message: String| PipelineError::Input {
        path: "labels per class".into(),
        message,
    };
    if k == 0 {
        return Err(input("must be at least 1".into()));
    }
    // Named by the class, as the user knows it.
    if let Some((name, count)) = data
        .labeled
        .class_counts()
        .into_iter()
        .find(|(_, n)| *n < k)
    {
        return Err(input(format!(
            "{k} per class asked for, but class `{name}` has only {count} labeled images"
        )));
    }
    let ids = sample_labeled(
        labels,
        data.labeled.num_classes(),
        LabelBudget::PerClass(k),
        seed,
    )?;
    selected(data, &ids, selection_csv)
}

fn write_confusion(path: &Path, classes: &[String], m: &Metrics) -> Result<()> {
    let mut text = String::from("true\\predicted");
    for c in classes {
        text.push(',');
        text.push_str(c);
    }
    text.push('\n');
    for (c, row) in classes.iter().zip(&m.confusion) {
        text.push_str(c);
        for v in row {
            text.push_str(&format!(",{v}"));
        }
        text.push('\n');
    }
    imprint_fs::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Fine-tunes one strategy on one labeled subset and evaluates it on the test set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_one(
    p: &Pipeline,
    data: &Prepared,
    train: &Dataset,
    pretrained: Option<&Encoder<Cpu>>,
    strategy: Strategy,
    k: usize,
    seed: u64,
    out: &Path,
    resume: bool,
) -> Result<FinetuneOutcome> {
    let p = &p.for_budget(k)?;
    let dev = Cpu::default();
    let encoder = match (strategy.uses_pretrained(), pretrained) {
        (false, _) => fresh_encoder(p, train.shape, seed)?,
        (true, Some(e)) => e.clone(),
        (true, None) => {
            return Err(PipelineError::Output(format!(
                "strategy `{}` needs a pre-trained encoder",
                strategy.name()
            )))
        }
    };
    // Self-training's teacher and the test set's scores run within the data's budget.
    let encoder = encoder.within_memory(p.data.storage().memory_budget);
    create_dir(out)?;
    let checkpoint = resume_point::checkpoint_path(out);
    let run = (strategy, k);
    let snapshot = (resume && checkpoint.exists())
        .then(|| resume_point::load_finetune(&checkpoint, p, data, run))
        .transpose()?;
    let mut save = |s: &FinetuneSnapshot| {
        resume_point::save_finetune(&checkpoint, p, data, run, s)
            .map_err(|e| FinetuneError::Data(e.to_string()))
    };
    let hooks = FinetuneHooks {
        every: p.finetune.checkpoint_every,
        on_checkpoint: Some(&mut save),
    };
    let start = Instant::now();
    let (mut model, history) = finetune_with(
        &dev,
        encoder,
        train,
        Some(&data.unlabeled),
        &p.finetune,
        strategy,
        seed,
        hooks,
        snapshot.as_ref(),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let metrics = evaluate(&dev, &mut model, &data.test)
        .ok_or_else(|| PipelineError::Output("test set has no labels".into()))?;
    resume_point::remove(&checkpoint)?;
    write_confusion(&out.join("confusion.csv"), &model.classes, &metrics)?;
    if !history.validation.is_empty() {
        let rows: Vec<Vec<f64>> = history
            .validation
            .iter()
            .map(|v| vec![v.step as f64, v.accuracy, v.loss])
            .collect();
        report::write_table_csv(
            &out.join("validation.csv"),
            &["step", "accuracy", "loss"],
            &rows,
        )?;
    }
    let record = RunRecord {
        strategy: strategy.name().into(),
        labels_per_class: k,
        seed,
        test_accuracy: metrics.accuracy,
        macro_f1: metrics.macro_f1,
        pretrain_seconds: 0.0,
        finetune_seconds: seconds,
        epochs_run: history.steps_run,
    };
    write_json(
        &out.join("metrics.json"),
        &serde_json::json!({
            "strategy": record.strategy, "labels_per_class": k, "seed": seed,
            "test_accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1,
            "labeled_images": train.len(), "test_images": data.test.len(),
            "finetune_seconds": seconds,
            "pseudo_labels": history.pseudo_labels,
        }),
    )?;
    Ok(FinetuneOutcome {
        model,
        metrics,
        record,
    })
}

/// The `finetune` command: one strategy, one budget, one seed; saves the model
/// (`model.safetensors` + `model.json`), the labeled items, metrics, confusion matrix and
/// `run.json`.
#[allow(clippy::too_many_arguments)]
pub fn finetune_job(
    p: &Pipeline,
    data: &Prepared,
    start: Option<&StartPoint>,
    strategy: Strategy,
    labels: Labels,
    seed: u64,
    out: &Path,
    log: &mut RunLog,
    resume: bool,
) -> Result<FinetuneOutcome> {
    // Check the encoder before writing anything.
    let pretrained = match (strategy.uses_pretrained(), start) {
        (true, Some(s)) => Some(log.time("load encoder", || s.encoder_for(p, data.shape()))?),
        (true, None) => {
            return Err(PipelineError::Input {
                path: "command line".into(),
                message: format!(
                "strategy `{}` needs --init PATH (an encoder.safetensors or a model.safetensors)",
                strategy.name()
            ),
            })
        }
        (false, _) => None,
    };
    create_dir(out)?;
    let selection = out.join("labeled.csv");
    let train = match labels {
        Labels::PerClass(k) => labeled_subset(data, k, seed, &selection)?,
        Labels::All => {
            let every: Vec<usize> = (0..data.labeled.len()).collect();
            selected(data, &every, &selection)?
        }
    };
    let k = labels.per_class();
    let outcome = run_one(
        p,
        data,
        &train,
        pretrained.as_ref(),
        strategy,
        k,
        seed,
        out,
        resume,
    )?;
    log.stage(
        run_name(strategy.name(), k, seed),
        outcome.record.finetune_seconds,
        false,
    );
    save_tensors(
        &out.join("model.safetensors"),
        &outcome.model.named_tensors(""),
        &BTreeMap::new(),
    )?;
    write_json(
        &out.join("model.json"),
        &ModelSidecar {
            format: MODEL_FORMAT.into(),
            architecture: p.pretrain.architecture.clone(),
            input: data.shape(),
            preprocess: p.data.preprocess.clone(),
            classes: outcome.model.classes.clone(),
            strategy: strategy.name().into(),
            seed,
            program_version: VERSION.into(),
            data: SourceRecord::of(&data.labeled.source),
            git_revision: log.info().git_revision.clone(),
            knn: match &outcome.model.head {
                Head::Knn(_, settings) => Some(KnnVote {
                    k: settings.k,
                    temperature: settings.temperature,
                }),
                Head::Linear(_) => None,
            },
            started_from: start
                .filter(|_| strategy.uses_pretrained())
                .map(|s| s.source.clone()),
        },
    )?;
    log.write(out, data, true)?;
    Ok(outcome)
}

/// A fine-tuning run's name in folders and `run.json`, from its name in `results.csv`.
pub(crate) fn run_name(record_name: &str, k: usize, seed: u64) -> String {
    format!("k{k}-seed{seed}-{}", record_name.replace(':', "-"))
}
