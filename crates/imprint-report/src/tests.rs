use crate::plots::PALETTE;
use crate::stats::t_critical_975;
use std::collections::BTreeSet;

use super::*;

fn run(strategy: &str, labels_per_class: usize, seed: u64, acc: f64, f1: f64) -> RunRecord {
    RunRecord {
        strategy: strategy.to_string(),
        labels_per_class,
        seed,
        test_accuracy: acc,
        macro_f1: f1,
        pretrain_seconds: 12.5,
        finetune_seconds: 3.25,
        epochs_run: 30,
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn sample_runs() -> Vec<RunRecord> {
    vec![
        // budget 5 listed first, and "ae" before "scratch", to check the ordering rules
        run("ae", 5, 1, 0.51, 0.5),
        run("ae", 5, 2, 0.62, 0.5),
        run("ae", 5, 3, 0.73, 0.5),
        run("ae", 5, 4, 0.99, 0.5), // seed 4 has no scratch run: not paired
        run("scratch", 5, 1, 0.50, 0.4),
        run("scratch", 5, 2, 0.60, 0.5),
        run("scratch", 5, 3, 0.70, 0.6),
        run("linear", 5, 9, 0.80, 0.7), // no shared seed with scratch
        run("scratch", 1, 7, 0.30, 0.2),
        run("ae", 1, 7, 0.45, 0.3),
    ]
}

#[test]
fn summarize_groups_and_statistics() {
    let rows = summarize(&sample_runs(), "scratch");
    let keys: Vec<(usize, &str)> = rows
        .iter()
        .map(|r| (r.labels_per_class, r.strategy.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            (1, "ae"),
            (1, "scratch"),
            (5, "ae"),
            (5, "scratch"),
            (5, "linear")
        ]
    );

    // Expected values computed with Python's statistics module:
    //   mean([.51,.62,.73,.99]) = 0.7125, stdev(...) = 0.2056493779875511
    //   mean([.5,.6,.7]) = 0.6, stdev(...) = 0.1
    //   paired diffs (seeds 1..3) = [.01,.02,.03]: mean 0.02, stdev 0.01,
    //   half width = 4.302652730 * 0.01 / sqrt(3) = 0.024841377118949782
    let ae5 = &rows[2];
    assert_eq!(ae5.runs, 4);
    assert!(close(ae5.mean_accuracy, 0.7125, 1e-12));
    assert!(close(ae5.std_accuracy, 0.2056493779875511, 1e-12));
    assert!(close(ae5.mean_macro_f1, 0.5, 1e-12));
    let g = ae5.gain_over_scratch.as_ref().expect("ae has a gain");
    assert_eq!(g.pairs, 3, "seed 4 is unpaired and must be ignored");
    assert!(close(g.mean, 0.02, 1e-12));
    assert!(close(g.ci_low, 0.02 - 0.024841377118949782, 1e-9));
    assert!(close(g.ci_high, 0.02 + 0.024841377118949782, 1e-9));
    assert_eq!(g.verdict(), "unclear");

    let scratch5 = &rows[3];
    assert_eq!(scratch5.runs, 3);
    assert!(close(scratch5.mean_accuracy, 0.6, 1e-12));
    assert!(close(scratch5.std_accuracy, 0.1, 1e-12));
    assert!(close(scratch5.mean_macro_f1, 0.5, 1e-12));
    assert_eq!(scratch5.gain_over_scratch, None, "baseline has no gain");

    assert_eq!(rows[4].gain_over_scratch, None, "no shared seed, no gain");

    // One run: std 0; one pair: unbounded CI.
    let ae1 = &rows[0];
    assert_eq!(ae1.std_accuracy, 0.0);
    let g1 = ae1.gain_over_scratch.as_ref().unwrap();
    assert_eq!(g1.pairs, 1);
    assert!(close(g1.mean, 0.15, 1e-12));
    assert_eq!(g1.ci_low, f64::NEG_INFINITY);
    assert_eq!(g1.ci_high, f64::INFINITY);
    assert_eq!(g1.verdict(), "unclear");
}

#[test]
fn no_baseline_runs_means_no_gain() {
    let rows = summarize(&sample_runs(), "does-not-exist");
    assert!(rows.iter().all(|r| r.gain_over_scratch.is_none()));
    assert!(summarize(&[], "scratch").is_empty());
}

#[test]
fn ci_for_known_differences() {
    // diffs [1, 2, 3]: mean 2, sd 1, t_{0.975,2} = 4.303 -> 2 ± 4.303/sqrt(3) = 2 ± 2.484
    let runs: Vec<RunRecord> = (1..=3)
        .flat_map(|s| {
            [
                run("scratch", 10, s, 0.0, 0.0),
                run("ft", 10, s, s as f64, 0.0),
            ]
        })
        .collect();
    let rows = summarize(&runs, "scratch");
    let g = rows[1].gain_over_scratch.as_ref().unwrap();
    assert_eq!(rows[1].strategy, "ft");
    assert!(close(g.mean, 2.0, 1e-12));
    assert!(close(g.ci_low, 2.0 - 2.484, 1e-3), "{}", g.ci_low);
    assert!(close(g.ci_high, 2.0 + 2.484, 1e-3), "{}", g.ci_high);
    assert_eq!(g.verdict(), "unclear");
}

#[test]
fn repeated_seed_runs_are_averaged_before_pairing() {
    let runs = [
        run("scratch", 2, 1, 0.5, 0.0),
        run("ft", 2, 1, 0.6, 0.0),
        run("ft", 2, 1, 0.8, 0.0),
    ];
    let rows = summarize(&runs, "scratch");
    let g = rows[1].gain_over_scratch.as_ref().unwrap();
    assert_eq!(g.pairs, 1);
    assert!(close(g.mean, 0.2, 1e-12));
}

#[test]
fn t_critical_values() {
    // Reference quantiles of Student's t (two-sided 95%) from standard tables.
    for (df, t) in [
        (1, 12.706),
        (2, 4.303),
        (4, 2.776),
        (10, 2.228),
        (30, 2.042),
        (31, 2.0395),
        (40, 2.0211),
        (60, 2.0003),
        (120, 1.9799),
    ] {
        assert!(
            close(t_critical_975(df), t, 6e-4),
            "df {df}: {}",
            t_critical_975(df)
        );
    }
    assert!(close(t_critical_975(1_000_000), 1.959964, 1e-5));
    assert_eq!(t_critical_975(0), f64::INFINITY);
}

#[test]
fn results_csv_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.csv");
    let mut runs = sample_runs();
    runs[0].strategy = "ae, frozen \"encoder\"".to_string();
    runs[1].test_accuracy = 0.1 + 0.2;
    runs[2].pretrain_seconds = 1e-300;
    runs[3].seed = u64::MAX;
    write_results_csv(&path, &runs).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        "strategy,labels_per_class,seed,test_accuracy,macro_f1,pretrain_seconds,finetune_seconds,epochs_run"
    );
    assert_eq!(read_results_csv(&path).unwrap(), runs);

    write_results_csv(&path, &[]).unwrap();
    assert_eq!(read_results_csv(&path).unwrap(), Vec::<RunRecord>::new());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp files left"
    );
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-results.csv");
    let err = read_results_csv(&missing).unwrap_err().to_string();
    assert!(err.contains("missing-results.csv"), "{err}");
    let bad = dir.path().join("no-such-dir").join("table.csv");
    let err = write_table_csv(&bad, &["a"], &[vec![1.0]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("table.csv"), "{err}");
    let short = dir.path().join("short.csv");
    let err = write_table_csv(&short, &["a", "b"], &[vec![1.0]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("short.csv") && err.contains("row 0"), "{err}");
    assert!(!short.exists());
}

#[test]
fn summary_csv_flat_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("summary.csv");
    let rows = summarize(&sample_runs(), "scratch");
    write_summary_csv(&path, &rows).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "strategy,labels_per_class,runs,mean_accuracy,std_accuracy,mean_macro_f1,gain_mean,gain_ci_low,gain_ci_high,gain_pairs"
    );
    assert_eq!(lines.len(), 1 + rows.len());
    assert_eq!(lines[1], "ae,1,1,0.45,0,0.3,0.15000000000000002,-inf,inf,1");
    assert_eq!(lines[2], "scratch,1,1,0.3,0,0.2,,,,");
}

#[test]
fn table_csv_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.csv");
    write_table_csv(
        &path,
        &["epoch", "train_loss"],
        &[vec![1.0, 0.5], vec![2.0, 0.25]],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "epoch,train_loss\n1,0.5\n2,0.25\n"
    );
}

fn gain(mean: f64, lo: f64, hi: f64, pairs: usize) -> Option<Gain> {
    Some(Gain {
        mean,
        ci_low: lo,
        ci_high: hi,
        pairs,
    })
}

fn row(strategy: &str, budget: usize, acc: f64, g: Option<Gain>) -> SummaryRow {
    SummaryRow {
        strategy: strategy.to_string(),
        labels_per_class: budget,
        runs: 5,
        mean_accuracy: acc,
        std_accuracy: 0.021,
        mean_macro_f1: acc - 0.01,
        gain_over_scratch: g,
    }
}

fn report_rows() -> Vec<SummaryRow> {
    vec![
        row("scratch", 1, 0.40, None),
        row("finetune", 1, 0.55, gain(0.15, 0.10, 0.20, 5)),
        row("frozen", 1, 0.38, gain(-0.02, -0.05, -0.01, 5)),
        row("scratch", 10, 0.80, None),
        row("finetune", 10, 0.79, gain(-0.01, -0.03, 0.01, 5)),
        row(
            "frozen",
            10,
            0.70,
            gain(-0.1, f64::NEG_INFINITY, f64::INFINITY, 1),
        ),
        row("scratch", 100, 0.95, None),
        row("finetune", 100, 0.96, gain(0.01, 0.002, 0.018, 5)),
        row("frozen", 100, 0.85, gain(-0.1, -0.12, -0.08, 5)),
    ]
}

#[test]
fn markdown_has_table_and_verdicts() {
    let md = render_markdown("Transfer results", "Digits 8x8, 5 seeds.", &report_rows());
    assert!(md.starts_with("# Transfer results\n\nDigits 8x8, 5 seeds.\n"));
    assert!(md.contains(
        "| labels/class | strategy | accuracy % (mean ± std) | gain vs scratch (points, 95% CI) | verdict |"
    ));
    assert!(md.contains("| 1 | finetune | 55.0 ± 2.1 | +15.0 [+10.0, +20.0], 5 pairs | helps |"));
    assert!(md.contains("| 1 | frozen | 38.0 ± 2.1 | -2.0 [-5.0, -1.0], 5 pairs | hurts |"));
    assert!(md.contains("| 10 | finetune | 79.0 ± 2.1 | -1.0 [-3.0, +1.0], 5 pairs | unclear |"));
    assert!(md.contains("| 10 | frozen | 70.0 ± 2.1 | -10.0 [n/a], 1 pair | unclear |"));
    assert!(md.contains("| 1 | scratch | 40.0 ± 2.1 | — | — |"));
    assert!(md.contains("- 1 labels/class: best is **finetune** at 55.0%"));
    assert!(md.contains("- 10 labels/class: best is **scratch** at 80.0%"));
    assert!(md.contains("- 100 labels/class: best is **finetune** at 96.0%"));
}

#[test]
fn terminal_table_is_aligned() {
    let text = render_terminal_table(&report_rows());
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 + report_rows().len());
    assert!(lines[0].starts_with("labels/class  strategy"));
    // Right-aligned accuracy column: every "±" sits in the same column.
    let col = |l: &str| l.chars().position(|c| c == '±');
    let first = col(lines[2]).unwrap();
    assert!(lines[2..].iter().all(|l| col(l) == Some(first)));
    assert!(lines[3].contains("55.0 ± 2.1") && lines[3].contains("helps"));
    assert!(lines[7].contains("n/a") && lines[7].contains("unclear"));
}

fn decode(path: &Path) -> image::RgbImage {
    let img = image::open(path).expect("valid PNG");
    img.to_rgb8()
}

fn distinct_colours(img: &image::RgbImage) -> usize {
    img.pixels().map(|p| p.0).collect::<BTreeSet<_>>().len()
}

#[test]
fn accuracy_plot_is_a_nonblank_png() {
    let dir = tempfile::tempdir().unwrap();
    for (name, rows) in [
        ("log.png", report_rows()),
        (
            "linear.png",
            report_rows()
                .into_iter()
                .filter(|r| r.labels_per_class < 100)
                .collect(),
        ),
    ] {
        let path = dir.path().join(name);
        plot_accuracy(&path, "Test accuracy vs labels per class", &rows, 10).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), PLOT_SIZE);
        assert!(distinct_colours(&img) > 20, "{name} looks blank");
        let first = PALETTE[0];
        assert!(
            img.pixels().any(|p| p.0 == [first.0, first.1, first.2]),
            "{name}: first strategy's line is missing"
        );
    }
    let err = plot_accuracy(&dir.path().join("empty.png"), "t", &[], 2).unwrap_err();
    assert!(err.to_string().contains("empty.png"));
}

#[test]
fn curves_plot_draws_text_with_the_embedded_font() {
    let dir = tempfile::tempdir().unwrap();
    let series = vec![
        (
            "train".to_string(),
            (1..=20)
                .map(|e| (e as f64, 1.0 / e as f64))
                .collect::<Vec<_>>(),
        ),
        (
            "held-out".to_string(),
            (1..=20)
                .map(|e| (e as f64, 1.2 / e as f64 + 0.05))
                .collect(),
        ),
    ];
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    plot_curves(&a, "Pre-training loss", "MSE", &series).unwrap();
    plot_curves(&b, "Pre-training loss!", "MSE", &series).unwrap();
    let (ia, ib) = (decode(&a), decode(&b));
    assert_eq!(ia.dimensions(), PLOT_SIZE);
    assert!(distinct_colours(&ia) > 20);
    // Only the title differs, so the pixels differ only if text is actually rendered.
    assert_ne!(ia, ib, "title text was not drawn");
}

#[test]
fn image_grid_exact_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.png");
    let black = vec![0.0f32; 64];
    let white = vec![1.0f32; 64];
    let mut ramp = vec![0.0f32; 64];
    ramp[63] = 0.5; // bottom-right source pixel
    let rows = vec![
        vec![black.as_slice(), white.as_slice(), ramp.as_slice()],
        vec![ramp.as_slice(), black.as_slice()],
    ];
    image_grid(&path, 1, 8, 8, &rows).unwrap();
    let img = decode(&path);
    // 8x8 images: scale ceil(56 / 8) = 7, cells 56 px; 3 columns, 2 rows, 2 px gaps incl. border.
    assert_eq!(grid_scale(8, 8), 7);
    assert_eq!(img.dimensions(), (3 * 56 + 4 * 2, 2 * 56 + 3 * 2));
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255], "border");
    assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0], "first cell, black");
    assert_eq!(
        img.get_pixel(57, 57).0,
        [0, 0, 0],
        "last pixel of first cell"
    );
    assert_eq!(img.get_pixel(58, 10).0, [255, 255, 255], "gap");
    // ramp at row 0, column 2: its bottom-right 7x7 block is 0.5 -> 128.
    let (x0, y0) = (2 + 2 * 58, 2);
    assert_eq!(img.get_pixel(x0 + 49, y0 + 49).0, [128, 128, 128]);
    assert_eq!(img.get_pixel(x0 + 55, y0 + 55).0, [128, 128, 128]);
    assert_eq!(img.get_pixel(x0 + 48, y0 + 55).0, [0, 0, 0]);
    // row 1 has only two images: the third cell stays background.
    assert_eq!(img.get_pixel(x0 + 10, 60 + 10).0, [255, 255, 255]);
}

#[test]
fn image_grid_rgb_and_shape_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rgb.png");
    // 3x20x28 image: red plane 1, green 0, blue 0.5 (values outside [0,1] are clamped).
    let (h, w) = (20, 28);
    let mut img = vec![1.5f32; h * w];
    img.extend(vec![-1.0f32; h * w]);
    img.extend(vec![0.5f32; h * w]);
    image_grid(&path, 3, h, w, &[vec![img.as_slice()]]).unwrap();
    let out = decode(&path);
    // scale ceil(56 / 20) = 3 -> cell 84 x 60
    assert_eq!(grid_scale(h, w), 3);
    assert_eq!(out.dimensions(), (84 + 4, 60 + 4));
    assert_eq!(out.get_pixel(40, 30).0, [255, 0, 128]);

    let err = image_grid(&path, 3, h, w, &[vec![&img[1..]]])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rgb.png") && err.contains("row 0, column 0"),
        "{err}"
    );
    assert!(image_grid(&path, 2, h, w, &[vec![img.as_slice()]]).is_err());
    assert!(image_grid(&path, 3, h, w, &[]).is_err());
}
