//! Checkpoints written by an earlier version (tests/fixtures/checkpoints-f231784) load (their
//! sidecars list data files one by one, as records did before sources were summarised), and give
//! the features and predictions that version computed from them: to the last digit for the dense
//! nets; for the convolutional ones within float rounding, the convolutions having since been
//! rewritten (sums taken in another order).

use imprint_e2e::{imprint, workspace_root};
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
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fixtures(t);
    for kind in ["dense", "conv"] {
        let features = format!("{kind}-features.csv");
        imprint(
            t,
            &[
                "embed",
                "--encoder",
                &format!("{kind}-encoder/encoder.safetensors"),
                "--input",
                "digits40-images-idx3-ubyte",
                "--out",
                &features,
            ],
        )
        .assert_success();
        assert_csv_matches(
            kind,
            &std::fs::read_to_string(t.join(&features)).unwrap(),
            &expected(&features),
        );
        let predictions = format!("{kind}-predictions.csv");
        imprint(
            t,
            &[
                "predict",
                "--model",
                &format!("{kind}-model/model.safetensors"),
                "--input",
                "digits40-images-idx3-ubyte",
                "--out",
                &predictions,
            ],
        )
        .assert_success();
        assert_csv_matches(
            kind,
            &std::fs::read_to_string(t.join(&predictions)).unwrap(),
            &expected(&predictions),
        );
        // And the classifier's checkpoint names are all there to inspect.
        let inspected = imprint(t, &["inspect", &format!("{kind}-model/model.safetensors")]);
        inspected.assert_success();
        assert!(
            inspected.stdout.contains("head.weight"),
            "{}",
            inspected.stdout
        );
        // Its sidecar lists the data files one by one, as that version wrote them: read, and
        // shown in one line.
        assert!(
            inspected
                .stdout
                .contains("data: 2 files, 2624 bytes, listed one by one in this older sidecar"),
            "{}",
            inspected.stdout
        );
    }
}
