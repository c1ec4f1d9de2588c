//! The `finetune` job and the fine-tuning run every comparison is made of: a labeled subset, a
//! classifier trained by a strategy, its test metrics.

use crate::provenance::{RunLog, VERSION};
use crate::resume_point;
use crate::sidecar::{read_sidecar, sidecar_path, write_json, KnnVote, MODEL_FORMAT};
use crate::{
    create_dir, Artifacts, EncoderSidecar, ModelSidecar, Observer, Pipeline, PipelineError,
    Prepared, Result, Sidecar,
};
use dfdx::prelude::Cpu;
use imprint_data::split::{sample_labeled, write_selection_csv, LabelBudget};
use imprint_data::{Dataset, ImageShape, Preprocess, SourceFile, SourceRecord};
use imprint_finetune::{
    evaluate, finetune_with, Classifier, FinetuneError, FinetuneHooks, FinetuneSnapshot, Head,
    History, Init, Metrics, OldHead, Strategy,
};
use imprint_nn::{save_tensors, Architecture, Encoder, ParamsExt};
use imprint_report::{self as report, RunRecord};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A checkpoint fine-tuning can start from: a pre-trained or imported encoder, or any
/// classifier, whose head is then dropped for a new one (or lends it its rows, when its classes
/// include the labeled ones).
#[derive(Clone, Debug)]
pub struct StartPoint {
    pub weights: PathBuf,
    pub architecture: Architecture,
    pub input: ImageShape,
    pub preprocess: Preprocess,
    /// The file, its size and digest, for the new model's sidecar.
    pub source: SourceFile,
    /// The file this one was made from (the PyTorch checkpoint of an imported network), as its
    /// sidecar records it.
    pub origin: Option<SourceFile>,
    /// A classifier's linear head; `None` for an encoder or a kNN classifier.
    pub head: Option<OldHead>,
}

impl StartPoint {
    /// Reads the sidecar beside `weights`, an encoder's or a classifier's.
    pub fn read(weights: &Path) -> Result<Self> {
        let (architecture, input, preprocess, classes, origin) =
            match read_sidecar(&sidecar_path(weights))? {
                Sidecar::Encoder(s) => {
                    (s.architecture, s.input, s.preprocess, None, s.started_from)
                }
                Sidecar::Model(s) => {
                    let linear = s.knn.is_none();
                    (
                        s.architecture,
                        s.input,
                        s.preprocess,
                        linear.then_some(s.classes),
                        s.started_from,
                    )
                }
            };
        let head = match classes {
            Some(classes) => old_head(weights, classes)?,
            None => None,
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
            origin,
            head,
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
        if self.architecture != p.pretrain.architecture {
            return Err(PipelineError::Input {
                path: self.weights.display().to_string(),
                message: format!(
                    "checkpoint architecture is {}, the pipeline asks for {} (architecture mismatch)",
                    self.architecture.describe(self.input),
                    p.pretrain.architecture.describe(shape)
                ),
            });
        }
        self.encoder_of_shape(shape)
    }

    /// The encoder, of its own architecture, refusing one whose input shape differs from the
    /// data's.
    pub fn encoder_of_shape(&self, shape: ImageShape) -> Result<Encoder<Cpu>> {
        if self.input != shape {
            return Err(PipelineError::Input {
                path: self.weights.display().to_string(),
                message: format!(
                    "checkpoint takes {} images, the data is {}; set [data.preprocess] to {}",
                    self.input, shape, self.input
                ),
            });
        }
        encoder_from(
            &self.weights,
            &self.architecture,
            self.input,
            &self.preprocess,
        )
    }

    /// Where fine-tuning from this checkpoint starts: its encoder and its head.
    pub fn init(&self, encoder: Encoder<Cpu>) -> Init<Cpu> {
        Init {
            encoder,
            head: self.head.clone(),
        }
    }
}

/// A classifier checkpoint's linear head, with its class names.
fn old_head(weights: &Path, classes: Vec<String>) -> Result<Option<OldHead>> {
    let mut tensors = crate::bounds::weights(weights)?;
    let (Some(weight), Some(bias)) = (tensors.remove("head.weight"), tensors.remove("head.bias"))
    else {
        return Ok(None);
    };
    Ok(Some(OldHead {
        classes,
        weight: weight.data,
        bias: bias.data,
    }))
}

/// The accuracy on `test` of the old head alone, its rows for the test's classes (the new
/// head's start), when the network has a head with every one of those classes.
pub(crate) fn old_head_accuracy(init: &Init<Cpu>, test: &Dataset) -> Option<Metrics> {
    let dev = Cpu::default();
    let old = init.head.as_ref()?;
    let head = old.rows_for(&dev, &test.classes, init.encoder.features())?;
    let mut model = Classifier::with_head(
        init.encoder.clone(),
        Head::Linear(head),
        test.classes.clone(),
        test.shape,
    );
    evaluate(&dev, &mut model, test)
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
    pub history: History,
    /// The old head's score on the test set, when the network started from lent it its rows.
    pub old_head: Option<Metrics>,
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

/// The labeled images `ids` as a dataset, their list written to `selection_csv` in `out`.
fn selected(
    data: &Prepared,
    ids: &[usize],
    out: &Artifacts,
    selection_csv: &Path,
) -> Result<Dataset> {
    out.write(|| {
        if let Some(parent) = selection_csv.parent() {
            create_dir(parent)?;
        }
        Ok(write_selection_csv(selection_csv, &data.labeled, ids)?)
    })?;
    Ok(data.labeled.subset(ids))
}

/// The labeled subset for (`labels_per_class`, `seed`), recorded in `selection_csv` in `out`.
pub(crate) fn labeled_subset(
    data: &Prepared,
    k: usize,
    seed: u64,
    out: &Artifacts,
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
    selected(data, &ids, out, selection_csv)
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

/// What a fine-tuning run starts from (`None` for `scratch`), the old head's test score when
/// that network has one for these classes (for `metrics.json`), and who hears of its steps.
#[derive(Clone, Copy)]
pub(crate) struct RunStart<'a> {
    pub init: Option<&'a Init<Cpu>>,
    pub old_head: Option<&'a Metrics>,
    pub obs: &'a dyn Observer,
}

/// Fine-tunes one strategy on one labeled subset and evaluates it on the test set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_one(
    p: &Pipeline,
    data: &Prepared,
    train: &Dataset,
    start: RunStart,
    strategy: Strategy,
    k: usize,
    seed: u64,
    out: &Artifacts,
    resume: bool,
) -> Result<FinetuneOutcome> {
    let p = &p.for_budget(k)?;
    let dev = Cpu::default();
    let mut init: Init<Cpu> = match (strategy.uses_pretrained(), start.init) {
        (false, _) => fresh_encoder(p, train.shape, seed)?.into(),
        (true, Some(init)) => init.clone(),
        (true, None) => {
            return Err(PipelineError::Output(format!(
                "strategy `{}` needs a pre-trained encoder",
                strategy.name()
            )))
        }
    };
    // Self-training's teacher and the test set's scores run within the data's budget.
    init.encoder = init.encoder.within_memory(p.data.storage().memory_budget);
    out.write(|| create_dir(out.dir()))?;
    let run = (strategy, k);
    let snapshot = match resume {
        true => resume_point::load_finetune(out, p, data, run)?,
        false => None,
    };
    let mut save = |s: &FinetuneSnapshot| {
        resume_point::save_finetune(out, p, data, run, s)
            .map_err(|e| FinetuneError::Data(e.to_string()))
    };
    let mut on_step = |done, total, loss| start.obs.finetune_step(done, total, loss);
    let hooks = FinetuneHooks {
        every: p.finetune.checkpoint_every,
        on_checkpoint: Some(&mut save),
        on_step: Some(&mut on_step),
        replicas: Some(out.replicas().clone()),
    };
    let clock = Instant::now();
    let (mut model, history) = finetune_with(
        &dev,
        init,
        train,
        Some(&data.unlabeled),
        &p.finetune,
        strategy,
        seed,
        hooks,
        snapshot.as_ref(),
    )?;
    let seconds = clock.elapsed().as_secs_f64();
    let metrics = evaluate(&dev, &mut model, &data.test)
        .ok_or_else(|| PipelineError::Output("test set has no labels".into()))?;
    resume_point::remove(out)?;
    out.write(|| {
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
        Ok(())
    })?;
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
    let mut json = serde_json::json!({
        "strategy": record.strategy, "labels_per_class": k, "seed": seed,
        "test_accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1,
        "labeled_images": train.len(), "test_images": data.test.len(),
        "finetune_seconds": seconds,
        "pseudo_labels": history.pseudo_labels,
        "head_from_init": history.head_from_init,
    });
    let old_head = start.old_head.filter(|_| strategy.uses_pretrained());
    if let Some(old) = old_head {
        json["old_head_test_accuracy"] = old.accuracy.into();
    }
    if let Some(frozen) = history.frozen_phase {
        json["frozen_phase_validation_accuracy"] = frozen.accuracy.into();
        json["frozen_phase_step"] = frozen.step.into();
        if let Some(last) = history.validation.last() {
            json["final_validation_accuracy"] = last.accuracy.into();
        }
        json["below_frozen_phase"] = history.below_frozen_phase().is_some().into();
    }
    out.write(|| write_json(&out.join("metrics.json"), &json))?;
    Ok(FinetuneOutcome {
        model,
        metrics,
        record,
        old_head: old_head.cloned(),
        history,
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
    out: &Artifacts,
    obs: &dyn Observer,
    log: &mut RunLog,
    resume: bool,
) -> Result<FinetuneOutcome> {
    // Check the encoder before writing anything.
    let pretrained = match (strategy.uses_pretrained(), start) {
        (true, Some(s)) => Some(log.time("load encoder", || {
            s.encoder_for(p, data.shape()).map(|e| s.init(e))
        })?),
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
    out.write(|| create_dir(out.dir()))?;
    let selection = out.join("labeled.csv");
    let train = match labels {
        Labels::PerClass(k) => labeled_subset(data, k, seed, out, &selection)?,
        Labels::All => {
            let every: Vec<usize> = (0..data.labeled.len()).collect();
            selected(data, &every, out, &selection)?
        }
    };
    let k = labels.per_class();
    let old_head = pretrained
        .as_ref()
        .filter(|_| p.finetune.head_from_init)
        .and_then(|init| old_head_accuracy(init, &data.test));
    let outcome = run_one(
        p,
        data,
        &train,
        RunStart {
            init: pretrained.as_ref(),
            old_head: old_head.as_ref(),
            obs,
        },
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
    out.write(|| {
        write_model(
            out.dir(),
            p,
            data,
            &outcome.model,
            strategy,
            seed,
            start
                .filter(|_| strategy.uses_pretrained())
                .map(|s| s.source.clone()),
            log,
        )?;
        log.write(out.dir(), data, true)
    })?;
    Ok(outcome)
}

/// Writes a fine-tuned `model` into `out`: `model.safetensors`, and `model.json` with its
/// architecture, input, classes, strategy, seed, data and the file it `started_from`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_model(
    out: &Path,
    p: &Pipeline,
    data: &Prepared,
    model: &Classifier<Cpu>,
    strategy: Strategy,
    seed: u64,
    started_from: Option<SourceFile>,
    log: &RunLog,
) -> Result<()> {
    save_tensors(
        &out.join("model.safetensors"),
        &model.named_tensors(""),
        &BTreeMap::new(),
    )?;
    write_json(
        &out.join("model.json"),
        &ModelSidecar {
            format: MODEL_FORMAT.into(),
            architecture: p.pretrain.architecture.clone(),
            input: data.shape(),
            preprocess: p.data.preprocess.clone(),
            classes: model.classes.clone(),
            strategy: strategy.name().into(),
            seed,
            program_version: VERSION.into(),
            data: SourceRecord::of(&data.labeled.source),
            git_revision: log.info().git_revision.clone(),
            knn: match &model.head {
                Head::Knn(_, settings) => Some(KnnVote {
                    k: settings.k,
                    temperature: settings.temperature,
                }),
                Head::Linear(_) => None,
            },
            started_from,
        },
    )
}

/// A fine-tuning run's name in folders and `run.json`, from its name in `results.csv`.
pub(crate) fn run_name(record_name: &str, k: usize, seed: u64) -> String {
    format!("k{k}-seed{seed}-{}", record_name.replace(':', "-"))
}
