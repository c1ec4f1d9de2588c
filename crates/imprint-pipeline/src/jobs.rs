//! Pre-train, fine-tune, compare and predict, with their artifacts.

use crate::provenance::{read_run_info, threads_phrase, DataFiles, RunLog, VERSION};
use crate::resume_point;
use crate::sidecar::{
    read_json, read_sidecar, sidecar_path, write_json, Sidecar, ENCODER_FORMAT, MODEL_FORMAT,
};
use crate::{EncoderSidecar, ModelSidecar, Observer, Pipeline, PipelineError, Prepared, Result};
use dfdx::prelude::{Cpu, TensorFromVec};
use imprint_data::split::{sample_labeled, write_selection_csv, LabelBudget};
use imprint_data::{Dataset, ImageShape, Preprocess};
use imprint_finetune::{evaluate, finetune, Classifier, Metrics, Strategy};
use imprint_nn::{load_tensors, save_tensors, Encoder, Matrix};
use imprint_pretrain::{pretrain, reconstruct, EpochStats, Hooks, PretrainError, Snapshot};
use imprint_report::{self as report, RunRecord, SummaryRow};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the error of a sidecar read calls the file.
const SIDECAR: &str = "checkpoint's sidecar";

fn dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| PipelineError::Output(format!("{}: {e}", path.display())))
}

/// The `pretrain` command: trains the autoencoder of `p` on the unlabeled images and writes into
/// `out`: `encoder.safetensors` + `encoder.json`, `decoder.safetensors`, `loss.csv`, `loss.png`,
/// `reconstructions.png` (held-out originals over their reconstructions) and `run.json`. With
/// `resume`, an interrupted pre-training in `out` continues from its last epoch checkpoint.
pub fn pretrain_job(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    out: &Path,
    obs: &dyn Observer,
    log: &mut RunLog,
    resume: bool,
) -> Result<(Encoder<Cpu>, Vec<EpochStats>)> {
    if resume {
        log.set_resumed();
    }
    let (encoder, history, seconds) = pretrain_artifacts(p, data, seed, out, obs, log, resume)?;
    log.stage(format!("pretrain seed {seed}"), seconds, false);
    log.write(out, data, true)?;
    Ok((encoder, history))
}

/// Pre-trains and writes the artifacts of [`pretrain_job`] but `run.json`; returns the encoder,
/// the loss history and the wall time. `encoder.json` is written last, so its presence marks a
/// complete folder for `--resume`. Until then, each epoch end leaves a checkpoint that `resume`
/// continues from, and that a diverged run keeps as its last good state.
fn pretrain_artifacts(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    out: &Path,
    obs: &dyn Observer,
    log: &RunLog,
    resume: bool,
) -> Result<(Encoder<Cpu>, Vec<EpochStats>, f64)> {
    let start = Instant::now();
    dir(out)?;
    let dev = Cpu::default();
    let shape = data.unlabeled.shape;
    let epochs = p.pretrain.epochs;
    let checkpoint = resume_point::checkpoint_path(out);
    let snapshot = if resume && checkpoint.exists() {
        let snapshot = resume_point::load(&checkpoint, p, data)?;
        obs.info(&format!(
            "seed {seed}: continuing pre-training after epoch {} from {}",
            snapshot.state.epochs_done,
            checkpoint.display()
        ));
        Some(snapshot)
    } else {
        None
    };
    let mut on_batch =
        |epoch, done, total, loss| obs.pretrain_batch(seed, epoch, epochs, done, total, loss);
    let mut on_epoch = |stats: &EpochStats| obs.pretrain_epoch(seed, stats, epochs);
    let mut last_saved = snapshot.as_ref().map(|s| s.state.epochs_done);
    let mut on_checkpoint = |snapshot: &Snapshot| {
        resume_point::save(&checkpoint, p, data, snapshot)
            .map_err(|e| PretrainError::Checkpoint(e.to_string()))?;
        last_saved = Some(snapshot.state.epochs_done);
        Ok(())
    };
    let hooks = Hooks {
        on_batch: Some(&mut on_batch),
        on_epoch: Some(&mut on_epoch),
        on_checkpoint: Some(&mut on_checkpoint),
    };
    let trained = match pretrain(
        &dev,
        &data.unlabeled.pixels,
        shape,
        &p.pretrain,
        seed,
        snapshot.as_ref(),
        hooks,
    ) {
        Ok(trained) => trained,
        Err(e @ PretrainError::Diverged { .. }) => {
            let kept = match last_saved {
                Some(epoch) => format!(
                    "; the last good checkpoint (after epoch {epoch}) is kept in {}",
                    checkpoint.display()
                ),
                None => String::new(),
            };
            return Err(PipelineError::Output(format!("{e}{kept}")));
        }
        Err(e) => return Err(e.into()),
    };
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
    if let Some((weights, [filters, channels, kh, kw])) = trained.encoder.first_filters() {
        write_filters(
            &out.join("filters.png"),
            &weights,
            filters,
            channels,
            kh,
            kw,
        )?;
    }
    let seconds = start.elapsed().as_secs_f64();
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
            git_revision: log.info().git_revision.clone(),
            seconds: Some(seconds),
        },
    )?;
    // The finished encoder supersedes it; a crash before this line leaves both, and either
    // resumes correctly.
    match std::fs::remove_file(&checkpoint) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(PipelineError::Output(format!(
                "{}: {e}",
                checkpoint.display()
            )));
        }
        _ => {}
    }
    Ok((trained.encoder, trained.history, seconds))
}

/// The first convolution's filters as a grid of small images, each stretched to [0, 1] on its
/// own so faint and strong filters both show their pattern: what the encoder learned to see.
fn write_filters(
    path: &Path,
    weights: &[f32],
    filters: usize,
    channels: usize,
    kh: usize,
    kw: usize,
) -> Result<()> {
    // RGB filters show in colour; otherwise the first input channel in grey.
    let shown = if channels == 3 { 3 } else { 1 };
    let per_filter = channels * kh * kw;
    let images: Vec<Vec<f32>> = weights
        .chunks_exact(per_filter)
        .take(filters)
        .map(|f| {
            let f = &f[..shown * kh * kw];
            let (lo, hi) = f
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            f.iter().map(|&v| (v - lo) / (hi - lo).max(1e-12)).collect()
        })
        .collect();
    let rows: Vec<Vec<&[f32]>> = images
        .chunks(8)
        .map(|r| r.iter().map(|i| i.as_slice()).collect())
        .collect();
    report::image_grid(path, shown, kh, kw, &rows)?;
    Ok(())
}

/// Loads a pre-trained encoder, refusing one whose architecture or input shape differs from
/// what `p` and the data need.
pub fn load_encoder(weights: &Path, p: &Pipeline, shape: ImageShape) -> Result<Encoder<Cpu>> {
    let side: EncoderSidecar = read_json(&sidecar_path(weights), ENCODER_FORMAT, SIDECAR)?;
    let input = |message: String| PipelineError::Input {
        path: weights.display().to_string(),
        message,
    };
    if side.architecture != p.pretrain.architecture {
        return Err(input(format!(
            "checkpoint architecture is {}, the pipeline asks for {} (architecture mismatch)",
            side.architecture.describe(side.input),
            p.pretrain.architecture.describe(shape)
        )));
    }
    if side.input != shape {
        return Err(input(format!(
            "checkpoint takes {} images, the data is {}; set [data.preprocess] to {}",
            side.input, shape, side.input
        )));
    }
    encoder_of(weights, &side)
}

/// The encoder a sidecar describes, with the weights of `weights`.
fn encoder_of(weights: &Path, side: &EncoderSidecar) -> Result<Encoder<Cpu>> {
    let (tensors, _) = load_tensors(weights)?;
    let mut encoder = Encoder::new(
        &Cpu::default(),
        &side.architecture,
        side.input,
        &mut ChaCha8Rng::seed_from_u64(0),
    )?;
    encoder.load_named("encoder", &tensors, &weights.display().to_string())?;
    Ok(encoder)
}

/// A fresh encoder for the `scratch` baseline, its init drawn from `seed`.
fn fresh_encoder(p: &Pipeline, shape: ImageShape, seed: u64) -> Result<Encoder<Cpu>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000));
    Ok(Encoder::new(
        &Cpu::default(),
        &p.pretrain.architecture,
        shape,
        &mut rng,
    )?)
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
        (false, _) => fresh_encoder(p, train.shape, seed)?,
        (true, Some(e)) => e.clone(),
        (true, None) => {
            return Err(PipelineError::Output(format!(
                "strategy `{}` needs a pre-trained encoder",
                strategy.name()
            )))
        }
    };
    let start = Instant::now();
    let (model, history) = finetune(
        &dev,
        encoder,
        train,
        Some(&data.unlabeled),
        &p.finetune,
        strategy,
        seed,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let metrics = evaluate(&dev, &model, &data.test)
        .ok_or_else(|| PipelineError::Output("test set has no labels".into()))?;
    dir(out)?;
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
            "test_images": data.test.len(), "finetune_seconds": seconds,
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
    encoder_weights: Option<&Path>,
    strategy: Strategy,
    k: usize,
    seed: u64,
    out: &Path,
    log: &mut RunLog,
) -> Result<FinetuneOutcome> {
    // Check the encoder before writing anything.
    let pretrained = match (strategy.uses_pretrained(), encoder_weights) {
        (true, Some(w)) => Some(log.time("load encoder", || load_encoder(w, p, data.shape()))?),
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
    log.stage(
        run_name(strategy, k, seed),
        outcome.record.finetune_seconds,
        false,
    );
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
            git_revision: log.info().git_revision.clone(),
        },
    )?;
    log.write(out, data, true)?;
    Ok(outcome)
}

/// A fine-tuning run's name in folders and `run.json`.
fn run_name(strategy: Strategy, k: usize, seed: u64) -> String {
    format!("k{k}-seed{seed}-{}", strategy.name())
}

pub struct CompareOutcome {
    pub records: Vec<RunRecord>,
    pub summary: Vec<SummaryRow>,
    pub table: String,
    pub out: PathBuf,
}

/// Every strategy on the identical labeled subset for each seed and budget, pre-training once
/// per seed. Writes `results.csv` and `run.json` (after every run), `summary.csv`, `report.md`,
/// `accuracy.png`, the resolved `pipeline.toml`, the labeled items and per-run metrics.
///
/// With `resume`, an interrupted run in `out` is completed: runs already in `results.csv` are
/// kept, and a seed's finished pre-training is loaded instead of repeated. Every random draw
/// follows from the seeds, so the result equals an uninterrupted run's. The same extends a
/// finished comparison by more seeds, budgets or strategies.
pub fn compare(
    p: &Pipeline,
    data: &Prepared,
    out: &Path,
    obs: &dyn Observer,
    log: &mut RunLog,
    resume: bool,
) -> Result<CompareOutcome> {
    dir(out)?;
    let done = if resume {
        log.set_resumed();
        resume_state(p, data, out, log)?
    } else {
        Vec::new()
    };
    let resolved = toml::to_string_pretty(p)
        .map_err(|e| PipelineError::Output(format!("pipeline.toml: {e}")))?;
    imprint_fs::write_atomic(out.join("pipeline.toml"), resolved.as_bytes())?;
    log.write(out, data, false)?;
    let started = Instant::now();
    let c = &p.compare;
    let mut records = Vec::new();
    for &seed in &c.seeds {
        let kept = |strategy: Strategy, k: usize| {
            done.iter().find(|r| {
                r.strategy == strategy.name() && r.labels_per_class == k && r.seed == seed
            })
        };
        let needs_encoder = c.strategies.iter().any(|&s| {
            s.uses_pretrained() && c.labels_per_class.iter().any(|&k| kept(s, k).is_none())
        });
        let (pretrained, pretrain_seconds) = if needs_encoder {
            let pre_dir = out.join(format!("pretrain/seed-{seed}"));
            match resume
                .then(|| finished_pretraining(p, data, seed, &pre_dir))
                .flatten()
            {
                Some((enc, seconds)) => {
                    obs.info(&format!(
                        "seed {seed}: reusing the pre-trained encoder in {}",
                        pre_dir.display()
                    ));
                    log.stage(format!("pretrain seed {seed}"), seconds, true);
                    (Some(enc), seconds)
                }
                None => {
                    obs.info(&format!("pre-training, seed {seed}"));
                    let (enc, _, seconds) =
                        pretrain_artifacts(p, data, seed, &pre_dir, obs, log, resume)?;
                    log.stage(format!("pretrain seed {seed}"), seconds, false);
                    (Some(enc), seconds)
                }
            }
        } else {
            (None, 0.0)
        };
        for &k in &c.labels_per_class {
            let train = labeled_subset(
                data,
                k,
                seed,
                &out.join(format!("labeled/k{k}-seed{seed}.csv")),
            )?;
            for &strategy in &c.strategies {
                let name = run_name(strategy, k, seed);
                let record = match kept(strategy, k) {
                    Some(record) => {
                        log.stage(name, record.finetune_seconds, true);
                        record.clone()
                    }
                    None => {
                        let mut outcome = run_one(
                            p,
                            data,
                            &train,
                            pretrained.as_ref(),
                            strategy,
                            k,
                            seed,
                            &out.join("runs").join(&name),
                        )?;
                        if strategy.uses_pretrained() {
                            outcome.record.pretrain_seconds = pretrain_seconds;
                        }
                        log.stage(name, outcome.record.finetune_seconds, false);
                        outcome.record
                    }
                };
                obs.run_finished(&record);
                records.push(record);
                report::write_results_csv(&out.join("results.csv"), &records)?;
                log.write(out, data, false)?;
            }
        }
    }
    let report_start = Instant::now();
    let summary = report::summarize(&records, Strategy::Scratch.name());
    report::write_summary_csv(&out.join("summary.csv"), &summary)?;
    let context = format!(
        "Pipeline `{}`: {}. Encoder {}, pre-trained on {} unlabeled images for {}; \
         fine-tuned {}; test set of {} images{}; seeds {:?}. Wall time {:.1} s on {}{}.",
        p.name,
        p.description,
        p.pretrain.architecture.describe(data.shape()),
        data.unlabeled.len(),
        p.pretrain.describe(),
        p.finetune.describe(),
        data.test.len(),
        match p.data.test {
            Some(_) => String::new(),
            None => format!(
                " held out from the labeled images (split seed {})",
                p.data.split_seed
            ),
        },
        c.seeds,
        started.elapsed().as_secs_f64(),
        threads_phrase(rayon::current_num_threads()),
        if resume {
            " (resumed; earlier runs kept)"
        } else {
            ""
        },
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
    log.stage("report", report_start.elapsed().as_secs_f64(), false);
    log.write(out, data, true)?;
    Ok(CompareOutcome {
        table: report::render_terminal_table(&summary),
        records,
        summary,
        out: out.to_path_buf(),
    })
}

/// Checks that `out` holds an earlier run of this pipeline (its `[compare]` grid aside), on the
/// same data and thread count, and returns the runs it finished. A folder with no recorded
/// pipeline yet starts afresh.
fn resume_state(p: &Pipeline, data: &Prepared, out: &Path, log: &RunLog) -> Result<Vec<RunRecord>> {
    let recorded_path = out.join("pipeline.toml");
    let refuse = |path: &Path, message: String| PipelineError::Input {
        path: path.display().to_string(),
        message: format!("cannot resume: {message}"),
    };
    if !recorded_path.exists() {
        let empty = std::fs::read_dir(out).map_or(true, |mut d| d.next().is_none());
        if empty {
            return Ok(Vec::new());
        }
        return Err(refuse(
            out,
            "no pipeline.toml here, so this is not an output folder of `imprint run`".into(),
        ));
    }
    let recorded = Pipeline::from_file(&recorded_path)?;
    // Every run follows from its own (strategy, budget, seed), so the grid itself may grow or
    // shrink: the runs it still names are kept, new ones run. The name and description are
    // words for reports and change no result.
    let settings = |p: &Pipeline| {
        to_json(p).map(|mut json| {
            if let Some(o) = json.as_object_mut() {
                for key in ["compare", "name", "description"] {
                    o.remove(key);
                }
            }
            json
        })
    };
    if let Some(difference) = first_difference(&settings(&recorded)?, &settings(p)?, "") {
        return Err(refuse(&recorded_path, difference));
    }
    let run_json = out.join("run.json");
    if run_json.exists() {
        let info = read_run_info(&run_json)?;
        let threads = log.info().threads;
        if info.threads != threads {
            return Err(refuse(
                &run_json,
                format!(
                    "it ran on {}, this run has {threads}; pass --threads {} (results depend on it)",
                    threads_phrase(info.threads),
                    info.threads
                ),
            ));
        }
        if let Some(difference) = changed_data(&info.data, &DataFiles::of(data)) {
            return Err(refuse(&run_json, difference));
        }
    }
    let results = out.join("results.csv");
    if results.exists() {
        Ok(report::read_results_csv(&results)?)
    } else {
        Ok(Vec::new())
    }
}

fn to_json(p: &Pipeline) -> Result<serde_json::Value> {
    serde_json::to_value(p).map_err(|e| PipelineError::Output(format!("pipeline: {e}")))
}

/// The first setting (dotted key) whose value differs, described for the user.
fn first_difference(
    recorded: &serde_json::Value,
    now: &serde_json::Value,
    key: &str,
) -> Option<String> {
    use serde_json::Value;
    match (recorded, now) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                first_difference(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &sub,
                )
            })
        }
        _ if recorded == now => None,
        _ => Some(format!(
            "setting `{key}` is {now} now but {recorded} in the recorded pipeline; \
             resume with the same pipeline and flags, or start a new --out"
        )),
    }
}

/// Names the first data file whose size or content changed since `recorded`.
fn changed_data(recorded: &DataFiles, now: &DataFiles) -> Option<String> {
    [
        ("unlabeled", &recorded.unlabeled, &now.unlabeled),
        ("labeled", &recorded.labeled, &now.labeled),
        ("test", &recorded.test, &now.test),
    ]
    .into_iter()
    .find(|(_, a, b)| a != b)
    .map(|(role, a, b)| {
        let detail = match a.iter().zip(b.iter()).find(|(x, y)| x != y) {
            Some((x, y)) if x.path == y.path => format!(
                "{} changed (sha256 {} recorded, {} now)",
                y.path, x.sha256, y.sha256
            ),
            Some((x, y)) => format!("{} was read, now {}", x.path, y.path),
            None => format!("{} files were read, now {}", a.len(), b.len()),
        };
        format!("the data.{role} files differ from the recorded run: {detail}")
    })
}

/// A seed's earlier pre-training in `pre_dir`, when it finished (its sidecar is written last)
/// and fits this pipeline and data; `None` means pre-train again.
fn finished_pretraining(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    pre_dir: &Path,
) -> Option<(Encoder<Cpu>, f64)> {
    let weights = pre_dir.join("encoder.safetensors");
    let side: EncoderSidecar = read_json(&sidecar_path(&weights), ENCODER_FORMAT, SIDECAR).ok()?;
    let fits = side.seed == seed
        && side.epochs == p.pretrain.epochs
        && side.preprocess == p.data.preprocess
        && side.data == data.unlabeled.files;
    if !fits {
        return None;
    }
    let encoder = load_encoder(&weights, p, data.shape()).ok()?;
    Some((encoder, side.seconds.unwrap_or(0.0)))
}

/// Classifies the images of `input` with a fine-tuned model into `out_csv`
/// (`path,predicted,confidence`).
pub fn predict(model_weights: &Path, input: &Path, out_csv: &Path) -> Result<usize> {
    let side: ModelSidecar = read_json(&sidecar_path(model_weights), MODEL_FORMAT, SIDECAR)?;
    let images = imprint_data::load(input, &to_input(side.input, &side.preprocess))?;
    let model = model_of(model_weights, &side)?;
    let predictions = model.predict(&Cpu::default(), &images.pixels);
    let mut text = String::from("path,predicted,confidence\n");
    for (item, (class, p)) in images.items.iter().zip(&predictions) {
        text.push_str(&format!(
            "{},{},{p:.6}\n",
            csv_field(item),
            csv_field(&side.classes[*class])
        ));
    }
    imprint_fs::write_atomic(out_csv, text.as_bytes())?;
    Ok(predictions.len())
}

/// The classifier a sidecar describes, with the weights of `weights`.
fn model_of(weights: &Path, side: &ModelSidecar) -> Result<Classifier<Cpu>> {
    let (tensors, _) = load_tensors(weights)?;
    let dev = Cpu::default();
    let encoder = Encoder::new(
        &dev,
        &side.architecture,
        side.input,
        &mut ChaCha8Rng::seed_from_u64(0),
    )?;
    let mut model = Classifier::new(&dev, encoder, side.classes.clone(), side.input, 0);
    model.load_named(&tensors, &weights.display().to_string())?;
    Ok(model)
}

/// Preprocessing that brings any source to a checkpoint's input shape.
fn to_input(shape: ImageShape, recorded: &Preprocess) -> Preprocess {
    Preprocess {
        channels: Some(shape.channels),
        height: Some(shape.height),
        width: Some(shape.width),
        invert: recorded.invert,
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
/// `path,label,f0,f1,...` (label empty when the source has none); images are brought to the
/// encoder's input shape. Returns the number of images.
pub fn embed(encoder_weights: &Path, input: &Path, out_csv: &Path) -> Result<usize> {
    let side: EncoderSidecar = read_json(&sidecar_path(encoder_weights), ENCODER_FORMAT, SIDECAR)?;
    let images = imprint_data::load(input, &to_input(side.input, &side.preprocess))?;
    let encoder = encoder_of(encoder_weights, &side)?;
    let (dev, len, width) = (Cpu::default(), side.input.len(), side.architecture.latent());
    let mut text = String::from("path,label");
    for j in 0..width {
        text.push_str(&format!(",f{j}"));
    }
    text.push('\n');
    let mut row = 0;
    for chunk in images.pixels.chunks(1024 * len) {
        let n = chunk.len() / len;
        let x: Matrix<Cpu> = dev.tensor_from_vec(chunk.to_vec(), (n, len));
        let features = encoder.forward(x, false).as_vec();
        for f in features.chunks_exact(width) {
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
            row += 1;
        }
    }
    imprint_fs::write_atomic(out_csv, text.as_bytes())?;
    Ok(row)
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
    let (tensors, _) = load_tensors(weights)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_data::SourceFile;

    #[test]
    fn first_difference_names_the_dotted_key() {
        let a = serde_json::json!({"compare": {"seeds": [0, 1]}, "finetune": {"steps": 30}});
        let b = serde_json::json!({"compare": {"seeds": [0, 1]}, "finetune": {"steps": 31}});
        assert_eq!(first_difference(&a, &a, ""), None);
        let d = first_difference(&a, &b, "").unwrap();
        assert!(
            d.starts_with("setting `finetune.steps` is 31 now but 30"),
            "{d}"
        );
    }

    #[test]
    fn changed_data_names_the_file_and_both_digests() {
        let file = |sha: &str| SourceFile {
            path: "d/x.gz".into(),
            bytes: 3,
            sha256: sha.into(),
        };
        let old = DataFiles {
            unlabeled: vec![file("aa")],
            ..Default::default()
        };
        let new = DataFiles {
            unlabeled: vec![file("bb")],
            ..Default::default()
        };
        assert_eq!(changed_data(&old, &old), None);
        let d = changed_data(&old, &new).unwrap();
        assert!(
            d.contains("data.unlabeled")
                && d.contains("d/x.gz changed (sha256 aa recorded, bb now)"),
            "{d}"
        );
    }
}
