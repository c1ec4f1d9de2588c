//! Pre-train, fine-tune, compare and predict, with their artifacts.

use crate::sidecar::{read_json, sidecar_path, write_json, ENCODER_FORMAT, MODEL_FORMAT};
use crate::{EncoderSidecar, ModelSidecar, Observer, Pipeline, PipelineError, Prepared, Result};
use dfdx::prelude::Cpu;
use imprint_data::split::{sample_labeled, write_selection_csv, LabelBudget};
use imprint_data::{Dataset, ImageShape, Preprocess};
use imprint_finetune::{evaluate, finetune, Classifier, Metrics, Strategy};
use imprint_nn::{load_tensors, save_tensors, Encoder};
use imprint_pretrain::{pretrain, reconstruct, EpochStats};
use imprint_report::{self as report, RunRecord, SummaryRow};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))
}

/// Trains the autoencoder of `p` on the unlabeled images and writes into `out`:
/// `encoder.safetensors` + `encoder.json`, `decoder.safetensors`, `loss.csv`, `loss.png` and
/// `reconstructions.png` (held-out originals over their reconstructions).
pub fn pretrain_job(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    out: &Path,
    obs: &dyn Observer,
) -> Result<(Encoder<Cpu>, Vec<EpochStats>)> {
    dir(out)?;
    let dev = Cpu::default();
    let shape = data.unlabeled.shape;
    let epochs = p.pretrain.epochs;
    let trained = pretrain(
        &dev,
        &data.unlabeled.pixels,
        shape.len(),
        &p.pretrain,
        seed,
        &mut |epoch, done, total, loss| obs.pretrain_batch(seed, epoch, epochs, done, total, loss),
        &mut |stats| obs.pretrain_epoch(seed, stats, epochs),
    )?;
    save_tensors(
        &out.join("encoder.safetensors"),
        &trained.encoder.named_tensors("encoder"),
        &BTreeMap::new(),
    )?;
    save_tensors(
        &out.join("decoder.safetensors"),
        &trained.decoder.named_tensors("decoder"),
        &BTreeMap::new(),
    )?;
    write_json(
        &out.join("encoder.json"),
        &EncoderSidecar {
            format: ENCODER_FORMAT.into(),
            architecture: p.pretrain.architecture.clone(),
            input: shape,
            preprocess: p.data.preprocess.clone(),
            seed,
            epochs,
            program_version: VERSION.into(),
            data: data.unlabeled.files.clone(),
        },
    )?;
    let rows: Vec<Vec<f64>> = trained
        .history
        .iter()
        .map(|h| {
            vec![
                h.epoch as f64 + 1.0,
                h.train_loss,
                h.heldout_loss.unwrap_or(f64::NAN),
                h.images_per_second,
                h.seconds,
            ]
        })
        .collect();
    report::write_table_csv(
        &out.join("loss.csv"),
        &[
            "epoch",
            "train_loss",
            "heldout_loss",
            "images_per_second",
            "seconds",
        ],
        &rows,
    )?;
    let mut series = vec![(
        "train".to_string(),
        trained
            .history
            .iter()
            .map(|h| (h.epoch as f64 + 1.0, h.train_loss))
            .collect::<Vec<_>>(),
    )];
    if trained.history.iter().all(|h| h.heldout_loss.is_some()) {
        series.push((
            "held-out".to_string(),
            trained
                .history
                .iter()
                .filter_map(|h| h.heldout_loss.map(|l| (h.epoch as f64 + 1.0, l)))
                .collect(),
        ));
    }
    if !trained.history.is_empty() {
        report::plot_curves(&out.join("loss.png"), "Pre-training loss", "loss", &series)?;
    }
    let show: Vec<usize> = if trained.heldout.is_empty() {
        (0..data.unlabeled.len().min(12)).collect()
    } else {
        trained.heldout.iter().copied().take(12).collect()
    };
    let originals: Vec<f32> = show
        .iter()
        .flat_map(|&i| data.unlabeled.image(i).to_vec())
        .collect();
    let recon = reconstruct(
        &dev,
        &trained.encoder,
        &trained.decoder,
        &originals,
        shape.len(),
    );
    report::image_grid(
        &out.join("reconstructions.png"),
        shape.channels,
        shape.height,
        shape.width,
        &[
            originals.chunks(shape.len()).collect(),
            recon.chunks(shape.len()).collect(),
        ],
    )?;
    Ok((trained.encoder, trained.history))
}

/// Loads a pre-trained encoder, refusing one whose architecture or input shape differs from
/// what `p` and the data need.
pub fn load_encoder(weights: &Path, p: &Pipeline, shape: ImageShape) -> Result<Encoder<Cpu>> {
    let side_path = sidecar_path(weights);
    let side: EncoderSidecar = read_json(&side_path, ENCODER_FORMAT)?;
    let input = |message: String| PipelineError::Input {
        path: weights.display().to_string(),
        message,
    };
    if side.architecture != p.pretrain.architecture {
        return Err(input(format!(
            "checkpoint architecture is {}, the pipeline asks for {} (architecture mismatch)",
            side.architecture.describe(side.input.len()),
            p.pretrain.architecture.describe(shape.len())
        )));
    }
    if side.input != shape {
        return Err(input(format!(
            "checkpoint takes {} images, the data is {}; set [data.preprocess] to {}",
            side.input, shape, side.input
        )));
    }
    let (tensors, _) = load_tensors(weights)?;
    let dev = Cpu::default();
    let mut encoder = Encoder::new(
        &dev,
        &side.architecture,
        shape.len(),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    encoder.load_named("encoder", &tensors, &weights.display().to_string())?;
    Ok(encoder)
}

/// A fresh encoder for the `scratch` baseline, its init drawn from `seed`.
fn fresh_encoder(p: &Pipeline, shape: ImageShape, seed: u64) -> Encoder<Cpu> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000));
    Encoder::new(
        &Cpu::default(),
        &p.pretrain.architecture,
        shape.len(),
        &mut rng,
    )
}

pub struct FinetuneOutcome {
    pub model: Classifier<Cpu>,
    pub metrics: Metrics,
    pub record: RunRecord,
}

/// The labeled subset for (`labels_per_class`, `seed`), recorded in `selection_csv`.
fn labeled_subset(data: &Prepared, k: usize, seed: u64, selection_csv: &Path) -> Result<Dataset> {
    let labels = data.labeled.labels.as_deref().unwrap_or_default();
    let ids = sample_labeled(
        labels,
        data.labeled.num_classes(),
        LabelBudget::PerClass(k),
        seed,
    )?;
    if let Some(parent) = selection_csv.parent() {
        dir(parent)?;
    }
    write_selection_csv(selection_csv, &data.labeled, &ids)?;
    Ok(data.labeled.subset(&ids))
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
fn run_one(
    p: &Pipeline,
    data: &Prepared,
    train: &Dataset,
    pretrained: Option<&Encoder<Cpu>>,
    strategy: Strategy,
    k: usize,
    seed: u64,
    out: &Path,
) -> Result<FinetuneOutcome> {
    let dev = Cpu::default();
    let encoder = match (strategy.uses_pretrained(), pretrained) {
        (false, _) => fresh_encoder(p, train.shape, seed),
        (true, Some(e)) => e.clone(),
        (true, None) => {
            return Err(PipelineError::Output(format!(
                "strategy `{}` needs a pre-trained encoder",
                strategy.name()
            )))
        }
    };
    let start = Instant::now();
    let (model, _history) = finetune(&dev, encoder, train, &p.finetune, strategy, seed)?;
    let seconds = start.elapsed().as_secs_f64();
    let metrics = evaluate(&dev, &model, &data.test)
        .ok_or_else(|| PipelineError::Output("test set has no labels".into()))?;
    dir(out)?;
    write_confusion(&out.join("confusion.csv"), &model.classes, &metrics)?;
    let record = RunRecord {
        strategy: strategy.name().into(),
        labels_per_class: k,
        seed,
        test_accuracy: metrics.accuracy,
        macro_f1: metrics.macro_f1,
        pretrain_seconds: 0.0,
        finetune_seconds: seconds,
        epochs_run: p.finetune.steps,
    };
    write_json(
        &out.join("metrics.json"),
        &serde_json::json!({
            "strategy": record.strategy, "labels_per_class": k, "seed": seed,
            "test_accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1,
            "test_images": data.test.len(), "finetune_seconds": seconds,
        }),
    )?;
    Ok(FinetuneOutcome {
        model,
        metrics,
        record,
    })
}

/// The `finetune` command: one strategy, one budget, one seed; saves the model
/// (`model.safetensors` + `model.json`), the labeled items, metrics and confusion matrix.
pub fn finetune_job(
    p: &Pipeline,
    data: &Prepared,
    encoder_weights: Option<&Path>,
    strategy: Strategy,
    k: usize,
    seed: u64,
    out: &Path,
) -> Result<FinetuneOutcome> {
    // Check the encoder before writing anything.
    let pretrained = match (strategy.uses_pretrained(), encoder_weights) {
        (true, Some(w)) => Some(load_encoder(w, p, data.shape())?),
        (true, None) => {
            return Err(PipelineError::Input {
                path: "command line".into(),
                message: format!(
                    "strategy `{}` needs --encoder PATH/encoder.safetensors",
                    strategy.name()
                ),
            })
        }
        (false, _) => None,
    };
    dir(out)?;
    let train = labeled_subset(data, k, seed, &out.join("labeled.csv"))?;
    let outcome = run_one(p, data, &train, pretrained.as_ref(), strategy, k, seed, out)?;
    save_tensors(
        &out.join("model.safetensors"),
        &outcome.model.named_tensors(),
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
            data: data.labeled.files.clone(),
        },
    )?;
    Ok(outcome)
}

pub struct CompareOutcome {
    pub records: Vec<RunRecord>,
    pub summary: Vec<SummaryRow>,
    pub table: String,
    pub out: PathBuf,
}

/// Every strategy on the identical labeled subset for each seed and budget, pre-training once
/// per seed. Writes `results.csv` (after every run), `summary.csv`, `report.md`,
/// `accuracy.png`, the resolved `pipeline.toml`, the labeled items and per-run metrics.
pub fn compare(
    p: &Pipeline,
    data: &Prepared,
    out: &Path,
    obs: &dyn Observer,
) -> Result<CompareOutcome> {
    dir(out)?;
    let resolved = toml::to_string_pretty(p)
        .map_err(|e| PipelineError::Output(format!("pipeline.toml: {e}")))?;
    imprint_fs::write_atomic(out.join("pipeline.toml"), resolved.as_bytes())?;
    let started = Instant::now();
    let needs_pretrain = p.compare.strategies.iter().any(|s| s.uses_pretrained());
    let mut records = Vec::new();
    for &seed in &p.compare.seeds {
        let (pretrained, pretrain_seconds) = if needs_pretrain {
            obs.info(&format!("pre-training, seed {seed}"));
            let t = Instant::now();
            let (enc, _) = pretrain_job(
                p,
                data,
                seed,
                &out.join(format!("pretrain/seed-{seed}")),
                obs,
            )?;
            (Some(enc), t.elapsed().as_secs_f64())
        } else {
            (None, 0.0)
        };
        for &k in &p.compare.labels_per_class {
            let train = labeled_subset(
                data,
                k,
                seed,
                &out.join(format!("labeled/k{k}-seed{seed}.csv")),
            )?;
            for &strategy in &p.compare.strategies {
                let run_dir = out.join(format!("runs/k{k}-seed{seed}-{}", strategy.name()));
                let mut outcome = run_one(
                    p,
                    data,
                    &train,
                    pretrained.as_ref(),
                    strategy,
                    k,
                    seed,
                    &run_dir,
                )?;
                if strategy.uses_pretrained() {
                    outcome.record.pretrain_seconds = pretrain_seconds;
                }
                obs.run_finished(&outcome.record);
                records.push(outcome.record);
                report::write_results_csv(&out.join("results.csv"), &records)?;
            }
        }
    }
    let summary = report::summarize(&records, Strategy::Scratch.name());
    report::write_summary_csv(&out.join("summary.csv"), &summary)?;
    let context = format!(
        "Pipeline `{}`: {}. Encoder {}, pre-trained {} epochs on {} unlabeled images ({:?} noise, {:?} loss); \
         fine-tuned {} steps (lr {}, encoder lr x{}, shifts ±{} px); test set of {} images; seeds {:?}. \
         Wall time {:.1} s on {} threads.",
        p.name,
        p.description,
        p.pretrain.architecture.describe(data.shape().len()),
        p.pretrain.epochs,
        data.unlabeled.len(),
        p.pretrain.noise,
        p.pretrain.loss,
        p.finetune.steps,
        p.finetune.lr,
        p.finetune.encoder_lr_scale,
        p.finetune.augment_shift,
        data.test.len(),
        p.compare.seeds,
        started.elapsed().as_secs_f64(),
        rayon::current_num_threads(),
    );
    let md = report::render_markdown(
        &format!("Pre-training vs scratch: {}", p.name),
        &context,
        &summary,
    );
    imprint_fs::write_atomic(out.join("report.md"), md.as_bytes())?;
    report::plot_accuracy(
        &out.join("accuracy.png"),
        &format!("{}: test accuracy", p.name),
        &summary,
    )?;
    Ok(CompareOutcome {
        table: report::render_terminal_table(&summary),
        records,
        summary,
        out: out.to_path_buf(),
    })
}

/// Classifies the images of `input` with a fine-tuned model into `out_csv`
/// (`path,predicted,confidence`).
pub fn predict(model_weights: &Path, input: &Path, out_csv: &Path) -> Result<usize> {
    let side: ModelSidecar = read_json(&sidecar_path(model_weights), MODEL_FORMAT)?;
    let prep = Preprocess {
        channels: Some(side.input.channels),
        height: Some(side.input.height),
        width: Some(side.input.width),
        invert: side.preprocess.invert,
    };
    let images = imprint_data::load(input, &prep)?;
    let (tensors, _) = load_tensors(model_weights)?;
    let dev = Cpu::default();
    let encoder = Encoder::new(
        &dev,
        &side.architecture,
        side.input.len(),
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    let mut model = Classifier::new(&dev, encoder, side.classes.clone(), side.input, 0);
    model
        .load_named(&tensors, &model_weights.display().to_string())
        .map_err(PipelineError::from)?;
    let predictions = model.predict(&dev, &images.pixels);
    let mut text = String::from("path,predicted,confidence\n");
    for (item, (class, p)) in images.items.iter().zip(&predictions) {
        let item = if item.contains(',') || item.contains('"') {
            format!("\"{}\"", item.replace('"', "\"\""))
        } else {
            item.clone()
        };
        text.push_str(&format!("{item},{},{p:.6}\n", side.classes[*class]));
    }
    imprint_fs::write_atomic(out_csv, text.as_bytes())?;
    Ok(predictions.len())
}
