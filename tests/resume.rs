//! `run --resume` after a hard kill completes the comparison with the same results as an
//! uninterrupted run, without repeating finished runs or pre-trainings.

use imprint_e2e::{
    arg, assert_same_file, digits_run_args, imprint, imprint_bin, modified, read_json, test_dir,
    words, workspace_root, Outcome, Table,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small comparison on the shipped digits: 2 seeds x 2 strategies, pre-training per seed
/// long enough that a kill after the first result lands mid-run.
const FLAGS: &str = "--threads 2 --epochs 20 --steps 40 --seeds 0,1 --labels-per-class 2 \
                     --strategies scratch,probe-then-full";

fn args_with<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = digits_run_args(out, FLAGS);
    args.extend(extra);
    args
}

/// `imprint ARGS` in the workspace root, where `pipelines/digits.toml` is found.
fn in_workspace(args: &[&str]) -> Outcome {
    imprint(&workspace_root(), args)
}

/// Starts `imprint ARGS` in the workspace root (with a cache folder in `t`), waits until
/// `ready()` holds and then `settle`, and kills it with SIGKILL; fails if it ends before, or
/// nothing is ready within 5 minutes. `what` names what it waits for.
fn kill_when(t: &Path, args: &[&str], what: &str, settle: Duration, ready: impl Fn() -> bool) {
    let mut child = Command::new(imprint_bin())
        .current_dir(workspace_root())
        .args(args)
        .env("IMPRINT_CACHE_DIR", t.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start imprint");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("imprint ended ({status}) before writing {what}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} not written within 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(settle);
    child.kill().expect("SIGKILL imprint");
    child.wait().unwrap();
}

/// Rows of results.csv, 0 while it does not exist.
fn rows(results: &Path) -> usize {
    std::fs::read_to_string(results).map_or(0, |t| t.lines().count().saturating_sub(1))
}

#[test]
fn killed_run_resumes_to_the_uninterrupted_result() {
    let t: &Path = &test_dir();
    let (killed, whole) = (t.join("killed"), t.join("whole"));

    let results = killed.join("results.csv");
    let first_run = args_with(&killed, &[]);
    kill_when(t, &first_run, "a result", Duration::ZERO, || {
        rows(&results) > 0
    });
    let done = rows(&results);
    assert!(done < 4, "the run finished before the kill ({done} rows)");
    let encoder = killed.join("pretrain/seed-0/encoder.safetensors");
    let trained_at = modified(&encoder);

    // a changed setting is refused, naming it, and leaves the folder as it was
    let refused = in_workspace(&args_with(&killed, &["--resume", "--max-unlabeled", "500"]));
    refused.assert_error_after_progress(&["cannot resume", "data.max_unlabeled", "500"]);
    assert_eq!(rows(&results), done);

    in_workspace(&args_with(&killed, &["--resume"])).assert_success();
    in_workspace(&args_with(&whole, &[])).assert_success();

    assert_eq!(
        Table::read(&results).outcomes(),
        Table::read(&whole.join("results.csv")).outcomes()
    );
    assert_eq!(
        modified(&encoder),
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
    assert_same_file(&killed, &whole, "summary.csv");

    // a finished comparison grows by a strategy: only its runs are new, the others are kept
    let before = Table::read(&results).outcomes();
    let mut extended = args_with(&killed, &["--resume"]);
    let strategies = extended.iter().position(|&a| a == "--strategies").unwrap() + 1;
    extended[strategies] = "scratch,probe-then-full,probe";
    in_workspace(&extended).assert_success();
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

/// `pretrain --pipeline pipelines/digits.toml --threads 2 --epochs 400 --out OUT`, then `extra`.
fn pretrain_400<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> =
        words("pretrain --pipeline pipelines/digits.toml --threads 2 --epochs 400 --out");
    args.push(arg(out));
    args.extend(extra);
    args
}

/// `pretrain --resume` after a hard kill mid-way continues from the last epoch checkpoint (not
/// from scratch) and writes the weights and losses of an uninterrupted pre-training.
#[test]
fn killed_pretraining_resumes_from_its_epoch_checkpoint() {
    let t: &Path = &test_dir();
    let (killed, whole) = (t.join("killed"), t.join("whole"));
    let checkpoint = killed.join("checkpoint.safetensors");
    let settle = Duration::from_millis(200);
    let first_run = pretrain_400(&killed, &[]);
    kill_when(t, &first_run, "the first checkpoint", settle, || {
        checkpoint.exists()
    });
    assert!(
        !killed.join("encoder.json").exists(),
        "the pre-training finished before the kill"
    );
    assert!(checkpoint.exists());

    let outcome = in_workspace(&pretrain_400(&killed, &["--resume"]));
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
    in_workspace(&pretrain_400(&whole, &[])).assert_success();

    for file in ["encoder.safetensors", "decoder.safetensors"] {
        assert_same_file(&killed, &whole, file);
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
    let t: &Path = &test_dir();
    let (staged, whole) = (t.join("staged"), t.join("whole"));
    let pre = staged.join("pretrain/seed-0");
    let grid = "--threads 2 --epochs 3 --steps 20 --seeds 0 --labels-per-class 2 \
                --strategies scratch,probe-then-full";
    let mut pretrain =
        words("pretrain --pipeline pipelines/digits.toml --threads 2 --epochs 3 --out");
    pretrain.push(arg(&pre));
    in_workspace(&pretrain).assert_success();
    let encoder = pre.join("encoder.safetensors");
    let trained_at = modified(&encoder);

    let run = |out: &Path, extra: &[&'static str]| {
        let mut a = digits_run_args(out, grid);
        a.extend(extra);
        in_workspace(&a)
    };
    run(&staged, &["--resume"])
        .assert_success()
        .assert_stderr_has(&["reusing the pre-trained encoder"]);
    assert_eq!(
        modified(&encoder),
        trained_at,
        "seed 0 was pre-trained again"
    );
    run(&whole, &[]).assert_success();
    assert_eq!(
        Table::read(&staged.join("results.csv")).outcomes(),
        Table::read(&whole.join("results.csv")).outcomes()
    );
}
