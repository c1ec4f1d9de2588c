//! The separate jobs chained by hand: pre-train, fine-tune with that encoder, predict.

use imprint_e2e::{
    apply_args, arg, assert_nonempty, assert_png, class_pixels, finetune_args, imprint,
    png_pipeline, pretrain_args, read_json, test_dir, write_grey_png, write_pipeline,
    write_png_classes, Table, Tiny, SIDE,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Checks the pre-training outputs in `dir`.
fn check_pretrain(dir: &Path, epochs: usize) {
    for f in ["encoder.safetensors", "decoder.safetensors"] {
        assert_nonempty(&dir.join(f));
    }
    let side = read_json(&dir.join("encoder.json"));
    assert_eq!(side["format"], "imprint-encoder/1", "{side}");
    assert_eq!(side["input"]["height"], SIDE, "{side}");
    assert_eq!(side["input"]["width"], SIDE, "{side}");
    assert_eq!(side["epochs"], epochs, "{side}");
    let loss = Table::read(&dir.join("loss.csv"));
    assert_eq!(loss.rows.len(), epochs, "one loss row per epoch");
    let train_loss = loss.numbers("train_loss");
    assert!(train_loss.iter().all(|l| l.is_finite() && *l >= 0.0));
    assert!(
        train_loss[epochs - 1] < train_loss[0],
        "pre-training loss did not fall: {train_loss:?}"
    );
    assert_png(&dir.join("reconstructions.png"));
}

/// Pre-trains `pipeline` (of `epochs` epochs) into `t/pre` with `extra`, checks what it wrote
/// and returns the encoder.
fn pretrained_encoder(t: &Path, pipeline: &Path, epochs: usize, extra: &[&str]) -> PathBuf {
    let pre = t.join("pre");
    imprint(t, &pretrain_args(pipeline, &pre, extra)).assert_success();
    check_pretrain(&pre, epochs);
    pre.join("encoder.safetensors")
}

/// Checks the fine-tuning outputs in `dir` and returns (classes, test accuracy).
fn check_finetune(dir: &Path, k: usize, test_images: usize) -> (Vec<String>, f64) {
    assert_nonempty(&dir.join("model.safetensors"));
    let side = read_json(&dir.join("model.json"));
    assert_eq!(side["format"], "imprint-classifier/1", "{side}");
    let classes: Vec<String> = side["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();

    let labeled = Table::read(&dir.join("labeled.csv"));
    let labels = labeled.column("label");
    assert_eq!(labels.len(), k * classes.len(), "{labels:?}");
    for c in &classes {
        assert_eq!(labels.iter().filter(|l| *l == c).count(), k, "class {c}");
    }

    let metrics = read_json(&dir.join("metrics.json"));
    assert_eq!(metrics["test_images"], test_images, "{metrics}");
    assert_eq!(metrics["labels_per_class"], k, "{metrics}");
    let accuracy = metrics["test_accuracy"].as_f64().expect("test_accuracy");
    assert!((0.0..=1.0).contains(&accuracy), "{metrics}");

    // confusion.csv: classes x classes counts over the test set, its diagonal the accuracy
    let confusion = Table::read(&dir.join("confusion.csv"));
    assert_eq!(&confusion.header[1..], &classes[..]);
    assert_eq!(confusion.rows.len(), classes.len());
    let (mut total, mut right) = (0u64, 0u64);
    for (i, row) in confusion.rows.iter().enumerate() {
        assert_eq!(row[0], classes[i]);
        for (j, v) in row[1..].iter().enumerate() {
            let v: u64 = v.parse().unwrap();
            total += v;
            if i == j {
                right += v;
            }
        }
    }
    assert_eq!(total as usize, test_images);
    assert!((right as f64 / total as f64 - accuracy).abs() < 1e-9);
    (classes, accuracy)
}

/// A pipeline `t/tiny.toml` on `train`, evaluated on `test`, pre-training for `epochs` and
/// fine-tuning for `steps`.
fn pipeline_with_test(t: &Path, train: &Path, test: &Path, epochs: usize, steps: usize) -> PathBuf {
    let tiny = Tiny {
        test: Some(test),
        epochs,
        steps,
        ..Tiny::on(train)
    };
    write_pipeline(&t.join("tiny.toml"), &tiny)
}

/// The class of each of `items` (relative to `root`, as [`write_png_classes`] returns them),
/// by the path `predict` writes for it.
fn truth_of(root: &Path, items: &[(String, String)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(rel, class)| (arg(&root.join(rel)).to_string(), class.clone()))
        .collect()
}

/// Runs `imprint predict` with the model in `ft` on `input`, writing `csv`, and checks the
/// predictions against the true class of every image: their accuracy must be the one fine-tuning
/// reported, since both see the same model and images.
fn predict_matches_finetune(
    t: &Path,
    ft: &Path,
    input: &Path,
    csv: &Path,
    truth: &BTreeMap<String, String>,
    classes: &[String],
    accuracy: f64,
) {
    let model = ft.join("model.safetensors");
    imprint(t, &apply_args("predict", &model, input, csv)).assert_success();
    let pred = Table::read(csv);
    assert_eq!(pred.header, ["path", "predicted", "confidence"]);
    assert_eq!(pred.rows.len(), truth.len(), "one row per image");
    let mut right = 0;
    let mut seen = Vec::new();
    for row in &pred.rows {
        let (path, class) = (&row[0], &row[1]);
        let want = truth
            .get(path)
            .unwrap_or_else(|| panic!("unknown path {path} in predictions"));
        assert!(classes.contains(class), "{class} is not a class");
        let confidence: f64 = row[2].parse().unwrap();
        assert!(
            confidence >= 1.0 / classes.len() as f64 - 1e-6 && confidence <= 1.0,
            "{row:?}"
        );
        right += usize::from(class == want);
        seen.push(path.clone());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), truth.len(), "every image exactly once");
    let predicted = right as f64 / truth.len() as f64;
    assert!(
        (predicted - accuracy).abs() < 1e-9,
        "predictions give {predicted}, finetune reported {accuracy}"
    );
}

#[test]
fn pretrain_finetune_predict_on_class_folders() {
    let t: &Path = &test_dir();
    let classes = ["ant", "bee", "cat"];
    let train = t.join("train");
    let test = t.join("test");
    write_png_classes(&train, &classes, 0, 10);
    let test_items = write_png_classes(&test, &classes, 100, 5);
    let pipeline = pipeline_with_test(t, &train, &test, 5, 60);
    let encoder = pretrained_encoder(t, &pipeline, 5, &["--seed", "0"]);

    let ft = t.join("ft");
    let from_encoder = ["--encoder", arg(&encoder), "--seed", "1"];
    imprint(
        t,
        &finetune_args(&pipeline, "full", "3", &ft, &from_encoder),
    )
    .assert_success()
    .assert_stdout_has(&["test accuracy"]);
    let (model_classes, accuracy) = check_finetune(&ft, 3, test_items.len());
    assert_eq!(model_classes, classes);

    let pred = t.join("predictions.csv");
    let truth = truth_of(&test, &test_items);
    predict_matches_finetune(t, &ft, &test, &pred, &truth, &model_classes, accuracy);
    // the classes are a bright bar at different rows: far easier than chance
    assert!(accuracy > 0.6, "accuracy {accuracy}");
}

/// `--all-labels` trains on every labeled image, however unequal the classes: 6 ants and 4
/// bees here, where any per-class draw would take at most 4 ants.
#[test]
fn all_labels_trains_on_every_labeled_image() {
    let t: &Path = &test_dir();
    let train = t.join("train");
    write_png_classes(&train, &["ant", "bee"], 0, 4);
    write_png_classes(&train, &["ant"], 50, 2);
    let test = t.join("test");
    let test_items = write_png_classes(&test, &["ant", "bee"], 100, 3);
    let pipeline = pipeline_with_test(t, &train, &test, 3, 5);
    let finetune = |extra: &[&str], out: &Path| {
        let mut args = vec!["finetune", "--pipeline", arg(&pipeline), "--strategy"];
        args.extend(["scratch", "--out", arg(out)]);
        args.extend(extra);
        imprint(t, &args)
    };
    let out = t.join("all");
    finetune(&["--all-labels"], &out)
        .assert_success()
        .assert_stdout_has(&["with every label"]);
    let labeled = Table::read(&out.join("labeled.csv"));
    let labels = labeled.column("label");
    let count = |c: &str| labels.iter().filter(|&&l| l == c).count();
    assert_eq!((count("ant"), count("bee")), (6, 4), "{labels:?}");
    let metrics = read_json(&out.join("metrics.json"));
    assert_eq!(metrics["labeled_images"], 10, "{metrics}");
    assert_eq!(metrics["labels_per_class"], 0, "{metrics}");
    assert_eq!(metrics["test_images"], test_items.len(), "{metrics}");

    // A budget beside it is refused rather than one of the two silently winning.
    let both = ["--all-labels", "--labels-per-class", "2"];
    let refused = finetune(&both, &t.join("both"));
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(
        refused.stderr.contains("cannot be used with"),
        "{refused:?}"
    );
}

/// `--dev` leaves the pipeline's test folder aside and evaluates on a held-out share of the
/// labeled images instead: 30% of 10 per class here, 3 per class.
#[test]
fn dev_flag_evaluates_on_held_out_labeled_images() {
    let t: &Path = &test_dir();
    let classes = ["ant", "bee", "cat"];
    let (train, test) = (t.join("train"), t.join("test"));
    write_png_classes(&train, &classes, 0, 10);
    let test_items = write_png_classes(&test, &classes, 100, 5);
    let pipeline = pipeline_with_test(t, &train, &test, 3, 20);
    let finetune = |out: &Path, extra: &[&str]| {
        imprint(t, &finetune_args(&pipeline, "scratch", "2", out, extra)).assert_success();
    };
    let (real, dev) = (t.join("real"), t.join("dev"));
    finetune(&real, &[]);
    finetune(&dev, &["--dev"]);
    check_finetune(&real, 2, test_items.len());
    let (_, dev_accuracy) = check_finetune(&dev, 2, 9);

    // `data split` lists that same split: fine-tuning on its lists equals the --dev run.
    let split = t.join("split");
    let listed = imprint(
        t,
        &[
            "data",
            "split",
            arg(&train),
            "--test-fraction",
            "0.3",
            "--out",
            arg(&split),
        ],
    );
    listed.assert_success();
    assert!(
        listed.stdout.contains("21 training and 9 test images"),
        "{}",
        listed.stdout
    );
    let (train_list, test_list) = (split.join("train.csv"), split.join("test.csv"));
    let lists = t.join("lists");
    finetune(
        &lists,
        &[
            "--labeled",
            arg(&train_list),
            "--unlabeled",
            arg(&train_list),
            "--test",
            arg(&test_list),
        ],
    );
    let (_, lists_accuracy) = check_finetune(&lists, 2, 9);
    assert_eq!(lists_accuracy, dev_accuracy);
    let (held_out, trained) = (Table::read(&test_list), Table::read(&train_list));
    let trained = trained.column("path");
    assert!(held_out.column("path").iter().all(|p| !trained.contains(p)));
}

/// Writes `n` images per class into `dir/imgs` and a `path,label` list naming them.
fn write_list(
    dir: &Path,
    list: &str,
    labels: &[&str],
    first: usize,
    n: usize,
) -> Vec<(String, String)> {
    let mut text = String::from("path,label\n");
    let mut items = Vec::new();
    for (c, label) in labels.iter().enumerate() {
        for i in first..first + n {
            let rel = format!("imgs/c{label}-{i}.png");
            write_grey_png(&dir.join(&rel), SIDE, SIDE, class_pixels(c, i));
            text.push_str(&format!("{rel},{label}\n"));
            items.push((rel, label.to_string()));
        }
    }
    std::fs::write(dir.join(list), text).unwrap();
    items
}

#[test]
fn pretrain_finetune_predict_on_csv_lists() {
    let t: &Path = &test_dir();
    // numeric labels are ordered as numbers: 10 after 7
    let labels = ["10", "3", "7"];
    write_list(t, "train.csv", &labels, 0, 8);
    let test_items = write_list(t, "test.csv", &labels, 50, 4);
    let (train, test) = (t.join("train.csv"), t.join("test.csv"));
    let pipeline = pipeline_with_test(t, &train, &test, 4, 40);
    let encoder = pretrained_encoder(t, &pipeline, 4, &["--threads", "1"]);

    let ft = t.join("ft");
    let from_encoder = ["--encoder", arg(&encoder)];
    imprint(
        t,
        &finetune_args(&pipeline, "probe-then-full", "2", &ft, &from_encoder),
    )
    .assert_success();
    let (classes, accuracy) = check_finetune(&ft, 2, test_items.len());
    assert_eq!(classes, ["3", "7", "10"]);

    let pred = t.join("out/predictions.csv");
    std::fs::create_dir_all(pred.parent().unwrap()).unwrap();
    let truth = truth_of(t, &test_items);
    predict_matches_finetune(t, &ft, &test, &pred, &truth, &classes, accuracy);
}

/// Self-training on the shipped digits: with 2 labels per class, a student taught by the
/// from-scratch net's pseudo-labels (its most confident half of the unlabeled train split) beats
/// that net given the same number of steps on the labels alone, on every seed.
#[test]
fn self_training_on_unlabeled_digits_beats_as_many_labeled_steps() {
    let root = imprint_e2e::workspace_root();
    let t: &Path = &test_dir();
    let accuracy = |seed: &str, sets: &[&str]| {
        let out = t.join(format!("s{seed}-{}", sets.len()));
        let mut args = vec![
            "--threads",
            "1",
            "finetune",
            "--pipeline",
            "pipelines/digits.toml",
        ];
        args.extend([
            "--strategy",
            "scratch",
            "--labels-per-class",
            "2",
            "--seed",
            seed,
        ]);
        args.extend(["--out", arg(&out), "--set", "finetune.batch_size=32"]);
        for set in sets {
            args.extend(["--set", set]);
        }
        imprint(&root, &args).assert_success();
        let metrics = read_json(&out.join("metrics.json"));
        let pseudo = metrics["pseudo_labels"].as_u64().unwrap();
        assert_eq!(pseudo > 0, sets.len() > 1, "{metrics}");
        // half of the pool (the train split's 1258 images): 63 per class, fewer where a class
        // has fewer predicted
        assert!(pseudo <= 630, "{metrics}");
        metrics["test_accuracy"].as_f64().unwrap()
    };
    let mut gains = Vec::new();
    for seed in ["0", "1", "2"] {
        let labels_only = accuracy(seed, &["finetune.steps=500"]);
        let student = accuracy(
            seed,
            &[
                "finetune.steps=200",
                "finetune.self_train_steps=300",
                "finetune.self_train_fraction=0.5",
            ],
        );
        assert!(
            student > labels_only,
            "seed {seed}: student {student} vs {labels_only}"
        );
        gains.push(student - labels_only);
    }
    let mean = gains.iter().sum::<f64>() / 3.0;
    assert!(mean > 0.03, "mean gain {mean} ({gains:?})");
}

/// `imprint bench` alternates a fresh process of ours with the peer's (its plain fp32 mode,
/// then its fastest), pair by pair, and prints the CPU, the kernels of each side, every pair's
/// speeds, peak memories and ratios, then the medians; a busy machine is refused.
#[test]
fn bench_alternates_pairs_and_refuses_a_busy_machine() {
    let t: &Path = &test_dir();
    // A stand-in for Python with PyTorch: an AVX2 CPU without bf16, 100 images/s on 2
    // threads, 2048 KiB at its peak, one oneDNN kernel.
    let peer = t.join("peer");
    let json = r#"{"torch": "2.0", "capability": "AVX2", "bf16": false, "amx": false, "images_per_second": 100.0, "threads": 2, "peak_kib": 2048, "kernels": ["convolution jit:avx2 f32"]}"#;
    std::fs::write(&peer, format!("#!/bin/sh\necho '{json}'\n")).unwrap();
    let mut perms = std::fs::metadata(&peer).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&peer, perms).unwrap();
    let small = [
        "bench", "--side", "8", "--hidden", "16", "--latent", "4", "--steps", "3", "--batch", "8",
    ];
    let resnet = ["--arch", "resnet20", "--steps", "2", "--batch", "8"];
    for (net, task) in [
        (&small[1..], "pretrain"),
        (&small[1..], "finetune"),
        (&small[1..], "infer"),
        (&resnet[..], "simclr"),
    ] {
        let mut args = vec!["bench"];
        args.extend(net);
        args.extend(["--task", task, "--repeats", "2", "--busy-ok"]);
        args.extend(["--peer", arg(&peer), "--avx2"]);
        let run = imprint(t, &args);
        run.assert_success().assert_stdout_has(&[
            "CPU: ",
            "avx512f ",
            "imprint: f32; AVX-512 switched off (IMPRINT_NO_AVX512)",
            "PyTorch 2.0: ATen CPU capability AVX2 (ATEN_CPU_CAPABILITY=avx2",
            "oneDNN bf16 no, AMX tiles no; timed in fp32 and cl (fp32 with channels_last",
            "2 threads on both sides",
            "PyTorch cl ran (oneDNN's log of one more step): convolution jit:avx2 f32",
        ]);
        let pairs = run.stdout_lines_starting("pair ");
        assert_eq!(pairs.len(), 2, "{}", run.stdout);
        for pair in pairs {
            for mode in ["fp32", "cl"] {
                let peer = format!("PyTorch {mode} (2 threads) 100 images/s (2 MiB), ratio ");
                assert!(pair.contains(&peer), "{pair}");
            }
            assert!(pair.contains("(load "), "{pair}");
        }
        let median = run.stdout.lines().last().unwrap();
        assert!(median.starts_with("median: imprint "), "{median}");
        for mode in ["fp32", "cl"] {
            let peer = format!("PyTorch {mode} 100 images/s, peak 2 MiB, ratio of medians");
            assert!(median.contains(&peer), "{median}");
        }
    }
    let mut args = small.to_vec();
    args.push("--max-load=-1");
    imprint(t, &args).assert_error(&["the machine is busy", "--busy-ok"]);
    let mut args = small.to_vec();
    args.extend(["--task", "simclr", "--busy-ok"]);
    imprint(t, &args).assert_error(&["--task simclr times the ResNets"]);
}

/// `evaluate`, `predict` and `embed` within a 1 MiB budget run a 32 px ResNet four images at a
/// time (counted as 61 KB of activations an image, and a quarter of the budget is theirs),
/// and write the same files, to the bit, as with the default budget, which runs all the images
/// at once.
#[test]
fn inference_within_a_small_budget_writes_the_same_files() {
    let t: &Path = &test_dir();
    let (data, pipeline) = png_pipeline(t, &["ant", "bee", "cat"], 8);
    let settings = [
        "--set",
        r#"pretrain.architecture={ kind = "resnet", depth = 18, layout = "imagenet", widths = [8, 16, 16, 32] }"#,
        "--set",
        "data.preprocess={ channels = 3, height = 32, width = 32 }",
    ];
    let (pre, ft) = (t.join("pre"), t.join("ft"));
    let mut args = vec!["pretrain", "--pipeline", arg(&pipeline), "--out", arg(&pre)];
    args.extend(["--epochs", "1"]);
    args.extend(settings);
    imprint(t, &args).assert_success();
    let mut extra = vec!["--steps", "2"];
    extra.extend(settings);
    imprint(t, &finetune_args(&pipeline, "scratch", "3", &ft, &extra)).assert_success();
    let model = ft.join("model.safetensors");
    let encoder = pre.join("encoder.safetensors");
    let outputs = |budget: &[&str], tag: &str| {
        let files = ["logits", "predictions", "features"].map(|f| t.join(format!("{f}-{tag}.csv")));
        let mut evaluate = vec!["evaluate", "--model", arg(&model), "--input", arg(&data)];
        evaluate.extend(["--logits", arg(&files[0])]);
        evaluate.extend(budget);
        let run = imprint(t, &evaluate);
        run.assert_success();
        let scores = run.stdout.replace(tag, "");
        let mut predict = apply_args("predict", &model, &data, &files[1]);
        predict.extend(budget);
        imprint(t, &predict).assert_success();
        let mut embed = apply_args("embed", &encoder, &data, &files[2]);
        embed.extend(budget);
        imprint(t, &embed).assert_success();
        let texts = files.map(|f| std::fs::read_to_string(f).unwrap());
        (scores, texts)
    };
    let (scores, texts) = outputs(&[], "default");
    assert_eq!(texts[0].lines().count(), 25, "a header and 24 images");
    assert_eq!(
        outputs(&["--memory-budget-mb", "1"], "small"),
        (scores, texts)
    );
}
