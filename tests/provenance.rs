//! Provenance (`run.json` in every output folder), `inspect`, `embed`, and checkpoints laid out
//! as PyTorch writes them (crates/imprint-nn/CHECKPOINTS.md).

use imprint_e2e::{
    apply_args, arg, finetune_args, imprint, png_pipeline, pretrain_args, read_json, read_manifest,
    read_tensors, run_args, test_dir, write_tensors, Lcg, RawTensor, Table, SIDE,
};
use std::collections::HashMap;
use std::path::Path;

/// Checks what every `run.json` holds; returns it.
fn check_run_json(dir: &Path, command: &str, seeds: &[u64]) -> serde_json::Value {
    let run = read_json(&dir.join("run.json"));
    assert_eq!(run["format"], "imprint-run/1", "{run}");
    assert_eq!(run["command"], command, "{run}");
    assert_eq!(run["program_version"], env!("CARGO_PKG_VERSION"), "{run}");
    assert!(
        run["git_revision"].is_null() || run["git_revision"].as_str().unwrap().len() == 40,
        "{run}"
    );
    assert_eq!(run["threads"], 2, "{run}");
    assert_eq!(run["finished"], true, "{run}");
    assert_eq!(run["resumed"], false, "{run}");
    let recorded: Vec<u64> = run["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(recorded, seeds, "{run}");
    assert_eq!(run["pipeline"]["name"], "tiny", "{run}");
    assert!(run["started_at"].as_str().unwrap().ends_with('Z'), "{run}");
    // each source in one summary; its files once, in data-manifest.csv.gz
    for role in ["unlabeled", "labeled", "test"] {
        let source = &run["data"][role];
        let sha = source["sha256"].as_str().unwrap();
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
            "{source}"
        );
        assert!(source["files"].as_u64().unwrap() > 0, "{source}");
        assert!(source["bytes"].as_u64().unwrap() > 0, "{source}");
        assert!(
            source["path"].as_str().unwrap().ends_with("data"),
            "{source}"
        );
    }
    let listed = read_manifest(&dir.join("data-manifest.csv.gz"));
    assert_eq!(listed[0], "source,path,bytes,sha256");
    assert_eq!(
        listed.len() as u64 - 1,
        run["data"]["labeled"]["files"].as_u64().unwrap(),
        "every file of the one source, once"
    );
    let stages = run["stages"].as_array().unwrap();
    assert_eq!(stages[0]["name"], "load data", "{run}");
    assert!(
        stages.iter().all(|s| s["seconds"].as_f64().unwrap() >= 0.0),
        "{run}"
    );
    run
}

fn stage_names(run: &serde_json::Value) -> Vec<String> {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_job_writes_run_json_and_inspect_reads_checkpoints() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 8);
    let (pre, ft, cmp) = (t.join("pre"), t.join("ft"), t.join("cmp"));
    let threads = ["--threads", "2"];

    let pretrain = pretrain_args(&pipeline, &pre, &["--seed", "3", "--threads", "2"]);
    imprint(t, &pretrain).assert_success();
    let run = check_run_json(&pre, "pretrain", &[3]);
    assert_eq!(stage_names(&run), ["load data", "pretrain seed 3"]);
    let side = read_json(&pre.join("encoder.json"));
    assert_eq!(side["git_revision"], run["git_revision"], "{side}");

    let encoder = pre.join("encoder.safetensors");
    // no --strategy: the default one from a given network, probe
    let mut args = vec![
        "finetune",
        "--pipeline",
        arg(&pipeline),
        "--encoder",
        arg(&encoder),
    ];
    args.extend(["--labels-per-class", "2", "--seed", "3", "--out", arg(&ft)]);
    args.extend(threads);
    imprint(t, &args).assert_success();
    let run = check_run_json(&ft, "finetune", &[3]);
    assert_eq!(
        stage_names(&run),
        ["load data", "load encoder", "k2-seed3-probe"]
    );

    imprint(
        t,
        &run_args(&pipeline, &cmp, &["--seeds", "0,1", "--threads", "2"]),
    )
    .assert_success();
    let run = check_run_json(&cmp, "compare", &[0, 1]);
    assert_eq!(
        stage_names(&run),
        [
            "load data",
            "pretrain seed 0",
            "k2-seed0-scratch",
            "k2-seed0-full",
            "pretrain seed 1",
            "k2-seed1-scratch",
            "k2-seed1-full",
            "report"
        ]
    );
    // run.json holds the same resolved pipeline as pipeline.toml
    let toml_text = std::fs::read_to_string(cmp.join("pipeline.toml")).unwrap();
    let recorded: toml::Table = toml_text.parse().unwrap();
    assert_eq!(
        run["pipeline"]["compare"]["seeds"],
        serde_json::json!([0, 1]),
        "{run}"
    );
    assert_eq!(
        recorded["compare"]["seeds"].as_array().unwrap().len(),
        2,
        "{toml_text}"
    );

    let shown = imprint(t, &["inspect", arg(&encoder)]);
    shown.assert_success().assert_stdout_has(&[
        "pre-trained encoder",
        "dense 64-16-8",
        "seed 3",
        "sha256",
        "the tensors fit the architecture",
    ]);
    assert!(lists_tensor(&shown.stdout, "encoder.0.weight", "[16, 64]"));
    assert!(lists_tensor(&shown.stdout, "encoder.2.bias", "[8]"));
    let shown = imprint(t, &["inspect", arg(&ft.join("model.safetensors"))]);
    shown.assert_success();
    assert!(lists_tensor(&shown.stdout, "head.weight", "[2, 8]"));
    shown.assert_stdout_has(&["classifier", "classes (2): a b", "strategy probe"]);
}

/// Whether `inspect` output lists a tensor `name` of `shape` (`[a, b]`) on a line of its own.
fn lists_tensor(stdout: &str, name: &str, shape: &str) -> bool {
    let found = stdout.lines().any(|l| {
        let l = l.trim();
        l.starts_with(name) && l[name.len()..].trim() == shape
    });
    if !found {
        eprintln!("no tensor {name} {shape} in\n{stdout}");
    }
    found
}

/// Writes `tensors` to a safetensors file as PyTorch's `safetensors.torch.save_file` does:
/// f32 little-endian, row-major, the given names and shapes.
fn save_like_pytorch(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) {
    let raw: Vec<RawTensor> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.to_string(), shape.clone(), bytes)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_tensors(path, &raw, Some(meta));
}

/// `n` values in ±scale from a fixed generator.
fn values(rng: &mut Lcg, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (f32::from(rng.next_u8(201)) - 100.0) / 100.0 * scale)
        .collect()
}

/// An encoder written the way crates/imprint-nn/CHECKPOINTS.md tells PyTorch users to, with a hand-written
/// sidecar, is accepted by `finetune --encoder`, and `embed` computes exactly its forward pass.
#[test]
fn encoder_saved_from_pytorch_is_accepted_and_embeds_as_computed_by_hand() {
    let t: &Path = &test_dir();
    let (data, pipeline) = png_pipeline(t, &["a", "b"], 8);
    let (input, hidden, latent) = ((SIDE * SIDE) as usize, 16usize, 8usize);

    // nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8)); weights [out, in]
    let mut rng = Lcg::new(42);
    let w0 = values(&mut rng, hidden * input, 0.125);
    let b0 = values(&mut rng, hidden, 0.1);
    let w2 = values(&mut rng, latent * hidden, 0.25);
    let b2 = values(&mut rng, latent, 0.1);
    let encoder = t.join("torch/encoder.safetensors");
    std::fs::create_dir_all(encoder.parent().unwrap()).unwrap();
    save_like_pytorch(
        &encoder,
        &[
            ("encoder.0.weight", vec![hidden, input], &w0),
            ("encoder.0.bias", vec![hidden], &b0),
            ("encoder.2.weight", vec![latent, hidden], &w2),
            ("encoder.2.bias", vec![latent], &b2),
        ],
    );
    let sidecar = serde_json::json!({
        "format": "imprint-encoder/1",
        "architecture": {"kind": "dense", "hidden": [hidden], "latent": latent},
        "input": {"channels": 1, "height": SIDE, "width": SIDE},
        "preprocess": {"channels": null, "height": null, "width": null, "invert": false},
        "seed": 0,
        "epochs": 0,
        "program_version": "pytorch",
        "data": []
    });
    std::fs::write(t.join("torch/encoder.json"), sidecar.to_string()).unwrap();

    let ft = t.join("ft");
    let from_encoder = ["--encoder", arg(&encoder)];
    imprint(
        t,
        &finetune_args(&pipeline, "probe", "2", &ft, &from_encoder),
    )
    .assert_success();
    // a probe keeps the encoder: the saved model carries the PyTorch weights unchanged
    let model = load_tensors(&ft.join("model.safetensors"));
    assert_eq!(model["encoder.0.weight"], w0);
    assert_eq!(model["encoder.2.bias"], b2);

    let features = t.join("features.csv");
    imprint(t, &apply_args("embed", &encoder, &data, &features)).assert_success();
    let table = Table::read(&features);
    let mut header = vec!["path".to_string(), "label".to_string()];
    header.extend((0..latent).map(|j| format!("f{j}")));
    assert_eq!(table.header, header);
    assert_eq!(table.rows.len(), 16, "one row per image");
    for row in &table.rows {
        let path = Path::new(&row[0]);
        let label = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(row[1], label, "{row:?}");
        let x: Vec<f32> = image::open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_luma8()
            .into_raw()
            .into_iter()
            .map(|p| f32::from(p) / 255.0)
            .collect();
        let h: Vec<f32> = (0..hidden)
            .map(|o| {
                let s: f32 = (0..input).map(|i| w0[o * input + i] * x[i]).sum();
                (s + b0[o]).max(0.0)
            })
            .collect();
        for o in 0..latent {
            let z: f32 = (0..hidden).map(|i| w2[o * hidden + i] * h[i]).sum::<f32>() + b2[o];
            let got: f32 = row[2 + o].parse().unwrap();
            assert!(
                (got - z).abs() <= 1e-5 * (1.0 + z.abs()),
                "{}: f{o} is {got}, by hand {z}",
                row[0]
            );
        }
    }

    imprint(t, &["inspect", arg(&encoder)])
        .assert_success()
        .assert_stdout_has(&[
            "the tensors fit the architecture",
            "program version pytorch",
        ]);
}

/// Every tensor of a safetensors file by name.
fn load_tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    read_tensors(path)
        .into_iter()
        .map(|(name, _, bytes)| {
            let data = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, data)
        })
        .collect()
}

/// `--precision bf16` is said when the job starts and recorded in `run.json` with the kernel
/// this CPU ran (f32, saying why, on a CPU without bf16 products); f32 is the default.
#[test]
fn jobs_say_and_record_the_kernel_of_their_products() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 8);
    let (f32_dir, bf16_dir) = (t.join("f32"), t.join("bf16"));
    let plain = imprint(t, &pretrain_args(&pipeline, &f32_dir, &[]));
    plain.assert_success();
    plain.assert_stderr_has(&["pretrain: f32 products"]);
    let run = read_json(&f32_dir.join("run.json"));
    assert_eq!(run["products"]["pretrain"]["precision"], "f32", "{run}");
    assert_eq!(run["products"]["pretrain"]["kernel"], "f32", "{run}");

    let mixed = imprint(
        t,
        &pretrain_args(&pipeline, &bf16_dir, &["--precision", "bf16"]),
    );
    mixed.assert_success();
    let run = read_json(&bf16_dir.join("run.json"));
    let record = &run["products"]["pretrain"];
    assert_eq!(record["precision"], "bf16", "{run}");
    assert_eq!(run["pipeline"]["pretrain"]["precision"], "bf16", "{run}");
    let description = record["description"].as_str().unwrap();
    match record["kernel"].as_str().unwrap() {
        "bf16-amx" | "bf16-avx512" => assert!(description.starts_with("bf16 products"), "{run}"),
        "f32" => assert!(
            description.contains("neither AMX-BF16 nor AVX512-BF16"),
            "{run}"
        ),
        other => panic!("kernel {other}"),
    }
    mixed.assert_stderr_has(&[&format!("pretrain: {description}")]);
}
