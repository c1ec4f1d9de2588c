//! `run --resume` after a hard kill completes the comparison with the same results as an
//! uninterrupted run, without repeating finished runs or pre-trainings.

use imprint_e2e::{arg, imprint, imprint_bin, read_json, workspace_root, Table};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small comparison on the shipped digits: 2 seeds x 2 strategies, pre-training per seed
/// long enough that a kill after the first result lands mid-run.
const ARGS: [&str; 14] = [
    "run",
    "pipelines/digits.toml",
    "--threads",
    "2",
    "--epochs",
    "20",
    "--steps",
    "40",
    "--seeds",
    "0,1",
    "--labels-per-class",
    "2",
    "--strategies",
    "scratch,probe-then-full",
];

fn args_with<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = ARGS.to_vec();
    args.extend(["--out", arg(out)]);
    args.extend(extra);
    args
}

/// Rows of results.csv, 0 while it does not exist.
fn rows(results: &Path) -> usize {
    std::fs::read_to_string(results).map_or(0, |t| t.lines().count().saturating_sub(1))
}

#[test]
fn killed_run_resumes_to_the_uninterrupted_result() {
    let root = workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));

    let mut child = Command::new(imprint_bin())
        .current_dir(&root)
        .args(args_with(&killed, &[]))
        .env("IMPRINT_CACHE_DIR", tmp.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start imprint");
    let results = killed.join("results.csv");
    let deadline = Instant::now() + Duration::from_secs(300);
    while rows(&results) == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("imprint ended ({status}) before writing a result");
        }
        assert!(Instant::now() < deadline, "no result within 5 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL imprint");
    child.wait().unwrap();
    let done = rows(&results);
    assert!(done < 4, "the run finished before the kill ({done} rows)");
    let encoder = killed.join("pretrain/seed-0/encoder.safetensors");
    let trained_at = std::fs::metadata(&encoder).unwrap().modified().unwrap();

    // a changed setting is refused, naming it, and leaves the folder as it was
    let refused = imprint(
        &root,
        &args_with(&killed, &["--resume", "--max-unlabeled", "500"]),
    );
    refused.assert_error_after_progress(&["cannot resume", "data.max_unlabeled", "500"]);
    assert_eq!(rows(&results), done);

    imprint(&root, &args_with(&killed, &["--resume"])).assert_success();
    imprint(&root, &args_with(&whole, &[])).assert_success();

    assert_eq!(
        Table::read(&results).outcomes(),
        Table::read(&whole.join("results.csv")).outcomes()
    );
    assert_eq!(
        std::fs::metadata(&encoder).unwrap().modified().unwrap(),
        trained_at,
        "seed 0 was pre-trained again"
    );
    let run = read_json(&killed.join("run.json"));
    assert_eq!(
        (&run["resumed"], &run["finished"]),
        (&true.into(), &true.into())
    );
    let stages = run["stages"].as_array().unwrap();
    let reused = |name: &str| {
        stages
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no stage {name}: {run}"))["reused"]
            .clone()
    };
    assert_eq!(reused("pretrain seed 0"), true, "{run}");
    assert_eq!(reused("k2-seed0-scratch"), true, "{run}");
    assert_eq!(reused("pretrain seed 1"), false, "{run}");
    assert_eq!(
        std::fs::read(killed.join("summary.csv")).unwrap(),
        std::fs::read(whole.join("summary.csv")).unwrap()
    );

    // a finished comparison grows by a strategy: only its runs are new, the others are kept
    let before = Table::read(&results).outcomes();
    let mut extended = args_with(&killed, &["--resume"]);
    let strategies = extended.iter().position(|&a| a == "--strategies").unwrap() + 1;
    extended[strategies] = "scratch,probe-then-full,probe";
    imprint(&root, &extended).assert_success();
    let after = Table::read(&results).outcomes();
    let probe: Vec<_> = after.iter().filter(|r| r[0] == "probe").collect();
    assert_eq!(probe.len(), 2, "{after:?}");
    let kept: Vec<_> = after.iter().filter(|r| r[0] != "probe").cloned().collect();
    assert_eq!(kept, before);
    let run = read_json(&killed.join("run.json"));
    for stage in run["stages"].as_array().unwrap() {
        let name = stage["name"].as_str().unwrap();
        if name.starts_with("pretrain") || name.starts_with("k2-") {
            assert_eq!(
                stage["reused"] == false,
                name.ends_with("-probe"),
                "{stage}"
            );
        }
    }
}

/// `pretrain --resume` after a hard kill mid-way continues from the last epoch checkpoint (not
/// from scratch) and writes the weights and losses of an uninterrupted pre-training.
#[test]
fn killed_pretraining_resumes_from_its_epoch_checkpoint() {
    let root = workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let (killed, whole) = (tmp.path().join("killed"), tmp.path().join("whole"));
    let args = |out: &Path, extra: &[&'static str]| {
        let mut a = vec!["pretrain", "--threads", "2", "--epochs", "400", "--out"];
        a.push(arg(out));
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut child = Command::new(imprint_bin())
        .current_dir(&root)
        .args(args(&killed, &[]))
        .env("IMPRINT_CACHE_DIR", tmp.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start imprint");
    let checkpoint = killed.join("checkpoint.safetensors");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !checkpoint.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("imprint ended ({status}) before its first checkpoint");
        }
        assert!(Instant::now() < deadline, "no checkpoint within 5 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().expect("SIGKILL imprint");
    child.wait().unwrap();
    assert!(
        !killed.join("encoder.json").exists(),
        "the pre-training finished before the kill"
    );
    assert!(checkpoint.exists());

    let run = |out: &Path, extra: &[&'static str]| {
        let a = args(out, extra);
        imprint(&root, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let outcome = run(&killed, &["--resume"]);
    outcome.assert_success();
    assert!(
        outcome
            .stdout
            .contains("continuing pre-training after epoch")
            || outcome
                .stderr
                .contains("continuing pre-training after epoch"),
        "did not continue from the checkpoint:\n{}{}",
        outcome.stdout,
        outcome.stderr
    );
    assert!(
        !checkpoint.exists(),
        "the finished run keeps its checkpoint"
    );
    run(&whole, &[]).assert_success();

    for file in ["encoder.safetensors", "decoder.safetensors"] {
        assert!(
            std::fs::read(killed.join(file)).unwrap() == std::fs::read(whole.join(file)).unwrap(),
            "{file} differs from the uninterrupted run's"
        );
    }
    let losses = |dir: &Path| {
        let t = Table::read(&dir.join("loss.csv"));
        (t.numbers("train_loss"), t.numbers("heldout_loss"))
    };
    assert_eq!(losses(&killed), losses(&whole));
}

/// A pre-training made beforehand (`imprint pretrain --out DIR/pretrain/seed-0`, the long step
/// done once) is picked up by `run --resume --out DIR`: it is not pre-trained again, and the
/// comparison equals one that pre-trained itself.
#[test]
fn run_resume_reuses_a_pretraining_made_beforehand() {
    let root = workspace_root();
    let tmp = tempfile::tempdir().unwrap();
    let (staged, whole) = (tmp.path().join("staged"), tmp.path().join("whole"));
    let pre = staged.join("pretrain/seed-0");
    let grid = [
        "--threads",
        "2",
        "--epochs",
        "3",
        "--steps",
        "20",
        "--seeds",
        "0",
        "--labels-per-class",
        "2",
        "--strategies",
        "scratch,probe-then-full",
    ];
    let pretrain: Vec<&str> = [
        "pretrain",
        "--threads",
        "2",
        "--epochs",
        "3",
        "--out",
        arg(&pre),
    ]
    .into();
    imprint(&root, &pretrain).assert_success();
    let encoder = pre.join("encoder.safetensors");
    let trained_at = std::fs::metadata(&encoder).unwrap().modified().unwrap();

    let run = |out: &Path, extra: &[&'static str]| {
        let mut a = vec!["run", "pipelines/digits.toml", "--out", arg(out)];
        a.extend(grid);
        a.extend(extra);
        imprint(&root, &a)
    };
    let resumed = run(&staged, &["--resume"]);
    resumed.assert_success();
    assert!(
        resumed.stderr.contains("reusing the pre-trained encoder"),
        "{}",
        resumed.stderr
    );
    assert_eq!(
        std::fs::metadata(&encoder).unwrap().modified().unwrap(),
        trained_at,
        "seed 0 was pre-trained again"
    );
    run(&whole, &[]).assert_success();
    assert_eq!(
        Table::read(&staged.join("results.csv")).outcomes(),
        Table::read(&whole.join("results.csv")).outcomes()
    );
}
