//! Using a trained model: `predict` (classes of new images), `embed` (an encoder's features)
//! and `inspect` (what a checkpoint holds).

use crate::bounds;
use crate::finetune_job::encoder_of;
use crate::sidecar::{read_encoder_sidecar, read_model_sidecar, read_sidecar, sidecar_path};
use crate::{ModelSidecar, Observer, PipelineError, Result, Sidecar};
use dfdx::prelude::Cpu;
use imprint_data::{Dataset, ImageShape, Preprocess, Storage};
use imprint_finetune::{Classifier, Head, Metrics};
use imprint_nn::knn::{Bank, KnnSettings};
use imprint_nn::{Encoder, ParamsExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Classifies the images of `input` with a fine-tuned model into `out_csv`: `path,predicted,
/// confidence`, and with `top` > 1 the next likeliest classes as `predicted_2,confidence_2`, ...;
/// within `memory_budget_mb` MiB of decoded images and a share of it for the activations of the
/// images run at once; rows are written as they come.
pub fn predict(
    model_weights: &Path,
    input: &Path,
    out_csv: &Path,
    memory_budget_mb: u64,
    top: usize,
    obs: &dyn Observer,
) -> Result<usize> {
    let side = read_model_sidecar(&sidecar_path(model_weights))?;
    let classes = side.classes.len();
    if top == 0 || top > classes {
        return Err(PipelineError::Input {
            path: "--top".into(),
            message: format!("{top}: must be between 1 and the model's {classes} classes"),
        });
    }
    let storage = Storage::standard().with_budget_mb(memory_budget_mb);
    let images = load_input(input, side.input, &side.preprocess, &storage, obs)?;
    let mut model = model_of(model_weights, &side)?;
    model.encoder.memory_budget = storage.memory_budget;
    let mut header = String::from("path,predicted,confidence");
    for rank in 2..=top {
        header.push_str(&format!(",predicted_{rank},confidence_{rank}"));
    }
    header.push('\n');
    let mut out = CsvOut::create(out_csv, &header)?;
    let n = images.len();
    let dev = Cpu::default();
    model.predict_each_with_probabilities(&dev, &images.pixels, |first, predictions, rows| {
        let mut text = String::new();
        for ((i, best), row) in (first..).zip(predictions).zip(rows.chunks_exact(classes)) {
            text.push_str(&csv_field(&images.items[i]));
            for (class, p) in ranked(*best, row, top) {
                text.push_str(&format!(",{},{p:.6}", csv_field(&side.classes[class])));
            }
            text.push('\n');
        }
        out.write(&text);
        obs.progress("predicting", first + predictions.len(), n);
    });
    out.commit()?;
    Ok(n)
}

/// The `top` likeliest classes: the model's prediction `best` first (as `evaluate` counts it),
/// then the others by their probability in `row`.
fn ranked(best: (usize, f32), row: &[f32], top: usize) -> Vec<(usize, f32)> {
    let mut others: Vec<(usize, f32)> = row
        .iter()
        .copied()
        .enumerate()
        .filter(|&(c, _)| c != best.0)
        .collect();
    others.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    std::iter::once(best).chain(others).take(top).collect()
}

/// A CSV written through a temporary name a chunk of rows at a time; the first write error is
/// kept and reported by [`CsvOut::commit`], which renames the file into place.
struct CsvOut {
    path: PathBuf,
    file: imprint_fs::AtomicFile,
    failed: Option<std::io::Error>,
}

impl CsvOut {
    fn create(path: &Path, header: &str) -> Result<Self> {
        let mut out = CsvOut {
            path: path.to_path_buf(),
            file: imprint_fs::AtomicFile::create(path)?,
            failed: None,
        };
        out.write(header);
        Ok(out)
    }

    fn write(&mut self, text: &str) {
        if self.failed.is_none() {
            self.failed = self.file.write_all(text.as_bytes()).err();
        }
    }

    fn commit(self) -> Result<()> {
        if let Some(source) = self.failed {
            return Err(imprint_fs::FsError {
                path: self.path,
                source,
            }
            .into());
        }
        Ok(self.file.commit()?)
    }
}

/// A classifier's scores on labeled images.
pub struct Evaluation {
    pub metrics: Metrics,
    pub classes: Vec<String>,
    /// Images per class and the share of them classified right, in class order.
    pub per_class: Vec<(usize, f64)>,
    pub images: usize,
}

/// Scores a classifier on the labeled images of `input` (a folder per class, a CSV list, an idx
/// file with labels), whose class names must be among the classifier's, within
/// `memory_budget_mb` MiB as [`predict`]. Writes `logits_csv` (`path,label,logit_<class>...`,
/// the linear head's scores before the softmax) when asked, a chunk of rows at a time.
pub fn evaluate_job(
    model_weights: &Path,
    input: &Path,
    logits_csv: Option<&Path>,
    memory_budget_mb: u64,
    obs: &dyn Observer,
) -> Result<Evaluation> {
    let side = read_model_sidecar(&sidecar_path(model_weights))?;
    let storage = Storage::standard().with_budget_mb(memory_budget_mb);
    let images = load_input(input, side.input, &side.preprocess, &storage, obs)?;
    if images.labels.is_none() {
        return Err(PipelineError::Input {
            path: input.display().to_string(),
            message: "evaluation needs labels (class folders, CSV labels or an idx labels file)"
                .into(),
        });
    }
    let images = images.align_classes(&side.classes)?;
    let mut model = model_of(model_weights, &side)?;
    model.encoder.memory_budget = storage.memory_budget;
    let dev = Cpu::default();
    if let Some(path) = logits_csv {
        let Head::Linear(_) = model.head else {
            return Err(PipelineError::Input {
                path: model_weights.display().to_string(),
                message: "a kNN classifier has no logits to write".into(),
            });
        };
        write_logits(&dev, &mut model, path, &images, &side.classes)?;
    }
    let n = images.len();
    let mut predicted: Vec<usize> = Vec::with_capacity(n);
    model.predict_each(&dev, &images.pixels, |_, chunk| {
        predicted.extend(chunk.iter().map(|(c, _)| *c));
        obs.progress("evaluating", predicted.len(), n);
    });
    let truth = images.labels.as_deref().unwrap_or_default();
    let metrics = Metrics::from_predictions(truth, &predicted, side.classes.len());
    let per_class = metrics
        .confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let n: usize = row.iter().sum();
            (n, row[c] as f64 / n.max(1) as f64)
        })
        .collect();
    Ok(Evaluation {
        metrics,
        classes: side.classes,
        per_class,
        images: images.len(),
    })
}

/// `path,label,logit_<class>...` of every image, each logit as the shortest text that reads
/// back as the same f32, written a chunk of images at a time.
fn write_logits(
    dev: &Cpu,
    model: &mut Classifier<Cpu>,
    path: &Path,
    images: &Dataset,
    classes: &[String],
) -> Result<()> {
    let mut header = String::from("path,label");
    for c in classes {
        header.push_str(&format!(",logit_{}", csv_field(c)));
    }
    header.push('\n');
    let mut out = CsvOut::create(path, &header)?;
    model.logits_each(dev, &images.pixels, |r, logits| {
        let mut text = String::new();
        for (i, row) in r.zip(logits.chunks_exact(classes.len())) {
            text.push_str(&csv_field(&images.items[i]));
            text.push(',');
            text.push_str(&csv_field(images.label_name(i).unwrap_or("")));
            for v in row {
                text.push_str(&format!(",{v}"));
            }
            text.push('\n');
        }
        out.write(&text);
    });
    out.commit()
}

/// The classifier a sidecar describes, with the weights of `weights`.
pub(crate) fn model_of(weights: &Path, side: &ModelSidecar) -> Result<Classifier<Cpu>> {
    let tensors = bounds::weights(weights)?;
    let dev = Cpu::default();
    let encoder = Encoder::new(
        &dev,
        &side.architecture,
        side.input,
        &mut ChaCha8Rng::seed_from_u64(0),
    )?
    .normalized(side.preprocess.normalize());
    let mut model = Classifier::new(&dev, encoder, side.classes.clone(), side.input, 0);
    if let Some(vote) = side.knn {
        // A bank of the saved size, to load the saved one into (a bank of another shape or
        // labels outside the classes are refused when it is loaded).
        let rows = tensors
            .get("head.bank")
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(0);
        let bank = Bank::empty(&dev, rows, model.encoder.features(), side.classes.len());
        let settings = KnnSettings {
            k: vote.k,
            temperature: vote.temperature,
        };
        model.head = Head::Knn(bank, settings);
    }
    model.load_named("", &tensors, &weights.display().to_string())?;
    if let Some(labels) = tensors.get("head.labels") {
        let classes = side.classes.len() as f32;
        if let Some(bad) = labels
            .data
            .iter()
            .find(|l| **l < 0.0 || **l >= classes || l.fract() != 0.0)
        {
            return Err(PipelineError::Input {
                path: weights.display().to_string(),
                message: format!(
                    "tensor `head.labels` holds {bad}, not a class index below {classes}"
                ),
            });
        }
    }
    Ok(model)
}

/// The images of `input` brought to a checkpoint's input shape, within the memory budget and
/// cache folder of `storage`; what loading had to say goes to `obs`.
fn load_input(
    input: &Path,
    shape: ImageShape,
    recorded: &Preprocess,
    storage: &Storage,
    obs: &dyn Observer,
) -> Result<Dataset> {
    let prep = to_input(shape, recorded);
    let images = imprint_data::load_with(input, &prep, storage)?;
    for notice in storage.notices.take() {
        obs.info(&notice);
    }
    Ok(images)
}

/// Preprocessing that brings any source to a checkpoint's input shape.
fn to_input(shape: ImageShape, recorded: &Preprocess) -> Preprocess {
    Preprocess {
        channels: Some(shape.channels),
        height: Some(shape.height),
        width: Some(shape.width),
        invert: recorded.invert,
        // The encoder applies the recorded normalisation itself.
        ..Default::default()
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes the features a pre-trained encoder gives every image of `input` to `out_csv` as
/// `path,label,f0,f1,...` (label empty when the source has none), a chunk of images at a time,
/// within `memory_budget_mb` MiB as [`predict`]; images are brought to the encoder's input
/// shape. Returns the number of images.
pub fn embed(
    encoder_weights: &Path,
    input: &Path,
    out_csv: &Path,
    memory_budget_mb: u64,
    obs: &dyn Observer,
) -> Result<usize> {
    let side = read_encoder_sidecar(&sidecar_path(encoder_weights))?;
    let storage = Storage::standard().with_budget_mb(memory_budget_mb);
    let images = load_input(input, side.input, &side.preprocess, &storage, obs)?;
    let mut encoder = encoder_of(encoder_weights, &side)?.within_memory(storage.memory_budget);
    let width = side.architecture.latent();
    let mut header = String::from("path,label");
    for j in 0..width {
        header.push_str(&format!(",f{j}"));
    }
    header.push('\n');
    let mut out = CsvOut::create(out_csv, &header)?;
    let chunks = encoder.inference_chunks();
    let dev = Cpu::default();
    encoder.infer_each(
        &dev,
        &images.pixels,
        chunks,
        |f| f,
        |r, features| {
            let mut text = String::new();
            for (row, f) in r.zip(features.chunks_exact(width)) {
                let label = images
                    .labels
                    .as_ref()
                    .map_or("", |l| images.classes[l[row]].as_str());
                text.push_str(&csv_field(&images.items[row]));
                text.push(',');
                text.push_str(&csv_field(label));
                for v in f {
                    // Shortest text that reads back as the same f32.
                    text.push_str(&format!(",{v}"));
                }
                text.push('\n');
            }
            out.write(&text);
        },
    );
    out.commit()?;
    Ok(images.len())
}

/// A checkpoint as [`inspect`] finds it.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// Name, shape and element count of every tensor, in name order.
    pub tensors: Vec<(String, Vec<usize>)>,
    pub sidecar_path: PathBuf,
    /// `None` when there is no sidecar beside the weights.
    pub sidecar: Option<Sidecar>,
    /// Whether the weights fit the sidecar's architecture (the error otherwise).
    pub fits: std::result::Result<(), String>,
}

/// Reads a checkpoint and its sidecar without needing a pipeline, and checks they agree.
pub fn inspect(weights: &Path) -> Result<Inspection> {
    let tensors = bounds::weights(weights)?;
    let sidecar_path = sidecar_path(weights);
    let sidecar = if sidecar_path.exists() {
        Some(read_sidecar(&sidecar_path)?)
    } else {
        None
    };
    let fits = match &sidecar {
        None => Err(format!("no sidecar at {}", sidecar_path.display())),
        Some(Sidecar::Encoder(side)) => encoder_of(weights, side)
            .map(drop)
            .map_err(|e| e.to_string()),
        Some(Sidecar::Model(side)) => model_of(weights, side).map(drop).map_err(|e| e.to_string()),
    };
    Ok(Inspection {
        tensors: tensors.into_values().map(|t| (t.name, t.shape)).collect(),
        sidecar_path,
        sidecar,
        fits,
    })
}

/// What a user should know before running the checkpoint `weights` (an ImageNet-layout net on
/// small images); nothing when its sidecar cannot be read (the command itself says why).
pub fn run_warnings(weights: &Path) -> Vec<String> {
    let (architecture, input) = match read_sidecar(&sidecar_path(weights)) {
        Ok(Sidecar::Encoder(s)) => (s.architecture, s.input),
        Ok(Sidecar::Model(s)) => (s.architecture, s.input),
        Err(_) => return Vec::new(),
    };
    crate::detect::small_input_warning(&architecture, input)
        .into_iter()
        .collect()
}
