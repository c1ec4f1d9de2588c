//! `imprint init`: a commented pipeline file for a folder of images, the built-in settings
//! (`defaults.toml`) fitted to what the folder holds and to the time a CPU takes.

use crate::config::DEFAULTS_TOML;
use crate::{PipelineError, Result};
use imprint_data::Survey;
use std::fmt::Write as _;
use std::path::Path;

/// Photos a second a CPU core pre-trains the default ResNet-20 on at 32x32, two views each:
/// 40,000 photos took about 96 s an epoch on 2 cores (README, CIFAR-10). A rough figure, for
/// sizing only; cost grows with the pixels.
const PHOTOS_PER_CORE_SECOND: f64 = 200.0;

/// The pre-training time the written recipe aims at.
const PRETRAIN_SECONDS: f64 = 30.0 * 60.0;

/// Side the default network sees; photos are brought to it.
const SIDE: u32 = 32;

/// Share of each class held out as the test set (the built-in `data.test_fraction`).
const TEST_FRACTION: f64 = 0.2;

/// The pipeline text for the folder `dir` (given as the user named it) that `survey` describes,
/// sized for `cores` CPU cores.
pub fn init_text(dir: &Path, survey: &Survey, cores: usize) -> Result<String> {
    let shown = dir.display().to_string();
    if shown.contains(['"', '\\', '\n']) {
        return Err(PipelineError::Input {
            path: shown,
            message: "a folder name with quotes, backslashes or line breaks cannot be written \
                      into a pipeline file; rename or link it"
                .into(),
        });
    }
    let n = survey.images();
    let labeled = !survey.classes.is_empty();
    let side = median_side(survey);
    let input = if side <= 40 { side.max(8) } else { SIDE };
    let rate = PHOTOS_PER_CORE_SECOND * cores.max(1) as f64 * f64::from(SIDE * SIDE)
        / f64::from(input * input);
    let train = if labeled {
        (n as f64 * (1.0 - TEST_FRACTION)).round() as usize
    } else {
        n
    };
    let epoch_seconds = train as f64 / rate;
    let epochs = ((PRETRAIN_SECONDS / epoch_seconds.max(1e-9)).round() as usize).clamp(5, 100);
    let batch = if train >= 2048 {
        256
    } else {
        (train / 8).max(32).next_power_of_two().min(256)
    };
    let smallest = survey.classes.iter().map(|(_, c)| *c).min().unwrap_or(0);
    let per_class_pool = (smallest as f64 * (1.0 - TEST_FRACTION)).floor() as usize;
    let mut budgets: Vec<usize> = [10, 25, 100, 400]
        .into_iter()
        .filter(|&k| k <= per_class_pool.saturating_sub(1))
        .collect();
    if budgets.is_empty() && per_class_pool >= 1 {
        budgets.push(per_class_pool);
    }
    let monitor = if labeled && smallest * 4 / 5 > 10 {
        10
    } else {
        0
    };

    let mut text = comment(&format!(
        "A pipeline for {shown}, written by `imprint init`."
    ));
    text.push_str("#\n");
    if labeled {
        let counts: Vec<String> = survey
            .classes
            .iter()
            .map(|(c, k)| format!("{c} {k}"))
            .collect();
        text.push_str(&comment(&format!(
            "{n} images in {} classes: {}.",
            survey.classes.len(),
            counts.join(", ")
        )));
    } else {
        text.push_str(&comment(&format!(
            "{n} images, no class folders: unlabeled, for pre-training alone."
        )));
    }
    text.push_str(&comment(&format!("{}.", sizes_phrase(survey))));
    text.push_str(&comment(&format!(
        "Pre-training time: about {} an epoch on {cores} cores (a rough figure of {:.0} \
         photos/s; `imprint bench` measures a machine), {epochs} epochs, about {} in all.",
        duration(epoch_seconds),
        rate,
        duration(epoch_seconds * epochs as f64)
    )));
    text.push_str("#\n");
    text.push_str(&comment(
        "Run it whole with `imprint run FILE` (pre-training, then every strategy against \
         scratch), or one job at a time: `imprint pretrain --pipeline FILE`, `imprint finetune \
         --pipeline FILE --init MODEL`. Every key is described in pipelines/README.md of the \
         source; a key left out of a section takes its own default there.",
    ));
    let name = dir
        .file_name()
        .map_or("photos".into(), |n| n.to_string_lossy().into_owned());
    let _ = writeln!(text, "name = \"{}\"", name.replace(['"', '\\'], "_"));
    let _ = writeln!(text, "description = \"{n} images of {shown}\"\n");

    for (section, body) in sections(DEFAULTS_TOML) {
        let body = match section.as_str() {
            "data" => {
                let mut b = String::new();
                if labeled {
                    b.push_str(&comment(&format!(
                        "The labeled images are also the unlabeled ones; {:.0}% of each class \
                         is held out as the test set and kept out of pre-training.",
                        TEST_FRACTION * 100.0
                    )));
                    let _ = writeln!(b, "labeled = \"{shown}\"");
                } else {
                    b.push_str(&comment(
                        "Add `labeled = \"FOLDER\"` (a sub-folder per class) to fine-tune and \
                         compare.",
                    ));
                }
                let _ = writeln!(b, "unlabeled = \"{shown}\"");
                let _ = writeln!(b, "test_fraction = {TEST_FRACTION}");
                b
            }
            "data.preprocess" => {
                let b = set(&body, "height", &input.to_string());
                let b = set(&b, "width", &input.to_string());
                if side > 40 {
                    let note = comment(&format!(
                        "Photos of median side {side} px are shrunk to {input}x{input} \
                         (squashed when oblong): what a CPU trains in minutes. 64 keeps more \
                         detail at about 4 times the time."
                    ));
                    format!("{note}{b}")
                } else {
                    b
                }
            }
            "pretrain" => {
                let b = set(&body, "epochs", &epochs.to_string());
                let b = set(&b, "batch_size", &batch.to_string());
                set(&b, "monitor_labels_per_class", &monitor.to_string())
            }
            "compare" if !budgets.is_empty() => {
                let list: Vec<String> = budgets.iter().map(usize::to_string).collect();
                let note = comment(&format!(
                    "Label budgets up to what the smallest class ({smallest} images, \
                     {per_class_pool} after the test part) allows."
                ));
                let list = format!("[{}]", list.join(", "));
                format!("{note}{}", set(&body, "labels_per_class", &list))
            }
            _ => body,
        };
        let _ = writeln!(text, "[{section}]\n{}", body.trim_end());
        text.push('\n');
    }
    Ok(text)
}

/// `text` as `# ` comment lines of at most 96 characters.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 96 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The median of the images' shorter sides.
fn median_side(survey: &Survey) -> u32 {
    let mut sides: Vec<u32> = survey.sizes.iter().map(|&(w, h)| w.min(h)).collect();
    sides.sort_unstable();
    sides.get(sides.len() / 2).copied().unwrap_or(SIDE)
}

/// The sizes seen, e.g. "Sizes: all 32x32, colour" or "Sizes: 120x80 to 640x480, median ...".
fn sizes_phrase(survey: &Survey) -> String {
    let colour = if survey.colour { "colour" } else { "grey" };
    let mut sizes = survey.sizes.clone();
    sizes.sort_unstable_by_key(|&(w, h)| (u64::from(w) * u64::from(h), w));
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    if first == last {
        return format!("Sizes: all {}x{} ({colour})", first.0, first.1);
    }
    let median = sizes[sizes.len() / 2];
    format!(
        "Sizes (width x height): {}x{} to {}x{}, median {}x{} ({colour})",
        first.0, first.1, last.0, last.1, median.0, median.1
    )
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", (s + 30) / 60),
        _ => format!("{:.1} h", seconds / 3600.0),
    }
}

/// The sections of a TOML text as (name, body with its comments), in order; the top-level
/// keys before the first section are left out.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            out.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    // A section's lines that are only for the built-in file (what flags give) are dropped.
    for (name, body) in &mut out {
        if name == "data" {
            *body = String::new();
        }
    }
    out
}

/// `body` with the line of `key` set to `value`, or the line added when there is none.
fn set(body: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let mut out = String::new();
    for line in body.lines() {
        let is_key = line
            .trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key && !found {
            found = true;
            let _ = writeln!(out, "{key} = {value}");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    if !found {
        let _ = writeln!(out, "{key} = {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pipeline;

    fn survey(classes: &[(&str, usize)], size: (u32, u32)) -> Survey {
        let n = classes.iter().map(|c| c.1).sum::<usize>().max(500);
        Survey {
            classes: classes.iter().map(|(c, k)| (c.to_string(), *k)).collect(),
            sizes: vec![size; n],
            colour: true,
        }
    }

    #[test]
    fn a_labeled_folder_gets_a_pipeline_that_reads_back_with_its_sizes() {
        let s = survey(&[("cat", 1000), ("dog", 1000)], (500, 375));
        let text = init_text(Path::new("photos/pets"), &s, 2).unwrap();
        let p = Pipeline::from_toml(&text, Path::new("pets.toml")).unwrap();
        assert_eq!(p.name, "pets");
        assert_eq!(p.data.labeled.as_deref(), Some(Path::new("photos/pets")));
        assert_eq!(p.data.preprocess.height, Some(32));
        assert_eq!(p.compare.labels_per_class, [10, 25, 100, 400]);
        assert_eq!(p.pretrain.monitor_labels_per_class, 10);
        // 1,600 training photos at about 400/s: 4 s an epoch, so the 30 minutes cap at 100.
        assert_eq!(p.pretrain.epochs, 100);
        assert!(text.contains("cat 1000, dog 1000"), "{text}");
        assert!(text.contains("median side 375 px"), "{text}");
        // The built-in pretexts and recipe are kept as they are.
        let builtin: Pipeline = toml::from_str(DEFAULTS_TOML).unwrap();
        assert_eq!(p.finetune, builtin.finetune);
        assert_eq!(p.pretrain.architecture, builtin.pretrain.architecture);
    }

    #[test]
    fn a_large_folder_gets_fewer_epochs_and_small_classes_smaller_budgets() {
        let big = survey(&[("a", 30_000), ("b", 30_000)], (32, 32));
        let p = Pipeline::from_toml(
            &init_text(Path::new("big"), &big, 2).unwrap(),
            Path::new("x"),
        )
        .unwrap();
        // 48,000 training photos at 400/s: 120 s an epoch, 15 in 30 minutes.
        assert_eq!(p.pretrain.epochs, 15);
        assert_eq!(p.pretrain.batch_size, 256);
        let small = survey(&[("a", 20), ("b", 40)], (32, 32));
        let p = Pipeline::from_toml(
            &init_text(Path::new("small"), &small, 2).unwrap(),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(p.compare.labels_per_class, [10]);
        assert_eq!(p.pretrain.monitor_labels_per_class, 10);
        let unlabeled = survey(&[], (28, 28));
        let text = init_text(Path::new("raw"), &unlabeled, 2).unwrap();
        let p = Pipeline::from_toml(&text, Path::new("x")).unwrap();
        assert_eq!(p.data.labeled, None);
        assert_eq!(p.data.preprocess.height, Some(28));
        assert_eq!(p.pretrain.monitor_labels_per_class, 0);
    }
}
