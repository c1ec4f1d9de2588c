//! The `pretrain` job: an encoder pre-trained on the unlabeled images, with its loss curves,
//! pictures and epoch checkpoints.

use crate::provenance::{RunLog, VERSION};
use crate::resume_point;
use crate::sidecar::{write_json, ENCODER_FORMAT};
use crate::{
    create_dir, Artifacts, EncoderSidecar, Observer, Pipeline, PipelineError, Prepared, Result,
};
use dfdx::prelude::Cpu;
use imprint_data::split::{sample_labeled, LabelBudget};
use imprint_data::{Dataset, SourceFile, SourceRecord};
use imprint_nn::knn::KnnSettings;
use imprint_nn::{save_tensors, Decoder, Encoder, ParamsExt};
use imprint_pretrain::{
    pretrain, reconstruct, EpochStats, Hooks, Images, Monitor, PretrainError, Snapshot, Start,
};
use imprint_report as report;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// The `pretrain` command: trains the encoder of `p` by its pretexts on the unlabeled images and
/// writes into `out`: `encoder.safetensors` + `encoder.json`, `loss.csv`, `loss.png`, and with a
/// reconstruction pretext `decoder.safetensors` and `reconstructions.png` (held-out originals over
/// their reconstructions), and `run.json`. With
/// `resume`, an interrupted pre-training in `out` continues from its last epoch checkpoint.
pub fn pretrain_job(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    out: &Artifacts,
    obs: &dyn Observer,
    log: &mut RunLog,
    resume: bool,
) -> Result<(Encoder<Cpu>, Vec<EpochStats>)> {
    if resume {
        log.set_resumed();
        out.read_back(|| resume_point::refuse_other_pretraining(p, data, seed, out.dir()))?;
    }
    let at = PretrainAt {
        seed,
        dir: out,
        resume,
        from: None,
    };
    let (encoder, history, seconds) = pretrain_artifacts(p, data, &at, obs, log)?;
    log.stage(format!("pretrain seed {seed}"), seconds, false);
    out.write(|| log.write(out.dir(), data, true))?;
    Ok((encoder, history))
}

/// One pre-training: its seed, folder, whether to continue an interrupted one there, and the
/// encoder (and its file) it starts from when it does not start fresh.
#[derive(Clone, Copy)]
pub(crate) struct PretrainAt<'a> {
    pub seed: u64,
    pub dir: &'a Artifacts,
    pub resume: bool,
    pub from: Option<(&'a Encoder<Cpu>, &'a SourceFile)>,
}

/// Pre-trains and writes the artifacts of [`pretrain_job`] but `run.json`; returns the encoder,
/// the loss history and the wall time. `encoder.json` is written last, so its presence marks a
/// complete folder for `--resume`. Until then, each epoch end leaves a checkpoint that `resume`
/// continues from, and that a diverged run keeps as its last good state.
pub(crate) fn pretrain_artifacts(
    p: &Pipeline,
    data: &Prepared,
    at: &PretrainAt,
    obs: &dyn Observer,
    log: &RunLog,
) -> Result<(Encoder<Cpu>, Vec<EpochStats>, f64)> {
    let PretrainAt {
        seed,
        dir: out,
        resume,
        from,
    } = *at;
    let start = Instant::now();
    out.write(|| create_dir(out.dir()))?;
    let dev = Cpu::default();
    let shape = data.unlabeled.shape;
    let epochs = p.pretrain.epochs;
    let checkpoint = resume_point::checkpoint_path(out);
    let snapshot = match resume {
        true => resume_point::load_pretrain(out, p, data)?,
        false => None,
    };
    if let Some(snapshot) = &snapshot {
        obs.info(&format!(
            "seed {seed}: continuing pre-training after epoch {} from {}",
            snapshot.state.epochs_done,
            checkpoint.display()
        ));
    }
    let mut on_batch =
        |epoch, done, total, loss| obs.pretrain_batch(seed, epoch, epochs, done, total, loss);
    let mut on_epoch = |stats: &EpochStats| obs.pretrain_epoch(seed, stats, epochs);
    let mut last_saved = snapshot.as_ref().map(|s| s.state.epochs_done);
    let mut on_checkpoint = |snapshot: &Snapshot| {
        resume_point::save_pretrain(out, p, data, snapshot)
            .map_err(|e| PretrainError::Checkpoint(e.to_string()))?;
        last_saved = Some(snapshot.state.epochs_done);
        Ok(())
    };
    let monitored = monitor_sets(p, data, obs)?;
    let hooks = Hooks {
        on_batch: Some(&mut on_batch),
        on_epoch: Some(&mut on_epoch),
        on_checkpoint: Some(&mut on_checkpoint),
        monitor: monitored.as_ref().map(|(bank, queries)| Monitor {
            bank: &bank.pixels,
            bank_labels: bank.labels.as_deref().unwrap_or_default(),
            queries: &queries.pixels,
            query_labels: queries.labels.as_deref().unwrap_or_default(),
            classes: bank.num_classes(),
            knn: KnnSettings::default(),
            memory_budget: p.data.storage().memory_budget,
        }),
        replicas: Some(out.replicas().clone()),
    };
    let normalize = p.data.preprocess.normalize();
    let images = Images {
        pixels: &data.unlabeled.pixels,
        shape,
        normalize: normalize.as_ref(),
    };
    let begin = match (&snapshot, from) {
        (Some(snapshot), _) => Start::Resume(snapshot),
        (None, Some((encoder, _))) => Start::From(encoder),
        (None, None) => Start::Fresh,
    };
    let mut trained = match pretrain(&dev, images, &p.pretrain, seed, begin, hooks) {
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
    // The weights, curves and pictures, on the process that writes.
    out.write(|| {
        save_tensors(
            &out.join("encoder.safetensors"),
            &trained.encoder.named_tensors("encoder"),
            &BTreeMap::new(),
        )?;
        if let Some(decoder) = &trained.decoder {
            save_tensors(
                &out.join("decoder.safetensors"),
                &decoder.named_tensors("decoder"),
                &BTreeMap::new(),
            )?;
        }
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
                    h.knn_accuracy.unwrap_or(f64::NAN),
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
                "knn_accuracy",
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
        // An accuracy is no loss: the monitor has an axis of its own, in percent.
        let monitor: Vec<report::Curve> = trained
            .history
            .iter()
            .all(|h| h.knn_accuracy.is_some())
            .then(|| {
                let points = trained
                    .history
                    .iter()
                    .filter_map(|h| h.knn_accuracy.map(|a| (h.epoch as f64 + 1.0, 100.0 * a)))
                    .collect();
                ("kNN monitor accuracy".to_string(), points)
            })
            .into_iter()
            .collect();
        if !trained.history.is_empty() {
            report::plot_curves_on_two_axes(
                &out.join("loss.png"),
                "Pre-training loss",
                "loss",
                &series,
                (!monitor.is_empty()).then_some(("kNN monitor accuracy (%)", monitor.as_slice())),
            )?;
        }
        if let Some(decoder) = trained.decoder.as_mut() {
            write_reconstructions(
                &out.join("reconstructions.png"),
                data,
                &trained.heldout,
                &mut trained.encoder,
                decoder,
            )?;
        }
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
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    out.write(|| {
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
                data: SourceRecord::of(&data.unlabeled.source),
                git_revision: log.info().git_revision.clone(),
                seconds: Some(seconds),
                started_from: from.map(|(_, source)| source.clone()),
            },
        )
    })?;
    // The finished encoder supersedes it; a crash before this line leaves both, and either
    // resumes correctly.
    resume_point::remove(out)?;
    Ok((trained.encoder, trained.history, seconds))
}

/// The kNN monitor's labeled bank and queries, drawn from the labeled pool (never the test
/// set) with a seed of their own, the same for every pre-training seed; `None` without one, or
/// (said through `obs`) when the labeled images cannot supply it: a monitor is a check, not a
/// reason to stop.
fn monitor_sets(
    p: &Pipeline,
    data: &Prepared,
    obs: &dyn Observer,
) -> Result<Option<(Dataset, Dataset)>> {
    let per_class = p.pretrain.monitor_labels_per_class;
    if per_class == 0 {
        return Ok(None);
    }
    if !data.has_labels {
        obs.info("no labeled images given (--labeled): the kNN monitor is off");
        return Ok(None);
    }
    let pool = &data.labeled;
    // Named by the setting and the class, as the user knows them.
    if let Some((name, count)) = pool
        .class_counts()
        .into_iter()
        .find(|(_, n)| *n < per_class)
    {
        return Err(PipelineError::Input {
            path: "pretrain.monitor_labels_per_class".into(),
            message: format!(
                "{per_class} per class asked for, but class `{name}` has only {count} labeled \
                 images (the test images set aside)"
            ),
        });
    }
    let labels = pool.labels.as_deref().unwrap_or_default();
    let seed = p.data.split_seed ^ MONITOR_SALT;
    let classes = pool.num_classes();
    let bank = sample_labeled(labels, classes, LabelBudget::PerClass(per_class), seed)?;
    let mut in_bank = vec![false; pool.len()];
    bank.iter().for_each(|&i| in_bank[i] = true);
    let rest: Vec<usize> = (0..pool.len()).filter(|&i| !in_bank[i]).collect();
    let rest_labels: Vec<usize> = rest.iter().map(|&i| labels[i]).collect();
    let total = LabelBudget::Total(p.pretrain.monitor_queries.min(rest.len()));
    let queries = sample_labeled(&rest_labels, classes, total, seed)?;
    let queries: Vec<usize> = queries.into_iter().map(|i| rest[i]).collect();
    Ok(Some((pool.subset(&bank), pool.subset(&queries))))
}

/// Mixed into the split seed for the monitor's draws, so they differ from the labeled subsets'.
const MONITOR_SALT: u64 = 0x6d6f_6e69_746f_7221;

/// Held-out originals (or the first images, with nothing held out) over their reconstructions.
fn write_reconstructions(
    path: &Path,
    data: &Prepared,
    heldout: &[usize],
    encoder: &mut Encoder<Cpu>,
    decoder: &mut Decoder<Cpu>,
) -> Result<()> {
    let shape = data.unlabeled.shape;
    let show: Vec<usize> = if heldout.is_empty() {
        (0..data.unlabeled.len().min(12)).collect()
    } else {
        heldout.iter().copied().take(12).collect()
    };
    let originals: Vec<f32> = show.iter().flat_map(|&i| data.unlabeled.image(i)).collect();
    let recon = reconstruct(&Cpu::default(), encoder, decoder, &originals, shape.len());
    report::image_grid(
        path,
        shape.channels,
        shape.height,
        shape.width,
        &[
            originals.chunks(shape.len()).collect(),
            recon.chunks(shape.len()).collect(),
        ],
    )?;
    Ok(())
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
