//! Loads of checkpoints and sidecars: every command that reads one keeps the same bounds
//! (docs/loading.md), and a file outside them is refused with one `error:` line naming the
//! file and the tensor or key, exit status 1, no panic, nothing changed, and at once.

use imprint_e2e::{
    arg, assert_refused, assert_refused_after_loading, imprint, png_pipeline, pretrain_args,
    read_json, read_tensors, snapshot, test_dir, words, workspace_root, write_pipeline,
    write_tensors, Outcome, RawTensor, Tiny,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The classifier and encoder checkpoints of the fixtures (a dense 64-16-8 net on 8x8 digits),
/// copied into `t/model` and `t/encoder`, and the 40 digits they were made from; returns
/// (model.safetensors, encoder.safetensors, digits idx file).
fn fixtures(t: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let from = workspace_root().join("tests/fixtures/checkpoints-f231784");
    let copy = |rel: &str, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from.join(rel), to).unwrap();
    };
    for (dir, stem) in [("dense-model", "model"), ("dense-encoder", "encoder")] {
        for ext in ["safetensors", "json"] {
            let rel = format!("{dir}/{stem}.{ext}");
            copy(&rel, &t.join(stem).join(format!("{stem}.{ext}")));
        }
    }
    for name in ["digits40-images-idx3-ubyte", "digits40-labels-idx1-ubyte"] {
        copy(name, &t.join("digits").join(name));
    }
    (
        t.join("model/model.safetensors"),
        t.join("encoder/encoder.safetensors"),
        t.join("digits/digits40-images-idx3-ubyte"),
    )
}

/// Sets `key` (a top-level key of the JSON sidecar beside `weights`) to `value`; returns the
/// sidecar's path.
fn set_sidecar(weights: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let path = weights.with_extension("json");
    let mut side = read_json(&path);
    side[key] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&side).unwrap()).unwrap();
    path
}

/// Every command that loads the classifier `model` (and the encoder `encoder`), on `digits`,
/// writing into `t/out*`.
fn every_load<'a>(
    t: &'a Path,
    model: &'a Path,
    encoder: &'a Path,
    digits: &'a Path,
) -> Vec<Vec<String>> {
    let s = |p: &Path| arg(p).to_string();
    let out = |name: &str| s(&t.join(name));
    let pipeline = workspace_root().join("pipelines/digits.toml");
    vec![
        vec![
            "predict".into(),
            "--model".into(),
            s(model),
            "--input".into(),
            s(digits),
            "--out".into(),
            out("p.csv"),
        ],
        vec![
            "evaluate".into(),
            "--model".into(),
            s(model),
            "--input".into(),
            s(digits),
        ],
        vec!["inspect".into(), s(model)],
        vec![
            "embed".into(),
            "--encoder".into(),
            s(encoder),
            "--input".into(),
            s(digits),
            "--out".into(),
            out("f.csv"),
        ],
        vec!["inspect".into(), s(encoder)],
        vec![
            "finetune".into(),
            "--pipeline".into(),
            s(&pipeline),
            "--init".into(),
            s(model),
            "--strategy".into(),
            "full".into(),
            "--out".into(),
            out("ft"),
        ],
    ]
}

/// Runs each command of [`every_load`] and checks it is refused at once naming `needles`, the
/// files under `t` unchanged.
fn assert_every_load_refused(
    t: &Path,
    model: &Path,
    encoder: &Path,
    digits: &Path,
    needles: &[&str],
) {
    for args in every_load(t, model, encoder, digits) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        assert_refused(t, &args, needles);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// The same key of both sidecars set to `value`; returns the classifier's sidecar path.
fn set_both(model: &Path, encoder: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    set_sidecar(encoder, key, value.clone());
    set_sidecar(model, key, value)
}

#[test]
fn sidecar_declaring_a_layer_too_wide_for_memory() {
    let t: &Path = &test_dir();
    let (model, encoder, digits) = fixtures(t);
    let wide = serde_json::json!({"kind": "dense", "hidden": [100_000_000], "latent": 8});
    set_both(&model, &encoder, "architecture", wide);
    for weights in [&model, &encoder] {
        let side = weights.with_extension("json");
        let needles = [
            arg(&side),
            "`architecture` dense 64-100000000-8",
            "GB of memory is available",
        ];
        let args = ["inspect", arg(weights)];
        assert_refused(t, &args, &needles);
    }
    assert_every_load_refused(
        t,
        &model,
        &encoder,
        &digits,
        &["`architecture` dense 64-100000000-8", "GB"],
    );
}

#[test]
fn sidecar_declaring_a_huge_input() {
    let t: &Path = &test_dir();
    let (model, encoder, digits) = fixtures(t);
    // Beyond any image the decoder reads.
    let tall = serde_json::json!({"channels": 3, "height": 100_000, "width": 1});
    let side = set_both(&model, &encoder, "input", tall);
    assert_every_load_refused(
        t,
        &model,
        &encoder,
        &digits,
        &["`input` 3x100000x1", "16384 pixels a side"],
    );
    assert_refused(
        t,
        &["inspect", arg(&model)],
        &[arg(&side), "`input` 3x100000x1"],
    );
    // Within the decoder's reach, but every image as large as that makes the dense net's first
    // layer take 13 billion weights.
    let large = serde_json::json!({"channels": 3, "height": 16384, "width": 16384});
    set_both(&model, &encoder, "input", large);
    assert_every_load_refused(
        t,
        &model,
        &encoder,
        &digits,
        &["`architecture` dense 805306368-16-8", "GB"],
    );
}

#[test]
fn sidecar_claiming_a_resnet_six_million_layers_deep_is_answered_at_once() {
    let t: &Path = &test_dir();
    let (model, encoder, digits) = fixtures(t);
    let deep = serde_json::json!({"kind": "resnet", "depth": 6_000_002});
    set_both(&model, &encoder, "architecture", deep);
    set_both(
        &model,
        &encoder,
        "input",
        serde_json::json!({"channels": 3, "height": 32, "width": 32}),
    );
    assert_every_load_refused(
        t,
        &model,
        &encoder,
        &digits,
        &["`architecture` ResNet-6000002", "GB"],
    );
}

#[test]
fn sidecar_with_std_zero_or_classes_that_cannot_be_told_apart() {
    let t: &Path = &test_dir();
    let (model, encoder, digits) = fixtures(t);
    let zero_std = serde_json::json!({"invert": false, "mean": [0.5], "std": [0.0]});
    let side = set_both(&model, &encoder, "preprocess", zero_std);
    assert_every_load_refused(
        t,
        &model,
        &encoder,
        &digits,
        &["`preprocess`", "std must be positive"],
    );
    let fixed = serde_json::json!({"invert": false});
    set_both(&model, &encoder, "preprocess", fixed);
    let out = t.join("p.csv");
    let predict = [
        "predict",
        "--model",
        arg(&model),
        "--input",
        arg(&digits),
        "--out",
        arg(&out),
    ];
    let twice: Vec<String> = (0..10)
        .map(|c| if c == 3 { "1".into() } else { c.to_string() })
        .collect();
    set_sidecar(&model, "classes", serde_json::json!(twice));
    assert_refused(t, &predict, &[arg(&side), "`classes`: `1` is named twice"]);
    set_sidecar(&model, "classes", serde_json::json!([]));
    assert_refused(t, &predict, &[arg(&side), "`classes`: no class names"]);
}

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Runs `args` in `t`, which must fail at once with one error line naming `needles` (a command
/// that opened the pipe would wait for a writer: it is killed after 20 s and the test fails).
fn assert_refused_quickly(t: &Path, args: &[&str], needles: &[&str]) {
    let (done, wait) = std::sync::mpsc::channel();
    let (t2, args2): (PathBuf, Vec<String>) = (
        t.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    std::thread::spawn(move || {
        let args: Vec<&str> = args2.iter().map(String::as_str).collect();
        let _ = done.send(imprint(&t2, &args));
    });
    let outcome: Outcome = wait
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("`imprint {}` did not answer within 20 s", args.join(" ")));
    outcome.assert_error(needles);
}

#[test]
fn named_pipe_given_as_checkpoint_or_sidecar() {
    let t: &Path = &test_dir();
    let (model, _, digits) = fixtures(t);
    // A pipe as the weights, its sidecar beside it.
    let pipes = t.join("pipes");
    std::fs::create_dir(&pipes).unwrap();
    let weights = pipes.join("m.safetensors");
    mkfifo(&weights);
    std::fs::copy(model.with_extension("json"), pipes.join("m.json")).unwrap();
    let out = t.join("p.csv");
    let fifo = "a named pipe (FIFO), not a regular file";
    let pipeline = workspace_root().join("pipelines/digits.toml");
    let ft = t.join("ft");
    for args in [
        vec![
            "predict",
            "--model",
            arg(&weights),
            "--input",
            arg(&digits),
            "--out",
            arg(&out),
        ],
        vec!["inspect", arg(&weights)],
        vec![
            "import",
            arg(&weights),
            "--arch",
            "resnet20",
            "--no-normalize",
            "--out",
            arg(&ft),
        ],
        vec![
            "finetune",
            "--pipeline",
            arg(&pipeline),
            "--init",
            arg(&weights),
            "--out",
            arg(&ft),
        ],
    ] {
        assert_refused_quickly(t, &args, &[arg(&weights), fifo]);
    }
    // A pipe as the sidecar of real weights.
    let real = pipes.join("r.safetensors");
    std::fs::copy(&model, &real).unwrap();
    let side = pipes.join("r.json");
    mkfifo(&side);
    for args in [
        vec![
            "predict",
            "--model",
            arg(&real),
            "--input",
            arg(&digits),
            "--out",
            arg(&out),
        ],
        vec!["inspect", arg(&real)],
    ] {
        assert_refused_quickly(t, &args, &[arg(&side), fifo]);
    }
    assert!(!out.exists() && !ft.join("model.safetensors").exists());
}

/// A CIFAR ResNet-20 state dict as PyTorch names it (option-A shortcuts, a 10-class `linear`),
/// every value 0.5 and stored as F32, as (name, shape).
fn resnet20_state_dict() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![("conv1.weight".to_string(), vec![16, 3, 3, 3])];
    let bn = |t: &mut Vec<(String, Vec<usize>)>, at: &str, c: usize| {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            t.push((format!("{at}.{p}"), vec![c]));
        }
    };
    bn(&mut t, "bn1", 16);
    let mut from = 16;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for b in 0..3 {
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

/// Writes a state dict as safetensors, each tensor's bytes given by `bytes(name, elements)`
/// with its dtype.
fn write_state_dict(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    bytes: impl Fn(&str, usize) -> (safetensors::Dtype, Vec<u8>),
) {
    let data: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            let (dtype, b) = bytes(n, s.iter().product());
            (n.clone(), s.clone(), dtype, b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, d, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, &None).unwrap()).unwrap();
}

/// F32 values `v` for every element.
fn f32s(v: f32, n: usize) -> (safetensors::Dtype, Vec<u8>) {
    (safetensors::Dtype::F32, v.to_le_bytes().repeat(n))
}

/// `import FILE --arch resnet20 --no-normalize --out t/imported` then `extra`, refused naming
/// `needles`; the output folder stays absent.
fn assert_import_refused(t: &Path, file: &Path, extra: &[&str], needles: &[&str]) {
    let out = t.join("imported");
    let mut args = vec![
        "import",
        arg(file),
        "--arch",
        "resnet20",
        "--no-normalize",
        "--out",
        arg(&out),
    ];
    args.extend(extra);
    assert_refused(t, &args, needles);
    assert!(!out.join("model.safetensors").exists() && !out.join("encoder.safetensors").exists());
}

#[test]
fn imported_weights_of_integer_or_bool_dtype_nan_or_negative_variance() {
    let t: &Path = &test_dir();
    let dict = resnet20_state_dict();
    let file = t.join("w.safetensors");
    for (dtype, name) in [
        (safetensors::Dtype::I64, "I64"),
        (safetensors::Dtype::BOOL, "BOOL"),
        (safetensors::Dtype::U8, "U8"),
    ] {
        write_state_dict(&file, &dict, |n, count| match n {
            "layer2.0.conv1.weight" => (dtype, vec![1; count * dtype.size()]),
            _ => f32s(0.5, count),
        });
        let stored = format!(
            "tensor `layer2.0.conv1.weight` is stored as {}",
            if name == "BOOL" { "Bool" } else { name }
        );
        assert_import_refused(
            t,
            &file,
            &[],
            &[arg(&file), &stored, "weights are floating point"],
        );
    }
    for (bad, shown) in [(f32::NAN, "NaN"), (f32::NEG_INFINITY, "-inf")] {
        write_state_dict(&file, &dict, |n, count| match n {
            "layer3.2.bn2.weight" => f32s(bad, count),
            _ => f32s(0.5, count),
        });
        let holds = format!("tensor `layer3.2.bn2.weight` holds {shown}");
        assert_import_refused(t, &file, &[], &[arg(&file), &holds]);
    }
    write_state_dict(&file, &dict, |n, count| match n {
        "bn1.running_var" => f32s(-1.0, count),
        _ => f32s(0.5, count),
    });
    assert_import_refused(
        t,
        &file,
        &[],
        &[
            arg(&file),
            "tensor `bn1.running_var` holds the variance -1",
            "never below 0",
        ],
    );
    // The same file with a valid variance imports: the case above fails for the variance alone.
    write_state_dict(&file, &dict, |_, count| f32s(0.5, count));
    let out = t.join("ok");
    imprint(
        t,
        &[
            "import",
            arg(&file),
            "--arch",
            "resnet20",
            "--no-normalize",
            "--out",
            arg(&out),
        ],
    )
    .assert_success();
    // A variance made negative in our own checkpoint is refused by every command loading it.
    let model = out.join("model.safetensors");
    let mut tensors: Vec<RawTensor> = read_tensors(&model);
    let var = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "encoder.layer1.1.bn2.running_var")
        .unwrap();
    var.2[..4].copy_from_slice(&(-2.5f32).to_le_bytes());
    write_tensors(&model, &tensors, None);
    let needles = [
        arg(&model),
        "tensor `encoder.layer1.1.bn2.running_var` holds the variance -2.5",
    ];
    assert_refused(t, &["inspect", arg(&model)], &needles);
    let photos = t.join("photos");
    imprint_e2e::write_png_classes(&photos, &["0", "1"], 0, 2);
    let csv = t.join("p.csv");
    assert_refused(
        t,
        &[
            "predict",
            "--model",
            arg(&model),
            "--input",
            arg(&photos),
            "--out",
            arg(&csv),
        ],
        &needles,
    );
}

#[test]
fn imported_head_of_no_dimension_or_no_output_is_refused_without_a_panic() {
    let t: &Path = &test_dir();
    let file = t.join("w.safetensors");
    for (shape, needle) in [
        (
            vec![],
            "tensor `linear.weight` has shape []: a classifier's weight has 2 dimensions",
        ),
        (
            vec![0, 64],
            "tensor `linear.weight` has shape [0, 64]: a dimension of size 0 holds no weights",
        ),
    ] {
        let mut dict = resnet20_state_dict();
        dict.iter_mut()
            .find(|(n, _)| n == "linear.weight")
            .unwrap()
            .1 = shape;
        write_state_dict(&file, &dict, |_, count| f32s(0.5, count));
        assert_import_refused(t, &file, &[], &[arg(&file), needle]);
    }
}

#[test]
fn classes_given_for_a_headless_checkpoint_or_named_twice() {
    let t: &Path = &test_dir();
    let file = t.join("w.safetensors");
    let mut dict = resnet20_state_dict();
    write_state_dict(&file, &dict, |_, count| f32s(0.5, count));
    let ten = "a,b,c,d,e,f,g,h,i,a";
    assert_import_refused(
        t,
        &file,
        &["--classes", ten],
        &["--classes", "`a` is named twice"],
    );
    dict.retain(|(n, _)| !n.starts_with("linear."));
    write_state_dict(&file, &dict, |_, count| f32s(0.5, count));
    assert_import_refused(
        t,
        &file,
        &["--classes", "a,b"],
        &[
            "--classes",
            arg(&file),
            "holds no classifier",
            "leave --classes out",
        ],
    );
}

/// A valid classifier of the fixtures, then damaged as `damage` says; `predict` and `inspect`
/// are refused naming `needles`.
fn assert_damaged_model_refused(damage: impl Fn(&[u8]) -> Vec<u8>, needles: &[&str]) {
    let t: &Path = &test_dir();
    let (model, _, digits) = fixtures(t);
    let whole = std::fs::read(&model).unwrap();
    std::fs::write(&model, damage(&whole)).unwrap();
    let out = t.join("p.csv");
    let mut with_path = vec![arg(&model)];
    with_path.extend(needles);
    assert_refused(
        t,
        &[
            "predict",
            "--model",
            arg(&model),
            "--input",
            arg(&digits),
            "--out",
            arg(&out),
        ],
        &with_path,
    );
    assert_refused(t, &["inspect", arg(&model)], &with_path);
}

#[test]
fn safetensors_cut_inside_its_header() {
    assert_damaged_model_refused(
        |b| b[..30].to_vec(),
        &[
            "the file is cut short inside its header",
            "22 bytes follow its length",
        ],
    );
}

#[test]
fn safetensors_with_overlapping_offsets() {
    // The second tensor of the fixture starts 4 bytes before the first ends.
    let overlap = |b: &[u8]| {
        let len = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(b[8..8 + len].to_vec()).unwrap();
        let header: serde_json::Value = serde_json::from_str(&header).unwrap();
        let mut ends: Vec<(u64, String)> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(n, _)| *n != "__metadata__")
            .map(|(n, t)| (t["data_offsets"][0].as_u64().unwrap(), n.clone()))
            .collect();
        ends.sort();
        let (start, second) = &ends[1];
        let mut edited = header.clone();
        let offsets = &mut edited[second.as_str()]["data_offsets"];
        let end = offsets[1].as_u64().unwrap();
        *offsets = serde_json::json!([start - 4, end - 4]);
        let mut text = serde_json::to_string(&edited).unwrap();
        while text.len() < len {
            text.push(' ');
        }
        assert_eq!(text.len(), len, "the edited header keeps its length");
        [&b[..8], text.as_bytes(), &b[8 + len..]].concat()
    };
    assert_damaged_model_refused(
        overlap,
        &[
            "its data does not start where the tensor before it ends",
            "the header is damaged",
        ],
    );
}

/// `inspect` reads a PyTorch checkpoint (zip or legacy) as `import` would; a PyTorch file given
/// where our safetensors are expected is named as one, pointing to `import`.
#[test]
fn a_pytorch_checkpoint_is_inspected_or_pointed_to_import() {
    let t: &Path = &test_dir();
    let (model, _, digits) = fixtures(t);
    for fixture in ["state_dict.pt", "state_dict_legacy.pt"] {
        let file = t.join(fixture.replace(".pt", ".th"));
        let torch = workspace_root()
            .join("crates/imprint-torch/tests/fixtures")
            .join(fixture);
        std::fs::copy(&torch, &file).unwrap();
        imprint(t, &["inspect", arg(&file)])
            .assert_success()
            .assert_stdout_has(&["kind: PyTorch checkpoint"]);
        std::fs::copy(&torch, &model).unwrap();
        let out = t.join("p.csv");
        assert_refused(
            t,
            &[
                "predict",
                "--model",
                arg(&model),
                "--input",
                arg(&digits),
                "--out",
                arg(&out),
            ],
            &[
                arg(&model),
                "a PyTorch checkpoint, not safetensors: `imprint import` reads it",
            ],
        );
    }
}

#[test]
fn inspect_escapes_control_characters_in_tensor_names() {
    let t: &Path = &test_dir();
    let file = t.join("odd.safetensors");
    let name = "evil\u{1b}[2J\u{7}name\nnext";
    write_tensors(&file, &[(name.to_string(), vec![2], vec![0; 8])], None);
    let shown = imprint(t, &["inspect", arg(&file)]);
    shown.assert_success();
    assert!(
        !shown.stdout.contains('\u{1b}') && !shown.stdout.contains('\u{7}'),
        "{}",
        shown.stdout
    );
    shown.assert_stdout_has(&["evil\\u{1b}[2J\\u{7}name\\nnext  [2]"]);
}

/// A ResNet on a tall, thin input: its parameters are few, its layer outputs are not; the run
/// is refused once the data is read, naming the setting, before any of it is allocated.
#[test]
fn resnet_on_a_tall_input_is_refused_for_its_activations() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
    let out = t.join("out");
    let resnet = "pretrain.architecture={kind=\"resnet\",depth=20}";
    // Tiny images stretched to 16000x16 look alike: the near-duplicate check is not the point.
    let base = [
        "--set",
        resnet,
        "--set",
        "data.preprocess.channels=3",
        "--set",
        "data.near_duplicate_distance=\"off\"",
    ];
    let tall = [
        &base[..],
        &words("--set data.preprocess.height=100000 --set data.preprocess.width=1"),
    ]
    .concat();
    let mut args = vec!["run", arg(&pipeline), "--out", arg(&out)];
    args.extend(&tall);
    assert_refused(
        t,
        &args,
        &["data.preprocess.height", "100000 px", "16384 pixels a side"],
    );
    let thin = [&base[..], &words("--set data.preprocess.height=16000 --set data.preprocess.width=16 --set pretrain.batch_size=512")].concat();
    let mut args = vec!["run", arg(&pipeline), "--out", arg(&out)];
    args.extend(&thin);
    let started = Instant::now();
    assert_refused_after_loading(
        t,
        &args,
        &[
            "pretrain.architecture",
            "ResNet-20",
            "values per image",
            "training it on batches of 512",
            "GB of memory is available",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(!out.join("results.csv").exists());
}

/// `--resume` from a checkpoint whose weights became NaN is refused naming the tensor.
#[test]
fn resume_from_a_checkpoint_holding_nan() {
    let t: &Path = &test_dir();
    // One step per epoch, the learning rate so large that epoch 2 diverges: epoch 1's
    // checkpoint is kept for a resume.
    let digits = imprint_e2e::digits_dir().join("digits-images-idx3-ubyte.gz");
    let tiny = Tiny {
        hidden: &[64, 32],
        ..Tiny::on(&digits)
    };
    let pipeline = write_pipeline(&t.join("p.toml"), &tiny);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let text = text.replace(
        "batch_size = 16\n",
        "batch_size = 100000\nlr = 1e6\nloss = \"bce\"\n",
    );
    std::fs::write(&pipeline, text).unwrap();
    let pre = t.join("pre");
    imprint(t, &pretrain_args(&pipeline, &pre, &["--epochs", "5"]))
        .assert_error_after_progress(&["loss became"]);
    let checkpoint = pre.join("checkpoint.safetensors");
    let bytes = std::fs::read(&checkpoint).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let first = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "encoder.0.weight")
        .unwrap();
    first.2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    write_tensors(&checkpoint, &tensors, meta.metadata().clone());
    let before = snapshot(t);
    imprint(
        t,
        &pretrain_args(&pipeline, &pre, &["--epochs", "5", "--resume"]),
    )
    .assert_error_after_progress(&[arg(&checkpoint), "tensor `encoder.0.weight` holds NaN"]);
    assert_eq!(snapshot(t), before);
}
