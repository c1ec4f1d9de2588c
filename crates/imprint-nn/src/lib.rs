//! Neural-network building blocks on dfdx with shapes chosen at run time: a parameter tree
//! (each layer declares its tensors once; names, loading, optimizer lists follow), layers with
//! train and eval modes, dense and convolutional encoders and decoders (on the ops of
//! `imprint-ops`), losses, optimizers with parameter groups, batched inference, and safetensors
//! checkpoints whose tensor names follow the module tree.

pub mod checkpoint;
pub mod infer;
pub mod knn;
pub mod layers;
pub mod loss;
mod mode;
pub mod models;
pub mod optim;
pub mod tree;

pub use checkpoint::{load_tensors, save_tensors, NamedTensor};
pub use imprint_ops::{
    linear, with_precision, Activation, Choice, LinearKernel, Precision, ProductKernel,
};
pub use layers::{Dropout, Linear, Sequential};
pub use mode::{Mode, Pass};
pub use models::{
    Activations, Architecture, BottleneckNet, ConvNet, Decoder, DenseNet, Encoder, ResNet,
};
pub use optim::{HostBuffer, Optimizer, ParamGroup, Rule};
pub use tree::{Kind, Params, ParamsExt, Var};

use dfdx::prelude::*;

/// A `[rows, cols]` activation matrix, with or without a tape.
pub use imprint_ops::Matrix;
/// Tensors are stored flat; the layer that owns them knows their logical shape.
pub type Vector<D> = imprint_ops::Tensor1<D>;

/// The devices our models run on: dfdx's own ops plus ours, shareable between threads (the
/// optimizer updates parameters in parallel), with optimizer state that checkpoints can restore.
pub trait ImprintDevice:
    Device<f32>
    + HostBuffer
    + LinearKernel
    + imprint_ops::Conv2dKernel
    + imprint_ops::ConvTranspose2dKernel
    + imprint_ops::FusedBatchNorm2dKernel
    + imprint_ops::Pool2dKernel
    + imprint_ops::ShortcutKernel
    + Send
    + Sync
{
}
// A device joins with one line once our ops have kernels for it (today the CPU).
impl ImprintDevice for dfdx::prelude::Cpu {}

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("{path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error(transparent)]
    Fs(#[from] imprint_fs::FsError),
    #[error("device error: {0:?}")]
    Device(String),
    #[error("architecture {0}")]
    Architecture(String),
    /// Saved optimizer state that does not fit the model's parameters.
    #[error("{0}")]
    OptimizerState(String),
}

pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    pub(crate) fn device(e: impl std::fmt::Debug) -> Self {
        NnError::Device(format!("{e:?}"))
    }
}
