//! Where an encoder starts: a network trained elsewhere, imported, and the comparison of every
//! route (scratch, pre-trained here, imported, imported then pre-trained here).

use imprint_e2e::{arg, imprint, workspace_root, Table};

/// The dense classifier of the f231784 fixtures stands in for a network trained elsewhere.
fn imported_model() -> std::path::PathBuf {
    workspace_root().join("tests/fixtures/checkpoints-f231784/dense-model/model.safetensors")
}

#[test]
fn every_route_runs_on_the_same_subsets_and_records_where_it_started() {
    let root = workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("routes");
    let imported = imported_model();
    imprint(
        &root,
        &[
            "run",
            "pipelines/digits.toml",
            "--out",
            arg(&out),
            "--epochs",
            "2",
            "--steps",
            "20",
            "--seeds",
            "0",
            "--labels-per-class",
            "3",
            "--strategies",
            "scratch,probe,full",
            "--set",
            "pretrain.architecture={kind=\"dense\",hidden=[16],latent=8}",
            "--set",
            "compare.routes=[\"self\",\"imported\",\"imported+self\"]",
            "--set",
            &format!("compare.imported=\"{}\"", imported.display()),
        ],
    )
    .assert_success();
    let table = Table::read(&out.join("results.csv"));
    let names = table.column("strategy");
    assert_eq!(
        names,
        [
            "scratch",
            "probe",
            "imported:probe",
            "imported+self:probe",
            "full",
            "imported:full",
            "imported+self:full"
        ]
    );
    // Each pre-training route has its own encoder; the one from the imported network says so.
    let side: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("pretrain/seed-0-from-imported/encoder.json")).unwrap(),
    )
    .unwrap();
    let digest = side["started_from"]["sha256"].as_str().unwrap();
    let (_, expected) = sha256_of(&imported);
    assert_eq!(digest, expected);
    assert!(out.join("pretrain/seed-0/encoder.json").exists());
    let plain: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("pretrain/seed-0/encoder.json")).unwrap(),
    )
    .unwrap();
    assert!(plain.get("started_from").is_none(), "{plain}");
    // The imported network's frozen encoder is the fixture's, whatever the seed: its probe
    // differs from the probe of the encoder pre-trained here.
    let acc = table.column("test_accuracy");
    assert_ne!(
        acc[1], acc[2],
        "probe from self and from the import agree: {acc:?}"
    );
}

fn sha256_of(path: &std::path::Path) -> (u64, String) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    let digest = Sha256::digest(&bytes);
    (
        bytes.len() as u64,
        digest.iter().map(|b| format!("{b:02x}")).collect(),
    )
}
