//! The main job on the shipped digits, and determinism of a whole pipeline run.

use imprint_e2e::{
    assert_nonempty, assert_png, assert_same_file, digits_run_args, imprint, read_json, test_dir,
    words, workspace_root, Table,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The comparison grid of a pipeline file, read independently of the program under test.
fn grid(pipeline: &Path) -> (Vec<String>, Vec<u64>, Vec<u64>, u64) {
    let text = std::fs::read_to_string(pipeline).expect("read pipeline file");
    let doc: toml::Table = text.parse().expect("pipeline file is TOML");
    let compare = doc["compare"].as_table().expect("[compare]");
    let list = |key: &str| -> Vec<u64> {
        compare[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|v| v.as_integer().expect("integer") as u64)
            .collect()
    };
    let strategies = compare["strategies"]
        .as_array()
        .expect("strategies")
        .iter()
        .map(|v| v.as_str().expect("strategy name").to_string())
        .collect();
    let epochs = doc["pretrain"]["epochs"].as_integer().expect("epochs") as u64;
    (strategies, list("labels_per_class"), list("seeds"), epochs)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// `imprint run pipelines/digits.toml` exactly as shipped: every artifact is written and
/// consistent, and pre-training pays off on average over the fixed seeds.
#[test]
fn digits_pipeline_writes_every_artifact_and_pretraining_beats_scratch() {
    let root = workspace_root();
    let pipeline = root.join("pipelines/digits.toml");
    let (strategies, budgets, seeds, epochs) = grid(&pipeline);
    assert!(strategies.iter().any(|s| s == "scratch"));
    let t: &Path = &test_dir();
    let out = t.join("out");

    imprint(&root, &digits_run_args(&out, "--threads 2"))
        .assert_success()
        .assert_stdout_has(&["probe-then-full"]);

    // results.csv: one row per strategy x budget x seed, accuracies in [0, 1]
    let results = Table::read(&out.join("results.csv"));
    for col in ["strategy", "labels_per_class", "seed", "test_accuracy"] {
        results.col(col);
    }
    let mut expected = BTreeSet::new();
    for s in &strategies {
        for &k in &budgets {
            for &seed in &seeds {
                expected.insert((s.clone(), k, seed));
            }
        }
    }
    let found: Vec<(String, u64, u64)> = results
        .rows
        .iter()
        .map(|r| {
            (
                r[results.col("strategy")].clone(),
                r[results.col("labels_per_class")].parse().unwrap(),
                r[results.col("seed")].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(found.len(), expected.len(), "one row per run: {found:?}");
    assert_eq!(found.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let acc = results.numbers("test_accuracy");
    assert!(acc.iter().all(|a| (0.0..=1.0).contains(a)), "{acc:?}");

    // summary.csv agrees with results.csv
    let summary = Table::read(&out.join("summary.csv"));
    assert_eq!(summary.rows.len(), strategies.len() * budgets.len());
    let mut by_cell: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for (row, a) in results.rows.iter().zip(&acc) {
        by_cell
            .entry((
                row[results.col("strategy")].clone(),
                row[results.col("labels_per_class")].clone(),
            ))
            .or_default()
            .push(*a);
    }
    for row in &summary.rows {
        let key = (
            row[summary.col("strategy")].clone(),
            row[summary.col("labels_per_class")].clone(),
        );
        let want = mean(&by_cell[&key]);
        let got: f64 = row[summary.col("mean_accuracy")].parse().unwrap();
        assert!(
            (got - want).abs() < 1e-9,
            "{key:?}: summary {got}, results {want}"
        );
    }

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for s in &strategies {
        assert!(
            report.contains(s.as_str()),
            "report.md lacks {s}:\n{report}"
        );
    }
    assert_png(&out.join("accuracy.png"));

    // one pre-training per seed
    for seed in &seeds {
        let dir = out.join(format!("pretrain/seed-{seed}"));
        for f in ["encoder.safetensors", "decoder.safetensors"] {
            assert_nonempty(&dir.join(f));
        }
        let side = read_json(&dir.join("encoder.json"));
        assert_eq!(side["format"], "imprint-encoder/1", "{side}");
        assert_eq!(side["seed"], *seed, "{side}");
        assert_eq!(
            (
                side["input"]["channels"].as_u64(),
                side["input"]["height"].as_u64()
            ),
            (Some(1), Some(8)),
            "{side}"
        );
        let loss = Table::read(&dir.join("loss.csv"));
        assert_eq!(loss.rows.len() as u64, epochs, "one loss row per epoch");
        let train = loss.numbers("train_loss");
        assert!(train.iter().all(|l| l.is_finite()), "{train:?}");
        assert!(
            train.last().unwrap() < &(0.8 * train[0]),
            "pre-training loss did not fall: {train:?}"
        );
        assert_png(&dir.join("reconstructions.png"));
    }

    // the labeled items of each (budget, seed): k per class, 10 classes
    for &k in &budgets {
        for &seed in &seeds {
            let labeled = Table::read(&out.join(format!("labeled/k{k}-seed{seed}.csv")));
            let labels = labeled.column("label");
            assert_eq!(labels.len() as u64, 10 * k, "k{k}-seed{seed}");
            for class in 0..10 {
                let n = labels.iter().filter(|l| **l == class.to_string()).count();
                assert_eq!(n as u64, k, "class {class} in k{k}-seed{seed}");
            }
        }
    }

    // Pre-training helps, judged on one strategy named before the run (probe-then-full): over all
    // budgets and seeds, and by 5 points at one label per class.
    let strategy = results.column("strategy");
    let budget = results.column("labels_per_class");
    let mean_of = |name: &str, k: Option<&str>| {
        let v: Vec<f64> = (0..acc.len())
            .filter(|&i| strategy[i] == name && k.is_none_or(|k| budget[i] == k))
            .map(|i| acc[i])
            .collect();
        mean(&v)
    };
    let (pretrained, scratch) = (mean_of("probe-then-full", None), mean_of("scratch", None));
    assert!(
        pretrained > scratch,
        "probe-then-full averages {pretrained:.4}, scratch {scratch:.4}"
    );
    let (pretrained, scratch) = (
        mean_of("probe-then-full", Some("1")),
        mean_of("scratch", Some("1")),
    );
    assert!(
        pretrained > scratch + 0.05,
        "at 1 label per class probe-then-full averages {pretrained:.4}, scratch {scratch:.4}"
    );
}

/// Runs the shipped digits comparison with `flags` twice, the i-th run also given the flags
/// `each[i]`; returns each run's output folder and results.
fn digits_twice(t: &Path, flags: &str, each: [&str; 2]) -> [(PathBuf, Table); 2] {
    [0, 1].map(|i| {
        let out = t.join(format!("run-{i}"));
        let mut args = digits_run_args(&out, flags);
        args.extend(words(each[i]));
        imprint(&workspace_root(), &args).assert_success();
        let results = Table::read(&out.join("results.csv"));
        (out, results)
    })
}

/// Two runs of the same small pipeline with the same seeds and thread count agree exactly.
#[test]
fn same_pipeline_twice_gives_identical_results() {
    let t: &Path = &test_dir();
    let flags = "--threads 2 --epochs 4 --steps 40 --seeds 3,4 --labels-per-class 2 \
                 --strategies scratch,probe,probe-then-full";
    let [(a, ta), (b, tb)] = digits_twice(t, flags, ["", ""]);
    assert_eq!(ta.rows.len(), 3 * 2, "{:?}", ta.rows);
    assert_eq!(ta.column("test_accuracy"), tb.column("test_accuracy"));
    assert_eq!(ta.outcomes(), tb.outcomes());
    for seed in [3, 4] {
        assert_same_file(&a, &b, &format!("pretrain/seed-{seed}/encoder.safetensors"));
        assert_same_file(&a, &b, &format!("labeled/k2-seed{seed}.csv"));
    }
}

/// A convolutional pipeline gives the same results on one thread as on two: batches are cut
/// into chunks by their size alone, and gradients summed in a fixed order.
#[test]
fn conv_results_do_not_depend_on_the_thread_count() {
    let t: &Path = &test_dir();
    let flags = "--epochs 3 --steps 30 --seeds 0 --labels-per-class 3 --strategies scratch,full \
                 --set pretrain.architecture={kind=\"conv\",channels=[4,8],latent=16} \
                 --set pretrain.contrast_weight=1.0 --set finetune.batch_size=16";
    let [(one, t1), (two, t2)] = digits_twice(t, flags, ["--threads 1", "--threads 2"]);
    assert_eq!(t1.rows.len(), 2);
    assert_eq!(t1.column("test_accuracy"), t2.column("test_accuracy"));
    assert_eq!(t1.column("macro_f1"), t2.column("macro_f1"));
    // the encoder pre-trained on one thread is the one pre-trained on two
    assert_same_file(&one, &two, "pretrain/seed-0/encoder.safetensors");
}
