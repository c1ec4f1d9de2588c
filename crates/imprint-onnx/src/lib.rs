//! Writes an encoder, or a classifier (an encoder and a linear head), as a standard ONNX model
//! (opset 13, IR version 7) that onnxruntime and other runtimes read.
//!
//! The graph takes `input`, float32 `[batch, channels, height, width]`: the image at the
//! model's input size, RGB (or grey) values in `[0, 1]`, as `imprint` reads them. Everything
//! between that and the output is inside the graph: the inversion (`1 - x`) when the model was
//! trained on inverted images, the per-channel normalisation `(x - mean) / std` (as the same
//! multiply-add our encoders apply), then the layers with the checkpoint's weights, named as
//! the checkpoint names them. It gives `logits` `[batch, classes]` (a classifier; the class
//! names are in the model's metadata, `classes`) or `features` `[batch, features]` (an
//! encoder).
//!
//! ```no_run
//! # fn demo(encoder: &imprint_nn::Encoder<dfdx::prelude::Cpu>) -> Result<(), imprint_onnx::OnnxError> {
//! let bytes = imprint_onnx::to_onnx(encoder, None, false, &[])?;
//! std::fs::write("encoder.onnx", bytes).unwrap();
//! # Ok(()) }
//! ```
//!
//! Dense, convolutional and residual encoders (basic and bottleneck blocks, option-A and -B
//! shortcuts) are written; the layers only decoders have are refused.

mod proto;

use dfdx::prelude::*;
use imprint_nn::layers::{
    BasicBlock, BatchNorm2d, Bottleneck, Conv2d, Layer, Sequential, Shortcut,
};
use imprint_nn::{Encoder, Linear, Var};
use prost::Message;
use proto::*;

/// The ONNX operator set written.
pub const OPSET: i64 = 13;
/// The IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 7;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// A layer with no ONNX form here (only decoders have them).
    #[error("layer `{name}` ({kind}) cannot be exported")]
    Unsupported { name: String, kind: &'static str },
}

pub type Result<T> = std::result::Result<T, OnnxError>;

/// The ONNX model of `encoder`, with `head` on its features when given (a classifier); `invert`
/// when the model reads inverted images; `metadata` (key, value) pairs are stored in the model
/// (`classes`, the source checkpoint). Returns the serialised bytes of an `.onnx` file.
pub fn to_onnx(
    encoder: &Encoder<Cpu>,
    head: Option<&Linear<Cpu>>,
    invert: bool,
    metadata: &[(String, String)],
) -> Result<Vec<u8>> {
    let shape = encoder.input;
    let mut g = Graph::default();
    let mut x = "input".to_string();
    if invert {
        let one = g.constant("preprocess.one", &[], &[1.0]);
        x = g.node("Sub", "preprocess.invert", &[&one, &x], vec![]);
    }
    if let Some(n) = &encoder.normalize {
        // The encoder's own multiply-add, to the same f32 constants.
        let scale: Vec<f32> = n.std.iter().map(|s| 1.0 / s).collect();
        let shift: Vec<f32> = n.mean.iter().zip(&n.std).map(|(m, s)| -m / s).collect();
        let dims = [1, shape.channels, 1, 1];
        let scale = g.constant("preprocess.scale", &dims, &scale);
        let shift = g.constant("preprocess.shift", &dims, &shift);
        x = g.node("Mul", "preprocess.mul", &[&x, &scale], vec![]);
        x = g.node("Add", "preprocess.add", &[&x, &shift], vec![]);
    }
    if !encoder.takes_maps() {
        x = g.node("Flatten", "flatten_input", &[&x], vec![int("axis", 1)]);
    }
    x = g.sequential(encoder.net(), "encoder", x)?;
    let (output, width) = match head {
        Some(head) => (g.linear(head, "head", &x), head.weight.shape[0]),
        None => (x, encoder.features()),
    };
    let name = if head.is_some() { "logits" } else { "features" };
    g.nodes.push(NodeProto {
        input: vec![output],
        output: vec![name.to_string()],
        name: format!("{name}.identity"),
        op_type: "Identity".into(),
        attribute: vec![],
    });
    let dims = [shape.channels, shape.height, shape.width];
    let input = value_info(
        "input",
        &dims,
        "images as float32 [batch, channels, height, width], values in [0, 1] at the model's \
         input size; inversion and normalisation are inside the graph",
    );
    let output = value_info(name, &[width], "");
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "imprint".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: String::new(),
        graph: Some(GraphProto {
            node: g.nodes,
            name: "imprint".into(),
            initializer: g.initializers,
            doc_string: String::new(),
            input: vec![input],
            output: vec![output],
        }),
        metadata_props: metadata
            .iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    };
    Ok(model.encode_to_vec())
}

/// A tensor of `[batch, dims...]` floats, the batch named `batch`.
fn value_info(name: &str, dims: &[usize], doc: &str) -> ValueInfoProto {
    let mut dim = vec![Dimension {
        value: Some(DimensionValue::DimParam("batch".into())),
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        value: Some(DimensionValue::DimValue(d as i64)),
    }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
        doc_string: doc.into(),
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.iter().map(|&v| v as i64).collect(),
        ..Default::default()
    }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// The graph being built: nodes in order, and the constants they read.
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Graph {
    /// A float constant named `name`; returns the name.
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name.into()
    }

    fn int_constant(&mut self, name: &str, values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: INT64,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name.into()
    }

    /// A checkpoint tensor as a constant under its checkpoint name.
    fn var(&mut self, name: &str, v: &Var<Cpu>) -> String {
        self.constant(name, &v.shape, &v.value.as_vec())
    }

    /// A node `op` named `name` of `inputs`; returns its output, named as the node.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: op.into(),
            attribute,
        });
        name.to_string()
    }

    fn linear(&mut self, l: &Linear<Cpu>, at: &str, x: &str) -> String {
        let w = self.var(&format!("{at}.weight"), &l.weight);
        let b = self.var(&format!("{at}.bias"), &l.bias);
        self.node("Gemm", at, &[x, &w, &b], vec![int("transB", 1)])
    }

    fn conv(&mut self, c: &Conv2d<Cpu>, at: &str, x: &str) -> String {
        let s = c.spec;
        let w = self.var(&format!("{at}.weight"), &c.weight);
        let mut inputs = vec![x.to_string(), w];
        if let Some(bias) = &c.bias {
            inputs.push(self.var(&format!("{at}.bias"), bias));
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (ph, pw) = s.padding;
        let attributes = vec![
            ints("kernel_shape", &[s.kernel.0, s.kernel.1]),
            ints("strides", &[s.stride.0, s.stride.1]),
            ints("pads", &[ph, pw, ph, pw]),
            ints("dilations", &[s.dilation.0, s.dilation.1]),
            int("group", s.groups as i64),
        ];
        self.node("Conv", at, &inputs, attributes)
    }

    fn batch_norm(&mut self, bn: &BatchNorm2d<Cpu>, at: &str, x: &str) -> String {
        let scale = self.var(&format!("{at}.weight"), &bn.weight);
        let shift = self.var(&format!("{at}.bias"), &bn.bias);
        let mean = self.var(&format!("{at}.running_mean"), &bn.running_mean);
        let var = self.var(&format!("{at}.running_var"), &bn.running_var);
        let inputs = [x, scale.as_str(), &shift, &mean, &var];
        self.node(
            "BatchNormalization",
            at,
            &inputs,
            vec![
                float("epsilon", bn.eps),
                float("momentum", 1.0 - bn.momentum),
            ],
        )
    }

    fn relu(&mut self, at: &str, x: &str) -> String {
        self.node("Relu", &format!("{at}.relu"), &[x], vec![])
    }

    /// `relu(h + skip)`, the end of a residual block.
    fn add_relu(&mut self, at: &str, h: &str, skip: &str) -> String {
        let sum = self.node("Add", &format!("{at}.add"), &[h, skip], vec![]);
        self.relu(at, &sum)
    }

    fn projection(&mut self, p: &(Conv2d<Cpu>, BatchNorm2d<Cpu>), at: &str, x: &str) -> String {
        let h = self.conv(&p.0, &format!("{at}.0"), x);
        self.batch_norm(&p.1, &format!("{at}.1"), &h)
    }

    fn basic_block(&mut self, b: &BasicBlock<Cpu>, at: &str, x: &str) -> String {
        let h = self.conv(&b.conv1, &format!("{at}.conv1"), x);
        let h = self.batch_norm(&b.bn1, &format!("{at}.bn1"), &h);
        let h = self.relu(&format!("{at}.bn1"), &h);
        let h = self.conv(&b.conv2, &format!("{at}.conv2"), &h);
        let h = self.batch_norm(&b.bn2, &format!("{at}.bn2"), &h);
        let skip = match &b.shortcut {
            Shortcut::Identity => x.to_string(),
            Shortcut::Pad { stride, channels } => {
                // Every `stride`-th pixel (`x[:, :, ::s, ::s]`), then zero channels before and
                // after.
                let at = format!("{at}.{}", b.shortcut_name);
                let starts = self.int_constant(&format!("{at}.starts"), &[0, 0]);
                let ends = self.int_constant(&format!("{at}.ends"), &[i64::MAX, i64::MAX]);
                let axes = self.int_constant(&format!("{at}.axes"), &[2, 3]);
                let s = *stride as i64;
                let steps = self.int_constant(&format!("{at}.steps"), &[s, s]);
                let inputs = [x, starts.as_str(), &ends, &axes, &steps];
                let sub = self.node("Slice", &format!("{at}.subsample"), &inputs, vec![]);
                let (before, after) = (channels.0 as i64, channels.1 as i64);
                let pads = [0, before, 0, 0, 0, after, 0, 0];
                let pads = self.int_constant(&format!("{at}.pads"), &pads);
                self.node("Pad", &format!("{at}.pad"), &[&sub, &pads], vec![])
            }
            Shortcut::Project(p) => self.projection(p, &format!("{at}.{}", b.shortcut_name), x),
        };
        self.add_relu(at, &h, &skip)
    }

    fn bottleneck(&mut self, b: &Bottleneck<Cpu>, at: &str, x: &str) -> String {
        let mut h = x.to_string();
        for (i, (conv, bn)) in [(&b.conv1, &b.bn1), (&b.conv2, &b.bn2), (&b.conv3, &b.bn3)]
            .into_iter()
            .enumerate()
        {
            h = self.conv(conv, &format!("{at}.conv{}", i + 1), &h);
            h = self.batch_norm(bn, &format!("{at}.bn{}", i + 1), &h);
            if i < 2 {
                h = self.relu(&format!("{at}.bn{}", i + 1), &h);
            }
        }
        let skip = match &b.downsample {
            None => x.to_string(),
            Some(p) => self.projection(p, &format!("{at}.downsample"), x),
        };
        self.add_relu(at, &h, &skip)
    }

    fn sequential(&mut self, s: &Sequential<Cpu>, at: &str, mut x: String) -> Result<String> {
        for (name, layer) in s.named_layers() {
            let at = format!("{at}.{name}");
            x = match layer {
                Layer::Linear(l) => self.linear(l, &at, &x),
                Layer::Conv2d(c) => self.conv(c, &at, &x),
                Layer::BatchNorm2d(bn) => self.batch_norm(bn, &at, &x),
                Layer::Relu => self.node("Relu", &at, &[&x], vec![]),
                // Identity in inference.
                Layer::Dropout(_) => x,
                Layer::Flatten => self.node("Flatten", &at, &[&x], vec![int("axis", 1)]),
                Layer::MaxPool2d(p) => {
                    let (ph, pw) = p.padding;
                    let attributes = vec![
                        ints("kernel_shape", &[p.kernel.0, p.kernel.1]),
                        ints("strides", &[p.stride.0, p.stride.1]),
                        ints("pads", &[ph, pw, ph, pw]),
                    ];
                    self.node("MaxPool", &at, &[&x], attributes)
                }
                Layer::GlobalAvgPool => {
                    let pooled = self.node("GlobalAveragePool", &at, &[&x], vec![]);
                    let flat = format!("{at}.flatten");
                    self.node("Flatten", &flat, &[&pooled], vec![int("axis", 1)])
                }
                Layer::Block(b) => self.basic_block(b, &at, &x),
                Layer::Bottleneck(b) => self.bottleneck(b, &at, &x),
                Layer::Sequential(inner) => self.sequential(inner, &at, x)?,
                Layer::ConvTranspose2d(_) => {
                    return Err(unsupported(&at, "transposed convolution"))
                }
                Layer::Unflatten(_) => return Err(unsupported(&at, "unflatten")),
            };
        }
        Ok(x)
    }
}

fn unsupported(name: &str, kind: &'static str) -> OnnxError {
    OnnxError::Unsupported {
        name: name.into(),
        kind,
    }
}

#[cfg(test)]
mod tests;
