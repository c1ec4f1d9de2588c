//! Writes every kind of report output for made-up runs into a directory, to eyeball the figures:
//! `cargo run -p imprint-report --example sample_figures -- /tmp/report-samples`

use imprint_report::*;
use std::path::PathBuf;

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "report-samples".into()),
    );
    std::fs::create_dir_all(&dir).expect("create output directory");

    let strategies = [
        ("scratch", 0.0),
        ("linear-probe", 0.06),
        ("finetune-all", 0.09),
        ("finetune-top", 0.04),
    ];
    let mut runs = Vec::new();
    for budget in [1usize, 5, 10, 50, 100] {
        let base = 0.95 - 0.55 / (budget as f64).sqrt();
        for seed in 0..5u64 {
            let noise = ((seed * 7 + budget as u64 * 3) % 11) as f64 / 11.0 - 0.5;
            for (k, (name, boost)) in strategies.into_iter().enumerate() {
                let own = ((seed * 5 + k as u64 * 3 + budget as u64) % 7) as f64 / 7.0 - 0.5;
                let shrink = boost / (budget as f64).powf(0.4);
                let acc = (base + shrink + 0.04 * noise + 0.03 * own).clamp(0.0, 1.0);
                runs.push(RunRecord {
                    strategy: name.to_string(),
                    labels_per_class: budget,
                    seed,
                    test_accuracy: acc,
                    macro_f1: acc - 0.02,
                    pretrain_seconds: 40.0,
                    finetune_seconds: 2.0 + budget as f64 * 0.1,
                    epochs_run: 50,
                });
            }
        }
    }
    write_results_csv(&dir.join("results.csv"), &runs)?;
    let rows = summarize(&runs, "scratch");
    write_summary_csv(&dir.join("summary.csv"), &rows)?;
    let md = render_markdown(
        "Autoencoder pre-training vs training from scratch",
        "Synthetic numbers for a layout check: 5 seeds per budget.",
        &rows,
    );
    imprint_fs::write_atomic(dir.join("report.md"), md.as_bytes())?;
    print!("{}", render_terminal_table(&rows));
    plot_accuracy(
        &dir.join("accuracy.png"),
        "Test accuracy vs labels per class",
        &rows,
        10,
    )?;
    let linear: Vec<SummaryRow> = rows
        .iter()
        .filter(|r| r.labels_per_class <= 5)
        .cloned()
        .collect();
    plot_accuracy(&dir.join("accuracy-linear.png"), "Few labels", &linear, 10)?;

    let train: Vec<(f64, f64)> = (1..=40)
        .map(|e| (e as f64, 0.02 + 0.3 / e as f64))
        .collect();
    let held: Vec<(f64, f64)> = (1..=40)
        .map(|e| (e as f64, 0.03 + 0.32 / e as f64 + 0.0004 * e as f64))
        .collect();
    plot_curves(
        &dir.join("pretrain-loss.png"),
        "Autoencoder pre-training",
        "reconstruction MSE",
        &[("train".to_string(), train), ("held-out".to_string(), held)],
    )?;

    let images: Vec<Vec<f32>> = (0..6)
        .map(|k| {
            (0..64)
                .map(|i| ((i % 8 + i / 8 + k) % 8) as f32 / 7.0)
                .collect()
        })
        .collect();
    let recon: Vec<Vec<f32>> = images
        .iter()
        .map(|im| im.iter().map(|v| 0.8 * v + 0.1).collect())
        .collect();
    image_grid(
        &dir.join("reconstructions.png"),
        1,
        8,
        8,
        &[
            images.iter().map(Vec::as_slice).collect(),
            recon.iter().map(Vec::as_slice).collect(),
        ],
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}
