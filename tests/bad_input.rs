//! Bad input: each case must fail with exit status 1 and one `error:` line naming the file and
//! the problem, without a panic and without touching what was there before.

use imprint_e2e::{
    arg, class_pixels, digits_dir, edit_file, imprint, snapshot, write_grey_png, write_idx_images,
    write_idx_labels, write_pipeline, write_png_classes, Tiny, SIDE,
};
use std::path::{Path, PathBuf};

/// An output folder holding the results of an earlier run, which a failed run must not touch.
fn earlier_results(t: &Path) -> PathBuf {
    let out = t.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("results.csv"),
        "strategy,test_accuracy\nearlier,0.5\n",
    )
    .unwrap();
    out
}

/// Runs `imprint args` in `t` and asserts that it fails with one error line holding all of
/// `needles`, every file under `t` left as it was.
fn assert_refused(t: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(t);
    imprint(t, args).assert_error(needles);
    assert_eq!(snapshot(t), before, "a refused run changed files");
}

/// [`assert_refused`] for a problem found once the data is read: progress lines may precede
/// the error line.
fn assert_refused_after_loading(t: &Path, args: &[&str], needles: &[&str]) {
    let before = snapshot(t);
    imprint(t, args).assert_error_after_progress(needles);
    assert_eq!(snapshot(t), before, "a refused run changed files");
}

/// A valid idx pair of `n` 8x8 images; returns the images path.
fn idx_pair(t: &Path, stem: &str, n: u8) -> PathBuf {
    let images = t.join(format!("{stem}-images-idx3-ubyte"));
    let pixels: Vec<u8> = (0..n)
        .flat_map(|i| class_pixels(usize::from(i % 2), i.into()))
        .collect();
    write_idx_images(&images, n.into(), SIDE, SIDE, &pixels);
    let labels: Vec<u8> = (0..n).map(|i| i % 2).collect();
    write_idx_labels(&t.join(format!("{stem}-labels-idx1-ubyte")), &labels);
    images
}

#[test]
fn truncated_idx_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let images = idx_pair(t, "cut", 20);
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 100]).unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&images));
    let out = earlier_results(t);

    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out), "--force"],
        &[arg(&images), "truncated idx file", "1280", "1180"],
    );
}

#[test]
fn idx_file_with_wrong_magic() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let images = idx_pair(t, "odd", 20);
    let mut bytes = std::fs::read(&images).unwrap();
    bytes[2] = 0x0d; // f32 data: not the u8 images the reader takes
    std::fs::write(&images, bytes).unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&images));
    let out = earlier_results(t);

    assert_refused(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&pipeline),
            "--out",
            arg(&out),
            "--force",
        ],
        &[arg(&images), "not an idx", "magic 0x00000d03"],
    );
}

#[test]
fn corrupt_png() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 6);
    let bad = data.join("b/3.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));

    assert_refused(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&pipeline),
            "--out",
            arg(&t.join("pre")),
        ],
        &[arg(&bad), "cannot decode image"],
    );
}

#[test]
fn csv_list_naming_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_grey_png(&t.join("imgs/0.png"), SIDE, SIDE, class_pixels(0, 0));
    write_grey_png(&t.join("imgs/1.png"), SIDE, SIDE, class_pixels(1, 1));
    let list = t.join("list.csv");
    std::fs::write(
        &list,
        "path,label\nimgs/0.png,a\nimgs/missing.png,b\nimgs/1.png,b\n",
    )
    .unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&list));
    let out = earlier_results(t);

    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out), "--force"],
        &[arg(&list), "line 3", "not found", "missing.png"],
    );
}

#[test]
fn test_label_outside_the_labeled_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (train, test) = (t.join("train"), t.join("test"));
    write_png_classes(&train, &["a", "b"], 0, 6);
    write_png_classes(&test, &["a", "c"], 10, 3);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&train));
    let out = earlier_results(t);

    // the test set given on the command line
    assert_refused(
        t,
        &[
            "run",
            arg(&pipeline),
            "--test",
            arg(&test),
            "--out",
            arg(&out),
            "--force",
        ],
        &[arg(&test.join("c")), "label out of range", "\"c\"", "a b"],
    );
}

#[test]
fn encoder_checkpoint_of_another_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 8);
    let small = write_pipeline(
        &t.join("small.toml"),
        &Tiny {
            hidden: &[16],
            epochs: 1,
            ..Tiny::on(&data)
        },
    );
    let wide = write_pipeline(
        &t.join("wide.toml"),
        &Tiny {
            hidden: &[24],
            ..Tiny::on(&data)
        },
    );
    let pre = t.join("pre");
    imprint(
        t,
        &["pretrain", "--pipeline", arg(&small), "--out", arg(&pre)],
    )
    .assert_success();
    let before = snapshot(&pre);
    let encoder = pre.join("encoder.safetensors");

    // A comparison needs its imported network to be the pipeline's architecture, so that
    // scratch and every route train the same net: refused before anything is written.
    let compared = t.join("compared");
    let run = imprint(
        t,
        &[
            "run",
            arg(&wide),
            "--out",
            arg(&compared),
            "--set",
            "compare.routes=[\"imported\"]",
            "--set",
            &format!("compare.imported=\"{}\"", encoder.display()),
        ],
    );
    run.assert_error_after_progress(&[
        arg(&encoder),
        "architecture mismatch",
        "64-16-8",
        "64-24-8",
    ]);
    assert_eq!(snapshot(&pre), before, "the checkpoint changed");
    assert!(
        std::fs::read_dir(&compared).map_or(true, |mut d| d.next().is_none()),
        "the refused comparison wrote into its folder"
    );

    // Fine-tuning from it (`--init`, alias `--encoder`) takes the checkpoint's architecture
    // instead, says so, and records where it started.
    let ft = t.join("ft");
    let run = imprint(
        t,
        &[
            "finetune",
            "--pipeline",
            arg(&wide),
            "--encoder",
            arg(&encoder),
            "--strategy",
            "full",
            "--labels-per-class",
            "2",
            "--out",
            arg(&ft),
        ],
    );
    run.assert_success();
    assert!(
        run.stderr.contains("dense 64-16-8") && run.stderr.contains("from the checkpoint"),
        "{}",
        run.stderr
    );
    let side = imprint_e2e::read_json(&ft.join("model.json"));
    assert_eq!(side["architecture"]["hidden"], serde_json::json!([16]));
    assert_eq!(
        side["started_from"]["path"],
        serde_json::json!(arg(&encoder))
    );
}

#[test]
fn output_folder_exists_and_is_not_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 6);
    let pipeline = write_pipeline(
        &t.join("p.toml"),
        &Tiny {
            epochs: 1,
            steps: 5,
            ..Tiny::on(&data)
        },
    );
    let out = earlier_results(t);

    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out)],
        &[arg(&out), "not empty", "--force"],
    );

    // the refusal is about the folder alone: with --force the same run goes through
    imprint(t, &["run", arg(&pipeline), "--out", arg(&out), "--force"]).assert_success();
    assert!(out.join("summary.csv").is_file());
}

/// A tiny pipeline in `t` on 4 generated PNGs of each of two classes.
fn png_pipeline(t: &Path) -> PathBuf {
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    write_pipeline(&t.join("p.toml"), &Tiny::on(&data))
}

/// The line (1-based) of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.starts_with(prefix))
        .expect("line present")
}

#[test]
fn pipeline_with_an_unknown_key() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pipeline = png_pipeline(t);
    let text = edit_file(&pipeline, "epochs = 3\n", "epochs = 3\nepoch_count = 2\n");
    let line = format!("line {}", line_of(&text, "epoch_count"));
    let out = earlier_results(t);

    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out), "--force"],
        &[arg(&pipeline), "unknown field", "epoch_count", &line],
    );
}

#[test]
fn pipeline_with_a_value_of_the_wrong_type() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pipeline = png_pipeline(t);
    let text = edit_file(&pipeline, "steps = 40", "steps = \"forty\"");
    let line = format!("line {}", line_of(&text, "steps"));
    let out = earlier_results(t);

    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out), "--force"],
        &[arg(&pipeline), &line, "steps", "\"forty\"", "expected"],
    );
}

#[test]
fn setting_an_unknown_key_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pipeline = png_pipeline(t);
    let out = earlier_results(t);

    assert_refused(
        t,
        &[
            "run",
            arg(&pipeline),
            "--set",
            "finetune.dropot=0.3",
            "--out",
            arg(&out),
            "--force",
        ],
        &[arg(&pipeline), "--set", "unknown field `dropot`"],
    );
}

#[test]
fn missing_pipeline_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pipeline = t.join("nowhere.toml");
    let run = imprint(t, &["run", arg(&pipeline), "--out", arg(&t.join("out"))]);
    run.assert_error(&[arg(&pipeline), "os error 2"]);
    assert!(!t.join("out").join("results.csv").exists());
}

/// A pipeline in `t` pre-training on the shipped digits with BCE at learning rate 1e6, in
/// batches of `batch_size`.
fn diverging_pipeline(t: &Path, batch_size: usize) -> PathBuf {
    let digits = digits_dir().join("digits-images-idx3-ubyte.gz");
    let tiny = Tiny {
        hidden: &[64, 32],
        ..Tiny::on(&digits)
    };
    let pipeline = write_pipeline(&t.join("p.toml"), &tiny);
    // `batch_size = 16` is in [pretrain] only
    let pretrain = format!("batch_size = {batch_size}\nlr = 1e6\nloss = \"bce\"\n");
    edit_file(&pipeline, "batch_size = 16\n", &pretrain);
    pipeline
}

#[test]
fn diverging_pretraining_stops_naming_epoch_and_step() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // BCE on exploding logits overflows within steps
    let pipeline = diverging_pipeline(t, 16);
    let out = t.join("pre");

    let run = imprint(
        t,
        &["pretrain", "--pipeline", arg(&pipeline), "--out", arg(&out)],
    );
    run.assert_error_after_progress(&[
        "pre-training seed 0",
        "loss became",
        "at epoch 1, step ",
        "lower pretrain.lr",
        "(now 1e6)",
    ]);
    assert!(!out.join("encoder.safetensors").exists());
}

/// A pre-training that diverges after finishing an epoch stops naming where, and keeps the
/// checkpoint of the last finished epoch.
#[test]
fn diverging_pretraining_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // One step per epoch (a batch larger than the data): epoch 1's loss is still finite, its
    // update blows the weights up, and epoch 2's loss is not.
    let pipeline = diverging_pipeline(t, 100_000);
    let out = t.join("pre");
    let run = imprint(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&pipeline),
            "--out",
            arg(&out),
            "--epochs",
            "5",
        ],
    );
    run.assert_error_after_progress(&[
        "loss became",
        "at epoch 2, step 1",
        "the last good checkpoint (after epoch 1) is kept in",
        "checkpoint.safetensors",
    ]);
    assert!(!out.join("encoder.safetensors").exists());
    // The kept weights are exactly those a one-epoch pre-training ends with.
    let one_epoch = t.join("one");
    imprint(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&pipeline),
            "--out",
            arg(&one_epoch),
            "--epochs",
            "1",
        ],
    )
    .assert_success();
    let kept = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let kept = safetensors::SafeTensors::deserialize(&kept).unwrap();
    let finished = std::fs::read(one_epoch.join("encoder.safetensors")).unwrap();
    let finished = safetensors::SafeTensors::deserialize(&finished).unwrap();
    let mut names = finished.names();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        assert_eq!(
            kept.tensor(name).unwrap().data(),
            finished.tensor(name).unwrap().data(),
            "{name}"
        );
    }
}

/// The tensors a CIFAR ResNet of `blocks` blocks per stage holds, named as its PyTorch
/// definition names them (option-A shortcuts, a 10-class `linear`), with zero values.
fn cifar_resnet_state_dict(blocks: usize) -> Vec<(String, Vec<usize>)> {
    let mut t = vec![("conv1.weight".to_string(), vec![16, 3, 3, 3])];
    let bn = |t: &mut Vec<(String, Vec<usize>)>, at: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            t.push((format!("{at}.{p}"), vec![c]));
        }
    };
    bn(&mut t, "bn1", 16);
    let mut from = 16;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for b in 0..blocks {
            let at = format!("layer{}.{b}", stage + 1);
            t.push((format!("{at}.conv1.weight"), vec![width, from, 3, 3]));
            bn(&mut t, &format!("{at}.bn1"), width);
            t.push((format!("{at}.conv2.weight"), vec![width, width, 3, 3]));
            bn(&mut t, &format!("{at}.bn2"), width);
            from = width;
        }
    }
    t.push(("linear.weight".into(), vec![10, 64]));
    t.push(("linear.bias".into(), vec![10]));
    t
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.clone(),
                vec![0u8; 4 * s.iter().product::<usize>()],
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, &None).unwrap()).unwrap();
}

/// `imprint import FILE --arch resnet20` into `t/imported`, which must stay absent.
fn assert_import_refused(t: &Path, file: &Path, needles: &[&str]) {
    let out = t.join("imported");
    assert_refused(
        t,
        &[
            "import",
            arg(file),
            "--arch",
            "resnet20",
            "--out",
            arg(&out),
        ],
        needles,
    );
    assert!(!out.join("model.safetensors").exists());
}

fn torch_fixture(name: &str) -> PathBuf {
    imprint_e2e::workspace_root()
        .join("crates/imprint-torch/tests/fixtures")
        .join(name)
}

#[test]
fn checkpoint_cut_short() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let bytes = std::fs::read(torch_fixture("state_dict_legacy.pt")).unwrap();
    let cut = t.join("cut.th");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert_import_refused(t, &cut, &[arg(&cut), "truncated"]);
}

#[test]
fn checkpoint_whose_pickle_calls_os_system() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for name in ["system.pt", "system_legacy.pt"] {
        let evil = t.join(name);
        std::fs::copy(torch_fixture(name), &evil).unwrap();
        assert_import_refused(t, &evil, &[arg(&evil), "refuses to load", "system"]);
    }
}

#[test]
fn checkpoint_without_a_state_dict() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let list = t.join("list.pt");
    std::fs::copy(torch_fixture("list.pt"), &list).unwrap();
    assert_import_refused(t, &list, &[arg(&list), "no state dict", "list"]);
}

#[test]
fn state_dict_of_another_depth() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let deeper = t.join("resnet32.safetensors");
    write_safetensors(&deeper, &cifar_resnet_state_dict(5));
    assert_import_refused(
        t,
        &deeper,
        &[
            arg(&deeper),
            "unexpected tensor `layer1.3.bn1.bias`",
            "resnet20",
        ],
    );
}

#[test]
fn state_dict_missing_a_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut tensors = cifar_resnet_state_dict(3);
    tensors.retain(|(n, _)| n != "layer2.1.bn2.running_var");
    let short = t.join("short.safetensors");
    write_safetensors(&short, &tensors);
    assert_import_refused(
        t,
        &short,
        &[arg(&short), "missing tensor `layer2.1.bn2.running_var`"],
    );
    // The complete one imports: the cases above fail for what they lack, nothing else.
    let whole = t.join("whole.safetensors");
    write_safetensors(&whole, &cifar_resnet_state_dict(3));
    let out = t.join("ok");
    imprint(
        t,
        &[
            "import",
            arg(&whole),
            "--arch",
            "resnet20",
            "--out",
            arg(&out),
        ],
    )
    .assert_success();
    assert!(out.join("model.safetensors").exists() && out.join("model.json").exists());
}

#[test]
fn dense_checkpoint_given_as_a_resnet() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dense = imprint_e2e::workspace_root()
        .join("tests/fixtures/checkpoints-f231784/dense-model/model.safetensors");
    assert_import_refused(t, &dense, &[arg(&dense), "tensor `"]);
}

#[test]
fn image_too_large_to_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    // 20000 pixels wide: past the decoder's limit of 16384 on a side, yet a small file.
    let huge = data.join("a/huge.png");
    write_grey_png(&huge, 20_000, 1, vec![7; 20_000]);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let out = earlier_results(t);
    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out), "--force"],
        &[arg(&huge), "cannot decode image", "limit"],
    );
}

#[test]
fn class_images_one_folder_too_deep() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    write_png_classes(&data.join("c"), &["inner"], 0, 4);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let out = earlier_results(t);
    assert_refused(
        t,
        &["run", arg(&pipeline), "--out", arg(&out), "--force"],
        &[
            &format!("{}/c", arg(&data)),
            "holds no images itself",
            "c/inner",
        ],
    );
}

#[test]
fn layer_too_wide_for_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let out = earlier_results(t);
    assert_refused_after_loading(
        t,
        &[
            "run",
            arg(&pipeline),
            "--out",
            arg(&out),
            "--force",
            "--set",
            "pretrain.architecture={kind=\"dense\",hidden=[100000000],latent=4}",
        ],
        &["pretrain.architecture", "dense 64-100000000-4", "GB"],
    );
}

#[test]
fn thread_count_beyond_the_cores() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let started = std::time::Instant::now();
    assert_refused(
        t,
        &[
            "--threads",
            "100000",
            "data",
            "describe",
            arg(&digits_dir()),
        ],
        &["--threads 100000", "must be between 1 and"],
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn seeds_or_strategies_named_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let out = earlier_results(t);
    assert_refused(
        t,
        &[
            "run",
            arg(&pipeline),
            "--out",
            arg(&out),
            "--force",
            "--seeds",
            "0,0",
        ],
        &["compare.seeds: 0 is named twice"],
    );
    assert_refused(
        t,
        &[
            "run",
            arg(&pipeline),
            "--out",
            arg(&out),
            "--force",
            "--strategies",
            "scratch,full,scratch",
        ],
        &["compare.strategies: scratch is named twice"],
    );
}

/// Settings once taken silently (a negative or NaN weight decay read as 0, zero epochs writing
/// an untrained encoder, an empty budget) are refused naming the setting; a budget larger than
/// a class names the class; a diverging fine-tuning names its step and learning rate.
#[test]
fn settings_once_taken_silently_are_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let out = earlier_results(t);
    let run = |extra: &[&'static str]| {
        let mut args = vec!["run", arg(&pipeline), "--out", arg(&out), "--force"];
        args.extend_from_slice(extra);
        args
    };
    for (setting, needle) in [
        (
            "pretrain.weight_decay=-1",
            "`weight_decay`: must be a non-negative number",
        ),
        (
            "pretrain.weight_decay=nan",
            "`weight_decay`: must be a non-negative number",
        ),
        ("pretrain.epochs=0", "`epochs`: must be at least 1"),
        ("finetune.steps=0", "`steps`: must be at least 1"),
    ] {
        assert_refused(t, &run(&["--set", setting]), &[arg(&pipeline), needle]);
    }
    assert_refused(
        t,
        &run(&["--labels-per-class", "0"]),
        &["compare.labels_per_class: give one or more budgets of at least 1"],
    );
    assert_refused_after_loading(
        t,
        &run(&["--labels-per-class", "40"]),
        &["40 per class asked for, but class `a` has only"],
    );
    assert_refused_after_loading(
        t,
        &run(&["--strategies", "scratch", "--set", "finetune.lr=1e30"]),
        &[
            "fine-tuning",
            "loss became",
            "at step",
            "lower finetune.lr (now 1e30)",
        ],
    );
}

/// A trained model, its labeled folder and CSV list, to misuse.
fn trained_model(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = t.join("data");
    let rows = write_png_classes(&data, &["a", "b"], 0, 6);
    let list = data.join("list.csv");
    let mut text = String::from("path,label\n");
    for (rel, class) in &rows {
        text.push_str(&format!("{rel},{class}\n"));
    }
    std::fs::write(&list, text).unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let ft = t.join("ft");
    imprint(
        t,
        &[
            "finetune",
            "--pipeline",
            arg(&pipeline),
            "--strategy",
            "scratch",
            "--labels-per-class",
            "2",
            "--out",
            arg(&ft),
        ],
    )
    .assert_success();
    (ft.join("model.safetensors"), data, list)
}

#[test]
fn output_that_is_an_input_or_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (model, _, list) = trained_model(t);
    for command in ["predict", "embed"] {
        let flag = if command == "predict" {
            "--model"
        } else {
            "--encoder"
        };
        assert_refused(
            t,
            &[
                command,
                flag,
                arg(&model),
                "--input",
                arg(&list),
                "--out",
                arg(&list),
            ],
            &[arg(&list), "--out is also an input of this command"],
        );
    }
    let file = t.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let pipeline = t.join("p.toml");
    assert_refused(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&pipeline),
            "--out",
            arg(&file),
        ],
        &[arg(&file), "--out names a file, not a folder"],
    );
}

#[test]
fn classifier_with_broken_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (model, data, _) = trained_model(t);
    // NaN in the head's bias, as a diverged run would leave it.
    let bytes = std::fs::read(&model).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let bias = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "head.bias")
        .unwrap();
    bias.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    std::fs::write(
        &model,
        safetensors::tensor::serialize(views, &None).unwrap(),
    )
    .unwrap();
    let out = t.join("predictions.csv");
    assert_refused(
        t,
        &[
            "predict",
            "--model",
            arg(&model),
            "--input",
            arg(&data),
            "--out",
            arg(&out),
        ],
        &[arg(&model), "tensor `head.bias` holds NaN"],
    );
    // Cut short, it says so in plain words.
    let whole = std::fs::read(&model).unwrap();
    std::fs::write(&model, &whole[..whole.len() / 2]).unwrap();
    assert_refused(
        t,
        &[
            "predict",
            "--model",
            arg(&model),
            "--input",
            arg(&data),
            "--out",
            arg(&out),
        ],
        &[arg(&model), "cut short"],
    );
}

#[test]
fn resume_onto_another_finished_pretraining() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 6);
    let wide = write_pipeline(
        &t.join("wide.toml"),
        &Tiny {
            hidden: &[24],
            epochs: 1,
            ..Tiny::on(&data)
        },
    );
    let small = write_pipeline(
        &t.join("small.toml"),
        &Tiny {
            epochs: 1,
            ..Tiny::on(&data)
        },
    );
    let pre = t.join("pre");
    imprint(
        t,
        &["pretrain", "--pipeline", arg(&wide), "--out", arg(&pre)],
    )
    .assert_success();
    let sidecar = pre.join("encoder.json");
    assert_refused_after_loading(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&small),
            "--out",
            arg(&pre),
            "--resume",
        ],
        &[
            arg(&sidecar),
            "cannot resume",
            "pretrain.architecture differs",
        ],
    );
    assert_refused_after_loading(
        t,
        &[
            "pretrain",
            "--pipeline",
            arg(&wide),
            "--out",
            arg(&pre),
            "--resume",
        ],
        &[arg(&sidecar), "already finished"],
    );
}
