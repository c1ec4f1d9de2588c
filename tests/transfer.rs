//! Transfer as a user walks it: no pipeline file, a network trained elsewhere to start from, a
//! folder turned into a pipeline by `imprint init`, and a comparison of routes whose networks
//! differ, in one table.

use imprint_e2e::{
    arg, assert_nonempty, assert_refused, imprint, read_json, test_dir, words, write_grey_png,
    write_png_classes, Outcome, Table, SIDE,
};
use std::path::{Path, PathBuf};

/// A small ResNet for 8x8 grey images, as `--set` takes it.
const SMALL_RESNET: &str = "pretrain.architecture={kind=\"resnet\",depth=8,widths=[4,8,8]}";

/// The images of every test: classes `3` and `7`, 8 of each to train on and 4 to test.
fn photos(t: &Path) -> (PathBuf, PathBuf) {
    let (train, test) = (t.join("train"), t.join("test"));
    write_png_classes(&train, &["3", "7"], 0, 8);
    write_png_classes(&test, &["3", "7"], 8, 4);
    (train, test)
}

/// `args` then `extra` split at white space, run in `t`.
fn run(t: &Path, args: &[&str], extra: &str) -> Outcome {
    let mut all = args.to_vec();
    all.extend(words(extra));
    imprint(t, &all)
}

/// "A network trained elsewhere": a ResNet of `architecture` trained from scratch for `steps`
/// on every label of `train`, with its own normalisation, written to
/// `t/NAME/model.safetensors`, with no pipeline file.
fn trained_network(
    t: &Path,
    name: &str,
    train: &Path,
    architecture: &str,
    steps: usize,
) -> PathBuf {
    let out = t.join(name);
    let args = [
        "finetune",
        "--labeled",
        arg(train),
        "--strategy",
        "scratch",
        "--all-labels",
        "--out",
        arg(&out),
        "--set",
        architecture,
    ];
    let settings = format!(
        "--steps {steps} --set finetune.augment_pad_crop=0 --set finetune.lr=0.01 \
         --set data.preprocess.channels=1 --set data.preprocess.height=8 \
         --set data.preprocess.width=8 --set data.preprocess.mean=[0.3] \
         --set data.preprocess.std=[0.3]"
    );
    run(t, &args, &settings).assert_success();
    out.join("model.safetensors")
}

#[test]
fn fine_tuning_from_a_network_needs_no_pipeline_file() {
    let t: &Path = &test_dir();
    let (train, test) = photos(t);
    let net = trained_network(t, "net", &train, SMALL_RESNET, 30);
    let out = t.join("ft");
    // The three flags a user has: the network, the labeled images, the test images.
    let args = [
        "finetune",
        "--init",
        arg(&net),
        "--labeled",
        arg(&train),
        "--test",
        arg(&test),
        "--out",
        arg(&out),
    ];
    let done = run(t, &args, "--labels-per-class 4 --steps 12");
    // A network given is kept as it is, with a new head: the default from a network.
    done.assert_success()
        .assert_stdout_has(&["probe with 4 labels per class", "own head"]);
    // Not on a terminal: progress comes as plain lines.
    done.assert_stderr_has(&["fine-tuning: step 12/12"]);
    let metrics = read_json(&out.join("metrics.json"));
    assert_eq!(metrics["strategy"], "probe", "{metrics}");
    // The network's classes are the task's: its head's rows started the new head, and that
    // head alone is scored as a baseline.
    assert_eq!(metrics["head_from_init"], true, "{metrics}");
    let old = metrics["old_head_test_accuracy"]
        .as_f64()
        .expect("a baseline");
    assert!((0.0..=1.0).contains(&old), "{metrics}");
    let side = read_json(&out.join("model.json"));
    assert_eq!(side["started_from"]["path"], arg(&net), "{side}");
    // Only what was asked for was written: no default folder in the working directory.
    assert!(!t.join("runs").exists());

    // `predict --top 2` ranks both classes; more than the model has is refused.
    let csv = t.join("p.csv");
    let model = out.join("model.safetensors");
    let predict = ["predict", "--model", arg(&model), "--input", arg(&test)];
    run(t, &predict, &format!("--out {} --top 2", arg(&csv))).assert_success();
    let table = Table::read(&csv);
    assert_eq!(
        table.header,
        [
            "path",
            "predicted",
            "confidence",
            "predicted_2",
            "confidence_2"
        ]
    );
    for row in &table.rows {
        assert_ne!(row[1], row[3], "{row:?}");
        let (p1, p2): (f64, f64) = (row[2].parse().unwrap(), row[4].parse().unwrap());
        assert!(p1 >= p2 && (p1 + p2 - 1.0).abs() < 1e-4, "{row:?}");
    }
    let three = format!("--out {} --top 3", arg(&t.join("q.csv")));
    let mut refused: Vec<&str> = predict.to_vec();
    refused.extend(words(&three));
    assert_refused(t, &refused, &["--top", "2 classes"]);
}

/// Training the whole network at a rate that wrecks it ends below its frozen-head phase on
/// the validation labels: the run says so, and keeps the best validated model.
#[test]
fn a_fine_tuning_that_loses_the_frozen_networks_score_says_so() {
    let t: &Path = &test_dir();
    let (train, test) = photos(t);
    // Trained long enough to know the training images, the validation labels among them.
    let net = trained_network(t, "net", &train, SMALL_RESNET, 150);
    let out = t.join("ft");
    let args = [
        "finetune",
        "--init",
        arg(&net),
        "--labeled",
        arg(&train),
        "--test",
        arg(&test),
        "--out",
        arg(&out),
    ];
    let done = run(
        t,
        &args,
        "--strategy probe-then-full --labels-per-class 8 --steps 20 \
         --set finetune.validation_fraction=0.5 \
         --set finetune.eval_every=5 --set finetune.encoder_lr_scale=300 \
         --set finetune.augment_pad_crop=0",
    );
    let metrics = read_json(&out.join("metrics.json"));
    let checks = std::fs::read_to_string(out.join("validation.csv")).unwrap_or_default();
    assert!(
        done.stdout
            .contains("warning: training the whole network ended at"),
        "{metrics}\n{checks}\n{}",
        done.stdout
    );
    assert_eq!(metrics["below_frozen_phase"], true, "{metrics}");
    let frozen = metrics["frozen_phase_validation_accuracy"]
        .as_f64()
        .unwrap();
    let last = metrics["final_validation_accuracy"].as_f64().unwrap();
    assert!(last < frozen, "{metrics}");
    assert_eq!(metrics["frozen_phase_step"], 6, "{metrics}");
}

#[test]
fn pre_training_needs_only_a_folder_of_images() {
    let t: &Path = &test_dir();
    let raw = t.join("raw");
    for i in 0..24 {
        write_grey_png(
            &raw.join(format!("{i}.png")),
            SIDE,
            SIDE,
            imprint_e2e::class_pixels(i % 3, i),
        );
    }
    let out = t.join("pre");
    // The built-in settings: 32x32 colour, a ResNet-20 taught by contrast.
    let args = ["pretrain", "--unlabeled", arg(&raw), "--out", arg(&out)];
    run(t, &args, "--epochs 2 --set pretrain.batch_size=12")
        .assert_success()
        .assert_stderr_has(&["kNN monitor is off", "seed 0 epoch 2/2: loss"]);
    let side = read_json(&out.join("encoder.json"));
    assert_eq!(side["input"]["channels"], 3, "{side}");
    assert_eq!(side["input"]["height"], 32, "{side}");
    assert_eq!(side["architecture"]["depth"], 20, "{side}");
    let run_json = read_json(&out.join("run.json"));
    assert_eq!(
        run_json["data"]["labeled"],
        serde_json::json!([]),
        "{run_json}"
    );
    assert_nonempty(&out.join("loss.png"));

    // Without images, each job names the flag that gives them.
    assert_refused(t, &["pretrain", "--out", "x"], &["--unlabeled"]);
    assert_refused(t, &["finetune", "--out", "x"], &["--labeled"]);
}

#[test]
fn init_writes_a_pipeline_for_a_folder_once_and_it_runs() {
    let t: &Path = &test_dir();
    let (train, _) = photos(t);
    let file = t.join("train.toml");
    run(t, &["init", arg(&train)], "")
        .assert_success()
        .assert_stdout_has(&["16 images in 2 classes"]);
    let text = std::fs::read_to_string(&file).unwrap();
    for needle in [
        "3 8, 7 8",
        "Sizes: all 8x8 (grey)",
        "height = 8",
        "labels_per_class = [6]",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
    // Never over an existing file without --force.
    assert_refused(
        t,
        &["init", arg(&train)],
        &["train.toml", "exists", "--force"],
    );
    run(t, &["init", arg(&train), "--force"], "").assert_success();
    let out = t.join("run");
    let args = ["run", arg(&file), "--out", arg(&out), "--set", SMALL_RESNET];
    run(
        t,
        &args,
        "--epochs 1 --steps 4 --seeds 0 --strategies scratch,probe --set pretrain.batch_size=8",
    )
    .assert_success()
    .assert_stderr_has(&["run 1 of 2", "run 2 of 2"]);
    assert_eq!(
        Table::read(&out.join("results.csv")).column("strategy"),
        ["scratch", "probe"]
    );
}

/// An imported ResNet of one shape beside a ResNet of another pre-trained here, and scratch:
/// one table, each route its own network, the report naming every encoder's file and digest,
/// and with --keep-models the model to deploy.
#[test]
fn routes_of_different_architectures_stand_in_one_table() {
    let t: &Path = &test_dir();
    let (train, test) = photos(t);
    let wide = "pretrain.architecture={kind=\"resnet\",depth=8,widths=[8,8,16]}";
    let net = trained_network(t, "net", &train, wide, 30);
    // As `import` writes it: the file the network was read from, which the report names too.
    let sidecar = net.with_file_name("model.json");
    let mut side = read_json(&sidecar);
    side["started_from"] = serde_json::json!({
        "path": "elsewhere/net.pth", "bytes": 1234, "sha256": "ab12cd34"
    });
    std::fs::write(&sidecar, side.to_string()).unwrap();
    let out = t.join("cmp");
    let imported = format!("compare.imported=\"{}\"", arg(&net));
    let args = [
        "compare",
        "--labeled",
        arg(&train),
        "--test",
        arg(&test),
        "--out",
        arg(&out),
        "--set",
        SMALL_RESNET,
        "--set",
        &imported,
    ];
    run(
        t,
        &args,
        "--set compare.routes=[\"self\",\"imported\"] --strategies scratch,probe \
         --labels-per-class 3 --seeds 0 --epochs 1 --steps 6 --set pretrain.batch_size=8 \
         --set pretrain.monitor_labels_per_class=0 \
         --set data.preprocess.channels=1 --set data.preprocess.height=8 \
         --set data.preprocess.width=8 --set data.preprocess.mean=[0.5] \
         --set data.preprocess.std=[0.25] --keep-models",
    )
    .assert_success()
    .assert_stdout_has(&["to deploy at 3 labels/class"]);
    let table = Table::read(&out.join("results.csv"));
    assert_eq!(
        table.column("strategy"),
        ["scratch", "probe", "imported:probe", "imported:old-head"]
    );
    // Each run kept its model, of its own network.
    let kept = |run: &str| read_json(&out.join("runs").join(run).join("model.json"));
    assert_eq!(
        kept("k3-seed0-probe")["architecture"]["widths"],
        serde_json::json!([4, 8, 8])
    );
    let imported_run = kept("k3-seed0-imported-probe");
    assert_eq!(
        imported_run["architecture"]["widths"],
        serde_json::json!([8, 8, 16])
    );
    let digest = imported_run["started_from"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        arg(&net),
        digest.as_str(),
        "made from `elsewhere/net.pth` (sha256 ab12cd34)",
        "Route `self`",
        "Route `imported`",
        "pretrain/seed-0/encoder.safetensors",
        "## The model to deploy",
    ] {
        assert!(report.contains(needle), "no {needle:?} in\n{report}");
    }

    // The imported route alone: the report says nothing of a pre-training that did not run.
    let alone = t.join("alone");
    let args = [
        "compare",
        "--labeled",
        arg(&train),
        "--test",
        arg(&test),
        "--out",
        arg(&alone),
        "--set",
        &imported,
    ];
    run(
        t,
        &args,
        "--set compare.routes=[\"imported\"] --strategies probe --labels-per-class 3 \
         --seeds 0 --steps 6 --set data.preprocess.channels=1 --set data.preprocess.height=8 \
         --set data.preprocess.width=8 --set data.preprocess.mean=[0.5] \
         --set data.preprocess.std=[0.25]",
    )
    .assert_success();
    let report = std::fs::read_to_string(alone.join("report.md")).unwrap();
    assert!(report.contains(arg(&net)), "{report}");
    assert!(!report.contains("pre-trained here"), "{report}");
    assert!(!alone.join("pretrain").exists());
}
