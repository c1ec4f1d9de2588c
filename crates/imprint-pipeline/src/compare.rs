//! The comparison: every strategy on the identical labeled subsets, seeds and budget, with and
//! without pre-training, and its resumption.

use crate::config::Route;
use crate::finetune_job::{
    fresh_encoder, labeled_subset, load_encoder, old_head_accuracy, run_name, run_one, write_model,
    RunStart, StartPoint,
};
use crate::pretrain_job::{pretrain_artifacts, PretrainAt};
use crate::provenance::{threads_phrase, RunLog};
use crate::resume_point;
use crate::sidecar::{read_encoder_sidecar, sidecar_path};
use crate::{create_dir, Artifacts, Observer, Pipeline, PipelineError, Prepared, Result};
use dfdx::prelude::Cpu;
use imprint_data::SourceFile;
use imprint_finetune::{Init, Metrics, Strategy};
use imprint_nn::{Encoder, ParamsExt};
use imprint_report::{self as report, RunRecord, SummaryRow};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct CompareOutcome {
    pub records: Vec<RunRecord>,
    pub summary: Vec<SummaryRow>,
    pub table: String,
    /// Per label budget, the kept model to deploy (with `keep_models`): the run of the strategy
    /// with the best mean accuracy that scored best.
    pub best_models: Vec<(usize, RunRecord, PathBuf)>,
}

/// How a comparison runs besides its pipeline.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareOptions {
    /// Complete an interrupted comparison in the output folder (see [`compare`]).
    pub resume: bool,
    /// Keep each run's fine-tuned model (`model.safetensors` + `model.json` in its folder).
    pub keep_models: bool,
}

/// The name of the baseline row of an imported classifier's own head, on the labeled classes.
pub const OLD_HEAD: &str = "imported:old-head";

/// The network of `compare.imported`, as each run from it starts, and what it is.
struct ImportedNet {
    start: StartPoint,
    init: Init<Cpu>,
    /// `p` with the network's architecture and normalisation: what its runs see.
    pipeline: Pipeline,
    /// Its old head's score on the test set, when that head knows every labeled class.
    old_head: Option<Metrics>,
}

/// Every strategy on the identical labeled subset for each seed and budget, pre-training once
/// per seed. Writes `results.csv` and `run.json` (after every run), `summary.csv`, `report.md`,
/// `accuracy.png`, the resolved `pipeline.toml`, the labeled items and per-run metrics.
///
/// Each route runs its own network: `self` the pipeline's architecture pre-trained here,
/// `imported` the network of `compare.imported` whatever its architecture (it must take the
/// data's image size), `imported+self` that network pre-trained further here; `scratch` is the
/// pipeline's architecture from a fresh init.
///
/// With `resume`, an interrupted run in `out` is completed: runs already in `results.csv` are
/// kept, and a seed's finished pre-training is loaded instead of repeated. Every random draw
/// follows from the seeds, so the result equals an uninterrupted run's. The same extends a
/// finished comparison by more seeds, budgets or strategies.
pub fn compare(
    p: &Pipeline,
    data: &Prepared,
    out: &Artifacts,
    obs: &dyn Observer,
    log: &mut RunLog,
    options: CompareOptions,
) -> Result<CompareOutcome> {
    let CompareOptions {
        resume,
        keep_models,
    } = options;
    // The imported network is checked before anything is written.
    let c = &p.compare;
    let imported = match &c.imported {
        Some(path) if c.routes.iter().any(|r| *r != Route::SelfSupervised) => {
            let start = StartPoint::read(path)?;
            let encoder = start.encoder_of_shape(data.shape())?;
            let mut pipeline = p.clone();
            pipeline.pretrain.architecture = start.architecture.clone();
            pipeline.data.preprocess.mean = start.preprocess.mean.clone();
            pipeline.data.preprocess.std = start.preprocess.std.clone();
            let init = start.init(encoder);
            let old_head = (c.routes.contains(&Route::Imported) && p.finetune.head_from_init)
                .then(|| old_head_accuracy(&init, &data.test))
                .flatten();
            Some(ImportedNet {
                start,
                init,
                pipeline,
                old_head,
            })
        }
        _ => None,
    };
    out.write(|| create_dir(out.dir()))?;
    let done = if resume {
        log.set_resumed();
        out.read_back(|| resume_point::finished_runs(p, data, out.dir()))?
    } else {
        Vec::new()
    };
    let resolved = toml::to_string_pretty(p)
        .map_err(|e| PipelineError::Output(format!("pipeline.toml: {e}")))?;
    out.write(|| {
        imprint_fs::write_atomic(out.join("pipeline.toml"), resolved.as_bytes())?;
        log.write(out.dir(), data, false)
    })?;
    let started = Instant::now();
    let mut encoders = Pretrained {
        p,
        data,
        out,
        obs,
        resume,
        imported: imported.as_ref(),
        made: BTreeMap::new(),
    };
    let mut records = Vec::new();
    let kept = |name: &str, k: usize, seed: u64| {
        done.iter()
            .find(|r| r.strategy == name && r.labels_per_class == k && r.seed == seed)
    };
    let per_budget: usize = c
        .strategies
        .iter()
        .map(|s| {
            if s.uses_pretrained() {
                c.routes.len()
            } else {
                1
            }
        })
        .sum();
    let count = per_budget * c.labels_per_class.len() * c.seeds.len();
    let mut index = 0;
    for &seed in &c.seeds {
        // Each route's encoder first, as a run of the seed will need it (none when every run
        // that would is kept).
        for &route in &c.routes {
            let needed = c.strategies.iter().any(|&s| {
                s.uses_pretrained()
                    && c.labels_per_class
                        .iter()
                        .any(|&k| kept(&route.record_name(s), k, seed).is_none())
            });
            if needed {
                encoders.get(route, seed, log)?;
            }
        }
        for &k in &c.labels_per_class {
            let train = labeled_subset(
                data,
                k,
                seed,
                out,
                &out.join(format!("labeled/k{k}-seed{seed}.csv")),
            )?;
            for &strategy in &c.strategies {
                let routes: &[Option<Route>] = if strategy.uses_pretrained() {
                    &c.routes.iter().map(|&r| Some(r)).collect::<Vec<_>>()
                } else {
                    &[None]
                };
                for &route in routes {
                    let name =
                        route.map_or(strategy.name().to_string(), |r| r.record_name(strategy));
                    let folder = run_name(&name, k, seed);
                    index += 1;
                    obs.run_started(index, count, &format!("{name}, k={k}, seed {seed}"));
                    let record = match kept(&name, k, seed) {
                        Some(record) => {
                            log.stage(folder, record.finetune_seconds, true);
                            record.clone()
                        }
                        None => {
                            let from = route.map(|r| encoders.get(r, seed, log)).transpose()?;
                            let net = imported.as_ref().filter(|_| {
                                matches!(route, Some(Route::Imported | Route::ImportedThenSelf))
                            });
                            let run_p = net.map_or(p, |n| &n.pipeline);
                            let dir = out.sub(Path::new("runs").join(&folder));
                            let mut outcome = run_one(
                                run_p,
                                data,
                                &train,
                                RunStart {
                                    init: from.as_ref().map(|(init, _)| init),
                                    old_head: None,
                                    obs,
                                },
                                strategy,
                                k,
                                seed,
                                &dir,
                                resume,
                            )?;
                            if keep_models {
                                let source = match route {
                                    Some(Route::Imported) => net.map(|n| n.start.source.clone()),
                                    Some(r) => encoders.file(r, seed),
                                    None => None,
                                };
                                dir.write(|| {
                                    write_model(
                                        dir.dir(),
                                        run_p,
                                        data,
                                        &outcome.model,
                                        strategy,
                                        seed,
                                        source,
                                        log,
                                    )
                                })?;
                            }
                            outcome.record.strategy = name;
                            outcome.record.pretrain_seconds =
                                from.map_or(0.0, |(_, seconds)| seconds);
                            log.stage(folder, outcome.record.finetune_seconds, false);
                            outcome.record
                        }
                    };
                    obs.run_finished(&record);
                    records.push(record);
                    out.write(|| {
                        report::write_results_csv(&out.join("results.csv"), &records)?;
                        log.write(out.dir(), data, false)
                    })?;
                }
            }
            // The imported classifier's own head on these classes: a baseline row.
            if let Some(metrics) = imported.as_ref().and_then(|n| n.old_head.as_ref()) {
                records.push(RunRecord {
                    strategy: OLD_HEAD.into(),
                    labels_per_class: k,
                    seed,
                    test_accuracy: metrics.accuracy,
                    macro_f1: metrics.macro_f1,
                    pretrain_seconds: 0.0,
                    finetune_seconds: 0.0,
                    epochs_run: 0,
                });
                out.write(|| {
                    Ok(report::write_results_csv(
                        &out.join("results.csv"),
                        &records,
                    )?)
                })?;
            }
        }
    }
    let report_start = Instant::now();
    let summary = report::summarize(&records, Strategy::SCRATCH.name());
    out.write(|| {
        Ok(report::write_summary_csv(
            &out.join("summary.csv"),
            &summary,
        )?)
    })?;
    let best_models = if keep_models {
        best_models(&summary, &records, out.dir())
    } else {
        Vec::new()
    };
    let context = format!(
        "Pipeline `{}`: {}. {} Fine-tuned {}; test set of {} images{}; seeds {:?}. Wall time \
         {:.1} s on {}{}.",
        p.name,
        p.description,
        encoders.describe(&records),
        fine_tuning(p)?,
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
    let checks = data.checks.describe();
    let context = if checks.is_empty() {
        context
    } else {
        format!("{context} Content checks: {checks}.")
    };
    let mut md = report::render_markdown(
        &format!("Pre-training vs scratch: {}", p.name),
        &context,
        &summary,
    );
    md.push_str(&models_section(&best_models, keep_models, out.dir()));
    out.write(|| {
        imprint_fs::write_atomic(out.join("report.md"), md.as_bytes())?;
        Ok(report::plot_accuracy(
            &out.join("accuracy.png"),
            &format!("{}: test accuracy", p.name),
            &summary,
            data.labeled.num_classes(),
        )?)
    })?;
    log.stage("report", report_start.elapsed().as_secs_f64(), false);
    out.write(|| log.write(out.dir(), data, true))?;
    Ok(CompareOutcome {
        table: report::render_terminal_table(&summary),
        records,
        summary,
        best_models,
    })
}

/// Per label budget: the strategy with the best mean accuracy, and of its runs with a kept
/// model the one that scored best.
fn best_models(
    summary: &[SummaryRow],
    records: &[RunRecord],
    out: &Path,
) -> Vec<(usize, RunRecord, PathBuf)> {
    let mut budgets: Vec<usize> = summary.iter().map(|r| r.labels_per_class).collect();
    budgets.dedup();
    budgets
        .into_iter()
        .filter_map(|k| {
            let best = summary
                .iter()
                .filter(|r| r.labels_per_class == k && r.mean_accuracy.is_finite())
                .filter(|r| r.strategy != OLD_HEAD)
                .max_by(|a, b| a.mean_accuracy.total_cmp(&b.mean_accuracy))?;
            records
                .iter()
                .filter(|r| r.labels_per_class == k && r.strategy == best.strategy)
                .map(|r| {
                    let folder = run_name(&r.strategy, k, r.seed);
                    (r, out.join("runs").join(folder).join("model.safetensors"))
                })
                .filter(|(_, path)| path.exists())
                .max_by(|a, b| a.0.test_accuracy.total_cmp(&b.0.test_accuracy))
                .map(|(r, path)| (k, r.clone(), path))
        })
        .collect()
}

/// The report's section on the models: which to deploy, or how to keep them.
fn models_section(best: &[(usize, RunRecord, PathBuf)], kept: bool, out: &Path) -> String {
    if !kept {
        return "\nThe fine-tuned models were not kept; `--keep-models` keeps each run's \
                `model.safetensors` and names the one to deploy here.\n"
            .into();
    }
    let mut text = String::from("\n## The model to deploy\n\n");
    for (k, record, path) in best {
        let shown = path.strip_prefix(out).unwrap_or(path);
        text.push_str(&format!(
            "- {k} labels/class: `{}` ({}, seed {}: {:.1}% on the test set), the best-scoring \
             run of the strategy with the best mean accuracy; picked by its test score, so a \
             new test set would judge it without that advantage\n",
            shown.display(),
            record.strategy,
            record.seed,
            100.0 * record.test_accuracy
        ));
    }
    if best.is_empty() {
        text.push_str("No run of this folder kept its model (the kept runs came from --resume).\n");
    }
    text
}

/// `[finetune]` in words, and each budget's own settings after it.
fn fine_tuning(p: &Pipeline) -> Result<String> {
    let mut text = p.finetune.describe();
    for &k in &p.compare.labels_per_class {
        if p.finetune_by_budget.contains_key(&k.to_string()) {
            let own = p.for_budget(k)?.finetune.describe();
            text.push_str(&format!("; with {k} labels per class, {own}"));
        }
    }
    Ok(text)
}

/// The encoders of a comparison's routes, each made when a run first needs it: pre-trained
/// (or reloaded, on `--resume`) once per seed, or once in all with `pretrain_once`.
struct Pretrained<'a> {
    p: &'a Pipeline,
    data: &'a Prepared,
    out: &'a Artifacts,
    obs: &'a dyn Observer,
    resume: bool,
    imported: Option<&'a ImportedNet>,
    /// By route and pre-training seed: the encoder, the seconds its pre-training took, and its
    /// file with its digest.
    made: BTreeMap<(Route, u64), (Encoder<Cpu>, f64, SourceFile)>,
}

impl Pretrained<'_> {
    /// Where the runs of `route` and `seed` start, and the seconds its pre-training took.
    fn get(&mut self, route: Route, seed: u64, log: &mut RunLog) -> Result<(Init<Cpu>, f64)> {
        let imported = || {
            self.imported
                .expect("validation requires compare.imported for the imported routes")
        };
        if route == Route::Imported {
            return Ok((imported().init.clone(), 0.0));
        }
        let c = &self.p.compare;
        let seed = if c.pretrain_once { c.seeds[0] } else { seed };
        if let Some((encoder, seconds, _)) = self.made.get(&(route, seed)) {
            return Ok((encoder.clone().into(), *seconds));
        }
        let (p, from) = match route {
            Route::ImportedThenSelf => {
                let net = imported();
                (&net.pipeline, Some((&net.init.encoder, &net.start.source)))
            }
            _ => (self.p, None),
        };
        let folder = match route {
            Route::ImportedThenSelf => format!("pretrain/seed-{seed}-from-imported"),
            _ => format!("pretrain/seed-{seed}"),
        };
        let dir = self.out.sub(folder);
        let stage = match route {
            Route::ImportedThenSelf => format!("pretrain from the imported network seed {seed}"),
            _ => format!("pretrain seed {seed}"),
        };
        let reused = match self.resume {
            true => finished_pretraining(p, self.data, seed, &dir, from.map(|f| f.1))?,
            false => None,
        };
        let (encoder, seconds) = match reused {
            Some((encoder, seconds)) => {
                self.obs.info(&format!(
                    "seed {seed}: reusing the pre-trained encoder in {}",
                    dir.dir().display()
                ));
                log.stage(stage, seconds, true);
                (encoder, seconds)
            }
            None => {
                let from_what = match route {
                    Route::ImportedThenSelf => " from the imported network",
                    _ => "",
                };
                self.obs
                    .info(&format!("pre-training{from_what}, seed {seed}"));
                let at = PretrainAt {
                    seed,
                    dir: &dir,
                    resume: self.resume,
                    from,
                };
                let (encoder, _, seconds) = pretrain_artifacts(p, self.data, &at, self.obs, log)?;
                log.stage(stage, seconds, false);
                (encoder, seconds)
            }
        };
        let weights = dir.join("encoder.safetensors");
        // Process 0 wrote it; the others learn its digest from it.
        let (bytes, sha256) = dir.read_back(|| Ok(imprint_fs::size_and_sha256(&weights)?))?;
        let file = SourceFile {
            path: weights.display().to_string(),
            bytes,
            sha256,
        };
        self.made
            .insert((route, seed), (encoder.clone(), seconds, file));
        Ok((encoder.into(), seconds))
    }

    /// The file of the encoder `route` gave the runs of `seed`, once made.
    fn file(&self, route: Route, seed: u64) -> Option<SourceFile> {
        let c = &self.p.compare;
        let seed = if c.pretrain_once { c.seeds[0] } else { seed };
        self.made.get(&(route, seed)).map(|(_, _, f)| f.clone())
    }

    /// Where each network of the runs in `records` came from, in sentences for the report:
    /// the architecture, the file and its digest, and what was done to it here. Only what ran
    /// is described.
    fn describe(&self, records: &[RunRecord]) -> String {
        let shape = self.data.shape();
        let ran = |route: Option<Route>| {
            records.iter().any(|r| match route {
                None => r.strategy == Strategy::SCRATCH.name(),
                Some(route) => Strategy::all()
                    .filter(|s| s.uses_pretrained())
                    .any(|s| r.strategy == route.record_name(s)),
            })
        };
        let files = |route: Route| {
            let listed: Vec<String> = self
                .made
                .iter()
                .filter(|((r, _), _)| *r == route)
                .map(|((_, seed), (_, _, f))| {
                    let shown = Path::new(&f.path)
                        .strip_prefix(self.out.dir())
                        .map_or_else(|_| f.path.clone(), |p| p.display().to_string());
                    format!("seed {seed}: `{shown}` (sha256 {})", f.sha256)
                })
                .collect();
            listed.join(", ")
        };
        let pretraining = |p: &Pipeline| {
            format!(
                "pre-trained here on {} unlabeled images for {}",
                self.data.unlabeled.len(),
                p.pretrain.describe()
            )
        };
        let mut parts = Vec::new();
        if ran(None) {
            parts.push(format!(
                "`scratch`: {} from a fresh init.",
                self.p.pretrain.architecture.describe(shape)
            ));
        }
        if ran(Some(Route::SelfSupervised)) {
            parts.push(format!(
                "Route `self`: {}, {} ({}).",
                self.p.pretrain.architecture.describe(shape),
                pretraining(self.p),
                files(Route::SelfSupervised)
            ));
        }
        if let Some(net) = self.imported {
            let arch = net.start.architecture.describe(shape);
            let made_from = net
                .start
                .origin
                .as_ref()
                .map(|o| format!(", made from `{}` (sha256 {})", o.path, o.sha256))
                .unwrap_or_default();
            let origin = format!(
                "`{}` (sha256 {}){made_from}",
                net.start.source.path, net.start.source.sha256
            );
            if ran(Some(Route::Imported)) {
                let head = match (&net.old_head, self.p.finetune.head_from_init) {
                    (Some(_), true) => {
                        "; its classifier's rows for the labeled classes started each new head, \
                         and that head alone is the `imported:old-head` row"
                    }
                    _ => "",
                };
                parts.push(format!(
                    "Route `imported`: {arch} read from {origin}, as it is{head}."
                ));
            }
            if ran(Some(Route::ImportedThenSelf)) {
                parts.push(format!(
                    "Route `imported+self`: {arch} read from {origin}, then {} ({}).",
                    pretraining(&net.pipeline),
                    files(Route::ImportedThenSelf)
                ));
            }
        }
        parts.join(" ")
    }
}

/// A seed's earlier pre-training in `pre_dir`, when it finished and fits this pipeline, data
/// and start ([`finished_on_disk`]), read by replica 0 and handed to every replica; `None`
/// means pre-train again.
fn finished_pretraining(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    pre_dir: &Artifacts,
    from: Option<&SourceFile>,
) -> Result<Option<(Encoder<Cpu>, f64)>> {
    let (tensors, seconds) = pre_dir.read_back_with_tensors(|| {
        Ok(match finished_on_disk(p, data, seed, pre_dir.dir(), from) {
            Some((encoder, seconds)) => (encoder.named_tensors("encoder"), Some(seconds)),
            None => (Vec::new(), None),
        })
    })?;
    let Some(seconds) = seconds else {
        return Ok(None);
    };
    // The sidecar's architecture and preprocessing are the pipeline's (it fits).
    let mut encoder = fresh_encoder(p, data.shape(), seed)?;
    let tensors: BTreeMap<_, _> = tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let weights = pre_dir.join("encoder.safetensors");
    encoder.load_named("encoder", &tensors, &weights.display().to_string())?;
    Ok(Some((encoder, seconds)))
}

/// A seed's earlier pre-training in `pre_dir`, when it finished (its sidecar is written last)
/// and fits this pipeline, data and start.
fn finished_on_disk(
    p: &Pipeline,
    data: &Prepared,
    seed: u64,
    pre_dir: &Path,
    from: Option<&SourceFile>,
) -> Option<(Encoder<Cpu>, f64)> {
    let weights = pre_dir.join("encoder.safetensors");
    let side = read_encoder_sidecar(&sidecar_path(&weights)).ok()?;
    let fits = side.seed == seed
        && side.epochs == p.pretrain.epochs
        && side.preprocess == p.data.preprocess
        && side.data.matches(&data.unlabeled.source)
        && side.started_from.as_ref() == from;
    if !fits {
        return None;
    }
    let encoder = load_encoder(&weights, p, data.shape()).ok()?;
    Some((encoder, side.seconds.unwrap_or(0.0)))
}
