//! `export --onnx`: the files it writes give, in onnxruntime, the outputs `imprint` computes
//! (checked where the PyTorch peer of `../shared/README.md` with onnxruntime is installed;
//! skipped with a note elsewhere), and it never writes over an input or an existing file
//! without `--force`.

use imprint_e2e::{arg, assert_refused, imprint, test_dir, workspace_root, write_png_classes};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The peer's Python (`IMPRINT_PEER_PYTHON`, else `~/peer/bin/python`) when it has
/// onnxruntime, numpy and pillow.
fn peer_python() -> Option<PathBuf> {
    let python = std::env::var_os("IMPRINT_PEER_PYTHON")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join("peer/bin/python")))?;
    let ok = Command::new(&python)
        .args(["-c", "import onnxruntime, numpy, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// Runs each image of `csv` (`path,label,values...`, as `evaluate --logits` and `embed` write
/// them, paths relative to `t`) through `onnx` in onnxruntime; returns the largest difference
/// from the CSV's values and the number of images.
const COMPARE: &str = r#"
import csv, sys, numpy as np, onnxruntime as ort
from PIL import Image
model, table = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
channels = session.get_inputs()[0].shape[1]
worst, rows = 0.0, list(csv.reader(open(table)))[1:]
for row in rows:
    image = Image.open(row[0]).convert("L" if channels == 1 else "RGB")
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = x[None, None] if channels == 1 else x.transpose(2, 0, 1)[None]
    out = session.run(None, {"input": x})[0][0]
    worst = max(worst, float(np.abs(out - np.array(row[2:], dtype=np.float32)).max()))
print(worst, len(rows))
"#;

fn onnxruntime_difference(python: &Path, t: &Path, onnx: &Path, csv: &Path) -> (f64, usize) {
    let out = Command::new(python)
        .current_dir(t)
        .args(["-c", COMPARE, arg(onnx), arg(csv)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts = text.split_whitespace();
    let worst = parts.next().unwrap().parse().unwrap();
    (worst, parts.next().unwrap().parse().unwrap())
}

/// RGB 32x32 PNGs `data/<class>/<i>.png`, their pixels a fixed pattern per image.
fn write_rgb_classes(root: &Path, classes: &[&str], per_class: usize) {
    for (c, name) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(name)).unwrap();
        for i in 0..per_class {
            let image = image::RgbImage::from_fn(32, 32, |x, y| {
                let v = |k: u32| ((x * 7 + y * 13 + k * 29 + (c * 31 + i * 17) as u32) % 256) as u8;
                image::Rgb([v(0), v(1), v(2)])
            });
            image
                .save(root.join(name).join(format!("{i}.png")))
                .unwrap();
        }
    }
}

#[test]
fn exported_models_match_onnxruntime() {
    let Some(python) = peer_python() else {
        eprintln!(
            "note: skipped: no peer Python with onnxruntime (~/peer/bin/python or \
             IMPRINT_PEER_PYTHON); the exported graphs' structure is tested in imprint-onnx"
        );
        return;
    };
    let t: &Path = &test_dir();
    let fixtures = workspace_root().join("tests/fixtures/checkpoints-f231784");
    // A residual net with option-A shortcuts and a normalisation, imported from a Lightning
    // checkpoint; the dense and convolutional classifiers and encoders of an earlier version.
    let lightning =
        workspace_root().join("crates/imprint-torch/tests/fixtures/lightning_resnet8.ckpt");
    let imported = t.join("resnet8");
    let normalised = ["--mean", "0.4,0.5,0.6", "--std", "0.2,0.25,0.3"];
    let mut args = vec!["import", arg(&lightning), "--out", arg(&imported)];
    args.extend(normalised);
    imprint(t, &args).assert_success();
    write_rgb_classes(&t.join("rgb"), &["0", "1", "2"], 4);
    write_png_classes(&t.join("grey"), &["0", "1", "2"], 0, 4);
    let cases: [(PathBuf, &str, &str); 4] = [
        (imported.join("model.safetensors"), "rgb", "evaluate"),
        (
            fixtures.join("conv-model/model.safetensors"),
            "grey",
            "evaluate",
        ),
        (
            fixtures.join("dense-model/model.safetensors"),
            "grey",
            "evaluate",
        ),
        (
            fixtures.join("conv-encoder/encoder.safetensors"),
            "grey",
            "embed",
        ),
    ];
    for (i, (model, images, command)) in cases.iter().enumerate() {
        let onnx = t.join(format!("{i}.onnx"));
        let csv = t.join(format!("{i}.csv"));
        imprint(t, &["export", "--onnx", arg(&onnx), "--model", arg(model)]).assert_success();
        let args = match *command {
            "evaluate" => vec![
                "evaluate",
                "--model",
                arg(model),
                "--input",
                images,
                "--logits",
            ],
            _ => vec!["embed", "--encoder", arg(model), "--input", images, "--out"],
        };
        let mut args = args;
        args.push(arg(&csv));
        imprint(t, &args).assert_success();
        let (worst, n) = onnxruntime_difference(&python, t, &onnx, &csv);
        eprintln!(
            "{}: {n} images, max |difference| {worst:.2e}",
            model.display()
        );
        assert_eq!(n, 12);
        assert!(worst <= 1e-4, "{}: {worst}", model.display());
    }
}

#[test]
fn export_never_writes_over_an_input_or_an_existing_file_unasked() {
    let t: &Path = &test_dir();
    let model = t.join("m/model.safetensors");
    let fixtures = workspace_root().join("tests/fixtures/checkpoints-f231784/dense-model");
    std::fs::create_dir_all(model.parent().unwrap()).unwrap();
    for ext in ["safetensors", "json"] {
        let name = format!("model.{ext}");
        std::fs::copy(fixtures.join(&name), t.join("m").join(&name)).unwrap();
    }
    let before = std::fs::read(&model).unwrap();
    let sidecar = t.join("m/model.json");
    for target in [&model, &sidecar] {
        let args = [
            "export",
            "--onnx",
            arg(target),
            "--model",
            arg(&model),
            "--force",
        ];
        assert_refused(t, &args, &[arg(target), "is also an input of this command"]);
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
    let onnx = t.join("m.onnx");
    std::fs::write(&onnx, b"mine").unwrap();
    let args = ["export", "--onnx", arg(&onnx), "--model", arg(&model)];
    assert_refused(
        t,
        &args,
        &[arg(&onnx), "exists; pass --force to replace it"],
    );
    assert_eq!(std::fs::read(&onnx).unwrap(), b"mine");
    let mut forced = args.to_vec();
    forced.push("--force");
    imprint(t, &forced)
        .assert_success()
        .assert_stdout_has(&["ONNX opset 13", "output `logits` of 10 values"]);
    assert!(std::fs::read(&onnx).unwrap().len() > 1000);
}
