use super::*;
use crate::views::corrupt;
use imprint_data::augment::augment_batch;
use imprint_nn::loss::Reconstruction;
use imprint_nn::Architecture;
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
            cfg.loss_on_hidden_only = true;
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

fn config(noise: Noise, loss: Reconstruction) -> PretrainConfig {
    let dense = Architecture::Dense(imprint_nn::DenseNet {
        hidden: vec![32],
        latent: 8,
    });
    let mut cfg = PretrainConfig {
        noise,
        loss,
        batch_size: 32,
        holdout_fraction: 0.1,
        ..PretrainConfig::new(dense, 8)
    };
    cfg.optim.lr = 3e-3;
    cfg
}

/// A run stopped after an epoch and resumed from its snapshot ends with the weights and
/// losses of the run that never stopped, for a dense and a conv net with noise (and, for the
/// conv net, augmentation and the contrastive term's second view) drawn each step: the
/// random stream must continue, not restart, and the projection head's weights and moments
/// come back too.
#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dev = Cpu::default();
    let images = bars(300, 8, 2);
    let mut cfg = config(Noise::Masking { fraction: 0.3 }, Reconstruction::Bce);
    cfg.epochs = 4;
    for conv in [false, true] {
        if conv {
            cfg.architecture = Architecture::Conv(imprint_nn::ConvNet {
                channels: vec![4, 8],
                kernel: 3,
                stride: 2,
                latent: 8,
            });
            cfg.augment.shift = 1;
            cfg.augment.rotate_degrees = 10.0;
            cfg.contrast_weight = 0.5;
        }
        let weights = |run: &Pretrained<Cpu>| {
            let mut t = run.encoder.named_tensors("encoder");
            t.extend(run.decoder.as_ref().unwrap().named_tensors("decoder"));
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

        let resumed = pretrain_images(&dev, &images, &cfg, 5, Start::Resume(&snapshot)).unwrap();
        assert_eq!(weights(&resumed), weights(&whole), "conv {conv}");
        assert_eq!(losses(&resumed), losses(&whole), "conv {conv}");

        let err = pretrain_images(&dev, &images, &cfg, 6, Start::Resume(&snapshot))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("seed 5, not 6"), "{err}");
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
    cfg.augment_as_noise = true;
    let undoes_them = error_to_originals(&cfg);
    assert!(
        undoes_them < 0.5 * copies_the_moves,
        "error to the originals: {undoes_them} as noise, {copies_the_moves} moved alike"
    );
}

/// With the contrastive term the codes of two views of an image find each other: among the
/// codes of 64 distinct images' second views, the nearest (by cosine) to a first view's code
/// is its own more often than for the autoencoder alone (58 against 49 when written).
#[test]
fn contrastive_term_makes_views_of_an_image_find_each_other() {
    let dev = Cpu::default();
    let images = bars(600, 8, 5);
    // Views differ by rotation and masked pixels (a shift would turn one cross into
    // another, so there would be nothing to find).
    let mut cfg = config(Noise::Masking { fraction: 0.2 }, Reconstruction::Bce);
    cfg.augment.rotate_degrees = 20.0;
    cfg.epochs = 20;
    // Telling single images apart is what a low temperature weighs most (the default 0.5
    // trades some of it for codes that group alike images: 40 found against 49 here).
    cfg.contrast_temperature = 0.1;
    // Every bar cross once: row r, column c.
    let mut distinct = vec![0.0f32; 64 * 64];
    for (i, img) in distinct.chunks_exact_mut(64).enumerate() {
        for k in 0..8 {
            img[(i / 8) * 8 + k] = 1.0;
            img[k * 8 + i % 8] = 1.0;
        }
    }
    let views: Vec<Vec<f32>> = (0..2u64)
        .map(|v| {
            let mut rng = ChaCha8Rng::seed_from_u64(v);
            let mut view = vec![0.0; distinct.len()];
            augment_batch(&distinct, SIDE8, &cfg.augment, rng.gen(), &mut view);
            let mut hidden = vec![0.0; view.len()];
            corrupt(&mut view, SIDE8, cfg.noise, &mut rng, &mut hidden);
            view
        })
        .collect();
    let found = |cfg: &PretrainConfig| {
        let mut run = fresh(&dev, &images, cfg, 7);
        let codes: Vec<Vec<Vec<f32>>> = views
            .iter()
            .map(|v| {
                let x: Matrix<Cpu> = dev.tensor_from_vec(v.clone(), (64, 64));
                let z = run.encoder.forward(x, &mut Pass::eval()).as_vec();
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
    };
    let alone = found(&cfg);
    cfg.contrast_weight = 1.0;
    let with_term = found(&cfg);
    assert!(
        with_term >= alone + 5,
        "views that found each other, of 64: {with_term} with the term, {alone} without"
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
    cfg.loss_on_hidden_only = true;
    cfg.augment.rotate_degrees = 12.0;
    assert_eq!(
        cfg.describe(),
        "8 epochs of 32 images (lr 0.003, 4x4 patches 50% hidden, BCE loss on the hidden \
         pixels, rotations ±12°)"
    );
    cfg.loss_on_hidden_only = false;
    cfg.augment_as_noise = true;
    assert!(
        cfg.describe()
            .ends_with("BCE loss, rotations ±12° as noise (the original the target))"),
        "{}",
        cfg.describe()
    );
    cfg.contrast_weight = 0.5;
    assert!(
        cfg.describe()
            .ends_with("target), contrastive term x0.5 at temperature 0.5)"),
        "{}",
        cfg.describe()
    );
    let plain = config(Noise::None, Reconstruction::Mse).describe();
    assert_eq!(
        plain,
        "8 epochs of 32 images (lr 0.003, no noise, MSE loss)"
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
    cfg.augment_as_noise = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("augment_as_noise") && e.contains("needs augmentation"),
        "{e}"
    );
    cfg.augment.shift = 2;
    cfg.noise = Noise::Patches {
        patch: 2,
        fraction: 0.5,
    };
    cfg.loss_on_hidden_only = true;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("loss_on_hidden_only"), "{e}");
    let mut cfg = config(Noise::None, Reconstruction::Mse);
    cfg.contrast_weight = 1.0;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains("contrast_weight") && e.contains("two different views"),
        "{e}"
    );
    cfg.noise = Noise::Masking { fraction: 0.2 };
    cfg.contrast_temperature = 0.0;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("contrast_temperature"), "{e}");
    cfg.contrast_temperature = 0.1;
    cfg.contrast_weight = -1.0;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("contrast_weight"), "{e}");
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
    cfg.reconstruction_weight = 0.0;
    cfg.rotation_weight = 1.0;
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
