//! The graph's structure, read back with the same messages. Its numbers are checked against
//! onnxruntime by `tests/export.rs` where the PyTorch peer is installed.

use super::*;
use imprint_data::{ImageShape, Normalize};
use imprint_nn::models::{Layout, ResNet};
use imprint_nn::{Architecture, DenseNet, ParamsExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn encoder(arch: Architecture, input: ImageShape) -> Encoder<Cpu> {
    Encoder::new(
        &Cpu::default(),
        &arch,
        input,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap()
}

fn dims(v: &ValueInfoProto) -> Vec<String> {
    let shape = v.r#type.as_ref().unwrap().tensor_type.as_ref().unwrap();
    shape
        .shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match d.value.as_ref().unwrap() {
            DimensionValue::DimValue(v) => v.to_string(),
            DimensionValue::DimParam(p) => p.clone(),
        })
        .collect()
}

/// A CIFAR ResNet-20 classifier: opset 13, the image in and the logits out, every checkpoint
/// tensor an initializer under its own name with its values, the option-A shortcut as a
/// strided slice and a channel pad, the normalisation first.
#[test]
fn a_resnet_classifier_is_written_with_its_tensors_and_shortcuts() {
    let input = ImageShape {
        channels: 3,
        height: 32,
        width: 32,
    };
    let arch = Architecture::Resnet(ResNet {
        depth: 20,
        layout: Layout::Cifar,
        widths: None,
        shortcut: None,
    });
    let enc = encoder(arch, input).normalized(Some(Normalize {
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
    }));
    let head = Linear::new(&Cpu::default(), 64, 10, &mut ChaCha8Rng::seed_from_u64(1));
    let meta = [("classes".to_string(), "a,b".to_string())];
    let bytes = to_onnx(&enc, Some(&head), false, &meta).unwrap();
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!((model.ir_version, model.opset_import[0].version), (7, 13));
    assert_eq!(model.metadata_props[0].value, "a,b");
    let graph = model.graph.unwrap();
    assert_eq!(dims(&graph.input[0]), ["batch", "3", "32", "32"]);
    assert_eq!(graph.output[0].name, "logits");
    assert_eq!(dims(&graph.output[0]), ["batch", "10"]);
    let ops: Vec<&str> = graph.nodes_ops();
    assert_eq!(&ops[..3], ["Mul", "Add", "Conv"]);
    assert_eq!(ops.iter().filter(|&&o| o == "Conv").count(), 19);
    assert_eq!(ops.iter().filter(|&&o| o == "Slice").count(), 2);
    assert_eq!(ops.iter().filter(|&&o| o == "Pad").count(), 2);
    assert_eq!(ops[ops.len() - 2..], ["Gemm", "Identity"]);
    let by_name = |name: &str| graph.initializer.iter().find(|t| t.name == name).unwrap();
    for t in enc.named_tensors("encoder") {
        let stored = by_name(&t.name);
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        assert_eq!(
            (stored.data_type, &stored.dims),
            (FLOAT, &shape),
            "{}",
            t.name
        );
        let values: Vec<f32> = stored
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values, t.data, "{}", t.name);
    }
    // Every node reads only the input, initializers or earlier nodes' outputs.
    let mut known: Vec<&str> = vec!["input"];
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for node in &graph.node {
        for i in &node.input {
            assert!(known.contains(&i.as_str()), "{} reads {i}", node.name);
        }
        known.push(&node.output[0]);
    }
}

/// A dense encoder on inverted images: `1 - x`, flattened, linear layers and ReLUs, features
/// out.
#[test]
fn a_dense_encoder_inverts_and_flattens_first() {
    let input = ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    };
    let arch = Architecture::Dense(DenseNet {
        hidden: vec![16],
        latent: 4,
    });
    let bytes = to_onnx(&encoder(arch, input), None, true, &[]).unwrap();
    let graph = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
    assert_eq!(
        graph.nodes_ops(),
        ["Sub", "Flatten", "Gemm", "Relu", "Gemm", "Identity"]
    );
    assert_eq!(graph.output[0].name, "features");
    assert_eq!(dims(&graph.output[0]), ["batch", "4"]);
}

impl GraphProto {
    fn nodes_ops(&self) -> Vec<&str> {
        self.node.iter().map(|n| n.op_type.as_str()).collect()
    }
}
