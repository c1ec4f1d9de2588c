//! Where jobs write: an output folder belongs to imprint (a marker, a lock while a job writes),
//! `--force` replaces only such a folder and never one that holds or lies inside an input, and
//! single-file outputs go only to new paths or, with `--force`, regular files that are none of
//! the inputs. Every refusal is one `error:` line, exit status 1, nothing that existed changed.

use imprint_e2e::{
    apply_args, arg, assert_refused, finetune_args, imprint, imprint_bin, png_pipeline,
    pretrain_args, run_args, test_dir, Outcome, Table,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The marker every output folder holds.
const MARKER: &str = ".imprint-output";

/// A finished comparison of the tiny pipeline in `t/out`: an output folder of imprint.
fn earlier_run(t: &Path, pipeline: &Path) -> PathBuf {
    let out = t.join("out");
    imprint(t, &run_args(pipeline, &out, &[])).assert_success();
    assert!(
        out.join(MARKER).is_file(),
        "an output folder holds the marker"
    );
    out
}

#[test]
fn force_never_replaces_a_folder_that_holds_an_input() {
    let t: &Path = &test_dir();
    let (data, pipeline) = png_pipeline(t, &["a", "b"], 4);
    // The image folder the pipeline reads, and the folder holding it and the pipeline file.
    assert_refused(
        t,
        &run_args(&pipeline, &data, &["--force"]),
        &[
            arg(&data),
            "holds data.unlabeled",
            "an input of this command",
        ],
    );
    assert_refused(
        t,
        &run_args(&pipeline, t, &["--force"]),
        &[arg(t), "holds the pipeline file", arg(&pipeline)],
    );
    // Nor writes inside one: the outputs would become images of a class `out`.
    let inside = data.join("out");
    assert_refused(
        t,
        &run_args(&pipeline, &inside, &[]),
        &[arg(&inside), "lies inside data.unlabeled"],
    );
    assert!(!inside.exists());
}

#[test]
fn force_never_replaces_the_checkpoint_a_job_reads() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
    // A fine-tuned model's folder, given as --init and as --out.
    let ft = t.join("ft");
    imprint(t, &finetune_args(&pipeline, "scratch", "2", &ft, &[])).assert_success();
    let model = ft.join("model.safetensors");
    let init = ["--init", arg(&model), "--force"];
    assert_refused(
        t,
        &finetune_args(&pipeline, "full", "2", &ft, &init),
        &[arg(&ft), "holds --init", arg(&model)],
    );
    // A checkpoint put into an output folder, imported into that folder.
    let checkpoint = ft.join("resnet20.th");
    std::fs::write(&checkpoint, "weights").unwrap();
    let import = [
        "import",
        arg(&checkpoint),
        "--arch",
        "resnet20",
        "--force",
        "--out",
        arg(&ft),
    ];
    assert_refused(
        t,
        &import,
        &[arg(&ft), "holds the checkpoint", arg(&checkpoint)],
    );
}

#[test]
fn force_replaces_only_folders_imprint_wrote() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
    let mine = t.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    assert_refused(
        t,
        &run_args(&pipeline, &mine, &["--force"]),
        &[
            arg(&mine),
            "not an output folder of imprint",
            "`notes.txt`",
            "choose another --out",
        ],
    );
    // An empty folder is taken, and becomes an output folder.
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    imprint(t, &pretrain_args(&pipeline, &empty, &[])).assert_success();
    assert!(empty.join(MARKER).is_file() && empty.join("encoder.safetensors").is_file());

    // An output folder an older version wrote (no marker; its records and names alone) is
    // recognised and replaced; a notes file put into it makes it the user's again.
    let older = earlier_run(t, &pipeline);
    std::fs::remove_file(older.join(MARKER)).unwrap();
    imprint(t, &run_args(&pipeline, &older, &["--force"])).assert_success();
    assert!(older.join(MARKER).is_file() && older.join("results.csv").is_file());
    std::fs::remove_file(older.join(MARKER)).unwrap();
    std::fs::write(older.join("notes.txt"), "mine now").unwrap();
    assert_refused(
        t,
        &run_args(&pipeline, &older, &["--force"]),
        &[arg(&older), "`notes.txt`, which imprint does not write"],
    );
}

#[test]
fn a_job_that_fails_leaves_no_folder_it_created() {
    let t: &Path = &test_dir();
    let (data, pipeline) = png_pipeline(t, &["a", "b"], 4);
    std::fs::write(data.join("b/3.png"), "not a png").unwrap();
    let deep = t.join("new/deeper/out");
    assert_refused(
        t,
        &run_args(&pipeline, &deep, &[]),
        &["3.png", "cannot decode"],
    );
    assert!(!t.join("new").exists(), "the folders it created are gone");

    let bad = t.join("bad.th");
    std::fs::write(&bad, "not a checkpoint").unwrap();
    let imported = t.join("imported");
    let import = [
        "import",
        arg(&bad),
        "--arch",
        "resnet20",
        "--out",
        arg(&imported),
    ];
    assert_refused(t, &import, &[arg(&bad)]);
    assert!(!imported.exists());

    // A folder it did not create stays, empty as it was.
    let kept = t.join("kept");
    std::fs::create_dir(&kept).unwrap();
    assert_refused(
        t,
        &pretrain_args(&pipeline, &kept, &[]),
        &["3.png", "cannot decode"],
    );
    assert!(kept.is_dir() && std::fs::read_dir(&kept).unwrap().next().is_none());
}

/// `imprint ARGS` started in `cwd` without waiting, with a cache folder of its own under `cwd`.
fn spawn(cwd: &Path, args: &[&str]) -> Child {
    Command::new(imprint_bin())
        .current_dir(cwd)
        .args(args)
        .env("IMPRINT_CACHE_DIR", cwd.join("cache"))
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imprint starts")
}

fn outcome(child: Child, args: &[&str]) -> Outcome {
    let out = child.wait_with_output().expect("imprint runs");
    Outcome {
        cmdline: format!("imprint {}", args.join(" ")),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Two runs started at once into one output folder: one runs, the other is refused naming the
/// first's process id, and the folder ends with the whole of one run: every row, nothing beside.
fn two_at_once(t: &Path, pipeline: &Path, out: &Path, extra: &[&str]) {
    let args = run_args(pipeline, out, extra);
    let (a, b) = (spawn(t, &args), spawn(t, &args));
    let (pid_a, pid_b) = (a.id(), b.id());
    let (a, b) = (outcome(a, &args), outcome(b, &args));
    let (winner, loser, pid) = match (a.code, b.code) {
        (Some(0), _) => (a, b, pid_a),
        (_, Some(0)) => (b, a, pid_b),
        _ => panic!("neither run finished:\n{a:?}\n{b:?}"),
    };
    winner.assert_success();
    let busy = format!("another imprint job (process id {pid}) is writing this output folder");
    loser.assert_error(&[arg(out), &busy]);
    let rows = Table::read(&out.join("results.csv")).outcomes();
    let solo = t.join("solo");
    let unforced: Vec<&str> = extra.iter().copied().filter(|a| *a != "--force").collect();
    imprint(t, &run_args(pipeline, &solo, &unforced)).assert_success();
    assert_eq!(rows, Table::read(&solo.join("results.csv")).outcomes());
    let beside: Vec<_> = std::fs::read_dir(t)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".out."))
        .collect();
    assert!(beside.is_empty(), "left beside: {beside:?}");
    std::fs::remove_dir_all(&solo).unwrap();
}

#[test]
fn two_runs_into_one_folder_at_once_one_is_refused_naming_the_other() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
    let out = t.join("out");
    // Enough epochs that each run holds the folder for a while.
    two_at_once(t, &pipeline, &out, &["--epochs", "200"]);
    // And over the finished folder, both forced.
    two_at_once(t, &pipeline, &out, &["--force", "--epochs", "200"]);
}

/// A classifier fine-tuned in `t/ft` on `t/data`; returns (model, data).
fn fine_tuned(t: &Path) -> (PathBuf, PathBuf) {
    let (data, pipeline) = png_pipeline(t, &["a", "b"], 4);
    let ft = t.join("ft");
    imprint(t, &finetune_args(&pipeline, "scratch", "2", &ft, &[])).assert_success();
    (ft.join("model.safetensors"), data)
}

#[test]
fn single_file_outputs_never_replace_a_models_files_or_an_input() {
    let t: &Path = &test_dir();
    let (model, data) = fine_tuned(t);
    let ft = model.parent().unwrap().to_path_buf();
    let pre = t.join("pre");
    imprint(t, &pretrain_args(&t.join("p.toml"), &pre, &[])).assert_success();
    let encoder = pre.join("encoder.safetensors");
    let sidecar = ft.join("model.json");
    let image = data.join("a/0.png");
    let encoder_sidecar = pre.join("encoder.json");
    let mut cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            apply_args("predict", &model, &data, &sidecar),
            vec![arg(&sidecar), "is also an input", "the sidecar of --model"],
        ),
        (
            apply_args("predict", &model, &data, &image),
            vec![arg(&image), "lies inside --input", arg(&data)],
        ),
        (
            apply_args("embed", &encoder, &data, &encoder_sidecar),
            vec![arg(&encoder_sidecar), "the sidecar of --encoder"],
        ),
    ];
    // Anything else in the model's output folder is the model's too.
    let metrics = ft.join("metrics.json");
    let logits = [
        "evaluate",
        "--model",
        arg(&model),
        "--input",
        arg(&data),
        "--logits",
        arg(&metrics),
        "--force",
    ];
    cases.push((
        logits.to_vec(),
        vec![arg(&metrics), "the output folder of --model"],
    ));
    for (args, needles) in &cases {
        let mut forced = args.clone();
        if !forced.contains(&"--force") {
            forced.push("--force");
        }
        assert_refused(t, &forced, needles);
    }
}

#[test]
fn single_file_outputs_go_to_new_paths_or_regular_files_with_force() {
    let t: &Path = &test_dir();
    let (model, data) = fine_tuned(t);
    let out = t.join("predictions.csv");
    let predict = apply_args("predict", &model, &data, &out);
    imprint(t, &predict).assert_success();
    assert_refused(
        t,
        &predict,
        &[arg(&out), "exists; pass --force to replace it"],
    );
    std::fs::write(&out, "earlier").unwrap();
    let mut forced = predict.clone();
    forced.push("--force");
    imprint(t, &forced).assert_success();
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("path,predicted"));

    // Never a device, a FIFO, a folder or a link to one, even with --force; never into a
    // folder that is not there (named, not a temporary file). The FIFO lies outside `t`, whose
    // files the refusals compare (reading a FIFO would wait for a writer).
    let elsewhere = test_dir();
    let fifo = elsewhere.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let null = t.join("null.csv");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let nowhere = t.join("nowhere/predictions.csv");
    let nowhere_folder = t.join("nowhere");
    let cases: [(&Path, &[&str]); 5] = [
        (Path::new("/dev/null"), &["/dev/null", "is a device"]),
        (&fifo, &["is a FIFO, not a regular file"]),
        (&data, &["is a folder, not a regular file"]),
        (&null, &["is a symbolic link to a device"]),
        (
            &nowhere,
            &["the folder", arg(&nowhere_folder), "does not exist"],
        ),
    ];
    for (path, needles) in cases {
        let mut args = apply_args("predict", &model, &data, path);
        args.push("--force");
        let mut all = vec![arg(path)];
        all.extend(needles);
        assert_refused(t, &args, &all);
        let still = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&still));
    }
}

#[test]
fn data_split_replaces_its_lists_only_with_force() {
    let t: &Path = &test_dir();
    let (data, _) = png_pipeline(t, &["a", "b"], 4);
    let split = t.join("split");
    let args = ["data", "split", arg(&data), "--out", arg(&split)];
    imprint(t, &args).assert_success();
    let train = split.join("train.csv");
    std::fs::write(&train, "my own list").unwrap();
    assert_refused(
        t,
        &args,
        &[arg(&train), "exists; pass --force to replace it"],
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    imprint(t, &forced).assert_success();
    assert!(std::fs::read_to_string(&train)
        .unwrap()
        .starts_with("path,label"));
    // Into the source folder it would become part of the data: refused, nothing made.
    let inside = data.join("lists");
    let args = ["data", "split", arg(&data), "--out", arg(&inside)];
    assert_refused(t, &args, &["lies inside the source", arg(&data)]);
    assert!(!inside.exists());
}
