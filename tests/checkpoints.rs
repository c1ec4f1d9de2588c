//! Checkpoints written by an earlier version (tests/fixtures/checkpoints-f231784) load (their
//! sidecars list data files one by one, as records did before sources were summarised), and give
//! the features and predictions that version computed from them: to the last digit for the dense
//! nets; for the convolutional ones within float rounding, the convolutions having since been
//! rewritten (sums taken in another order).

use imprint_e2e::{apply_args, imprint, test_dir, workspace_root};
use std::path::Path;

/// Copies the fixtures into a fresh folder, so the images are read by the same relative path
/// the CSVs name them by.
fn fixtures(into: &Path) {
    let from = workspace_root().join("tests/fixtures/checkpoints-f231784");
    for kind in ["dense", "conv"] {
        for (dir, file) in [("encoder", "encoder"), ("model", "model")] {
            let sub = into.join(format!("{kind}-{dir}"));
            std::fs::create_dir_all(&sub).unwrap();
            for ext in ["safetensors", "json"] {
                let name = format!("{file}.{ext}");
                std::fs::copy(
                    from.join(format!("{kind}-{dir}")).join(&name),
                    sub.join(&name),
                )
                .unwrap();
            }
        }
    }
    for file in ["digits40-images-idx3-ubyte", "digits40-labels-idx1-ubyte"] {
        std::fs::copy(from.join(file), into.join(file)).unwrap();
    }
}

/// The CSV `got` equals `want` in every text field, and in every numeric field exactly for
/// dense nets, within 1e-5 for convolutional ones.
fn assert_csv_matches(kind: &str, got: &str, want: &str) {
    if kind == "dense" {
        assert_eq!(got, want, "{kind}");
        return;
    }
    let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    assert_eq!(got.len(), want.len(), "{kind}: rows");
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.split(',').zip(w.split(',')) {
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) if a.contains('.') => {
                    assert!((x - y).abs() < 1e-5, "{kind}: {a} vs {b} in `{g}`")
                }
                _ => assert_eq!(a, b, "{kind}: `{g}` vs `{w}`"),
            }
        }
    }
}

fn expected(name: &str) -> String {
    let path = workspace_root()
        .join("tests/fixtures/checkpoints-f231784")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn encoders_and_classifiers_of_f231784_load_and_compute_as_then() {
    let t: &Path = &test_dir();
    fixtures(t);
    let images = Path::new("digits40-images-idx3-ubyte");
    for kind in ["dense", "conv"] {
        let steps = [
            ("embed", "encoder/encoder", "features"),
            ("predict", "model/model", "predictions"),
        ];
        for (command, checkpoint, csv) in steps {
            let checkpoint = format!("{kind}-{checkpoint}.safetensors");
            let csv = format!("{kind}-{csv}.csv");
            let args = apply_args(command, Path::new(&checkpoint), images, Path::new(&csv));
            imprint(t, &args).assert_success();
            let got = std::fs::read_to_string(t.join(&csv)).unwrap();
            assert_csv_matches(kind, &got, &expected(&csv));
        }
        // And the classifier's checkpoint names are all there to inspect; its sidecar lists the
        // data files one by one, as that version wrote them: read, and shown in one line.
        let older = "data: 2 files, 2624 bytes, listed one by one in this older sidecar";
        imprint(t, &["inspect", &format!("{kind}-model/model.safetensors")])
            .assert_success()
            .assert_stdout_has(&["head.weight", older]);
    }
}
