//! Where an encoder starts: a network trained elsewhere, imported, and the comparison of every
//! route (scratch, pre-trained here, imported, imported then pre-trained here).

use imprint_e2e::{digits_run_args, imprint, read_json, test_dir, words, workspace_root, Table};
use std::path::Path;

/// The dense classifier of the f231784 fixtures stands in for a network trained elsewhere.
fn imported_model() -> std::path::PathBuf {
    workspace_root().join("tests/fixtures/checkpoints-f231784/dense-model/model.safetensors")
}

#[test]
fn every_route_runs_on_the_same_subsets_and_records_where_it_started() {
    let root = workspace_root();
    let t: &Path = &test_dir();
    let out = t.join("routes");
    let imported = imported_model();
    let flags =
        "--epochs 2 --steps 20 --seeds 0 --labels-per-class 3 --strategies scratch,probe,full";
    let mut args = digits_run_args(&out, flags);
    args.extend(words(
        "--set pretrain.architecture={kind=\"dense\",hidden=[16],latent=8} \
         --set compare.routes=[\"self\",\"imported\",\"imported+self\"]",
    ));
    let imported_at = format!("compare.imported=\"{}\"", imported.display());
    args.extend(["--set", &imported_at]);
    imprint(&root, &args).assert_success();
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
            "imported+self:full",
            // The fixture classifies the digits' ten classes: its own head is a baseline.
            "imported:old-head"
        ]
    );
    // Each pre-training route has its own encoder; the one from the imported network says so.
    let side = read_json(&out.join("pretrain/seed-0-from-imported/encoder.json"));
    let digest = side["started_from"]["sha256"].as_str().unwrap();
    let (_, expected) = sha256_of(&imported);
    assert_eq!(digest, expected);
    assert!(out.join("pretrain/seed-0/encoder.json").exists());
    let plain = read_json(&out.join("pretrain/seed-0/encoder.json"));
    assert!(plain.get("started_from").is_none(), "{plain}");
    // The imported network's frozen encoder is the fixture's, whatever the seed: its probe
    // differs from the probe of the encoder pre-trained here.
    let acc = table.column("test_accuracy");
    assert_ne!(
        acc[1], acc[2],
        "probe from self and from the import agree: {acc:?}"
    );
}

fn sha256_of(path: &Path) -> (u64, String) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    let digest = Sha256::digest(&bytes);
    (
        bytes.len() as u64,
        digest.iter().map(|b| format!("{b:02x}")).collect(),
    )
}
