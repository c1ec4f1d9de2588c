//! `import` and `inspect` on checkpoints as users have them: a Lightning `.ckpt` (the state
//! dict under `state_dict`, the network under the module's `model.`, a loss weight beside it),
//! found on their own or named by flags; the normalisation required; the choices a file leaves
//! open listed.

use imprint_e2e::{arg, assert_refused, imprint, read_json, test_dir, workspace_root};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("crates/imprint-torch/tests/fixtures")
        .join(name)
}

/// A CIFAR ResNet-8 of widths 2-4-8 with a 3-class head, saved by `make_fixtures.py` as a
/// Lightning module's checkpoint.
fn lightning() -> PathBuf {
    fixture("lightning_resnet8.ckpt")
}

#[test]
fn a_lightning_checkpoint_imports_by_detection_or_by_flags_alike() {
    let t: &Path = &test_dir();
    let found = t.join("found");
    imprint(
        t,
        &[
            "import",
            arg(&lightning()),
            "--no-normalize",
            "--out",
            arg(&found),
        ],
    )
    .assert_success()
    .assert_stdout_has(&[
        "state dict: under `state_dict`",
        "prefix: `model.` stripped",
        "left out: 1 tensor outside the prefix (`loss_fn.weight`)",
        "architecture: resnet8, detected from the tensors' shapes",
        "ResNet-8 (CIFAR layout) 3x32x32 -> 2-4-8 (shortcut A)",
        "with a 3-class head",
    ]);
    let side = read_json(&found.join("model.json"));
    assert_eq!(side["architecture"]["widths"], serde_json::json!([2, 4, 8]));
    assert_eq!(side["classes"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(side["preprocess"]["mean"], serde_json::Value::Null);
    // The same, every choice named.
    let named = t.join("named");
    let flags = [
        "--state-dict-key",
        "state_dict",
        "--strip-prefix",
        "model.",
        "--input",
        "3x32x32",
    ];
    let ckpt = lightning();
    let mut args = vec!["import", arg(&ckpt), "--no-normalize"];
    args.extend(flags);
    args.extend(["--out", arg(&named)]);
    imprint(t, &args).assert_success();
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(weights(&found), weights(&named));
    // `inspect` says the same without writing anything.
    imprint(t, &["inspect", arg(&lightning())])
        .assert_success()
        .assert_stdout_has(&[
            "kind: PyTorch checkpoint",
            "state dict: under `state_dict`",
            "prefix: `model.` stripped",
            "architecture: resnet8 detected",
            "classifier: 3 outputs",
            "model.layer3.0.conv2.weight",
        ]);
}

#[test]
fn import_without_normalisation_is_refused_unless_said() {
    let t: &Path = &test_dir();
    let out = t.join("out");
    assert_refused(
        t,
        &["import", arg(&lightning()), "--out", arg(&out)],
        &["--mean/--std: missing", "--no-normalize"],
    );
    assert!(!out.join("model.safetensors").exists());
    // One value per channel, once the file says how many it takes.
    assert_refused(
        t,
        &[
            "import",
            arg(&lightning()),
            "--mean",
            "0.5",
            "--std",
            "0.2",
            "--out",
            arg(&out),
        ],
        &["--mean/--std", "one value per channel (3)"],
    );
    assert!(!out.join("model.safetensors").exists());
    let ckpt = lightning();
    let given = [
        "import",
        arg(&ckpt),
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--out",
        arg(&out),
    ];
    imprint(t, &given).assert_success();
    let side = read_json(&out.join("model.json"));
    assert_eq!(
        side["preprocess"]["std"],
        serde_json::json!([0.229, 0.224, 0.225])
    );
}

#[test]
fn choices_a_checkpoint_leaves_open_are_listed() {
    let t: &Path = &test_dir();
    let out = t.join("out");
    let import = |file: &Path, extra: &[&str], needles: &[&str]| {
        let mut args = vec!["import", arg(file), "--no-normalize", "--out", arg(&out)];
        args.extend(extra);
        assert_refused(t, &args, needles);
        assert!(!out.join("model.safetensors").exists());
    };
    let pair = fixture("two_nets.pt");
    import(
        &pair,
        &[],
        &[
            arg(&pair),
            "several dicts of tensors at the top level (`student`, `teacher`)",
            "--state-dict-key",
        ],
    );
    import(
        &pair,
        &["--state-dict-key", "teacher"],
        &[
            "cannot tell its architecture",
            "no ResNet stem",
            "`backbone.conv1.` (1)",
            "--arch",
        ],
    );
    import(
        &lightning(),
        &["--state-dict-key", "weights"],
        &[
            arg(&lightning()),
            "no dict of tensors under `weights`; dicts of tensors are under `state_dict`",
        ],
    );
    import(
        &lightning(),
        &["--strip-prefix", "net."],
        &["no tensor name begins with `net.`", "`model.layer1.` (10)"],
    );
    import(
        &lightning(),
        &["--arch", "resnet20"],
        &[
            "--arch: resnet20 does not match",
            "its tensors are a resnet8",
        ],
    );
    import(
        &lightning(),
        &["--input", "1x32x32"],
        &["--input: 1x32x32 has 1 channels, the network's first layer takes 3"],
    );
}
