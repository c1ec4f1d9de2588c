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
//! sorted by name; [`read_state_dict`] also says where the state dict was found (a
//! [`Location`]), takes the key to read it under, and keeps the names as the file has them. Errors are [`Error`]s whose message is one line starting with the path; the
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
//! dict holding one beside other entries (`epoch`, `best_prec1`, `optimizer`), which are
//! ignored: under the key the caller names, else the first of [`HOLDERS`] present
//! (`state_dict`, `model_state_dict`, `model_state`, `model`, `net`, `network`, then the
//! averaged copies `state_dict_ema`, `model_ema`, `ema`, `ema_state_dict`), else the only dict
//! of tensors at the top level; several such dicts and none known is an error that lists them.
//! Dicts of tensors nested deeper are not read: the error says so. [`read_checkpoint`] drops
//! the `module.` prefix when every name has it (a model saved through `DataParallel`). Tensors may be strided views
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
pub use state_dict::{Location, HOLDERS};

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

/// A checkpoint's state dict, its names as the file has them, and where it was found.
#[derive(Clone, Debug)]
pub struct StateDict {
    /// Sorted by name.
    pub tensors: Vec<TorchTensor>,
    pub location: Location,
}

/// Every tensor of the checkpoint at `path`, sorted by name, with DataParallel's `module.`
/// prefix dropped when every name has it.
pub fn read_checkpoint(path: &Path) -> Result<Vec<TorchTensor>> {
    let mut tensors = read_state_dict(path, None)?.tensors;
    strip_data_parallel_prefix(&mut tensors);
    Ok(tensors)
}

/// The state dict of the checkpoint at `path`, under the top-level `key` when given, else
/// where [`HOLDERS`] and the file's layout say (see the crate docs); names are kept as they
/// are in the file.
pub fn read_state_dict(path: &Path, key: Option<&str>) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|cause| Error::Io {
        path: path.to_owned(),
        cause,
    })?;
    read_bytes(&bytes, key).map_err(|problem| Error::Invalid {
        path: path.to_owned(),
        problem,
    })
}

fn read_bytes(bytes: &[u8], key: Option<&str>) -> Checked<StateDict> {
    let mut budget = ElementBudget::for_file(bytes.len());
    let (mut tensors, location) = match format::detect(bytes) {
        Format::Zip => archive::read(bytes, &mut budget, key)?,
        Format::Safetensors => match key {
            None => (safetensors_file::read(bytes)?, Location::default()),
            Some(key) => {
                return Err(Problem::NoStateDict(format!(
                    "a safetensors file holds one flat state dict, nothing under {}",
                    error::quoted(key)
                )))
            }
        },
        Format::LegacyPickle => legacy::read(bytes, &mut budget, key)?,
        Format::Unknown => return Err(Problem::NotACheckpoint),
    };
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StateDict { tensors, location })
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
