//! Checkpoints written by an earlier version (tests/fixtures/checkpoints-f231784) load, and give
//! the features and predictions that version computed from them.

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
        assert_eq!(
            std::fs::read_to_string(t.join(&features)).unwrap(),
            expected(&features),
            "{kind} features"
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
        assert_eq!(
            std::fs::read_to_string(t.join(&predictions)).unwrap(),
            expected(&predictions),
            "{kind} predictions"
        );
        // And the classifier's checkpoint names are all there to inspect.
        let inspected = imprint(t, &["inspect", &format!("{kind}-model/model.safetensors")]);
        inspected.assert_success();
        assert!(
            inspected.stdout.contains("head.weight"),
            "{}",
            inspected.stdout
        );
    }
}
