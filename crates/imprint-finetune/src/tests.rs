use super::*;
use dfdx::prelude::*;
use imprint_data::augment::Augment;
use imprint_data::{ImageShape, Pixels};
use imprint_nn::tree::ParamsExt;
use imprint_nn::Architecture;
use imprint_train::{OptimSettings, Schedule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

fn lr(lr: f64) -> OptimSettings {
    OptimSettings {
        lr,
        ..Default::default()
    }
}

/// `steps` at the learning rate the toy tasks train well at.
fn quick(steps: usize) -> FinetuneConfig {
    FinetuneConfig {
        steps,
        optim: lr(1e-2),
        ..Default::default()
    }
}

fn shift(shift: usize) -> Augment {
    Augment {
        shift,
        ..Default::default()
    }
}

/// Two-class toy images: a horizontal bar (class 0) or a vertical bar (class 1), 8x8.
fn bars(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = vec![0.0; n * 64];
    let mut labels = Vec::with_capacity(n);
    for (i, img) in pixels.chunks_exact_mut(64).enumerate() {
        let class = i % 2;
        let at = rng.gen_range(1..7);
        for k in 0..8 {
            let (r, c) = if class == 0 { (at, k) } else { (k, at) };
            img[r * 8 + c] = 1.0;
        }
        labels.push(class);
    }
    Dataset {
        shape: SIDE8,
        pixels: Pixels::from_unit_floats(&pixels, 64),
        labels: Some(labels),
        classes: vec!["h".into(), "v".into()],
        items: (0..n).map(|i| format!("bars#{i}")).collect(),
        source: Default::default(),
    }
}

fn encoder(seed: u64) -> Encoder<Cpu> {
    let arch = Architecture::Dense(imprint_nn::DenseNet {
        hidden: vec![32],
        latent: 8,
    });
    Encoder::new(
        &Cpu::default(),
        &arch,
        SIDE8,
        &mut ChaCha8Rng::seed_from_u64(seed),
    )
    .unwrap()
}

const SIDE8: ImageShape = ImageShape {
    channels: 1,
    height: 8,
    width: 8,
};

/// An encoder pre-trained (without labels) on bar images.
fn pretrained_encoder() -> Encoder<Cpu> {
    pretrained_on(&bars(600, 7))
}

/// A small dense encoder pre-trained (without labels) on `images`.
fn pretrained_on(images: &Dataset) -> Encoder<Cpu> {
    let dense = Architecture::Dense(imprint_nn::DenseNet {
        hidden: vec![32],
        latent: 8,
    });
    let mut cfg = imprint_pretrain::PretrainConfig {
        batch_size: 32,
        holdout_fraction: 0.0,
        ..imprint_pretrain::PretrainConfig::new(dense, 20)
    };
    cfg.optim.lr = 3e-3;
    imprint_pretrain::pretrain(
        &Cpu::default(),
        imprint_pretrain::Images::new(&images.pixels, SIDE8),
        &cfg,
        0,
        imprint_pretrain::Start::Fresh,
        imprint_pretrain::Hooks::default(),
    )
    .unwrap()
    .encoder
}

/// `finetune` of the fresh `encoder(3)` on `train` with no unlabeled pool.
fn fit(
    train: &Dataset,
    cfg: &FinetuneConfig,
    strategy: Strategy,
    seed: u64,
) -> Result<(Classifier<Cpu>, History)> {
    finetune(
        &Cpu::default(),
        encoder(3),
        train,
        None,
        cfg,
        strategy,
        seed,
    )
}

/// [`fit`] with seed 0 and no unlabeled pool.
fn fit_fresh(
    train: &Dataset,
    cfg: &FinetuneConfig,
    strategy: Strategy,
) -> (Classifier<Cpu>, History) {
    fit(train, cfg, strategy, 0).unwrap()
}

#[test]
fn every_strategy_learns_a_separable_task() {
    let dev = Cpu::default();
    let (train, test) = (bars(40, 1), bars(200, 2));
    let cfg = FinetuneConfig {
        augment: shift(1),
        ..quick(150)
    };
    let pretrained = pretrained_encoder();
    for strategy in Strategy::all() {
        let init = if strategy.uses_pretrained() {
            pretrained.clone()
        } else {
            encoder(3)
        };
        let (mut model, history) = finetune(&dev, init, &train, None, &cfg, strategy, 0).unwrap();
        let m = evaluate(&dev, &mut model, &test).unwrap();
        if strategy.fit() == Fit::Train {
            assert!(
                history.train_loss.last() < history.train_loss.first(),
                "{strategy:?}"
            );
        }
        // The frozen code of this toy autoencoder keeps where a bar is, not which way it
        // runs: the frozen-encoder strategies are held to a task of their own below.
        if strategy.fit() == Fit::Train && strategy != Strategy::PROBE {
            assert!(m.accuracy > 0.9, "{strategy:?}: accuracy {}", m.accuracy);
        }
    }
}

/// Two-class toy images whose classes differ in where their light is, which a frozen
/// autoencoder's code keeps: a bright band across the top or the bottom half, at a random row
/// and brightness, over faint noise.
fn halves(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ds = bars(n, seed);
    ds.classes = vec!["top".into(), "bottom".into()];
    let mut pixels = vec![0.0; n * 64];
    for (i, img) in pixels.chunks_exact_mut(64).enumerate() {
        let rows = if i % 2 == 0 { 0..4 } else { 4..8 };
        let (row, light) = (rng.gen_range(rows), rng.gen_range(0.6..1.0));
        for (k, v) in img.iter_mut().enumerate() {
            *v = if k / 8 == row {
                light
            } else {
                rng.gen_range(0.0..0.2)
            };
        }
    }
    ds.pixels = Pixels::from_unit_floats(&pixels, 64);
    ds
}

/// The frozen encoder's strategies read a task its code keeps: the linear probe and the
/// k-nearest-neighbour vote both reach 90% (chance is 50%).
#[test]
fn frozen_encoder_strategies_read_what_the_code_keeps() {
    let dev = Cpu::default();
    let encoder = pretrained_on(&halves(600, 7));
    let cfg = FinetuneConfig {
        steps: 400,
        optim: lr(3e-2),
        knn_k: 5,
        ..Default::default()
    };
    let (train, test) = (halves(40, 1), halves(200, 2));
    for strategy in [Strategy::PROBE, Strategy::KNN] {
        let (mut model, _) =
            finetune(&dev, encoder.clone(), &train, None, &cfg, strategy, 0).unwrap();
        let m = evaluate(&dev, &mut model, &test).unwrap();
        assert!(m.accuracy > 0.9, "{strategy:?}: accuracy {}", m.accuracy);
    }
}

#[test]
fn probe_leaves_the_encoder_untouched() {
    let dev = Cpu::default();
    let enc = encoder(3);
    let before = enc.named_tensors("encoder");
    let cfg = FinetuneConfig {
        steps: 20,
        ..Default::default()
    };
    let (model, _) = finetune(&dev, enc, &bars(20, 1), None, &cfg, Strategy::PROBE, 0).unwrap();
    assert_eq!(model.encoder.named_tensors("encoder"), before);
    let (model, _) = fit_fresh(&bars(20, 1), &cfg, Strategy::FULL);
    assert_ne!(model.encoder.named_tensors("encoder"), before);
}

#[test]
fn same_seed_same_model() {
    let cfg = FinetuneConfig {
        steps: 10,
        batch_size: 8,
        augment: shift(1),
        ..Default::default()
    };
    let run = || fit(&bars(20, 1), &cfg, Strategy::PROBE_THEN_FULL, 5).unwrap();
    assert_eq!(run().0.named_tensors(""), run().0.named_tensors(""));
}

#[test]
fn dropout_changes_training_yet_learns_and_repeats() {
    let dev = Cpu::default();
    let (train, test) = (bars(40, 1), bars(200, 2));
    let cfg = |dropout| FinetuneConfig {
        dropout,
        ..quick(150)
    };
    let run = |dropout| fit(&train, &cfg(dropout), Strategy::FULL, 0);
    let (mut with, _) = run(0.5).unwrap();
    assert!(evaluate(&dev, &mut with, &test).unwrap().accuracy > 0.9);
    assert_eq!(
        with.named_tensors(""),
        run(0.5).unwrap().0.named_tensors("")
    );
    assert_ne!(
        with.named_tensors(""),
        run(0.0).unwrap().0.named_tensors("")
    );
    assert!(run(1.0).is_err(), "dropout 1 would zero every feature");
}

#[test]
fn metrics_by_hand() {
    // truth 0 0 1 1 2, predicted 0 1 1 1 0: F1 = 2tp/(actual+predicted) per class:
    // class 0: 2/(2+2) = 1/2, class 1: 4/(2+3) = 4/5, class 2: 0 -> macro (1/2 + 4/5)/3 = 13/30
    let m = Metrics::from_predictions(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
    assert!((m.accuracy - 0.6).abs() < 1e-12);
    assert!((m.macro_f1 - 13.0 / 30.0).abs() < 1e-12);
    assert_eq!(
        m.confusion,
        vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
    );
}

#[test]
fn saved_weights_load_back_and_mismatches_are_refused() {
    let dev = Cpu::default();
    let cfg = FinetuneConfig {
        steps: 5,
        ..Default::default()
    };
    let (mut model, _) = fit_fresh(&bars(20, 1), &cfg, Strategy::FULL);
    let tensors: BTreeMap<_, _> = model
        .named_tensors("")
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut fresh = Classifier::new(&dev, encoder(9), model.classes.clone(), model.shape, 1);
    let x = bars(6, 4).pixels;
    assert_ne!(
        fresh.predict(&dev, &x),
        model.predict(&dev, &x),
        "differ before loading"
    );
    fresh.load_named("", &tensors, "model.safetensors").unwrap();
    assert_eq!(
        fresh.predict(&dev, &x),
        model.predict(&dev, &x),
        "match after loading"
    );

    let arch = Architecture::Dense(imprint_nn::DenseNet {
        hidden: vec![16],
        latent: 8,
    });
    let other = Encoder::new(&dev, &arch, SIDE8, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    let mut wrong = Classifier::new(&dev, other, model.classes.clone(), model.shape, 1);
    let e = wrong
        .load_named("", &tensors, "model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("encoder.0.weight"),
        "{e}"
    );
}

#[test]
fn early_stopping_keeps_the_best_validated_model() {
    let dev = Cpu::default();
    let cfg = FinetuneConfig {
        augment: Augment {
            rotate_degrees: 10.0,
            ..shift(1)
        },
        validation_fraction: 0.25,
        eval_every: 10,
        patience: 3,
        ..quick(1000)
    };
    let (mut model, history) = fit_fresh(&bars(40, 1), &cfg, Strategy::SCRATCH);
    assert!(history.steps_run < cfg.steps, "never stopped early");
    assert_eq!(history.train_loss.len(), history.steps_run);
    let checks = &history.validation;
    assert_eq!(checks.len(), history.steps_run / 10);
    let best = checks
        .iter()
        .find(|c| Some(c.step) == history.best_step)
        .expect("the best step is one of the checks");
    assert!(checks.iter().all(|c| c.accuracy <= best.accuracy));
    // the last checks are the patience window without a gain
    assert!(checks[checks.len() - 3..]
        .iter()
        .all(|c| c.step > best.step));
    assert!(evaluate(&dev, &mut model, &bars(200, 2)).unwrap().accuracy > 0.9);

    // a class with one labeled image cannot give up half of it
    let halved = FinetuneConfig {
        validation_fraction: 0.5,
        ..cfg.clone()
    };
    let err = fit(&bars(2, 1), &halved, Strategy::SCRATCH, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("validation_fraction 0.5 leaves class"),
        "{err}"
    );
}

#[test]
fn description_names_the_settings_in_use_only() {
    let plain = FinetuneConfig::default().describe();
    assert_eq!(plain, "300 full-batch steps (lr 0.001, encoder lr x1)");
    let rich = FinetuneConfig {
        steps: 1000,
        batch_size: 128,
        optim: OptimSettings {
            schedule: Schedule::Cosine,
            ..Default::default()
        },
        augment: Augment {
            rotate_degrees: 12.0,
            ..Default::default()
        },
        dropout: 0.2,
        ..Default::default()
    }
    .describe();
    assert_eq!(
        rich,
        "1000 steps of 128 images (lr 0.001, encoder lr x1, cosine schedule, rotations ±12°, dropout 0.2)"
    );
    let student = FinetuneConfig {
        batch_size: 64,
        self_train_steps: 500,
        self_train_fraction: 0.07,
        ..Default::default()
    }
    .describe();
    assert_eq!(
        student,
        "300 steps of 64 images (lr 0.001, encoder lr x1), then a student trained 500 steps on \
         half labeled, half pseudo-labeled batches (the teacher's most confident 7% of the \
         unlabeled images, an equal share per class at most)"
    );
    let all = FinetuneConfig {
        batch_size: 64,
        self_train_steps: 500,
        ..Default::default()
    }
    .describe();
    assert!(
        all.ends_with("batches (the unlabeled images, an equal share per class at most)"),
        "{all}"
    );
}

/// `bars` without their labels, as a self-training pool.
fn unlabeled_bars(n: usize, seed: u64) -> Dataset {
    Dataset {
        labels: None,
        ..bars(n, seed)
    }
}

#[test]
fn pseudo_labels_keep_each_class_most_confident_share() {
    let dev = Cpu::default();
    let cfg = quick(30);
    let (mut teacher, _) = fit_fresh(&bars(40, 1), &cfg, Strategy::FULL);
    let pool = unlabeled_bars(300, 5);
    let predicted = teacher.predict(&dev, &pool.pixels);
    let (ids, labels) = pseudo_labels(&dev, &mut teacher, &pool, 0.4);
    // quota: 0.4 * 300 / 2 classes = 60 per class, or all a class has if fewer
    for class in 0..2 {
        let members: Vec<usize> = (0..300).filter(|&i| predicted[i].0 == class).collect();
        let kept: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| labels[i] == class)
            .collect();
        assert_eq!(kept.len(), members.len().min(60), "class {class}");
        let weakest_kept = kept
            .iter()
            .map(|&i| predicted[i].1)
            .fold(f32::MAX, f32::min);
        assert!(
            members
                .iter()
                .filter(|i| !kept.contains(i))
                .all(|&i| predicted[i].1 <= weakest_kept),
            "class {class}: a dropped image is more confident than a kept one"
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
    assert!(labels.iter().zip(&predicted).all(|(&l, p)| l == p.0));
}

#[test]
fn self_training_returns_a_student_that_repeats() {
    let dev = Cpu::default();
    let cfg = FinetuneConfig {
        batch_size: 8,
        augment: shift(1),
        self_train_steps: 30,
        self_train_fraction: 0.5,
        ..quick(20)
    };
    let pool = unlabeled_bars(100, 5);
    let run = |cfg: &FinetuneConfig| {
        let train = bars(10, 1);
        finetune(
            &dev,
            encoder(3),
            &train,
            Some(&pool),
            cfg,
            Strategy::PROBE_THEN_FULL,
            2,
        )
        .unwrap()
    };
    let (student, history) = run(&cfg);
    assert_eq!(history.steps_run, 50);
    assert_eq!(history.train_loss.len(), 50);
    assert_eq!(history.pseudo_labels, 50, "half the pool, 25 per class");
    assert_eq!(student.named_tensors(""), run(&cfg).0.named_tensors(""));
    let (teacher, plain) = run(&FinetuneConfig {
        self_train_steps: 0,
        ..cfg.clone()
    });
    assert_eq!(plain.pseudo_labels, 0);
    assert_ne!(student.named_tensors(""), teacher.named_tensors(""));
}

#[test]
fn self_training_settings_and_pool_are_checked() {
    let dev = Cpu::default();
    let cfg = FinetuneConfig {
        steps: 5,
        batch_size: 8,
        self_train_steps: 5,
        ..Default::default()
    };
    let run = |cfg: &FinetuneConfig, pool: Option<&Dataset>| {
        finetune(&dev, encoder(3), &bars(10, 1), pool, cfg, Strategy::FULL, 0)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let e = run(&cfg, None);
    assert!(e.contains("self_train_steps needs unlabeled images"), "{e}");
    let e = run(&cfg, Some(&unlabeled_bars(0, 5)));
    assert!(e.contains("self_train_steps needs unlabeled images"), "{e}");
    let mut wide = unlabeled_bars(4, 5);
    wide.shape.width = 4;
    wide.shape.height = 16;
    let e = run(&cfg, Some(&wide));
    assert!(e.contains("unlabeled images are 1x16x4"), "{e}");
    let pool = unlabeled_bars(20, 5);
    for (key, bad) in [
        (
            "self_train_steps",
            FinetuneConfig {
                batch_size: 0,
                ..cfg.clone()
            },
        ),
        (
            "self_train_fraction",
            FinetuneConfig {
                self_train_fraction: 0.0,
                ..cfg.clone()
            },
        ),
        (
            "self_train_fraction",
            FinetuneConfig {
                self_train_fraction: 1.5,
                ..cfg.clone()
            },
        ),
    ] {
        let e = run(&bad, Some(&pool));
        assert!(e.contains(&format!("setting `{key}`")), "{e}");
    }
    // 0.04 of 20 images over 2 classes rounds to no image per class
    let e = run(
        &FinetuneConfig {
            self_train_fraction: 0.04,
            ..cfg.clone()
        },
        Some(&pool),
    );
    assert!(e.contains("leaves no class a pseudo-label"), "{e}");
}

/// Layer-wise decay trains the layers far from the head at a fraction of the rate: with decay
/// 0.1 the first of two layers (two steps from the head, rate x0.01) moves a hundredth as far
/// under Adam, whose steps scale with the rate.
#[test]
fn layer_decay_slows_the_layers_far_from_the_head() {
    let first = |decay: f64| {
        let cfg = FinetuneConfig {
            steps: 10,
            layer_decay: decay,
            ..Default::default()
        };
        let before = encoder(3).named_tensors("encoder");
        let (model, _) = fit_fresh(&bars(20, 1), &cfg, Strategy::FULL);
        let after = model.encoder.named_tensors("encoder");
        let moved = |i: usize| -> f32 {
            before[i]
                .data
                .iter()
                .zip(&after[i].data)
                .map(|(a, b)| (a - b).abs())
                .sum()
        };
        assert_eq!(before[0].name, "encoder.0.weight");
        (moved(0), moved(2))
    };
    let (plain_first, plain_last) = first(1.0);
    let (slow_first, slow_last) = first(0.1);
    let ratio = |a: f32, b: f32| a / b;
    assert!(
        (ratio(slow_first, plain_first) - 0.01).abs() < 0.005,
        "first layer moved {slow_first} with decay, {plain_first} without"
    );
    assert!(
        (ratio(slow_last, plain_last) - 0.1).abs() < 0.05,
        "last layer moved {slow_last} with decay, {plain_last} without"
    );
}

/// A fine-tuning stopped at a checkpoint and resumed from it ends with the model and history of
/// the run that never stopped: across probe-then-full's phase change (fresh optimizer), with
/// augmentation and dropout drawn each step, early stopping's best model, and in the
/// self-training student's round (teacher carried in the checkpoint).
#[test]
fn resumed_finetuning_equals_uninterrupted() {
    let dev = Cpu::default();
    let pool = unlabeled_bars(60, 5);
    let base = FinetuneConfig {
        batch_size: 8,
        augment: shift(1),
        dropout: 0.2,
        ..quick(30)
    };
    let cases = [
        (base.clone(), 5),
        (
            FinetuneConfig {
                validation_fraction: 0.25,
                eval_every: 5,
                ..base.clone()
            },
            15,
        ),
        (
            FinetuneConfig {
                self_train_steps: 20,
                ..base.clone()
            },
            40,
        ),
    ];
    for (cfg, stop_at) in cases {
        let run = |hooks: FinetuneHooks, resume: Option<&FinetuneSnapshot>| {
            finetune_with(
                &dev,
                encoder(3),
                &bars(16, 1),
                Some(&pool),
                &cfg,
                Strategy::PROBE_THEN_FULL,
                4,
                hooks,
                resume,
            )
        };
        let (whole, history) = run(FinetuneHooks::default(), None).unwrap();
        let mut saved = None;
        let mut crash = |s: &FinetuneSnapshot| {
            let done = s.state.first_step + s.state.steps_done;
            saved = Some(s.clone());
            if done == stop_at {
                return Err(FinetuneError::Data("simulated crash".into()));
            }
            Ok(())
        };
        let hooks = FinetuneHooks {
            every: 5,
            on_checkpoint: Some(&mut crash),
            ..Default::default()
        };
        assert!(run(hooks, None).is_err());
        let snapshot = saved.expect("a checkpoint before the crash");
        let (resumed, resumed_history) = run(FinetuneHooks::default(), Some(&snapshot)).unwrap();
        assert_eq!(
            resumed.named_tensors(""),
            whole.named_tensors(""),
            "stopped at {stop_at}"
        );
        assert_eq!(resumed_history, history, "stopped at {stop_at}");
    }
}

/// `freeze_bn` trains a ResNet's weights with batch norm in eval mode: its running statistics
/// stay those it started with, where plain `full` moves them towards the batches'.
#[test]
fn freeze_bn_trains_the_weights_and_keeps_the_running_statistics() {
    let dev = Cpu::default();
    let arch = Architecture::Resnet(imprint_nn::ResNet {
        depth: 8,
        layout: imprint_nn::models::Layout::Cifar,
        widths: Some(vec![4, 8, 8]),
        shortcut: None,
    });
    let enc = Encoder::new(&dev, &arch, SIDE8, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let split = |tensors: Vec<imprint_nn::NamedTensor>| -> (Vec<_>, Vec<_>) {
        tensors
            .into_iter()
            .partition(|t| t.name.contains("running_"))
    };
    let (stats, weights) = split(enc.named_tensors("encoder"));
    let trained = |freeze_bn: bool, strategy: Strategy| {
        let cfg = FinetuneConfig {
            batch_size: 8,
            freeze_bn,
            ..quick(5)
        };
        let (model, _) =
            finetune(&dev, enc.clone(), &bars(16, 1), None, &cfg, strategy, 0).unwrap();
        split(model.encoder.named_tensors("encoder"))
    };
    let (frozen_stats, frozen_weights) = trained(true, Strategy::FULL);
    assert_eq!(frozen_stats, stats);
    assert_ne!(frozen_weights, weights);
    let (moved_stats, _) = trained(false, Strategy::FULL);
    assert_ne!(moved_stats, stats);
    // A fresh network (`scratch`) has no statistics worth keeping: they move either way.
    let (scratch_stats, _) = trained(true, Strategy::SCRATCH);
    assert_ne!(scratch_stats, stats);
}

/// A classifier's head lends a new head its rows for the classes it knows, in the new order;
/// a class it does not know leaves the new head to its random init.
#[test]
fn the_old_heads_rows_start_the_new_head_when_it_knows_every_class() {
    let dev = Cpu::default();
    let features = 8;
    let old = OldHead {
        classes: vec!["v".into(), "x".into(), "h".into()],
        weight: (0..3 * features).map(|i| i as f32).collect(),
        bias: vec![10.0, 20.0, 30.0],
    };
    let head = old
        .rows_for(&dev, &["h".into(), "v".into()], features)
        .unwrap();
    let rows = head.weight.value.as_vec();
    assert_eq!(&rows[..features], &old.weight[2 * features..]);
    assert_eq!(&rows[features..], &old.weight[..features]);
    assert_eq!(head.bias.value.as_vec(), [30.0, 10.0]);
    assert!(old
        .rows_for(&dev, &["h".into(), "z".into()], features)
        .is_none());
    assert!(old.rows_for(&dev, &["h".into()], features + 1).is_none());

    // Fine-tuning from it: a probe with no steps to speak of keeps the old head's predictions.
    let train = bars(20, 1);
    let classes = ["h".to_string(), "v".to_string()];
    let (mut trained, _) = finetune(
        &dev,
        pretrained_encoder(),
        &train,
        None,
        &quick(40),
        Strategy::PROBE,
        0,
    )
    .unwrap();
    let Head::Linear(lin) = &trained.head else {
        panic!("a linear head")
    };
    let lent = OldHead {
        classes: vec!["other".into(), classes[1].clone(), classes[0].clone()],
        weight: [
            vec![0.0; features],
            lin.weight.value.as_vec()[features..].to_vec(),
            lin.weight.value.as_vec()[..features].to_vec(),
        ]
        .concat(),
        bias: vec![0.0, lin.bias.value.as_vec()[1], lin.bias.value.as_vec()[0]],
    };
    let expected = trained.predict(&dev, &train.pixels);
    let tiny = FinetuneConfig {
        optim: lr(1e-9),
        ..quick(1)
    };
    let init = Init {
        encoder: pretrained_encoder(),
        head: Some(lent.clone()),
    };
    let (mut model, history) =
        finetune(&dev, init.clone(), &train, None, &tiny, Strategy::PROBE, 5).unwrap();
    assert!(history.head_from_init);
    let got: Vec<usize> = model
        .predict(&dev, &train.pixels)
        .iter()
        .map(|p| p.0)
        .collect();
    let want: Vec<usize> = expected.iter().map(|p| p.0).collect();
    assert_eq!(got, want);
    // Switched off, or for scratch, the head starts afresh.
    let off = FinetuneConfig {
        head_from_init: false,
        ..tiny.clone()
    };
    let (_, history) =
        finetune(&dev, init.clone(), &train, None, &off, Strategy::PROBE, 5).unwrap();
    assert!(!history.head_from_init);
    let (_, history) = finetune(&dev, init, &train, None, &tiny, Strategy::SCRATCH, 5).unwrap();
    assert!(!history.head_from_init);
}

/// With a validation split, `probe-then-full` checks the end of its head-only phase, and the
/// history says when the last check fell below it.
#[test]
fn the_end_of_the_head_only_phase_is_checked_and_compared_with_the_end() {
    let dev = Cpu::default();
    let cfg = FinetuneConfig {
        validation_fraction: 0.25,
        eval_every: 7,
        ..quick(20)
    };
    let (_, history) = finetune(
        &dev,
        pretrained_encoder(),
        &bars(40, 1),
        None,
        &cfg,
        Strategy::PROBE_THEN_FULL,
        0,
    )
    .unwrap();
    // 30% of 20 steps: the head trains alone for 6.
    let frozen = history
        .frozen_phase
        .expect("a check at the end of the probe phase");
    assert_eq!(frozen.step, 6);
    let steps: Vec<usize> = history.validation.iter().map(|v| v.step).collect();
    assert_eq!(steps, [6, 7, 14, 20]);

    let check = |step, accuracy| Validation {
        step,
        accuracy,
        loss: 0.0,
    };
    let mut h = History {
        frozen_phase: Some(check(6, 0.9)),
        validation: vec![check(6, 0.9), check(20, 0.8)],
        ..History::default()
    };
    assert_eq!(
        h.below_frozen_phase(),
        Some((check(6, 0.9), check(20, 0.8)))
    );
    h.validation.push(check(30, 0.95));
    assert_eq!(h.below_frozen_phase(), None);
    // `probe` has no such phase.
    let (_, history) = finetune(
        &dev,
        pretrained_encoder(),
        &bars(40, 1),
        None,
        &cfg,
        Strategy::PROBE,
        0,
    )
    .unwrap();
    assert_eq!(history.frozen_phase, None);
}

/// A small ResNet (its convolutions and head on bf16 products, the rest in f32) learns the bars
/// as f32 does: from the same seed, the loss of every step within 15% (or 0.005) of f32's,
/// though not the same numbers, falling tenfold; both classify the test bars alike.
#[test]
fn bf16_training_follows_the_losses_of_f32() {
    let choice = imprint_nn::Choice::of(imprint_nn::Precision::Bf16);
    if choice.fallback() {
        println!("skipped: {choice}");
        return;
    }
    let dev = Cpu::default();
    let arch = Architecture::Resnet(imprint_nn::ResNet {
        depth: 8,
        layout: imprint_nn::models::Layout::Cifar,
        widths: Some(vec![16, 16, 32]),
        shortcut: None,
    });
    let enc = Encoder::new(&dev, &arch, SIDE8, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
    let (train, test) = (bars(64, 1), bars(200, 2));
    let run = |precision| {
        let cfg = FinetuneConfig {
            batch_size: 16,
            precision,
            ..quick(12)
        };
        let (mut model, history) =
            finetune(&dev, enc.clone(), &train, None, &cfg, Strategy::FULL, 0).unwrap();
        let accuracy = evaluate(&dev, &mut model, &test).unwrap().accuracy;
        (history.train_loss, accuracy)
    };
    let (f32_losses, f32_accuracy) = run(imprint_nn::Precision::F32);
    let (bf16_losses, bf16_accuracy) = run(imprint_nn::Precision::Bf16);
    println!("f32 losses {f32_losses:.4?}, test accuracy {f32_accuracy:.3}");
    println!("{choice}: losses {bf16_losses:.4?}, test accuracy {bf16_accuracy:.3}");
    assert_ne!(bf16_losses, f32_losses, "bf16 computed f32's very numbers");
    for (step, (b, f)) in bf16_losses.iter().zip(&f32_losses).enumerate() {
        assert!(
            (b - f).abs() <= (0.15 * f).max(0.005),
            "step {step}: {b} against {f}"
        );
    }
    let (first, last) = (bf16_losses[0], bf16_losses[bf16_losses.len() - 1]);
    assert!(last < first / 10.0, "{first} -> {last}");
    assert!(
        (bf16_accuracy - f32_accuracy).abs() <= 0.02,
        "{bf16_accuracy} vs {f32_accuracy}"
    );
}

/// Two replicas, threads of this process with half of every batch each, fine-tune the model one
/// process fine-tunes on the whole batch: a ResNet-8 trained whole (`full`) with augmentation,
/// dropout and synchronised batch norms, 10 steps. The sums over the batch run in another order
/// (each share, then the two added), so the weights agree to that rounding, not bit for bit;
/// the two replicas hold the same bits.
#[test]
fn two_replicas_finetune_the_model_one_process_finetunes() {
    use imprint_collective::local_group;
    let run = |replicas: Option<imprint_collective::Replicas>| {
        let dev = Cpu::default();
        let arch = Architecture::Resnet(imprint_nn::ResNet {
            depth: 8,
            layout: imprint_nn::models::Layout::Cifar,
            widths: Some(vec![4, 8, 8]),
            shortcut: None,
        });
        let enc = Encoder::new(&dev, &arch, SIDE8, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let cfg = FinetuneConfig {
            batch_size: 8,
            augment: shift(1),
            dropout: 0.2,
            sync_batch_norm: true,
            ..quick(10)
        };
        let hooks = FinetuneHooks {
            replicas,
            ..FinetuneHooks::default()
        };
        let (model, _) = finetune_with(
            &dev,
            enc,
            &bars(32, 1),
            None,
            &cfg,
            Strategy::FULL,
            2,
            hooks,
            None,
        )
        .unwrap();
        model.named_tensors("")
    };
    let one = run(None);
    let two: Vec<Vec<imprint_nn::NamedTensor>> = std::thread::scope(|s| {
        let handles: Vec<_> = local_group(2)
            .into_iter()
            .map(|member| s.spawn(move || run(Some(std::rc::Rc::new(member)))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(two[0], two[1], "the replicas differ");
    let mut worst: f32 = 0.0;
    for (a, b) in one.iter().zip(&two[0]) {
        assert_eq!(a.name, b.name);
        let scale = a.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let diff = a
            .data
            .iter()
            .zip(&b.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    eprintln!("largest difference, relative to its tensor's largest value: {worst:e}");
    assert!(worst < 1e-4, "2 replicas vs 1 process: {worst:e}");
}
