//! Opening files the user names as inputs (checkpoints, sidecars): regular files only, looked at
//! before they are opened. Opening a named pipe for reading waits for a writer, forever if none
//! comes; a device or a folder is no checkpoint either.

use crate::{at, FsError, Result};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::path::Path;

/// What a path that is not a regular file is, in words.
fn kind(meta: &Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, meta: &Metadata) -> FsError {
    let what = kind(meta);
    FsError {
        path: path.to_path_buf(),
        source: io::Error::other(format!("{what}, not a regular file")),
    }
}

/// The size of the regular file at `path` (links followed), without opening it: an error naming
/// the path when it is missing or is a pipe, socket, device or folder.
pub fn regular_file_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(at(path))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    Ok(meta.len())
}

/// Opens the regular file at `path` for reading, refusing anything else before opening it (see
/// [`regular_file_size`]), and once more on the opened handle, in case the path was replaced in
/// between (opened without blocking, so that even then a pipe cannot hang the open).
pub fn open_regular(path: &Path) -> Result<File> {
    regular_file_size(path)?;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(at(path))?;
    let meta = file.metadata().map_err(at(path))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta));
    }
    Ok(file)
}

/// The bytes of the regular file at `path` (see [`open_regular`]); memory the system cannot give
/// is an error naming the file, not an abort.
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut file = open_regular(path)?;
    let len = file.metadata().map_err(at(path))?.len();
    let mut bytes = Vec::new();
    usize::try_from(len)
        .ok()
        .and_then(|n| bytes.try_reserve_exact(n).ok())
        .ok_or_else(|| {
            at(path)(io::Error::other(format!(
                "holds {len} bytes, more than this system can hold in memory"
            )))
        })?;
    file.read_to_end(&mut bytes).map_err(at(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(regular_file_size(&file).unwrap(), 5);
        assert_eq!(read_regular(&file).unwrap(), b"12345");
        let err = open_regular(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("a folder, not a regular file"), "{err}");
        let missing = dir.path().join("none");
        assert!(open_regular(&missing).is_err());
    }

    /// A named pipe with no writer is refused at once instead of blocking the open.
    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.safetensors");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = open_regular(&fifo).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: a named pipe (FIFO), not a regular file",
                fifo.display()
            )
        );
    }
}
