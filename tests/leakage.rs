//! What would fool a comparison is refused: the same image twice in the labeled source (on
//! both sides of the test split), test images among the training ones, and one image under two
//! labels, also when the copy was re-encoded; one class is no classification.

use imprint_e2e::{
    arg, assert_refused, imprint, png_pipeline, save_photo, test_dir, write_grey_png,
    write_photo_classes, write_pipeline, Lcg, Table, Tiny, SIDE,
};
use std::path::{Path, PathBuf};

/// `n` PNGs of pure noise, half labeled `a` and half `b` at random, and a CSV listing each
/// `times` times; returns the CSV.
fn noise_list(t: &Path, n: usize, times: usize) -> PathBuf {
    let mut rng = Lcg::new(7);
    let mut rows = String::from("path,label\n");
    let mut lines = Vec::new();
    for i in 0..n {
        let pixels = (0..SIDE * SIDE).map(|_| rng.next_u8(255)).collect();
        write_grey_png(&t.join(format!("noise/{i}.png")), SIDE, SIDE, pixels);
        let label = if rng.next_u8(2) == 0 { "a" } else { "b" };
        lines.push(format!("noise/{i}.png,{label}\n"));
    }
    for _ in 0..times {
        for l in &lines {
            rows.push_str(l);
        }
    }
    let csv = t.join("list.csv");
    std::fs::write(&csv, rows).unwrap();
    csv
}

fn run_args<'a>(pipeline: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    run_k(pipeline, out, "8", extra)
}

fn run_k<'a>(pipeline: &'a Path, out: &'a Path, k: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let grid = [
        "--seeds",
        "0,1,2",
        "--labels-per-class",
        k,
        "--strategies",
        "scratch",
    ];
    let mut args = imprint_e2e::run_args(pipeline, out, &grid);
    args.extend_from_slice(extra);
    args
}

/// Asserts that the report in `out` says `needle`.
fn assert_reported(out: &Path, needle: &str) {
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains(needle), "no {needle:?} in\n{report}");
}

/// Pure noise listed twice: every duplicate pair may straddle the test split, and a net that
/// memorises the training copy "recognises" its twin. Refused by default; collapsed to one copy
/// each, the noise scores at chance.
#[test]
fn duplicated_noise_is_refused_or_collapsed_to_chance() {
    let t: &Path = &test_dir();
    let csv = noise_list(t, 60, 2);
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&csv));
    assert_refused(
        t,
        &run_args(&pipeline, &t.join("out"), &[]),
        &[
            arg(&csv),
            "are the same image",
            "60 images appear more than once",
            "collapse",
        ],
    );

    let out = t.join("collapsed");
    let collapse = ["--set", "data.duplicates=\"collapse\""];
    imprint(t, &run_args(&pipeline, &out, &collapse))
        .assert_success()
        .assert_stderr_has(&["60 duplicate labeled images dropped"]);
    assert_reported(&out, "60 duplicate labeled images dropped");
    let acc = Table::read(&out.join("results.csv")).numbers("test_accuracy");
    let mean = acc.iter().sum::<f64>() / acc.len() as f64;
    assert!(
        (0.25..0.75).contains(&mean),
        "noise scored {mean} on average over seeds 0-2: {acc:?}"
    );
}

/// `data.test` naming the labeled source: every test image was trained on.
#[test]
fn test_set_among_the_training_images_is_refused() {
    let t: &Path = &test_dir();
    let csv = noise_list(t, 20, 1);
    let pipeline = write_pipeline(
        &t.join("p.toml"),
        &Tiny {
            test: Some(&csv),
            ..Tiny::on(&csv)
        },
    );
    imprint(t, &run_args(&pipeline, &t.join("out"), &[])).assert_error(&[
        arg(&csv),
        "is also the training image",
        "20 test images",
        "allow_test_overlap",
    ]);
    // Allowed on request, and said in the report.
    let out = t.join("allowed");
    imprint(
        t,
        &run_k(
            &pipeline,
            &out,
            "2",
            &["--set", "data.allow_test_overlap=true"],
        ),
    )
    .assert_success();
    assert_reported(&out, "20 test images also among the training images");
}

/// One file under two labels, in a CSV and through a class folder that links to another.
#[test]
fn one_image_under_two_labels_is_refused() {
    let t: &Path = &test_dir();
    let csv = noise_list(t, 12, 1);
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("noise/3.png,c\nnoise/4.png,c\n");
    std::fs::write(&csv, text).unwrap();
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&csv));
    imprint(t, &run_args(&pipeline, &t.join("out"), &[])).assert_error(&[
        arg(&csv),
        "noise/3.png (label",
        "are the same image",
    ]);

    let folders = t.join("folders");
    imprint_e2e::write_png_classes(&folders, &["a"], 0, 6);
    std::os::unix::fs::symlink(folders.join("a"), folders.join("b")).unwrap();
    let pipeline = write_pipeline(&t.join("q.toml"), &Tiny::on(&folders));
    imprint(t, &run_args(&pipeline, &t.join("out2"), &[])).assert_error(&[
        arg(&folders),
        "a/0.png (label a)",
        "b/0.png (label b)",
    ]);
}

#[test]
fn a_single_class_is_refused() {
    let t: &Path = &test_dir();
    let (folders, pipeline) = png_pipeline(t, &["only"], 10);
    imprint(t, &run_args(&pipeline, &t.join("out"), &[])).assert_error(&[
        arg(&folders),
        "has one class (only)",
        "at least two",
    ]);
}

/// A JPEG re-encode (quality 90) of `png`, written at `jpg`.
fn re_encode(png: &Path, jpg: &Path) {
    let img = image::open(png).unwrap().to_rgb8();
    save_photo(jpg, &img, 90);
}

/// A labeled folder holding a photo and its JPEG re-encode (pixels no longer equal): refused
/// naming both and their distance; collapsed to one on request; passed with the check off.
#[test]
fn a_photo_and_its_re_encoded_copy_among_the_labeled_images_are_refused() {
    let t: &Path = &test_dir();
    let data = t.join("data");
    write_photo_classes(&data, &["a", "b"], 10, 0);
    re_encode(&data.join("a/3.png"), &data.join("a/3-copy.jpg"));
    let pipeline = write_pipeline(&t.join("p.toml"), &Tiny::on(&data));
    let message = imprint(t, &run_k(&pipeline, &t.join("out"), "2", &[])).assert_error(&[
        arg(&data),
        "a/3-copy.jpg (label a)",
        "a/3.png (label a) are near-duplicates",
        "bits apart",
        "1 such pairs",
        "data.near_duplicate_distance",
    ]);
    assert!(!t.join("out/results.csv").exists(), "{message}");

    let out = t.join("collapsed");
    let collapse = ["--set", "data.duplicates=\"collapse\""];
    imprint(t, &run_k(&pipeline, &out, "2", &collapse))
        .assert_success()
        .assert_stderr_has(&["1 near-duplicate labeled images dropped"]);
    assert_reported(&out, "1 near-duplicate labeled images dropped");

    let off = ["--set", "data.near_duplicate_distance=\"off\""];
    imprint(t, &run_k(&pipeline, &t.join("off"), "2", &off)).assert_success();
}

/// Test photos that are re-encodes of labeled ones, and an unlabeled folder of re-encodes of
/// the test photos: each refused, naming the pair.
#[test]
fn test_photos_re_encoded_from_training_photos_are_refused() {
    let t: &Path = &test_dir();
    let labeled = t.join("labeled");
    let train = write_photo_classes(&labeled, &["a", "b"], 8, 0);
    let test = t.join("test");
    let unseen = write_photo_classes(&test, &["a", "b"], 4, 100);
    // Test photo b/1 is a copy of labeled photo a/5 (under another label, as a leak may be).
    std::fs::remove_file(&unseen[5]).unwrap();
    re_encode(&train[5], &test.join("b/1.jpg"));
    let pipeline = write_pipeline(
        &t.join("p.toml"),
        &Tiny {
            test: Some(&test),
            ..Tiny::on(&labeled)
        },
    );
    imprint(t, &run_k(&pipeline, &t.join("out"), "2", &[])).assert_error(&[
        arg(&test),
        "test image",
        "b/1.jpg is a near-duplicate of the training image",
        "a/5.png",
        "1 test images in all",
        "allow_test_overlap",
    ]);
    let out = t.join("allowed");
    imprint(
        t,
        &run_k(
            &pipeline,
            &out,
            "2",
            &["--set", "data.allow_test_overlap=true"],
        ),
    )
    .assert_success();
    assert_reported(
        &out,
        "1 test images also among the training images or near-duplicates",
    );

    // Pre-training on copies of the test photos.
    let t2 = t.join("second");
    let clean_test = t2.join("test");
    let tests = write_photo_classes(&clean_test, &["a", "b"], 4, 200);
    let unlabeled = t2.join("unlabeled");
    write_photo_classes(&unlabeled, &["u"], 12, 300);
    re_encode(&tests[6], &unlabeled.join("u/copy.jpg"));
    let pipeline = write_pipeline(
        &t2.join("p.toml"),
        &Tiny {
            unlabeled: &unlabeled,
            test: Some(&clean_test),
            ..Tiny::on(&labeled)
        },
    );
    imprint(t, &run_k(&pipeline, &t2.join("out"), "2", &[])).assert_error(&[
        arg(&clean_test),
        "b/2.png is a near-duplicate of the training image",
        "u/copy.jpg",
    ]);
}

#[test]
fn near_duplicate_distance_is_checked() {
    let t: &Path = &test_dir();
    let (_, pipeline) = png_pipeline(t, &["a", "b"], 6);
    for bad in ["17", "-1", "\"of\"", "2.5"] {
        let set = format!("data.near_duplicate_distance={bad}");
        imprint(t, &run_args(&pipeline, &t.join("out"), &["--set", &set]))
            .assert_error(&["near_duplicate_distance", "from 0 to 16 or \"off\""]);
    }
}
