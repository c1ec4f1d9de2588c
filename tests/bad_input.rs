//! Bad input: each case must fail with exit status 1 and one `error:` line naming the file and
//! the problem, without a panic and without touching what was there before.

use imprint_e2e::{
    apply_args, arg, assert_refused, assert_refused_after_loading, class_pixels, digits_dir,
    edit_file, finetune_args, imprint, png_pipeline, pretrain_args, read_tensors, run_args,
    snapshot, test_dir, write_grey_png, write_idx_images, write_idx_labels, write_pipeline,
    write_png_classes, write_tensors, RawTensor, Tiny, SIDE,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An output folder holding the results of an earlier run (with the marker every output folder
/// holds), which a failed run must not touch.
fn earlier_results(t: &Path) -> PathBuf {
    let out = t.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(".imprint-output"), "an output folder of imprint\n").unwrap();
    std::fs::write(
        out.join("results.csv"),
        "strategy,test_accuracy\nearlier,0.5\n",
    )
    .unwrap();
    out
}

/// `run PIPELINE --out OUT --force`, then `extra`: a run allowed to replace [`earlier_results`].
fn forced_run<'a>(pipeline: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = run_args(pipeline, out, &["--force"]);
    args.extend(extra);
    args
}

/// A [`Tiny`] pipeline `t/p.toml` and [`earlier_results`] beside it, for [`forced_run`]s with
/// bad data or settings.
struct ForcedRun<'a> {
    t: &'a Path,
    pipeline: PathBuf,
    out: PathBuf,
}

impl<'a> ForcedRun<'a> {
    /// The pipeline on `data`.
    fn on(t: &'a Path, data: &Path) -> Self {
        let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(data));
        let out = earlier_results(t);
        ForcedRun { t, pipeline, out }
    }

    /// The pipeline on 4 generated PNGs of each of two classes.
    fn on_pngs(t: &'a Path) -> Self {
        let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
        let out = earlier_results(t);
        ForcedRun { t, pipeline, out }
    }

    /// [`assert_refused`] for the run given `extra`.
    fn assert_refused(&self, extra: &[&str], needles: &[&str]) {
        assert_refused(
            self.t,
            &forced_run(&self.pipeline, &self.out, extra),
            needles,
        );
    }

    /// [`assert_refused_after_loading`] for the run given `extra`.
    fn assert_refused_after_loading(&self, extra: &[&str], needles: &[&str]) {
        let args = forced_run(&self.pipeline, &self.out, extra);
        assert_refused_after_loading(self.t, &args, needles);
    }
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
    let t: &Path = &test_dir();
    let images = idx_pair(t, "cut", 20);
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 100]).unwrap();
    let needles = [arg(&images), "truncated idx file", "1280", "1180"];
    ForcedRun::on(t, &images).assert_refused(&[], &needles);
}

#[test]
fn idx_file_with_wrong_magic() {
    let t: &Path = &test_dir();
    let images = idx_pair(t, "odd", 20);
    let mut bytes = std::fs::read(&images).unwrap();
    bytes[2] = 0x0d; // f32 data: not the u8 images the reader takes
    std::fs::write(&images, bytes).unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&images));
    let out = earlier_results(t);

    assert_refused(
        t,
        &pretrain_args(&pipeline, &out, &["--force"]),
        &[arg(&images), "not an idx", "magic 0x00000d03"],
    );
}

#[test]
fn corrupt_png() {
    let t: &Path = &test_dir();
    let (data, pipeline) = png_pipeline(t, &["a", "b"], 6);
    let bad = data.join("b/3.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();

    assert_refused(
        t,
        &pretrain_args(&pipeline, &t.join("pre"), &[]),
        &[arg(&bad), "cannot decode image"],
    );
}

#[test]
fn csv_list_naming_a_missing_file() {
    let t: &Path = &test_dir();
    write_grey_png(&t.join("imgs/0.png"), SIDE, SIDE, class_pixels(0, 0));
    write_grey_png(&t.join("imgs/1.png"), SIDE, SIDE, class_pixels(1, 1));
    let list = t.join("list.csv");
    std::fs::write(
        &list,
        "path,label\nimgs/0.png,a\nimgs/missing.png,b\nimgs/1.png,b\n",
    )
    .unwrap();
    let needles = [arg(&list), "line 3", "not found", "missing.png"];
    ForcedRun::on(t, &list).assert_refused(&[], &needles);
}

#[test]
fn test_label_outside_the_labeled_classes() {
    let t: &Path = &test_dir();
    let (train, test) = (t.join("train"), t.join("test"));
    write_png_classes(&train, &["a", "b"], 0, 6);
    write_png_classes(&test, &["a", "c"], 10, 3);

    // the test set given on the command line
    let c = test.join("c");
    let needles = [arg(&c), "label out of range", "\"c\"", "a b"];
    ForcedRun::on(t, &train).assert_refused(&["--test", arg(&test)], &needles);
}

/// Pipelines `t/small.toml` and `t/wide.toml` on `per_class` PNGs of each of two classes, their
/// dense encoders of hidden layers [16] and [24] pre-trained for `epochs` (small, wide).
fn small_and_wide(t: &Path, per_class: usize, epochs: (usize, usize)) -> (PathBuf, PathBuf) {
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, per_class);
    let dense = |name: &str, hidden: &[usize], epochs: usize| {
        let tiny = Tiny {
            hidden,
            epochs,
            ..Tiny::on(&data)
        };
        write_pipeline(&t.join(format!("{name}.toml")), &tiny)
    };
    (
        dense("small", &[16], epochs.0),
        dense("wide", &[24], epochs.1),
    )
}

/// Pre-trains `pipeline` into `t/pre`, which it returns.
fn pretrained(t: &Path, pipeline: &Path) -> PathBuf {
    let pre = t.join("pre");
    imprint(t, &pretrain_args(pipeline, &pre, &[])).assert_success();
    pre
}

#[test]
fn encoder_checkpoint_of_another_architecture() {
    let t: &Path = &test_dir();
    let (small, wide) = small_and_wide(t, 8, (1, 3));
    let pre = pretrained(t, &small);
    let before = snapshot(&pre);
    let encoder = pre.join("encoder.safetensors");

    // A comparison runs the imported network as it is, beside scratch of the pipeline's own
    // architecture, and its report says which is which.
    let compared = t.join("compared");
    let imported = format!("compare.imported=\"{}\"", encoder.display());
    let routes = ["--set", "compare.routes=[\"imported\"]", "--set", &imported];
    imprint(t, &run_args(&wide, &compared, &routes)).assert_success();
    let report = std::fs::read_to_string(compared.join("report.md")).unwrap();
    for needle in ["dense 64-16-8", "dense 64-24-8", arg(&encoder)] {
        assert!(report.contains(needle), "no {needle:?} in\n{report}");
    }
    // Its input size must be the data's: refused before anything is written.
    let resized = t.join("resized");
    let mut six = routes.to_vec();
    six.extend([
        "--set",
        "data.preprocess.height=6",
        "--set",
        "data.preprocess.width=6",
    ]);
    let run = imprint(t, &run_args(&wide, &resized, &six));
    run.assert_error_after_progress(&[arg(&encoder), "takes 1x8x8 images", "the data is 1x6x6"]);
    assert_eq!(snapshot(&pre), before, "the checkpoint changed");
    assert!(
        std::fs::read_dir(&resized).map_or(true, |mut d| d.next().is_none()),
        "the refused comparison wrote into its folder"
    );

    // Fine-tuning from it (`--init`, alias `--encoder`) takes the checkpoint's architecture
    // instead, says so, and records where it started.
    let ft = t.join("ft");
    let from_encoder = ["--encoder", arg(&encoder)];
    imprint(t, &finetune_args(&wide, "full", "2", &ft, &from_encoder))
        .assert_success()
        .assert_stderr_has(&["dense 64-16-8", "from the checkpoint"]);
    let side = imprint_e2e::read_json(&ft.join("model.json"));
    assert_eq!(side["architecture"]["hidden"], serde_json::json!([16]));
    assert_eq!(
        side["started_from"]["path"],
        serde_json::json!(arg(&encoder))
    );
}

#[test]
fn output_folder_exists_and_is_not_empty() {
    let t: &Path = &test_dir();
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
        &run_args(&pipeline, &out, &[]),
        &[arg(&out), "not empty", "--force"],
    );

    // the refusal is about the folder alone: with --force the same run goes through
    imprint(t, &forced_run(&pipeline, &out, &[])).assert_success();
    assert!(out.join("summary.csv").is_file());
}

/// The line (1-based) of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.starts_with(prefix))
        .expect("line present")
}

/// A forced run of a tiny pipeline on PNGs, its text with `from` replaced by `to`, is refused
/// naming the file, the line that starts with `key`, and `needles`.
fn assert_edited_pipeline_refused((from, to): (&str, &str), key: &str, needles: &[&str]) {
    let t: &Path = &test_dir();
    let forced = ForcedRun::on_pngs(t);
    let text = edit_file(&forced.pipeline, from, to);
    let line = format!("line {}", line_of(&text, key));
    let mut all = vec![arg(&forced.pipeline), &line];
    all.extend(needles);
    forced.assert_refused(&[], &all);
}

#[test]
fn pipeline_with_an_unknown_key() {
    let edit = ("epochs = 3\n", "epochs = 3\nepoch_count = 2\n");
    assert_edited_pipeline_refused(edit, "epoch_count", &["unknown field", "epoch_count"]);
}

#[test]
fn pipeline_with_a_value_of_the_wrong_type() {
    let edit = ("steps = 40", "steps = \"forty\"");
    assert_edited_pipeline_refused(edit, "steps", &["steps", "\"forty\"", "expected"]);
}

#[test]
fn setting_an_unknown_key_on_the_command_line() {
    let t: &Path = &test_dir();
    let forced = ForcedRun::on_pngs(t);
    let needles = [arg(&forced.pipeline), "--set", "unknown field `dropot`"];
    forced.assert_refused(&["--set", "finetune.dropot=0.3"], &needles);
}

#[test]
fn missing_pipeline_file() {
    let t: &Path = &test_dir();
    let pipeline = t.join("nowhere.toml");
    let run = imprint(t, &run_args(&pipeline, &t.join("out"), &[]));
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

/// Pre-trains [`diverging_pipeline`] into `t/pre` with `extra`, which must fail naming
/// `needles` and write no encoder; returns (pipeline, that folder).
fn assert_pretraining_diverges(
    t: &Path,
    batch_size: usize,
    extra: &[&str],
    needles: &[&str],
) -> (PathBuf, PathBuf) {
    let pipeline = diverging_pipeline(t, batch_size);
    let out = t.join("pre");
    imprint(t, &pretrain_args(&pipeline, &out, extra)).assert_error_after_progress(needles);
    assert!(!out.join("encoder.safetensors").exists());
    (pipeline, out)
}

#[test]
fn diverging_pretraining_stops_naming_epoch_and_step() {
    let t: &Path = &test_dir();
    // BCE on exploding logits overflows within steps
    let needles = [
        "pre-training seed 0",
        "loss became",
        "at epoch 1, step ",
        "lower pretrain.lr",
        "(now 1e6)",
    ];
    assert_pretraining_diverges(t, 16, &[], &needles);
}

/// A pre-training that diverges after finishing an epoch stops naming where, and keeps the
/// checkpoint of the last finished epoch.
#[test]
fn diverging_pretraining_keeps_the_last_good_checkpoint() {
    let t: &Path = &test_dir();
    // One step per epoch (a batch larger than the data): epoch 1's loss is still finite, its
    // update blows the weights up, and epoch 2's loss is not.
    let kept_in = "the last good checkpoint (after epoch 1) is kept in";
    let needles = [
        "loss became",
        "at epoch 2, step 1",
        kept_in,
        "checkpoint.safetensors",
    ];
    let (pipeline, out) = assert_pretraining_diverges(t, 100_000, &["--epochs", "5"], &needles);
    // The kept weights are exactly those a one-epoch pre-training ends with.
    let one_epoch = t.join("one");
    imprint(t, &pretrain_args(&pipeline, &one_epoch, &["--epochs", "1"])).assert_success();
    let kept: HashMap<String, Vec<u8>> = read_tensors(&out.join("checkpoint.safetensors"))
        .into_iter()
        .map(|(name, _, data)| (name, data))
        .collect();
    let finished = read_tensors(&one_epoch.join("encoder.safetensors"));
    assert!(!finished.is_empty());
    for (name, _, data) in &finished {
        assert_eq!(kept.get(name), Some(data), "{name}");
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

/// Writes `tensors` (name, shape) filled with zeros.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let zeros: Vec<RawTensor> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.clone(),
                vec![0; 4 * s.iter().product::<usize>()],
            )
        })
        .collect();
    write_tensors(path, &zeros, None);
}

/// `import FILE --arch resnet20 --no-normalize --out OUT`.
fn import_resnet20<'a>(file: &'a Path, out: &'a Path) -> Vec<&'a str> {
    let mut args = vec!["import", arg(file)];
    args.extend(["--arch", "resnet20", "--no-normalize", "--out", arg(out)]);
    args
}

/// `imprint import FILE --arch resnet20` into `t/imported`, which must stay absent.
fn assert_import_refused(t: &Path, file: &Path, needles: &[&str]) {
    let out = t.join("imported");
    assert_refused(t, &import_resnet20(file, &out), needles);
    assert!(!out.join("model.safetensors").exists());
}

fn torch_fixture(name: &str) -> PathBuf {
    imprint_e2e::workspace_root()
        .join("crates/imprint-torch/tests/fixtures")
        .join(name)
}

#[test]
fn checkpoint_cut_short() {
    let t: &Path = &test_dir();
    let bytes = std::fs::read(torch_fixture("state_dict_legacy.pt")).unwrap();
    let cut = t.join("cut.th");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert_import_refused(t, &cut, &[arg(&cut), "truncated"]);
}

#[test]
fn checkpoint_whose_pickle_calls_os_system() {
    let t: &Path = &test_dir();
    for name in ["system.pt", "system_legacy.pt"] {
        let evil = t.join(name);
        std::fs::copy(torch_fixture(name), &evil).unwrap();
        assert_import_refused(t, &evil, &[arg(&evil), "refuses to load", "system"]);
    }
}

#[test]
fn checkpoint_without_a_state_dict() {
    let t: &Path = &test_dir();
    let list = t.join("list.pt");
    std::fs::copy(torch_fixture("list.pt"), &list).unwrap();
    assert_import_refused(t, &list, &[arg(&list), "no state dict", "list"]);
}

#[test]
fn state_dict_of_another_depth() {
    let t: &Path = &test_dir();
    let deeper = t.join("resnet32.safetensors");
    write_safetensors(&deeper, &cifar_resnet_state_dict(5));
    assert_import_refused(
        t,
        &deeper,
        &[
            "--arch: resnet20 does not match",
            arg(&deeper),
            "its tensors are a resnet32",
        ],
    );
}

#[test]
fn state_dict_missing_a_tensor() {
    let t: &Path = &test_dir();
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
    imprint(t, &import_resnet20(&whole, &out)).assert_success();
    assert!(out.join("model.safetensors").exists() && out.join("model.json").exists());
}

#[test]
fn dense_checkpoint_given_as_a_resnet() {
    let t: &Path = &test_dir();
    let dense = imprint_e2e::workspace_root()
        .join("tests/fixtures/checkpoints-f231784/dense-model/model.safetensors");
    assert_import_refused(t, &dense, &[arg(&dense), "tensor `"]);
}

#[test]
fn image_too_large_to_decode() {
    let t: &Path = &test_dir();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    // 20000 pixels wide: past the decoder's limit of 16384 on a side, yet a small file.
    let huge = data.join("a/huge.png");
    write_grey_png(&huge, 20_000, 1, vec![7; 20_000]);
    let needles = [arg(&huge), "cannot decode image", "limit"];
    ForcedRun::on(t, &data).assert_refused(&[], &needles);
}

#[test]
fn class_images_one_folder_too_deep() {
    let t: &Path = &test_dir();
    let data = t.join("data");
    write_png_classes(&data, &["a", "b"], 0, 4);
    write_png_classes(&data.join("c"), &["inner"], 0, 4);
    let c = format!("{}/c", arg(&data));
    let needles = [c.as_str(), "holds no images itself", "c/inner"];
    ForcedRun::on(t, &data).assert_refused(&[], &needles);
}

#[test]
fn layer_too_wide_for_memory() {
    let t: &Path = &test_dir();
    let wide = "pretrain.architecture={kind=\"dense\",hidden=[100000000],latent=4}";
    let needles = ["pretrain.architecture", "dense 64-100000000-4", "GB"];
    ForcedRun::on_pngs(t).assert_refused_after_loading(&["--set", wide], &needles);
}

#[test]
fn thread_count_beyond_the_cores() {
    let t: &Path = &test_dir();
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
    let t: &Path = &test_dir();
    let forced = ForcedRun::on_pngs(t);
    forced.assert_refused(&["--seeds", "0,0"], &["compare.seeds: 0 is named twice"]);
    let strategies = ["--strategies", "scratch,full,scratch"];
    forced.assert_refused(&strategies, &["compare.strategies: scratch is named twice"]);
}

/// Settings once taken silently (a negative or NaN weight decay read as 0, zero epochs writing
/// an untrained encoder, an empty budget) are refused naming the setting; a budget larger than
/// a class names the class; a diverging fine-tuning names its step and learning rate.
#[test]
fn settings_once_taken_silently_are_refused_naming_them() {
    let t: &Path = &test_dir();
    let forced = ForcedRun::on_pngs(t);
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
        forced.assert_refused(&["--set", setting], &[arg(&forced.pipeline), needle]);
    }
    forced.assert_refused(
        &["--labels-per-class", "0"],
        &["compare.labels_per_class: give one or more budgets of at least 1"],
    );
    forced.assert_refused_after_loading(
        &["--labels-per-class", "40"],
        &["40 per class asked for, but class `a` has only"],
    );
    forced.assert_refused_after_loading(
        &["--strategies", "scratch", "--set", "finetune.lr=1e30"],
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
    imprint(t, &finetune_args(&pipeline, "scratch", "2", &ft, &[])).assert_success();
    (ft.join("model.safetensors"), data, list)
}

#[test]
fn output_that_is_an_input_or_a_file() {
    let t: &Path = &test_dir();
    let (model, _, list) = trained_model(t);
    for command in ["predict", "embed"] {
        assert_refused(
            t,
            &apply_args(command, &model, &list, &list),
            &[arg(&list), "is also an input of this command", "--input"],
        );
    }
    let file = t.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let pipeline = t.join("p.toml");
    assert_refused(
        t,
        &pretrain_args(&pipeline, &file, &[]),
        &[arg(&file), "--out names a file, not a folder"],
    );
}

#[test]
fn a_memory_budget_of_nothing() {
    let t: &Path = &test_dir();
    let (model, _, list) = trained_model(t);
    let out = t.join("predictions.csv");
    let mut predict = apply_args("predict", &model, &list, &out);
    predict.extend(["--memory-budget-mb", "0"]);
    assert_refused(
        t,
        &predict,
        &["--memory-budget-mb 0: must be at least 1 (MiB)"],
    );
}

#[test]
fn classifier_with_broken_weights() {
    let t: &Path = &test_dir();
    let (model, data, _) = trained_model(t);
    // NaN in the head's bias, as a diverged run would leave it.
    let mut tensors = read_tensors(&model);
    let bias = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "head.bias")
        .unwrap();
    bias.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    write_tensors(&model, &tensors, None);
    let out = t.join("predictions.csv");
    let predict = apply_args("predict", &model, &data, &out);
    assert_refused(t, &predict, &[arg(&model), "tensor `head.bias` holds NaN"]);
    // Cut short, it says so in plain words.
    let whole = std::fs::read(&model).unwrap();
    std::fs::write(&model, &whole[..whole.len() / 2]).unwrap();
    assert_refused(t, &predict, &[arg(&model), "cut short"]);
}

#[test]
fn resume_onto_another_finished_pretraining() {
    let t: &Path = &test_dir();
    let (small, wide) = small_and_wide(t, 6, (1, 1));
    let pre = pretrained(t, &wide);
    let sidecar = pre.join("encoder.json");
    assert_refused_after_loading(
        t,
        &pretrain_args(&small, &pre, &["--resume"]),
        &[
            arg(&sidecar),
            "cannot resume",
            "pretrain.architecture differs",
        ],
    );
    assert_refused_after_loading(
        t,
        &pretrain_args(&wide, &pre, &["--resume"]),
        &[arg(&sidecar), "already finished"],
    );
}

// Mixed precision (docs/precision.md).

#[test]
fn an_unknown_precision_is_refused_naming_the_key() {
    let edit = ("steps = 40", "steps = 40\nprecision = \"fp16\"");
    let needles = [
        "key `precision`",
        "unknown variant `fp16`",
        "`f32` or `bf16`",
    ];
    assert_edited_pipeline_refused(edit, "precision", &needles);
    let t: &Path = &test_dir();
    let forced = ForcedRun::on_pngs(t);
    let set = ["--set", "pretrain.precision=fp16"];
    forced.assert_refused(&set, &[arg(&forced.pipeline), "unknown variant `fp16`"]);
}

/// `[pretrain] pretexts`: a key of the old spelling beside the list is refused naming the new
/// spelling; an unknown method and small crops for an encoder of one input size are refused
/// naming the entry.
#[test]
fn pretexts_misspelled_or_misfit() {
    let t: &Path = &test_dir();
    let forced = ForcedRun::on_pngs(t);
    let list = "pretrain.pretexts=[{ kind = \"reconstruction\" }]";
    forced.assert_refused(
        &["--set", list, "--set", "pretrain.contrast_temperature=0.3"],
        &[
            arg(&forced.pipeline),
            "--set `pretrain.contrast_temperature=0.3`",
            "{ kind = \"contrastive\", temperature = ... }",
        ],
    );
    forced.assert_refused(
        &["--set", "pretrain.pretexts=[{ kind = \"simsiam\" }]"],
        &[arg(&forced.pipeline), "unknown variant `simsiam`"],
    );
    let dino = "pretrain.pretexts=[{ kind = \"dino\", local_crops = 2 }]";
    forced.assert_refused(
        &["--set", dino, "--set", "pretrain.augment_flip=true"],
        &[
            arg(&forced.pipeline),
            "`pretexts.dino.local_crops`",
            "reads any image size",
        ],
    );
}
