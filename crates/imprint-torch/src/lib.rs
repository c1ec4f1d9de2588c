//! Reads PyTorch checkpoints without Python and without running anything in them.
//!
//! ```no_run
//! use imprint_torch::{read_checkpoint, Dtype};
//! use std::path::Path;
//!
//! let tensors = read_checkpoint(Path::new("resnet20.th"))?;
//! for t in &tensors {
//!     // `t.data` is row-major f32, whatever `t.dtype` the file held.
//!     println!("{} {:?} {:?} {}", t.name, t.dtype, t.shape, t.data.len());
//! }
//! # Ok::<(), imprint_torch::Error>(())
//! ```
//!
//! # API
//!
//! [`read_checkpoint`] returns every tensor of a checkpoint's state dict as a [`TorchTensor`]
//! (name, shape, the [`Dtype`] it was stored as, and its values converted to f32, row-major),
//! sorted by name. Errors are [`Error`]s whose message is one line starting with the path; the
//! [`Problem`] inside says what was wrong with the contents.
//!
//! # Formats
//!
//! Told apart by content, not by extension:
//! - the zip archive `torch.save` writes since PyTorch 1.6 (`<root>/data.pkl`, the storages
//!   as `<root>/data/<key>`, `<root>/byteorder`);
//! - the legacy format of earlier releases (`_use_new_zipfile_serialization=False`): a run
//!   of pickles followed by the raw storages;
//! - safetensors files.
//!
//! The pickled object is a state dict (a dict or `OrderedDict` of names to tensors), or a
//! dict holding one under `state_dict` (else `model_state_dict`, `model`, `net`) beside
//! other entries (`epoch`, `best_prec1`, `optimizer`), which are ignored. Dicts of tensors
//! nested deeper are not read: the error says so. When every name starts with `module.` (a
//! model saved through `DataParallel`), the prefix is dropped. Tensors may be strided views
//! (transposed, sliced, expanded), share storages, or be scalars; only little-endian files
//! are read.
//!
//! # Safety
//!
//! Loading a pickle in Python imports and calls whatever it names, so a checkpoint can run
//! any code. This crate interprets the pickle itself and calls nothing. The only globals it
//! allows are those that rebuild tensors (`torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_tensor` of files older than PyTorch 0.4,
//! `torch._utils._rebuild_parameter`), the storage types `torch.FloatStorage`,
//! `DoubleStorage`, `HalfStorage`, `BFloat16Storage`, `LongStorage`, `IntStorage`,
//! `ShortStorage`, `CharStorage`, `ByteStorage` and `BoolStorage`, and the container
//! `collections.OrderedDict`. A pickle naming any other (`os.system`, `builtins.eval`, a model
//! class) is refused with [`Problem::Refused`], before anything it describes is built.
//!
//! Sizes read from a file are checked against the bytes it has before memory is taken, and
//! the elements a file can turn into are bounded by its size (see the `assemble` module), so
//! a hostile file gives an error, not an abort.

mod archive;
mod assemble;
mod dtype;
mod error;
mod format;
mod legacy;
mod pickle;
mod safetensors_file;
mod state_dict;
mod strided;

pub use dtype::Dtype;
pub use error::{Error, Problem, Result};

use assemble::ElementBudget;
use error::Checked;
use format::Format;
use std::path::Path;

/// A tensor of a checkpoint, its values converted to f32 in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The element type in the file.
    pub dtype: Dtype,
    pub data: Vec<f32>,
}

/// Every tensor of the checkpoint at `path`, sorted by name.
pub fn read_checkpoint(path: &Path) -> Result<Vec<TorchTensor>> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_owned(),
        cause,
    })?;
    read_bytes(&bytes).map_err(|problem| Error::Invalid {
        path: path.to_owned(),
        problem,
    })
}

fn read_bytes(bytes: &[u8]) -> Checked<Vec<TorchTensor>> {
    let mut budget = ElementBudget::for_file(bytes.len());
    let mut tensors = match format::detect(bytes) {
        Format::Zip => archive::read(bytes, &mut budget)?,
        Format::Safetensors => safetensors_file::read(bytes)?,
        Format::LegacyPickle => legacy::read(bytes, &mut budget)?,
        Format::Unknown => return Err(Problem::NotACheckpoint),
    };
    strip_data_parallel_prefix(&mut tensors);
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// `DataParallel` saves its module's tensors as `module.<name>`.
fn strip_data_parallel_prefix(tensors: &mut [TorchTensor]) {
    const PREFIX: &str = "module.";
    if tensors.iter().all(|t| t.name.starts_with(PREFIX)) {
        for t in tensors {
            t.name.drain(..PREFIX.len());
        }
    }
}
