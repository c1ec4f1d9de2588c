//! Errors. Every message is one line that starts with the checkpoint's path; text taken from
//! the file (names, globals) is escaped so that it cannot break the line.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: Problem },
}

/// What is wrong with a file's contents.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("not a PyTorch checkpoint (no zip archive, safetensors header or pickle)")]
    NotACheckpoint,
    /// The pickle names a global outside the allow-list: Python would import it while
    /// loading, and calling it could run any code.
    #[error(
        "refuses to load: the pickle imports {0}, which is not a tensor-rebuilding function or \
         a plain container"
    )]
    Refused(String),
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("malformed pickle: {0}")]
    Pickle(String),
    #[error("malformed archive: {0}")]
    Archive(String),
    #[error("malformed safetensors file: {0}")]
    Safetensors(String),
    #[error("no state dict found: {0}")]
    NoStateDict(String),
    /// Several top-level dicts hold tensors and none has a known name: which one is the
    /// state dict is the user's to say.
    #[error(
        "several dicts of tensors at the top level ({}), none under a known name; name the one \
         to read",
        .0.iter().map(|k| quoted(k)).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousStateDict(Vec<String>),
    /// Well-formed, but outside what this crate reads (big-endian files, nested state dicts,
    /// other dtypes).
    #[error("{0}")]
    Unsupported(String),
    #[error("tensor {}: {detail}", quoted(.name))]
    Tensor { name: String, detail: String },
}

impl Problem {
    pub(crate) fn tensor(name: &str, detail: impl Into<String>) -> Self {
        Problem::Tensor {
            name: name.to_string(),
            detail: detail.into(),
        }
    }
}

/// Results inside the crate, before the file's path is attached.
pub(crate) type Checked<T> = std::result::Result<T, Problem>;

/// `text` from the file in backticks, escaped onto one line.
pub(crate) fn quoted(text: &str) -> String {
    format!("`{}`", text.escape_debug())
}

/// Another library's message, kept on one line.
pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
