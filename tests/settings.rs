//! Settings once taken silently or answered in a parser's words: each is refused with one
//! `error:` line naming the setting (or made to work), exit status 1, and an earlier output
//! folder, replaced by the run with `--force`, left as it was.

use imprint_e2e::{
    arg, assert_refused, assert_refused_after_loading, edit_file, imprint, png_pipeline, run_args,
    test_dir, write_png_classes,
};
use std::path::{Path, PathBuf};

/// An earlier output folder `t/out` (with the marker every output folder holds).
fn earlier_results(t: &Path) -> PathBuf {
    let out = t.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(".imprint-output"), "an output folder of imprint\n").unwrap();
    std::fs::write(out.join("results.csv"), "strategy,test_accuracy\n").unwrap();
    out
}

/// The tiny pipeline on 4 PNGs per class, and an earlier output folder for forced runs.
fn tiny(t: &Path) -> (PathBuf, PathBuf) {
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 4);
    (pipeline, earlier_results(t))
}

/// `run PIPELINE --out OUT --force`, then `extra`.
fn forced<'a>(pipeline: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = run_args(pipeline, out, &["--force"]);
    args.extend(extra);
    args
}

#[test]
fn a_name_that_is_empty_or_a_path_is_refused_before_runs_is_touched() {
    let t: &Path = &test_dir();
    let (pipeline, _) = tiny(t);
    // Earlier runs under runs/, which a name of "" or ".." with --force would have replaced.
    let runs = t.join("runs");
    std::fs::create_dir_all(runs.join("tiny")).unwrap();
    std::fs::write(runs.join("tiny/.imprint-output"), "marker\n").unwrap();
    // An empty name is no longer refused: it stands for the file's own (pipelines/README.md).
    for name in ["\"..\"", "\"../elsewhere\"", "\"/tmp/abs\""] {
        let text = std::fs::read_to_string(&pipeline).unwrap();
        edit_file(&pipeline, "name = \"tiny\"", &format!("name = {name}"));
        let args = ["run", arg(&pipeline), "--force"];
        assert_refused(t, &args, &[arg(&pipeline), "name", "plain folder name"]);
        std::fs::write(&pipeline, text).unwrap();
    }
}

#[test]
fn settings_that_would_be_ignored_or_replace_a_section_are_refused() {
    let t: &Path = &test_dir();
    let (pipeline, out) = tiny(t);
    let cases: [(&str, &[&str]); 4] = [
        (
            "finetune={dropout=0.2}",
            &["`finetune` is a whole section", "--set finetune.KEY=VALUE"],
        ),
        (
            "finetune_by_budget.7.steps=2",
            &["no run has 7 labels per class (the budgets: 2)"],
        ),
        ("data.cache_dir=\"\"", &["data.cache_dir: empty"]),
        (
            "finetune.steps=100000000000",
            &["finetune.steps", "32 bits"],
        ),
    ];
    for (setting, needles) in cases {
        assert_refused(t, &forced(&pipeline, &out, &["--set", setting]), needles);
    }
    let epochs = ["--epochs", "100000000000"];
    let needles = ["pretrain.epochs: 100000000000", "2147483647"];
    assert_refused(t, &forced(&pipeline, &out, &epochs), &needles);
}

#[test]
fn numbers_beyond_a_pipeline_file_are_refused_before_the_data_is_read() {
    let t: &Path = &test_dir();
    let (pipeline, out) = tiny(t);
    let too_large = "9223372036854775808";
    let limit = "up to 9223372036854775807";
    for flag in ["--seeds", "--labels-per-class", "--epochs"] {
        let args = forced(&pipeline, &out, &[flag, too_large]);
        assert_refused(t, &args, &["command line", too_large, "too large", limit]);
    }
    for setting in [
        "compare.seeds=[0, 9223372036854775808]",
        "data.memory_budget_mb=18446744073709551615",
        "pretrain.architecture={ kind = \"resnet\", depth = 9223372036854775808 }",
    ] {
        let args = forced(&pipeline, &out, &["--set", setting]);
        assert_refused(t, &args, &[arg(&pipeline), setting, limit]);
    }
    // In the file itself: its line and key.
    edit_file(
        &pipeline,
        "[data]\n",
        "[data]\nmemory_budget_mb = 18446744073709551615\n",
    );
    let needles = [arg(&pipeline), "line 5", "`memory_budget_mb`", limit];
    assert_refused(t, &forced(&pipeline, &out, &[]), &needles);
}

#[test]
fn settings_in_pixels_larger_than_the_images_are_refused_naming_them() {
    let t: &Path = &test_dir();
    let (pipeline, out) = tiny(t);
    let cases: [(&str, &[&str]); 3] = [
        (
            "finetune.augment_shift=20",
            &["finetune.augment_shift: 20 px", "8x8; at most 7"],
        ),
        (
            "pretrain.noise={ kind = \"patches\", patch = 9, fraction = 0.5 }",
            &[
                "pretrain.noise.patch",
                "9 px are larger than the 8x8 images",
            ],
        ),
        (
            "finetune_by_budget.2.augment_pad_crop=8",
            &["finetune_by_budget.2.augment_pad_crop: 8 px"],
        ),
    ];
    for (setting, needles) in cases {
        let args = forced(&pipeline, &out, &["--set", setting]);
        assert_refused_after_loading(t, &args, needles);
    }
}

#[test]
fn an_empty_test_set_is_refused_not_scored() {
    let t: &Path = &test_dir();
    let (pipeline, out) = tiny(t);
    let args = forced(&pipeline, &out, &["--set", "data.test_fraction=0.01"]);
    assert_refused_after_loading(
        t,
        &args,
        &["data.test_fraction: 0.01", "holds out no test image"],
    );
}

#[test]
fn a_test_folder_settles_a_test_fraction_of_zero() {
    let t: &Path = &test_dir();
    let (pipeline, _) = tiny(t);
    let test = t.join("test");
    write_png_classes(&test, &["a", "b"], 10, 2);
    let args = [
        "--set",
        "data.test_fraction=0",
        "--test",
        arg(&test),
        "--epochs",
        "1",
    ];
    let out = t.join("with-test");
    imprint(t, &run_args(&pipeline, &out, &args)).assert_success();
    // Without --test, the file's setting is what is wrong, and it is named so.
    assert_refused(
        t,
        &run_args(&pipeline, &t.join("x"), &args[..2]),
        &[
            arg(&pipeline),
            "with the --set settings: data.test_fraction",
        ],
    );
}

#[test]
fn the_monitor_budget_is_refused_naming_the_setting_and_the_class() {
    let t: &Path = &test_dir();
    let (pipeline, out) = tiny(t);
    let args = forced(
        &pipeline,
        &out,
        &["--set", "pretrain.monitor_labels_per_class=100"],
    );
    assert_refused_after_loading(
        t,
        &args,
        &[
            "pretrain.monitor_labels_per_class: 100 per class asked for",
            "class `a` has only",
        ],
    );
}

#[test]
fn files_in_a_parsers_words_are_refused_in_one_line_naming_them() {
    let t: &Path = &test_dir();
    let (pipeline, out) = tiny(t);
    // A table given twice.
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, format!("{text}[data]\ntest_fraction = 0.5\n")).unwrap();
    let needles = [arg(&pipeline), "duplicate key `data`"];
    assert_refused(t, &forced(&pipeline, &out, &[]), &needles);
    std::fs::write(&pipeline, &text).unwrap();

    // A recorded pipeline.toml damaged before --resume.
    let run = t.join("run");
    imprint(t, &run_args(&pipeline, &run, &["--epochs", "1"])).assert_success();
    let recorded = run.join("pipeline.toml");
    let mut damaged = std::fs::read_to_string(&recorded).unwrap();
    damaged.push_str("garbage = [\n");
    std::fs::write(&recorded, damaged).unwrap();
    let resume = run_args(&pipeline, &run, &["--resume", "--epochs", "1"]);
    assert_refused_after_loading(t, &resume, &[arg(&recorded), "invalid array"]);

    // A list naming a folder.
    let data = t.join("data");
    let list = data.join("list.csv");
    std::fs::write(&list, "path,label\na/0.png,a\nb,b\n").unwrap();
    let describe = ["data", "describe", arg(&list)];
    let folder = data.join("b");
    assert_refused(
        t,
        &describe,
        &[arg(&list), "line 3", arg(&folder), "is a folder"],
    );
}

#[test]
fn import_options_are_refused_in_our_words() {
    let t: &Path = &test_dir();
    let checkpoint = t.join("net.th");
    std::fs::write(&checkpoint, "not read: the options are wrong first").unwrap();
    let out = t.join("imported");
    let import = |extra: &[&'static str]| {
        let mut args = vec!["import", arg(&checkpoint), "--arch", "resnet20"];
        args.extend(["--out", arg(&out)]);
        args.extend_from_slice(extra);
        args
    };
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--classes", "cat,cat"],
            &["--classes: `cat` is named twice"],
        ),
        (
            &["--classes", "cat,,dog"],
            &["--classes: name 2 of 3 is empty"],
        ),
        (&["--classes", ""], &["--classes: name 1 of 1 is empty"]),
        (
            &["--mean", "0,0,0", "--std", "-1,1,1"],
            &["--mean/--std", "std must be positive"],
        ),
    ];
    for (extra, needles) in cases {
        assert_refused(t, &import(extra), needles);
        assert!(!out.exists());
    }
    let split = [
        "data",
        "split",
        arg(t),
        "--test-fraction",
        "-0.5",
        "--out",
        arg(&out),
    ];
    assert_refused(t, &split, &["--test-fraction -0.5: must be in (0, 1)"]);
}
