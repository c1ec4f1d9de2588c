//! What a PyTorch state dict holds, read from its tensors' names and shapes alone: the prefix
//! its network's names carry (`model.` of a Lightning module, `module.` of DataParallel,
//! `backbone.`), and which of our architectures that network is.
//!
//! The network is found by its stem: a `conv1.weight` with `bn1.running_var` beside it, under a
//! prefix that is not inside a stage (`layer1.`...). Its stem's kernel tells the layout (3x3:
//! the CIFAR nets, 7x7: torchvision's), `layer1.0.conv3` the bottleneck blocks, the blocks
//! counted per stage the depth, and the first block's inner width a wide ResNet.

use imprint_data::ImageShape;
use imprint_nn::checkpoint::quoted;
use imprint_nn::models::{Layout, ShortcutKind};
use imprint_nn::{Architecture, BottleneckNet, ResNet};
use std::collections::BTreeMap;

/// The architectures `import --arch` names, and which layout each is.
pub const KNOWN: &str = "resnet20, resnet32, resnet44, resnet56, resnet110 (CIFAR layout), \
                         resnet18, resnet34, resnet50, resnet101, resnet152, wide_resnet50_2, \
                         wide_resnet101_2 (ImageNet layout)";

/// The architecture a name stands for.
pub fn named_architecture(name: &str) -> Result<Architecture, String> {
    let unknown = || format!("unknown architecture `{name}`; known: {KNOWN}");
    if let Some(wide) = name.strip_prefix("wide_resnet") {
        let depth = match wide {
            "50_2" => 50,
            "101_2" => 101,
            _ => return Err(unknown()),
        };
        return Ok(bottleneck(depth, 128));
    }
    let depth: usize = name
        .strip_prefix("resnet")
        .and_then(|d| d.parse().ok())
        .ok_or_else(unknown)?;
    let layout = match depth {
        18 | 34 => Layout::Imagenet,
        20 | 32 | 44 | 56 | 110 => Layout::Cifar,
        50 | 101 | 152 => return Ok(bottleneck(depth, 64)),
        _ => return Err(unknown()),
    };
    Ok(Architecture::Resnet(ResNet {
        depth,
        layout,
        widths: None,
        shortcut: None,
    }))
}

fn bottleneck(depth: usize, width_per_group: usize) -> Architecture {
    Architecture::Bottleneck(BottleneckNet {
        depth,
        width_per_group,
    })
}

/// The name [`named_architecture`] knows an architecture by (`resnet20`, `wide_resnet50_2`),
/// or a description for one it has no name for (other widths).
pub fn architecture_name(a: &Architecture) -> String {
    match a {
        Architecture::Resnet(r) => format!("resnet{}", r.depth),
        Architecture::Bottleneck(b) if b.width_per_group == 128 => {
            format!("wide_resnet{}_2", b.depth)
        }
        Architecture::Bottleneck(b) => format!("resnet{}", b.depth),
        other => other.describe(ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        }),
    }
}

/// Whether the net has torchvision's ImageNet stem (a 7x7 convolution of stride 2 and a max
/// pool): made for photos of 224 px, it keeps too little of small images.
pub fn imagenet_layout(a: &Architecture) -> bool {
    match a {
        Architecture::Resnet(r) => r.layout == Layout::Imagenet,
        Architecture::Bottleneck(_) => true,
        Architecture::Dense(_) | Architecture::Conv(_) => false,
    }
}

/// The side, in pixels, below which an ImageNet-layout net is warned about.
pub const IMAGENET_MIN_SIDE: usize = 64;

/// A warning when an ImageNet-layout net is to see images smaller than
/// [`IMAGENET_MIN_SIDE`].
pub fn small_input_warning(a: &Architecture, input: ImageShape) -> Option<String> {
    (imagenet_layout(a) && input.height.min(input.width) < IMAGENET_MIN_SIDE).then(|| {
        format!(
            "{} has the ImageNet layout (7x7 stride-2 stem and max pool, made for photos of \
             224 px); at {}x{} its last stage sees {}x{} maps: expect it to keep little of \
             what it knows (bring the images to at least {IMAGENET_MIN_SIDE} px, e.g. \
             --input {}x224x224 on import)",
            architecture_name(a),
            input.height,
            input.width,
            input.height.div_ceil(32),
            input.width.div_ceil(32),
            input.channels
        )
    })
}

/// The prefix to strip from a state dict's names: `given`, else the one the stem sits under.
/// An error lists what the names begin with when no stem or several are found.
pub fn find_prefix(
    shapes: &BTreeMap<String, Vec<usize>>,
    given: Option<&str>,
) -> Result<String, String> {
    if let Some(given) = given {
        if shapes.keys().any(|n| n.starts_with(given)) {
            return Ok(given.to_string());
        }
        return Err(format!(
            "no tensor name begins with `{given}`; the names begin with {}",
            beginnings(shapes)
        ));
    }
    let stems: Vec<&str> = shapes
        .keys()
        .filter_map(|n| n.strip_suffix("conv1.weight"))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .filter(|p| !p.split('.').any(|segment| segment.starts_with("layer")))
        .filter(|p| shapes.contains_key(&format!("{p}bn1.running_var")))
        .collect();
    match stems.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(format!(
            "no ResNet stem (`conv1.weight` with `bn1.running_var` beside it) among its {} \
             tensors, whose names begin with {}",
            shapes.len(),
            beginnings(shapes)
        )),
        several => Err(format!(
            "it holds {} networks, under the prefixes {}; name one with --strip-prefix",
            several.len(),
            several
                .iter()
                .map(|p| quoted(p))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The names' first two segments, with counts, for an error: `model. (161)`, `loss. (1)`.
fn beginnings(shapes: &BTreeMap<String, Vec<usize>>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for name in shapes.keys() {
        let segments: Vec<&str> = name.split('.').collect();
        let head = match segments.len() {
            0 | 1 => name.clone(),
            2 => format!("{}.", segments[0]),
            _ => format!("{}.{}.", segments[0], segments[1]),
        };
        *counts.entry(head).or_default() += 1;
    }
    const SHOWN: usize = 8;
    let mut text: Vec<String> = counts
        .iter()
        .take(SHOWN)
        .map(|(head, n)| format!("{} ({n})", quoted(head)))
        .collect();
    if counts.len() > SHOWN {
        text.push(format!("and {} more", counts.len() - SHOWN));
    }
    text.join(", ")
}

/// What the tensors (prefix stripped) say the network is.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    pub architecture: Architecture,
    /// Image channels its stem takes.
    pub channels: usize,
    /// Outputs of its classifier (`fc` or `linear`), when it has one.
    pub classes: Option<usize>,
}

impl Detection {
    /// The input size the layout was made for: 32x32 for the CIFAR nets, 224x224 else.
    pub fn default_input(&self) -> ImageShape {
        let side = if imagenet_layout(&self.architecture) {
            224
        } else {
            32
        };
        ImageShape {
            channels: self.channels,
            height: side,
            width: side,
        }
    }
}

/// The architecture of the network whose tensors (names without prefix, shapes) are `shapes`.
pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Detection, String> {
    let shape = |name: &str| shapes.get(name);
    let stem = shape("conv1.weight")
        .filter(|s| s.len() == 4 && s[2] == s[3])
        .ok_or("no 4-d square `conv1.weight`: not a ResNet")?;
    let (stem_width, channels, kernel) = (stem[0], stem[1], stem[2]);
    // Blocks per stage: `layerS.B.conv1.weight` for S = 1, 2, ... and B = 0, 1, ...
    let mut blocks = Vec::new();
    while let Some(count) = {
        let stage = blocks.len() + 1;
        let count = (0..)
            .take_while(|b| shapes.contains_key(&format!("layer{stage}.{b}.conv1.weight")))
            .count();
        (count > 0).then_some(count)
    } {
        blocks.push(count);
    }
    let out_of = |name: String| shape(&name).map(|s| s[0]);
    let bottleneck_blocks = shapes.contains_key("layer1.0.conv3.weight");
    let classes = shape("fc.weight")
        .or_else(|| shape("linear.weight"))
        .filter(|s| s.len() == 2)
        .map(|s| s[0]);
    let found = format!(
        "a {kernel}x{kernel} stem of {stem_width} filters, {} stages of {:?} {} blocks",
        blocks.len(),
        blocks,
        if bottleneck_blocks {
            "bottleneck"
        } else {
            "basic"
        }
    );
    let architecture = match (kernel, bottleneck_blocks, blocks.as_slice()) {
        (3, false, [a, b, c]) if a == b && b == c => {
            let widths: Vec<usize> = (1..=3)
                .map(|s| out_of(format!("layer{s}.0.conv1.weight")))
                .collect::<Option<_>>()
                .ok_or("a stage without `conv1.weight` in its first block")?;
            let shortcut = if shapes.contains_key("layer2.0.shortcut.0.weight") {
                Some(ShortcutKind::B)
            } else {
                None
            };
            Architecture::Resnet(ResNet {
                depth: 6 * a + 2,
                layout: Layout::Cifar,
                widths: (widths != [16, 32, 64]).then_some(widths),
                shortcut,
            })
        }
        (7, false, [2, 2, 2, 2]) | (7, false, [3, 4, 6, 3]) => {
            let depth = if blocks[0] == 2 { 18 } else { 34 };
            let widths: Vec<usize> = (1..=4)
                .map(|s| out_of(format!("layer{s}.0.conv1.weight")))
                .collect::<Option<_>>()
                .ok_or("a stage without `conv1.weight` in its first block")?;
            Architecture::Resnet(ResNet {
                depth,
                layout: Layout::Imagenet,
                widths: (widths != [64, 128, 256, 512]).then_some(widths),
                shortcut: None,
            })
        }
        (7, true, [3, 4, 6, 3]) | (7, true, [3, 4, 23, 3]) | (7, true, [3, 8, 36, 3]) => {
            let depth = 3 * blocks.iter().sum::<usize>() + 2;
            let inner = out_of("layer1.0.conv1.weight".into()).unwrap_or(64);
            bottleneck(depth, inner)
        }
        _ => return Err(format!("{found}: none of {KNOWN}")),
    };
    Ok(Detection {
        architecture,
        channels,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names and shapes torchvision or the CIFAR nets' definition give a ResNet, from our
    /// own encoder's (which are named as theirs), under `prefix`, with a head of 10 classes.
    fn state_dict(
        arch: &Architecture,
        input: ImageShape,
        prefix: &str,
    ) -> BTreeMap<String, Vec<usize>> {
        use imprint_nn::ParamsExt;
        use rand::SeedableRng;
        let enc = imprint_nn::Encoder::new(
            &dfdx::prelude::Cpu::default(),
            arch,
            input,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(0),
        )
        .unwrap();
        let mut shapes: BTreeMap<String, Vec<usize>> = enc
            .named_tensors("")
            .into_iter()
            .map(|t| (format!("{prefix}{}", t.name), t.shape))
            .collect();
        let head = if imagenet_layout(arch) {
            "fc"
        } else {
            "linear"
        };
        shapes.insert(format!("{prefix}{head}.weight"), vec![10, arch.latent()]);
        shapes.insert(format!("{prefix}{head}.bias"), vec![10]);
        shapes
    }

    fn stripped(
        shapes: &BTreeMap<String, Vec<usize>>,
        prefix: &str,
    ) -> BTreeMap<String, Vec<usize>> {
        shapes
            .iter()
            .filter_map(|(n, s)| n.strip_prefix(prefix).map(|n| (n.to_string(), s.clone())))
            .collect()
    }

    /// Every named architecture is detected from its tensors under any prefix, with its
    /// channels and classes.
    #[test]
    fn every_named_architecture_is_detected_from_its_shapes() {
        for name in [
            "resnet20",
            "resnet32",
            "resnet56",
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "wide_resnet50_2",
        ] {
            let arch = named_architecture(name).unwrap();
            let input = ImageShape {
                channels: 3,
                height: 32,
                width: 32,
            };
            for prefix in ["", "model.", "module.backbone."] {
                let shapes = state_dict(&arch, input, prefix);
                assert_eq!(find_prefix(&shapes, None).unwrap(), prefix, "{name}");
                let found = detect(&stripped(&shapes, prefix)).unwrap();
                assert_eq!(architecture_name(&found.architecture), name);
                assert_eq!(found.architecture, arch, "{name}");
                assert_eq!((found.channels, found.classes), (3, Some(10)));
            }
        }
    }

    /// Option-B shortcuts and other widths are detected as what they are, not as the
    /// architecture of the same depth by default.
    #[test]
    fn shortcuts_and_widths_are_read_from_the_tensors() {
        let arch = Architecture::Resnet(ResNet {
            depth: 20,
            layout: Layout::Cifar,
            widths: Some(vec![32, 64, 128]),
            shortcut: Some(ShortcutKind::B),
        });
        let grey = ImageShape {
            channels: 1,
            height: 28,
            width: 28,
        };
        let found = detect(&state_dict(&arch, grey, "")).unwrap();
        assert_eq!(found.architecture, arch);
        assert_eq!(found.channels, 1);
    }

    #[test]
    fn ambiguous_or_absent_stems_are_named() {
        let arch = named_architecture("resnet20").unwrap();
        let input = ImageShape {
            channels: 3,
            height: 32,
            width: 32,
        };
        let mut two = state_dict(&arch, input, "encoder_q.");
        two.extend(state_dict(&arch, input, "encoder_k."));
        let e = find_prefix(&two, None).unwrap_err();
        assert!(
            e.contains("2 networks, under the prefixes `encoder_k.`, `encoder_q.`"),
            "{e}"
        );
        assert_eq!(find_prefix(&two, Some("encoder_q.")).unwrap(), "encoder_q.");
        let e = find_prefix(&two, Some("model.")).unwrap_err();
        assert!(e.contains("`encoder_k.bn1.` (4)"), "{e}");
        let dense: BTreeMap<String, Vec<usize>> = [
            ("0.weight".to_string(), vec![4, 8]),
            ("0.bias".into(), vec![4]),
        ]
        .into();
        let e = find_prefix(&dense, None).unwrap_err();
        assert!(
            e.contains("no ResNet stem") && e.contains("`0.` (2)"),
            "{e}"
        );
    }

    #[test]
    fn small_images_warn_for_the_imagenet_layout_only() {
        let at = |side| ImageShape {
            channels: 3,
            height: side,
            width: side,
        };
        let r50 = named_architecture("resnet50").unwrap();
        let warning = small_input_warning(&r50, at(32)).unwrap();
        assert!(
            warning.contains("resnet50 has the ImageNet layout"),
            "{warning}"
        );
        assert!(warning.contains("1x1 maps"), "{warning}");
        assert_eq!(small_input_warning(&r50, at(64)), None);
        let r20 = named_architecture("resnet20").unwrap();
        assert_eq!(small_input_warning(&r20, at(32)), None);
    }
}
