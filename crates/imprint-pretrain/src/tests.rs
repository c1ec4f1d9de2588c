use super::*;
use crate::pretext::{byol, contrastive, dino, reconstruction, rotation, vicreg, LocalCrops};
use crate::views::corrupt;
use imprint_data::augment::augment_batch;
use imprint_nn::loss::Reconstruction;
use imprint_nn::{Architecture, ParamGroup};
use rand::Rng;

/// Images with structure an autoencoder can learn: bars at random positions.
fn bars(n: usize, side: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0.0; n * side * side];
    for img in out.chunks_exact_mut(side * side) {
        let row = rng.gen_range(0..side);
        let col = rng.gen_range(0..side);
        for k in 0..side {
            img[row * side + k] = 1.0;
            img[k * side + col] = 1.0;
        }
    }
    out
}

/// Test images as a pre-training reads them: each value kept as its nearest byte.
fn pixels(images: &[f32]) -> Pixels {
    Pixels::from_unit_floats(images, 64)
}

const SIDE8: ImageShape = ImageShape {
    channels: 1,
    height: 8,
    width: 8,
};

#[test]
fn conv_autoencoder_loss_falls() {
    let dev = Cpu::default();
    let images = bars(400, 8, 1);
    let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
    cfg.architecture = Architecture::Conv(imprint_nn::ConvNet {
        channels: vec![8, 16],
        kernel: 3,
        stride: 2,
        latent: 8,
    });
    for masked in [false, true] {
        if masked {
            cfg.noise = Noise::Patches {
                patch: 2,
                fraction: 0.25,
            };
            reconstruction_of(&mut cfg).loss_on_hidden_only = true;
        }
        let run = fresh(&dev, &images, &cfg, 3);
        let (first, last) = (&run.history[0], run.history.last().unwrap());
        // Scored on hidden pixels only, the net is never asked to copy the visible ones, so
        // the whole-image held-out loss falls less.
        let factor = if masked { 0.85 } else { 0.8 };
        assert!(
            last.heldout_loss.unwrap() < factor * first.heldout_loss.unwrap(),
            "masked {masked}: held-out loss {:?} -> {:?}",
            first.heldout_loss,
            last.heldout_loss
        );
    }
}

/// A pre-training of 8x8 `images` (values in [0, 1], held as the bytes they round to) under
/// `cfg` and `seed`, begun as `start` says, without hooks.
fn pretrain_images(
    dev: &Cpu,
    images: &[f32],
    cfg: &PretrainConfig,
    seed: u64,
    start: Start<'_, Cpu>,
) -> Result<Pretrained<Cpu>> {
    let pixels = pixels(images);
    pretrain(
        dev,
        Images::new(&pixels, SIDE8),
        cfg,
        seed,
        start,
        Hooks::default(),
    )
}

/// A fresh [`pretrain_images`].
fn fresh(dev: &Cpu, images: &[f32], cfg: &PretrainConfig, seed: u64) -> Pretrained<Cpu> {
    pretrain_images(dev, images, cfg, seed, Start::Fresh).unwrap()
}

/// A dense autoencoder of 8x8 images with the reconstruction loss `loss`, 8 epochs of 32.
fn config(noise: Noise, loss: Reconstruction) -> PretrainConfig {
    let dense = Architecture::Dense(imprint_nn::DenseNet {
        hidden: vec![32],
        latent: 8,
    });
    let mut cfg = PretrainConfig {
        noise,
        batch_size: 32,
        holdout_fraction: 0.1,
        ..PretrainConfig::new(dense, 8)
    };
    reconstruction_of(&mut cfg).loss = loss;
    cfg.optim.lr = 3e-3;
    cfg
}

/// The settings of `cfg`'s reconstruction pretext.
fn reconstruction_of(cfg: &mut PretrainConfig) -> &mut reconstruction::Settings {
    cfg.pretexts
        .iter_mut()
        .find_map(|p| match p {
            PretextConfig::Reconstruction(r) => Some(r),
            _ => None,
        })
        .expect("a reconstruction pretext")
}

fn contrastive(weight: f64, temperature: f64) -> PretextConfig {
    PretextConfig::Contrastive(contrastive::Settings::new(weight, temperature))
}

/// A small conv net for 8x8 images.
fn conv() -> Architecture {
    Architecture::Conv(imprint_nn::ConvNet {
        channels: vec![4, 8],
        kernel: 3,
        stride: 2,
        latent: 8,
    })
}

/// A tiny ResNet (8 layers) for 8x8 images: it pools its maps, so it reads small crops too.
fn resnet8() -> Architecture {
    toml::from_str::<Architecture>("kind = \"resnet\"\ndepth = 8").unwrap()
}

/// The run's cases of [`resumed_run_equals_uninterrupted_run`]: a dense autoencoder; a conv
/// net with augmentation and the contrastive term's second view; BYOL's momentum teacher on the
/// conv net; DINO's teacher and centre on a ResNet with two small crops.
fn resume_cases() -> Vec<(&'static str, PretrainConfig)> {
    let mut dense = config(Noise::Masking { fraction: 0.3 }, Reconstruction::Bce);
    dense.epochs = 4;
    let mut contrast = dense.clone();
    contrast.architecture = conv();
    contrast.augment.shift = 1;
    contrast.augment.rotate_degrees = 10.0;
    contrast.pretexts.push(contrastive(0.5, 0.5));
    let mut byol = contrast.clone();
    byol.pretexts = vec![PretextConfig::Byol(byol::Settings {
        hidden: 16,
        dim: 8,
        ..byol::Settings::default()
    })];
    let mut dino = byol.clone();
    dino.architecture = resnet8();
    dino.batch_size = 16;
    dino.pretexts = vec![PretextConfig::Dino(dino::Settings {
        hidden: 16,
        bottleneck: 8,
        output_dim: 12,
        crops: LocalCrops {
            local_crops: 2,
            local_size: Some(4),
            local_scale: (0.2, 0.5),
        },
        ..dino::Settings::default()
    })];
    vec![
        ("dense", dense),
        ("contrastive", contrast),
        ("byol", byol),
        ("dino", dino),
    ]
}

/// A run stopped after an epoch and resumed from its snapshot ends with the weights and
/// losses of the run that never stopped: the random stream must continue, not restart, and the
/// heads' weights and moments, the teachers (weights and batch-norm statistics) and DINO's
/// centre come back too.
#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dev = Cpu::default();
    let images = bars(200, 8, 2);
    for (case, cfg) in resume_cases() {
        let weights = |run: &Pretrained<Cpu>| {
            let mut t = run.encoder.named_tensors("encoder");
            if let Some(decoder) = &run.decoder {
                t.extend(decoder.named_tensors("decoder"));
            }
            t
        };
        let losses = |run: &Pretrained<Cpu>| {
            let h = run.history.iter();
            h.map(|h| (h.train_loss, h.heldout_loss))
                .collect::<Vec<_>>()
        };
        let whole = fresh(&dev, &images, &cfg, 5);

        let mut saved = None;
        let mut crash_after_second = |s: &Snapshot| {
            saved = Some(s.clone());
            if s.state.epochs_done == 2 {
                return Err(PretrainError::Checkpoint("simulated crash".into()));
            }
            Ok(())
        };
        let hooks = Hooks {
            on_checkpoint: Some(&mut crash_after_second),
            ..Hooks::default()
        };
        let crashed = pretrain(
            &dev,
            Images::new(&pixels(&images), SIDE8),
            &cfg,
            5,
            Start::Fresh,
            hooks,
        );
        assert!(crashed.is_err());
        let snapshot = saved.expect("a snapshot after epoch 2");
        assert_eq!(snapshot.state.epochs_done, 2);
        let held = |prefix: &str| snapshot.tensors.iter().any(|t| t.name.starts_with(prefix));
        match case {
            "byol" => assert!(held("byol.teacher.encoder.") && held("byol.teacher.projector.")),
            "dino" => assert!(held("dino.teacher.head.") && held("dino.center")),
            _ => {}
        }

        let resumed = pretrain_images(&dev, &images, &cfg, 5, Start::Resume(&snapshot)).unwrap();
        assert_eq!(weights(&resumed), weights(&whole), "{case}");
        assert_eq!(losses(&resumed), losses(&whole), "{case}");

        let err = pretrain_images(&dev, &images, &cfg, 6, Start::Resume(&snapshot))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("seed 5, not 6"), "{err}");
    }
}

/// BYOL's teacher is no parameter of the run: the optimizer's list leaves it out, a step of
/// the optimizer leaves it as it was, and only the hook after the step moves it, by the
/// momentum of the first step towards the student's new weights; its batch-norm statistics
/// are its own, gathered by its forward passes, and the hook leaves them alone.
#[test]
fn the_teacher_is_no_parameter_and_moves_only_after_the_step() {
    let dev = Cpu::default();
    let images = pixels(&bars(96, 8, 3));
    let (_, cfg) = resume_cases().swap_remove(2);
    let images = Images::new(&images, SIDE8);
    let (mut task, mut optimizer) =
        Pretraining::prepare(&dev, images, &cfg, 0, Start::Fresh, Hooks::default()).unwrap();
    let trained: Vec<String> = task
        .nets
        .trainable_mut("")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(trained.iter().any(|n| n.starts_with("byol.predictor.")));
    assert!(trained.iter().any(|n| n.starts_with("encoder.")));
    assert!(
        !trained.iter().any(|n| n.contains("teacher")),
        "{trained:?}"
    );

    let tensors = |task: &Pretraining<Cpu>, prefix: &str| -> BTreeMap<String, Vec<f32>> {
        let all = task.nets.named_tensors("").into_iter();
        all.filter_map(|t| t.name.strip_prefix(prefix).map(|n| (n.to_string(), t.data)))
            .collect()
    };
    // The teacher starts as a copy of the student.
    assert_eq!(
        tensors(&task, "byol.teacher.encoder."),
        tensors(&task, "encoder.")
    );
    let loss = task.loss(0).unwrap();
    let value = loss.as_vec()[0];
    let mut grads = loss.backward();
    let before = tensors(&task, "byol.teacher.");
    let mut groups: Vec<ParamGroup<'_, Cpu>> = task
        .groups(0)
        .into_iter()
        .map(|g| ParamGroup {
            lr: 0.01,
            weight_decay: 0.0,
            params: g.params,
        })
        .collect();
    optimizer.step(&mut groups, &mut grads).unwrap();
    drop(groups);
    assert_eq!(
        tensors(&task, "byol.teacher."),
        before,
        "the step moved the teacher"
    );
    let student = tensors(&task, "encoder.");
    assert_ne!(student, tensors(&task, "byol.teacher.encoder."));

    task.after_step(0, value, &mut optimizer).unwrap();
    let m = Progress {
        step: 0,
        steps: task.steps,
    }
    .cosine(0.99, 1.0) as f32;
    let after = tensors(&task, "byol.teacher.encoder.");
    for (name, moved) in &after {
        let was = &before[&format!("encoder.{name}")];
        if name.contains("running_") {
            assert_eq!(moved, was, "{name}: the hook moved a statistic");
            continue;
        }
        let expected: Vec<f32> = was
            .iter()
            .zip(&student[name])
            .map(|(t, s)| t * m + s * (1.0 - m))
            .collect();
        assert_eq!(moved, &expected, "{name}");
    }
}

#[test]
fn loss_falls_and_runs_are_reproducible() {
    let dev = Cpu::default();
    let images = bars(600, 8, 0);
    for (noise, loss) in [
        (Noise::None, Reconstruction::Mse),
        (Noise::Masking { fraction: 0.3 }, Reconstruction::Bce),
        (Noise::Gaussian { std: 0.2 }, Reconstruction::Mse),
    ] {
        let cfg = config(noise, loss);
        let run = || fresh(&dev, &images, &cfg, 7);
        let a = run();
        let first = a.history.first().unwrap();
        let last = a.history.last().unwrap();
        assert!(
            last.heldout_loss.unwrap() < 0.7 * first.heldout_loss.unwrap(),
            "{noise:?} {loss:?}: held-out loss {:?} -> {:?}",
            first.heldout_loss,
            last.heldout_loss
        );
        let b = run();
        let losses =
            |p: &Pretrained<Cpu>| p.history.iter().map(|h| h.train_loss).collect::<Vec<_>>();
        assert_eq!(losses(&a), losses(&b), "same seed, same losses");
    }
}

/// Augmented inputs and targets change what is learned, yet the net still learns to
/// reconstruct (the held-out images are not augmented) and a seed still fixes the run.
#[test]
fn augmented_pretraining_learns_and_repeats() {
    let dev = Cpu::default();
    let images = bars(600, 8, 4);
    let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
    let losses = |cfg: &PretrainConfig| {
        let run = fresh(&dev, &images, cfg, 7);
        run.history
            .iter()
            .map(|h| (h.train_loss, h.heldout_loss.unwrap()))
            .collect::<Vec<_>>()
    };
    let plain = losses(&cfg);
    cfg.augment.shift = 1;
    cfg.augment.rotate_degrees = 8.0;
    let augmented = losses(&cfg);
    assert_ne!(augmented, plain);
    assert_eq!(augmented, losses(&cfg), "same seed, same losses");
    let (first, last) = (augmented[0].1, augmented.last().unwrap().1);
    assert!(last < 0.8 * first, "held-out loss {first} -> {last}");
}

/// With the augmentation as noise the autoencoder learns to undo the moves: fed moved
/// images, it draws something nearer the originals than one trained to copy the moves does.
#[test]
fn augmentation_as_noise_learns_to_undo_the_moves() {
    // A bar through the centre, across or down, of random brightness: the centre is the
    // one place the moves can be undone to.
    let centred = |n: usize, seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = vec![0.0; n * 64];
        for img in out.chunks_exact_mut(64) {
            let (across, value) = (rng.gen_bool(0.5), rng.gen_range(0.5..1.0));
            for k in 0..8 {
                img[if across { 24 + k } else { 8 * k + 3 }] = value;
            }
        }
        out
    };
    let dev = Cpu::default();
    let images = centred(600, 4);
    let mut cfg = config(Noise::None, Reconstruction::Bce);
    cfg.augment.shift = 2;
    let originals = centred(100, 9);
    let mut moved = vec![0.0; originals.len()];
    augment_batch(&originals, SIDE8, &cfg.augment, 3, &mut moved);
    let error_to_originals = |cfg: &PretrainConfig| {
        let mut run = fresh(&dev, &images, cfg, 7);
        let decoder = run.decoder.as_mut().unwrap();
        let drawn = reconstruct(&dev, &mut run.encoder, decoder, &moved, SIDE8.len());
        let squares = drawn.iter().zip(&originals).map(|(a, b)| (a - b).powi(2));
        squares.sum::<f32>() / drawn.len() as f32
    };
    let copies_the_moves = error_to_originals(&cfg);
    reconstruction_of(&mut cfg).augment_as_noise = true;
    let undoes_them = error_to_originals(&cfg);
    assert!(
        undoes_them < 0.5 * copies_the_moves,
        "error to the originals: {undoes_them} as noise, {copies_the_moves} moved alike"
    );
}

/// Of 64 distinct images (every bar cross once) seen in two views drawn as `cfg` draws them,
/// how many find their own other view nearest (by the cosine of `encoder`'s codes) among the
/// 64 second views.
fn views_that_find_each_other(cfg: &PretrainConfig, encoder: &mut Encoder<Cpu>) -> usize {
    let dev = Cpu::default();
    let mut distinct = vec![0.0f32; 64 * 64];
    for (i, img) in distinct.chunks_exact_mut(64).enumerate() {
        for k in 0..8 {
            img[(i / 8) * 8 + k] = 1.0;
            img[k * 8 + i % 8] = 1.0;
        }
    }
    let codes: Vec<Vec<Vec<f32>>> = (0..2u64)
        .map(|v| {
            let mut rng = ChaCha8Rng::seed_from_u64(v);
            let mut view = vec![0.0; distinct.len()];
            augment_batch(&distinct, SIDE8, &cfg.augment, rng.gen(), &mut view);
            let mut hidden = vec![0.0; view.len()];
            corrupt(&mut view, SIDE8, cfg.noise, &mut rng, &mut hidden);
            let x: Matrix<Cpu> = dev.tensor_from_vec(view, (64, 64));
            let z = encoder.forward(x, &mut Pass::eval()).as_vec();
            z.chunks(z.len() / 64)
                .map(|c| {
                    let norm = c.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    c.iter().map(|v| v / norm).collect()
                })
                .collect()
        })
        .collect();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    (0..64)
        .filter(|&i| {
            let nearest = (0..64)
                .max_by(|&a, &b| {
                    let (sa, sb) = (
                        cosine(&codes[0][i], &codes[1][a]),
                        cosine(&codes[0][i], &codes[1][b]),
                    );
                    sa.total_cmp(&sb)
                })
                .unwrap();
            nearest == i
        })
        .count()
}

/// Views that differ by rotation and masked pixels (a shift would turn one cross into another,
/// so there would be nothing to find), 20 epochs.
fn two_view_config() -> PretrainConfig {
    let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
    cfg.augment.rotate_degrees = 20.0;
    cfg.epochs = 20;
    cfg
}

/// With the contrastive term the codes of two views of an image find each other: the nearest
/// second view to a first view's code is its own more often than for the autoencoder alone
/// (58 against 49 of 64 when written).
#[test]
fn contrastive_term_makes_views_of_an_image_find_each_other() {
    let dev = Cpu::default();
    let images = bars(600, 8, 5);
    let mut cfg = two_view_config();
    let found = |cfg: &PretrainConfig| {
        let mut run = fresh(&dev, &images, cfg, 7);
        views_that_find_each_other(cfg, &mut run.encoder)
    };
    let alone = found(&cfg);
    // Telling single images apart is what a low temperature weighs most (the default 0.5
    // trades some of it for codes that group alike images: 40 found against 49 here).
    cfg.pretexts.push(contrastive(1.0, 0.1));
    let with_term = found(&cfg);
    assert!(
        with_term >= alone + 5,
        "views that found each other, of 64: {with_term} with the term, {alone} without"
    );
    // SimCLR's own head: wider, batch norm before its ReLU.
    cfg.pretexts[1] = PretextConfig::Contrastive(contrastive::Settings {
        hidden: Some(32),
        dim: 16,
        batch_norm: true,
        ..contrastive::Settings::new(1.0, 0.1)
    });
    let with_bn_head = found(&cfg);
    assert!(
        with_bn_head >= alone + 5,
        "views that found each other, of 64: {with_bn_head} with the batch-norm head, {alone} \
         without the term"
    );
}

/// `new` is what a pipeline file naming only the architecture and epochs gets.
#[test]
fn new_matches_the_pipeline_defaults() {
    let from_file: PretrainConfig = toml::from_str(
        "epochs = 3\narchitecture = { kind = \"dense\", hidden = [32], latent = 8 }",
    )
    .unwrap();
    let dense = Architecture::Dense(imprint_nn::DenseNet {
        hidden: vec![32],
        latent: 8,
    });
    assert_eq!(PretrainConfig::new(dense, 3), from_file);
}

#[test]
fn description_names_the_settings_in_use() {
    let mut cfg = config(
        Noise::Patches {
            patch: 4,
            fraction: 0.5,
        },
        Reconstruction::Bce,
    );
    reconstruction_of(&mut cfg).loss_on_hidden_only = true;
    cfg.augment.rotate_degrees = 12.0;
    assert_eq!(
        cfg.describe(),
        "8 epochs of 32 images (lr 0.003, 4x4 patches 50% hidden, rotations ±12°, BCE loss on \
         the hidden pixels)"
    );
    reconstruction_of(&mut cfg).loss_on_hidden_only = false;
    reconstruction_of(&mut cfg).augment_as_noise = true;
    assert!(
        cfg.describe()
            .ends_with("rotations ±12°, BCE loss of the original (the moves as noise))"),
        "{}",
        cfg.describe()
    );
    cfg.pretexts.push(contrastive(0.5, 0.5));
    assert!(
        cfg.describe()
            .ends_with("(the moves as noise), contrastive x0.5 at temperature 0.5)"),
        "{}",
        cfg.describe()
    );
    let plain = config(Noise::None, Reconstruction::Mse).describe();
    assert_eq!(
        plain,
        "8 epochs of 32 images (lr 0.003, no noise, MSE loss)"
    );
    let (_, dino) = resume_cases().swap_remove(3);
    assert!(
        dino.describe().ends_with(
            "DINO x1 (12 outputs, student temperature 0.1, teacher 0.04 -> 0.07 over 30% of \
             the steps, teacher momentum 0.996 -> 1, 2 local crops of 4 px (20-50% of the \
             image)))"
        ),
        "{}",
        dino.describe()
    );
}

#[test]
fn bad_settings_are_rejected_by_name() {
    let mut cfg = config(Noise::None, Reconstruction::Mse);
    cfg.batch_size = 0;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("batch_size"), "{e}");
    cfg.batch_size = 4;
    cfg.noise = Noise::Masking { fraction: 1.5 };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("noise.fraction"));
    cfg.noise = Noise::None;
    cfg.augment.rotate_degrees = 200.0;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("augment_rotate"), "{e}");
    cfg.augment.rotate_degrees = 0.0;
    reconstruction_of(&mut cfg).augment_as_noise = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("pretexts.reconstruction.augment_as_noise") && e.contains("needs augmentation"),
        "{e}"
    );
    cfg.augment.shift = 2;
    cfg.noise = Noise::Patches {
        patch: 2,
        fraction: 0.5,
    };
    reconstruction_of(&mut cfg).loss_on_hidden_only = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("loss_on_hidden_only"), "{e}");

    let mut cfg = config(Noise::None, Reconstruction::Mse);
    cfg.pretexts.push(contrastive(1.0, 0.5));
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("`pretexts.contrastive`") && e.contains("two different views"),
        "{e}"
    );
    cfg.noise = Noise::Masking { fraction: 0.2 };
    let cases: [(PretextConfig, &str); 8] = [
        (contrastive(1.0, 0.0), "pretexts.contrastive.temperature"),
        (
            PretextConfig::Contrastive(contrastive::Settings {
                dim: 0,
                ..contrastive::Settings::new(1.0, 0.5)
            }),
            "pretexts.contrastive.dim",
        ),
        (
            PretextConfig::Contrastive(contrastive::Settings {
                hidden: Some(0),
                ..contrastive::Settings::new(1.0, 0.5)
            }),
            "pretexts.contrastive.hidden",
        ),
        (contrastive(-1.0, 0.5), "pretexts.contrastive.weight"),
        (contrastive(0.0, 0.5), "pretexts.contrastive.weight"),
        (
            PretextConfig::Byol(byol::Settings {
                momentum: 1.5,
                ..byol::Settings::default()
            }),
            "pretexts.byol.momentum",
        ),
        (
            PretextConfig::Dino(dino::Settings {
                teacher_temperature: 0.0,
                ..dino::Settings::default()
            }),
            "pretexts.dino.teacher_temperature",
        ),
        (
            PretextConfig::Dino(dino::Settings {
                crops: LocalCrops {
                    local_crops: 2,
                    ..LocalCrops::default()
                },
                ..dino::Settings::default()
            }),
            "pretexts.dino.local_crops",
        ),
    ];
    for (pretext, key) in cases {
        cfg.pretexts = vec![pretext];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
    }
    cfg.pretexts = vec![contrastive(1.0, 0.5), contrastive(0.5, 0.5)];
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("named twice"), "{e}");
    cfg.pretexts.clear();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("`pretexts`"), "{e}");
}

/// Two methods with small crops draw one set: they must ask for the same.
#[test]
fn pretexts_must_agree_on_their_small_crops() {
    let mut cfg = resume_cases().swap_remove(3).1;
    let crops = |n| LocalCrops {
        local_crops: n,
        local_size: Some(4),
        local_scale: (0.2, 0.5),
    };
    let with = |n| {
        let mut c = contrastive::Settings::new(1.0, 0.5);
        c.crops = crops(n);
        PretextConfig::Contrastive(c)
    };
    cfg.pretexts.push(with(2));
    cfg.validate().unwrap();
    cfg.pretexts[1] = with(3);
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("pretexts.contrastive.local_crops") && e.contains("pretexts.dino"),
        "{e}"
    );
}

/// With rotation prediction alone, the code learns to tell an "L"'s four turns apart: the loss
/// falls from ln 4 (chance) to under half of it.
#[test]
fn rotation_pretext_learns_the_turns() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut images = vec![0.0f32; 400 * 64];
    for img in images.chunks_exact_mut(64) {
        let (r, c) = (rng.gen_range(0..3), rng.gen_range(0..3));
        for k in 0..5 {
            img[(r + k) * 8 + c] = 1.0;
        }
        for k in 1..4 {
            img[(r + 4) * 8 + c + k] = 1.0;
        }
    }
    let mut cfg = config(Noise::None, Reconstruction::Mse);
    cfg.pretexts = vec![PretextConfig::Rotation(rotation::Settings { weight: 1.0 })];
    cfg.architecture = Architecture::Conv(imprint_nn::ConvNet {
        channels: vec![8, 16],
        kernel: 3,
        stride: 2,
        latent: 16,
    });
    cfg.epochs = 20;
    let run = fresh(&dev, &images, &cfg, 0);
    let (first, last) = (
        run.history[0].train_loss,
        run.history.last().unwrap().train_loss,
    );
    assert!(first > 1.0, "starts near chance (ln 4 = 1.39): {first}");
    assert!(last < 0.5 * 4f64.ln(), "{first} -> {last}");
    assert!(run.decoder.is_none(), "no reconstruction, no decoder");
}

/// `[pretrain]` read from TOML `text` after the architecture and epochs.
fn section(text: &str) -> std::result::Result<PretrainConfig, String> {
    let head = "epochs = 3\narchitecture = { kind = \"dense\", hidden = [32], latent = 8 }\n";
    toml::from_str(&format!("{head}{text}")).map_err(|e| e.message().to_string())
}

/// Files written before `pretexts` keep their meaning: the old keys become the list, ordered
/// as the losses were taken (reconstruction's last).
#[test]
fn old_keys_are_translated_into_the_list() {
    let old = section(
        "loss = \"bce\"\nloss_on_hidden_only = false\ncontrast_weight = 1.0\n\
         contrast_temperature = 0.2\n",
    )
    .unwrap();
    let new = section(
        "pretexts = [{ kind = \"contrastive\", temperature = 0.2 },\n\
         { kind = \"reconstruction\", loss = \"bce\" }]\n",
    )
    .unwrap();
    assert_eq!(old, new);
    // What an older run wrote into its `pipeline.toml`: every key, the unused weights at 0.
    let resolved = section(
        "reconstruction_weight = 0.0\ncontrast_weight = 1.0\ncontrast_temperature = 0.2\n\
         rotation_weight = 0.0\nloss = \"mse\"\nloss_on_hidden_only = false\n\
         augment_as_noise = false\n",
    )
    .unwrap();
    assert_eq!(resolved.pretexts, vec![contrastive(1.0, 0.2)]);
    let rotation = section("reconstruction_weight = 0.5\nrotation_weight = 2.0\n").unwrap();
    assert_eq!(
        rotation.pretexts,
        [
            PretextConfig::Rotation(rotation::Settings { weight: 2.0 }),
            PretextConfig::Reconstruction(reconstruction::Settings {
                weight: 0.5,
                ..Default::default()
            }),
        ]
    );
    // No key at all: reconstruction alone, as before.
    assert_eq!(
        section("").unwrap().pretexts,
        PretrainConfig::new(conv(), 1).pretexts
    );
}

#[test]
fn old_keys_beside_pretexts_or_meaning_nothing_are_refused() {
    let e = section("pretexts = [{ kind = \"byol\" }]\ncontrast_temperature = 0.3\n").unwrap_err();
    assert!(
        e.contains("`contrast_temperature`")
            && e.contains("{ kind = \"contrastive\", temperature = ... }"),
        "{e}"
    );
    // All weights 0 read (a `--set` may pass through them), and the check refuses them.
    let none = section("reconstruction_weight = 0.0\n").unwrap();
    let e = none.validate().unwrap_err().to_string();
    assert!(e.contains("nothing would be trained"), "{e}");
    let e = section("rotation_weight = -1.0\n").unwrap_err();
    assert!(
        e.contains("`rotation_weight` must be a non-negative number"),
        "{e}"
    );
    let e = section("pretexts = [{ kind = \"dino\", temprature = 0.1 }]\n").unwrap_err();
    assert!(e.contains("unknown field `temprature`"), "{e}");
    let e = section("pretexts = [{ kind = \"simsiam\" }]\n").unwrap_err();
    assert!(e.contains("unknown variant `simsiam`"), "{e}");
}

/// What a run writes into its output folder (`pipeline.toml`) reads back as the same
/// settings, every method with settings away from the defaults.
#[test]
fn settings_written_out_read_back_the_same() {
    let mut cfg = resume_cases().swap_remove(3).1;
    let mut c = contrastive::Settings::new(0.5, 0.2);
    c.crops = LocalCrops {
        local_crops: 2,
        local_size: Some(4),
        local_scale: (0.2, 0.5),
    };
    cfg.pretexts.extend([
        PretextConfig::Contrastive(c),
        PretextConfig::Byol(byol::Settings {
            momentum: 0.996,
            ..byol::Settings::default()
        }),
        PretextConfig::Rotation(rotation::Settings { weight: 0.3 }),
        PretextConfig::Reconstruction(reconstruction::Settings {
            loss: Reconstruction::Bce,
            augment_as_noise: true,
            ..Default::default()
        }),
    ]);
    cfg.monitor_labels_per_class = 3;
    let text = toml::to_string(&cfg).unwrap();
    let back: PretrainConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg, "{text}");
}

/// Multi-crop views: two full-size views and the small crops, each of the asked size, every
/// one drawn afresh; a run with them trains (the contrastive term pairs each crop with both
/// full-size views) and repeats.
#[test]
fn small_crops_are_drawn_and_trained_on() {
    let mut cfg = resume_cases().swap_remove(3).1;
    let mut c = contrastive::Settings::new(1.0, 0.5);
    c.crops = LocalCrops {
        local_crops: 3,
        local_size: Some(4),
        local_scale: (0.2, 0.5),
    };
    cfg.pretexts = vec![PretextConfig::Contrastive(c)];
    cfg.epochs = 2;
    let plan = ViewPlan::new(cfg.view_needs().unwrap(), SIDE8);
    let images = bars(8, 8, 1);
    let views = draw_views(
        &images,
        SIDE8,
        &plan,
        &cfg.augment,
        cfg.noise,
        &mut ChaCha8Rng::seed_from_u64(0),
    );
    assert_eq!(views.global.len(), 2);
    assert_eq!(views.local.len(), 3);
    assert!(views.local.iter().all(|v| v.len() == 8 * 16));
    assert_ne!(views.local[0], views.local[1]);
    let dev = Cpu::default();
    let run = fresh(&dev, &bars(200, 8, 2), &cfg, 1);
    let again = fresh(&dev, &bars(200, 8, 2), &cfg, 1);
    let losses = |r: &Pretrained<Cpu>| r.history.iter().map(|h| h.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&run), losses(&again));
    assert!(losses(&run).iter().all(|l| l.is_finite()));
}

/// BYOL, DINO and VICReg learn without negatives and without collapsing: their codes make two
/// views of an image find each other far more often than an untrained encoder's do (45, 44 and
/// 44 of 64 against 14 when written; a collapsed encoder, every code alike, would
/// find next to none).
#[test]
fn methods_without_negatives_make_views_of_an_image_find_each_other() {
    let dev = Cpu::default();
    let images = bars(600, 8, 5);
    let base = two_view_config();
    let rng = &mut ChaCha8Rng::seed_from_u64(7);
    let mut untrained = Encoder::new(&dev, &base.architecture, SIDE8, rng).unwrap();
    let before = views_that_find_each_other(&base, &mut untrained);
    let methods = [
        PretextConfig::Byol(byol::Settings {
            hidden: 64,
            dim: 32,
            ..byol::Settings::default()
        }),
        PretextConfig::Dino(dino::Settings {
            hidden: 64,
            bottleneck: 16,
            output_dim: 64,
            ..dino::Settings::default()
        }),
        PretextConfig::Vicreg(vicreg::Settings {
            hidden: 64,
            dim: 64,
            ..vicreg::Settings::default()
        }),
    ];
    for method in methods {
        let mut cfg = base.clone();
        cfg.pretexts = vec![method];
        let mut run = fresh(&dev, &images, &cfg, 7);
        let after = views_that_find_each_other(&cfg, &mut run.encoder);
        assert!(
            after >= before + 20,
            "{}: views that found each other, of 64: {after} trained, {before} untrained",
            cfg.pretexts[0].kind()
        );
    }
}

/// The heads are drawn in the registry's order, so the list's order (the order the losses are
/// taken in) leaves the initial weights as they are.
#[test]
fn the_order_of_the_list_leaves_the_init_alone() {
    let dev = Cpu::default();
    let mut cfg = two_view_config();
    cfg.pretexts.push(contrastive(1.0, 0.5));
    let init = |cfg: &PretrainConfig| {
        let rng = &mut ChaCha8Rng::seed_from_u64(3);
        let nets = Nets::new(&dev, cfg, SIDE8, None, None, rng).unwrap();
        let mut tensors = nets.named_tensors("");
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    };
    let forward = init(&cfg);
    cfg.pretexts.reverse();
    assert_eq!(init(&cfg), forward);
}
/// The pre-training by `pretexts` of a small ResNet on `pixels` (images of `shape`), by
/// `replicas`, with `optimizer`; with masked reconstruction, half of the 4x4 patches of each
/// view hidden.
fn resnet_pretraining(
    pixels: &Pixels,
    shape: ImageShape,
    pretexts: &[PretextConfig],
    optimizer: imprint_train::OptimizerKind,
    replicas: Option<imprint_collective::Replicas>,
) -> Result<Pretrained<Cpu>> {
    let masked = pretexts
        .iter()
        .any(|p| matches!(p, PretextConfig::Reconstruction(r) if r.loss_on_hidden_only));
    let mut cfg = PretrainConfig {
        pretexts: pretexts.to_vec(),
        noise: match masked {
            true => Noise::Patches {
                patch: 4,
                fraction: 0.5,
            },
            false => Noise::None,
        },
        sync_batch_norm: Some(true),
        batch_size: 64,
        holdout_fraction: 0.0,
        ..PretrainConfig::new(
            Architecture::Resnet(imprint_nn::ResNet {
                depth: 8,
                layout: Default::default(),
                widths: Some(vec![4, 8, 16]),
                shortcut: None,
            }),
            2,
        )
    };
    cfg.augment.shift = 1;
    cfg.optim.optimizer = optimizer;
    cfg.optim.lr = match optimizer {
        imprint_train::OptimizerKind::Adam => 3e-3,
        imprint_train::OptimizerKind::Sgd => 0.05,
    };
    let hooks = Hooks {
        replicas,
        ..Hooks::default()
    };
    let images = Images::new(pixels, shape);
    pretrain(&Cpu::default(), images, &cfg, 5, Start::Fresh, hooks)
}

/// 320 of the shipped digits.
fn digits_320() -> (Pixels, ImageShape) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits");
    let digits = imprint_data::load(
        &dir.join("digits-images-idx3-ubyte.gz"),
        &imprint_data::Preprocess::default(),
    )
    .unwrap();
    let ids: Vec<usize> = (0..320).collect();
    (digits.pixels.subset(&ids), digits.shape)
}

/// Two replicas, threads of this process with half of every batch each, pre-train by
/// `pretexts` (batch norms synchronised) the encoder one process trains on the whole batch:
/// ResNet-8 on 320 of the shipped digits, 10 steps. Not bit for bit: the replicas take the sums
/// over the batch in another order (each its share, then the two shares added), so the weights
/// agree to the rounding of f32 sums, carried through 10 Adam steps. The two replicas hold the
/// same bits, and each epoch's loss is the global batch's on both.
fn two_replicas_train_what_one_process_trains(
    pretexts: &[PretextConfig],
    optimizer: imprint_train::OptimizerKind,
) {
    use imprint_collective::local_group;
    let (pixels, shape) = digits_320();
    let one = resnet_pretraining(&pixels, shape, pretexts, optimizer, None).unwrap();
    let two: Vec<(Vec<NamedTensor>, Vec<EpochStats>)> = std::thread::scope(|s| {
        let handles: Vec<_> = local_group(2)
            .into_iter()
            .map(|member| {
                let pixels = &pixels;
                s.spawn(move || {
                    let member: imprint_collective::Replicas = std::rc::Rc::new(member);
                    assert_eq!(member.size(), 2);
                    let run = resnet_pretraining(pixels, shape, pretexts, optimizer, Some(member))
                        .unwrap();
                    (run.encoder.named_tensors("encoder"), run.history)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(two[0].0, two[1].0, "the replicas differ");
    let mut worst: f32 = 0.0;
    for (a, b) in one.encoder.named_tensors("encoder").iter().zip(&two[0].0) {
        assert_eq!(a.name, b.name);
        // Relative to the tensor's largest value, but not below 0.1: batch-norm biases start
        // at 0 and stay near it, and there the sums' order alone (one batch against two
        // halves, which the AVX2 kernels split otherwise than the AVX-512 ones) moves them by
        // about 1e-5 after Adam's steps; leaving out DINO's sum over the replicas reads 4e-2.
        let scale = a.data.iter().fold(0.1f32, |m, v| m.max(v.abs()));
        let diff = a
            .data
            .iter()
            .zip(&b.data)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
    }
    eprintln!("largest difference, relative to its tensor's largest value: {worst:e}");
    assert!(worst < 1e-4, "2 replicas vs 1 process: {worst:e}");
    for (a, b) in one.history.iter().zip(&two[0].1) {
        let (a, b) = (a.train_loss, b.train_loss);
        assert!((a - b).abs() < 1e-4 * a.abs(), "train loss {a} vs {b}");
    }
}

/// SimCLR: the projections gathered, so that the negatives are the whole global batch; then
/// with two small crops of each image beside the two views.
#[test]
fn two_replicas_train_the_encoder_one_process_trains() {
    two_replicas_train_what_one_process_trains(&[contrastive(1.0, 0.5)], Default::default());
    let crops = contrastive::Settings {
        crops: LocalCrops {
            local_crops: 2,
            local_size: Some(14),
            local_scale: (0.2, 0.5),
        },
        ..contrastive::Settings::new(1.0, 0.5)
    };
    two_replicas_train_what_one_process_trains(
        &[PretextConfig::Contrastive(crops)],
        Default::default(),
    );
}

/// BYOL (a mean over the rows, each replica's share weighted by its rows; the teacher's and
/// heads' batch norms synchronised too) beside masked reconstruction (a mean over the hidden
/// pixels, weighted by each share's count of them). With SGD: the biases of the projector's
/// linear layers, each followed by a batch norm in the student's path, get no gradient but the
/// rounding of the sums, which Adam scales up to steps of the learning rate, and the teacher
/// copies them into targets that no batch norm follows: under Adam the 2 replicas ended 5.2e-3
/// of a tensor's largest value from one process, though the gradients agreed to rounding.
#[test]
fn two_replicas_train_byol_and_masked_reconstruction_as_one_process() {
    two_replicas_train_what_one_process_trains(
        &[
            PretextConfig::Byol(byol::Settings {
                hidden: 32,
                dim: 16,
                ..Default::default()
            }),
            PretextConfig::Reconstruction(reconstruction::Settings {
                weight: 0.5,
                loss_on_hidden_only: true,
                ..Default::default()
            }),
        ],
        imprint_train::OptimizerKind::Sgd,
    );
}

/// VICReg: the expansions gathered, so that the variance and covariance are the global batch's.
#[test]
fn two_replicas_train_vicreg_as_one_process() {
    two_replicas_train_what_one_process_trains(
        &[PretextConfig::Vicreg(vicreg::Settings {
            hidden: 32,
            dim: 32,
            ..Default::default()
        })],
        Default::default(),
    );
}

/// DINO with two small crops: each replica's student loss weighted by its rows, the teacher's
/// outputs summed over every replica for the centre's move, batch norms synchronised.
#[test]
fn two_replicas_train_dino_with_small_crops_as_one_process() {
    two_replicas_train_what_one_process_trains(
        &[PretextConfig::Dino(dino::Settings {
            hidden: 32,
            bottleneck: 16,
            output_dim: 64,
            crops: LocalCrops {
                local_crops: 2,
                local_size: Some(14),
                local_scale: (0.2, 0.5),
            },
            ..Default::default()
        })],
        Default::default(),
    );
}
