use super::*;
use crate::tree::ParamsExt;
use crate::NamedTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

const fn shape(channels: usize, height: usize, width: usize) -> ImageShape {
    ImageShape {
        channels,
        height,
        width,
    }
}

/// A fresh encoder of `arch` for `shape`, its weights drawn from `seed`.
fn encoder(arch: &Architecture, shape: ImageShape, seed: u64) -> Encoder<Cpu> {
    let rng = &mut ChaCha8Rng::seed_from_u64(seed);
    Encoder::new(&Cpu::default(), arch, shape, rng).unwrap()
}

/// The encoder's tensors under the prefix `encoder`, by name: what a saved file holds.
fn saved(enc: &Encoder<Cpu>) -> BTreeMap<String, NamedTensor> {
    let tensors = enc.named_tensors("encoder").into_iter();
    tensors.map(|t| (t.name.clone(), t)).collect()
}

/// The names and shapes of the encoder's tensors under the prefix `encoder`.
fn names_and_shapes(enc: &Encoder<Cpu>) -> Vec<(String, Vec<usize>)> {
    let tensors = enc.named_tensors("encoder").into_iter();
    tensors.map(|t| (t.name, t.shape)).collect()
}

fn conv_arch() -> Architecture {
    Architecture::Conv(ConvNet {
        channels: vec![4, 6],
        kernel: 3,
        stride: 2,
        latent: 5,
    })
}

#[test]
fn conv_autoencoder_restores_the_input_size() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for shape in [shape(1, 28, 28), shape(3, 9, 7), shape(1, 8, 8)] {
        let mut enc = Encoder::new(&dev, &conv_arch(), shape, &mut rng).unwrap();
        let mut dec = Decoder::new(&dev, &conv_arch(), shape, &mut rng).unwrap();
        let x: Matrix<Cpu> = dev.tensor_from_vec(vec![0.5; 2 * shape.len()], (2, shape.len()));
        let z = enc.forward(x, &mut Pass::eval());
        assert_eq!(*z.shape(), (2, 5));
        assert_eq!(
            *dec.forward(z, &mut Pass::eval()).shape(),
            (2, shape.len()),
            "{shape}"
        );
    }
}

#[test]
fn conv_names_follow_pytorch_sequential_and_load_back() {
    let dev = Cpu::default();
    let shape = shape(1, 28, 28);
    let enc = encoder(&conv_arch(), shape, 1);
    assert_eq!(
        names_and_shapes(&enc),
        vec![
            ("encoder.0.weight".to_string(), vec![4, 1, 3, 3]),
            ("encoder.0.bias".to_string(), vec![4]),
            ("encoder.2.weight".to_string(), vec![6, 4, 3, 3]),
            ("encoder.2.bias".to_string(), vec![6]),
            ("encoder.5.weight".to_string(), vec![5, 6 * 7 * 7]),
            ("encoder.5.bias".to_string(), vec![5]),
        ]
    );
    let dec = Decoder::new(&dev, &conv_arch(), shape, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
    let names: Vec<String> = dec
        .named_tensors("decoder")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        [
            "decoder.0.weight",
            "decoder.0.bias",
            "decoder.3.weight",
            "decoder.3.bias",
            "decoder.5.weight",
            "decoder.5.bias"
        ]
    );
    let tensors = saved(&enc);
    let mut other = encoder(&conv_arch(), shape, 2);
    assert_ne!(other.named_tensors("encoder"), enc.named_tensors("encoder"));
    other
        .load_named("encoder", &tensors, "x.safetensors")
        .unwrap();
    assert_eq!(other.named_tensors("encoder"), enc.named_tensors("encoder"));
}

#[test]
fn dense_names_take_the_even_indices() {
    let arch = Architecture::Dense(DenseNet {
        hidden: vec![8, 6],
        latent: 3,
    });
    let enc = encoder(&arch, shape(1, 2, 5), 0);
    assert_eq!(
        names_and_shapes(&enc),
        vec![
            ("encoder.0.weight".to_string(), vec![8, 10]),
            ("encoder.0.bias".to_string(), vec![8]),
            ("encoder.2.weight".to_string(), vec![6, 8]),
            ("encoder.2.bias".to_string(), vec![6]),
            ("encoder.4.weight".to_string(), vec![3, 6]),
            ("encoder.4.bias".to_string(), vec![3]),
        ]
    );
    assert_eq!(enc.param_count(), 8 * 10 + 8 + 6 * 8 + 6 + 3 * 6 + 3);
}

#[test]
fn conv_with_no_filters_is_an_error() {
    let arch = Architecture::Conv(ConvNet {
        channels: vec![4, 0],
        kernel: 3,
        stride: 2,
        latent: 2,
    });
    let shape = shape(1, 4, 4);
    assert!(arch.validate(shape).is_err());
    assert!(Encoder::<Cpu>::new(
        &Cpu::default(),
        &arch,
        shape,
        &mut ChaCha8Rng::seed_from_u64(0)
    )
    .is_err());
}

fn resnet(depth: usize, shortcut: Option<ShortcutKind>) -> Architecture {
    Architecture::Resnet(ResNet {
        depth,
        layout: Layout::Cifar,
        widths: None,
        shortcut,
    })
}

const CIFAR: ImageShape = shape(3, 32, 32);

/// ResNet-20 as He et al. count it: 0.27M parameters (269,722 with the 64 -> 10 classifier:
/// `sum(p.numel() for p in resnet20().parameters())` of the CIFAR nets' PyTorch definition),
/// named as PyTorch names them.
#[test]
fn resnet20_has_the_papers_parameters_and_pytorchs_names() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut enc = Encoder::new(&dev, &resnet(20, None), CIFAR, &mut rng).unwrap();
    assert_eq!(enc.param_count() + 64 * 10 + 10, 269_722);
    let names: Vec<String> = enc.named_tensors("").into_iter().map(|t| t.name).collect();
    // 19 convolutions without bias, each followed by a batch norm of four tensors.
    assert_eq!(names.len(), 19 + 19 * 4);
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.bn2.running_mean",
        "layer3.2.conv2.weight",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
    let x: Matrix<Cpu> = dev.tensor_from_vec(vec![0.5; 2 * CIFAR.len()], (2, CIFAR.len()));
    assert_eq!(*enc.forward(x, &mut Pass::eval()).shape(), (2, 64));
    // Depth units: the stem's convolution and batch norm, then the nine blocks.
    let units = enc.units();
    assert_eq!(units.len(), 2 + 9);
    assert_eq!(
        (&units[..3], &units[10]),
        (
            &["conv1".to_string(), "bn1".into(), "layer1.0".into()][..],
            &"layer3.2".to_string()
        )
    );
    let mut dec = Decoder::new(&dev, &resnet(20, None), CIFAR, &mut rng).unwrap();
    let z: Matrix<Cpu> = dev.tensor_from_vec(vec![0.1; 2 * 64], (2, 64));
    assert_eq!(*dec.forward(z, &mut Pass::eval()).shape(), (2, CIFAR.len()));
}

/// A ResNet whose running statistics moved in training saves and loads whole: the loaded copy
/// gives identical eval-mode features, which differ before loading.
#[test]
fn resnet_save_load_keeps_running_statistics() {
    let dev = Cpu::default();
    let shape = shape(3, 8, 8);
    let arch = resnet(8, Some(ShortcutKind::B));
    let mut enc = encoder(&arch, shape, 0);
    let x: Matrix<Cpu> = dev.tensor_from_vec(
        (0..4 * shape.len())
            .map(|i| (i as f32 * 0.37).sin())
            .collect(),
        (4, shape.len()),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..3 {
        enc.forward(x.clone(), &mut Pass::train(&mut rng));
    }
    let mean = enc
        .vars("")
        .into_iter()
        .find(|(n, _)| n == "bn1.running_mean")
        .map(|(_, v)| v.value.as_vec())
        .unwrap();
    assert!(
        mean.iter().any(|&m| m != 0.0),
        "training moves the running mean"
    );
    let tensors = saved(&enc);
    let mut other = encoder(&arch, shape, 2);
    let features = |e: &mut Encoder<Cpu>| e.forward(x.clone(), &mut Pass::eval()).as_vec();
    assert_ne!(features(&mut other), features(&mut enc));
    other
        .load_named("encoder", &tensors, "x.safetensors")
        .unwrap();
    assert_eq!(features(&mut other), features(&mut enc));
}

fn bottleneck(depth: usize, width_per_group: usize) -> Architecture {
    Architecture::Bottleneck(BottleneckNet {
        depth,
        width_per_group,
    })
}

/// ResNet-50 and Wide ResNet-50-2 have torchvision's parameters (25,557,032 and 68,883,240 with
/// the 2048 -> 1000 classifier: `sum(p.numel() for p in torchvision.models.resnet50()
/// .parameters())`) and names; the deeper ones build too; the features are 2048 wide.
#[test]
fn bottleneck_nets_have_torchvisions_parameters_and_names() {
    let dev = Cpu::default();
    let fc = 2048 * 1000 + 1000;
    let small = shape(3, 32, 32);
    for (arch, params) in [
        (bottleneck(50, 64), 25_557_032),
        (bottleneck(50, 128), 68_883_240),
    ] {
        let enc = encoder(&arch, small, 0);
        assert_eq!(enc.param_count() + fc, params, "{}", arch.describe(small));
        let counted = arch.parameter_count(small).unwrap();
        assert!(counted >= 2 * enc.param_count() as u128, "{counted}");
    }
    let mut enc = encoder(&bottleneck(50, 64), small, 0);
    let names: Vec<String> = enc.named_tensors("").into_iter().map(|t| t.name).collect();
    // 53 convolutions without bias (49 in the blocks' paths, 4 downsamples), each followed by
    // a batch norm of four tensors.
    assert_eq!(names.len(), 53 * 5);
    for name in [
        "conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer1.2.conv3.weight",
        "layer3.5.bn2.running_mean",
        "layer4.2.bn3.bias",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing");
    }
    let x: Matrix<Cpu> = dev.tensor_from_vec(vec![0.5; 2 * small.len()], (2, small.len()));
    assert_eq!(*enc.forward(x, &mut Pass::eval()).shape(), (2, 2048));
    assert_eq!(enc.units().len(), 2 + 16, "the stem, then 16 blocks");
    for depth in [101, 152] {
        let blocks = encoder(&bottleneck(depth, 64), small, 0).units().len() - 2;
        assert_eq!(3 * blocks + 2, depth);
    }
    assert!(Encoder::new(
        &dev,
        &bottleneck(34, 64),
        small,
        &mut ChaCha8Rng::seed_from_u64(0)
    )
    .is_err());
    // Too small an image for the stem, max pool and three halvings is refused by name.
    let e = bottleneck(50, 64).validate(shape(3, 0, 0)).unwrap_err();
    assert!(e.contains("does not fit"), "{e}");
}

/// A whole bottleneck net trains: one backward pass from its features reaches every trainable
/// tensor, and a small step against that gradient lowers the loss. Saved and loaded, it gives
/// the same eval-mode features, which differ before loading.
#[test]
fn bottleneck_net_trains_and_saves() {
    let dev = Cpu::default();
    let input = shape(3, 64, 64);
    let arch = bottleneck(50, 8);
    let mut enc = encoder(&arch, input, 0);
    let mut draw = ChaCha8Rng::seed_from_u64(3);
    let x: Matrix<Cpu> = dev.tensor_from_vec(
        (0..4 * input.len())
            .map(|_| draw.gen_range(0.0..1.0))
            .collect(),
        (4, input.len()),
    );
    let target: Vec<f32> = (0..4 * 2048).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut losses = Vec::new();
    for step in 0..3 {
        let z = enc.forward(x.clone().leaky_traced(), &mut Pass::train(&mut rng));
        let t: Matrix<Cpu> = dev.tensor_from_vec(target.clone(), (4, 2048));
        let loss = (z - t).square().mean::<(), _>();
        losses.push(loss.as_vec()[0]);
        let grads = loss.backward();
        for (name, v) in enc.trainable_mut("") {
            let g = grads.get(&*v).as_vec();
            if step == 0 {
                assert!(g.iter().any(|&g| g != 0.0), "no gradient reaches {name}");
            }
            // Small: train-mode batch norm on few values per channel and the max pool make the
            // loss sharply curved.
            let values: Vec<f32> = v
                .as_vec()
                .iter()
                .zip(&g)
                .map(|(w, g)| w - 1e-5 * g)
                .collect();
            v.copy_from(&values);
        }
    }
    assert!(losses[2] < losses[0], "losses {losses:?}");
    let tensors = saved(&enc);
    let mut other = encoder(&arch, input, 2);
    let features = |e: &mut Encoder<Cpu>| e.forward(x.clone(), &mut Pass::eval()).as_vec();
    assert_ne!(features(&mut other), features(&mut enc));
    other
        .load_named("encoder", &tensors, "x.safetensors")
        .unwrap();
    assert_eq!(features(&mut other), features(&mut enc));
}

/// Each kind reads and writes the same JSON as when the kinds' fields sat in the enum itself
/// (sidecars of older checkpoints), fills its defaults, and refuses a field it does not have.
#[test]
fn architectures_keep_their_json_and_refuse_unknown_fields() {
    let cases = [
        (
            r#"{"kind":"dense","hidden":[32],"latent":8}"#,
            r#"{"kind":"dense","hidden":[32],"latent":8}"#,
        ),
        (
            r#"{"kind":"conv","channels":[32,64],"latent":16}"#,
            r#"{"kind":"conv","channels":[32,64],"kernel":3,"stride":2,"latent":16}"#,
        ),
        (
            r#"{"kind":"resnet"}"#,
            r#"{"kind":"resnet","depth":20,"layout":"cifar"}"#,
        ),
        (
            r#"{"kind":"bottleneck"}"#,
            r#"{"kind":"bottleneck","depth":50,"width_per_group":64}"#,
        ),
    ];
    for (given, written) in cases {
        let arch: Architecture = serde_json::from_str(given).unwrap();
        assert_eq!(serde_json::to_string(&arch).unwrap(), written);
        let typo = given.replacen('{', r#"{"latnet":1,"#, 1);
        let err = serde_json::from_str::<Architecture>(&typo).unwrap_err();
        assert!(err.to_string().contains("unknown field `latnet`"), "{err}");
    }
}

/// The layers before the first linear one take each image on its own: however many images
/// they run at once, the features are the same to the bit, when the linear layers get the same
/// rows (the sizes here take the direct convolution kernels, 16 = 2 x 8, and im2col, 13 and 15).
#[test]
fn features_do_not_depend_on_how_many_images_run_at_once() {
    let imagenet = Architecture::Resnet(ResNet {
        depth: 18,
        layout: Layout::Imagenet,
        widths: Some(vec![8, 16, 16, 32]),
        shortcut: None,
    });
    let dense = Architecture::Dense(DenseNet {
        hidden: vec![40, 20],
        latent: 10,
    });
    for (arch, input) in [
        (dense, shape(1, 12, 12)),
        (conv_arch(), shape(1, 16, 16)),
        (conv_arch(), shape(1, 13, 13)),
        (resnet(20, None), shape(3, 16, 16)),
        (resnet(20, None), shape(3, 15, 15)),
        (imagenet, shape(3, 64, 64)),
    ] {
        let dev = Cpu::default();
        let mut enc = encoder(&arch, input, 3);
        let n = 37;
        let values: Vec<f32> = (0..n * input.len())
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let pixels = imprint_data::Pixels::from_unit_floats(&values, input.len());
        let mut run = |images| {
            let mut out = Vec::new();
            let chunks = crate::infer::Chunks { images, rows: n };
            enc.infer_each(&dev, &pixels, chunks, |f| f, |_, v| out.extend(v));
            out
        };
        let whole = run(n);
        assert_eq!(whole.len(), n * arch.latent());
        for images in [1, 5, 16] {
            assert!(
                run(images) == whole,
                "{} in chunks of {images}",
                arch.describe(input)
            );
        }
        // And the same as the encoder's forward pass on all of them at once.
        let x: Matrix<Cpu> = dev.tensor_from_vec(pixels.to_vec(), (n, input.len()));
        assert_eq!(enc.forward(x, &mut Pass::eval()).as_vec(), whole);
    }
}

/// The counts of layer outputs follow the layers: a dense net's widths, a ResNet's stages.
#[test]
fn activations_are_counted_from_the_layer_sizes() {
    let dense = Architecture::Dense(DenseNet {
        hidden: vec![16],
        latent: 4,
    });
    let a = dense.activations(shape(1, 8, 8)).unwrap();
    // input and output 64 each, the hidden layer's 16 four times, the code's 4
    assert_eq!(a.total, 2 * 64 + 4 * 16 + 4);
    assert_eq!(a.largest, 64);
    let resnet20 = Architecture::Resnet(ResNet {
        depth: 20,
        layout: Default::default(),
        widths: None,
        shortcut: None,
    });
    let a = resnet20.activations(shape(3, 32, 32)).unwrap();
    let (l1, l2, l3) = (16 * 32 * 32, 32 * 16 * 16, 64 * 8 * 8);
    assert_eq!(
        a.total,
        2 * 3072 + 3 * (l1 + l2 + l3) + 3 * l1 + 21 * (l1 + l2 + l3)
    );
    assert_eq!(a.largest, l1);
    // A tall, thin input makes every stage as large: the counts grow with it, parameters do not.
    let tall = resnet20.activations(shape(3, 100_000, 1)).unwrap();
    assert!(tall.total > 90_000_000, "{tall:?}");
    let huge = Architecture::Resnet(ResNet {
        depth: 6_000_002,
        layout: Default::default(),
        widths: None,
        shortcut: None,
    });
    assert!(huge.activations(shape(3, 32, 32)).unwrap().total > 100_000_000_000);
}

/// A ResNet pools its last maps, so it reads images smaller than it was built for (multi-crop's
/// small views) into features of the same width; nets that flatten their maps take one size.
#[test]
fn a_resnet_reads_other_sizes_and_says_so() {
    let arch = resnet(8, None);
    assert!(arch.any_size());
    assert!(!conv_arch().any_size());
    let mut enc = encoder(&arch, shape(3, 32, 32), 1);
    let dev = Cpu::default();
    let small = shape(3, 16, 16);
    let x: Matrix<Cpu> = dev.tensor_from_vec(
        (0..2 * small.len()).map(|i| (i % 7) as f32 / 7.0).collect(),
        (2, small.len()),
    );
    let z = enc.forward_at(x, small, &mut Pass::eval());
    assert_eq!(*z.shape(), (2, enc.features()));
    assert!(z.as_vec().iter().all(|v| v.is_finite()));
}
