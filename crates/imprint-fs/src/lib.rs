//! Crash-safe output files and file provenance.
//!
//! Every file the toolkit writes goes through [`write_atomic`] (or [`AtomicFile`]): the bytes land
//! in a temporary file beside the target, are flushed to disk, and only then renamed over the
//! target, so a crash never leaves a half-written checkpoint or CSV that looks whole. Where a job
//! may write at all, its output folder or a single output file, is decided in [`output`].

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

mod output;
pub use output::{
    output_file, resolved, Claim, Input, NewFolders, OutputDir, OutputError, HOLDER, MARKER,
};
mod input;
pub use input::{open_regular, read_regular, regular_file_size};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FsError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub type Result<T> = std::result::Result<T, FsError>;

fn at(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
    move |source| FsError {
        path: path.to_path_buf(),
        source,
    }
}

/// A file being written under a temporary name; [`AtomicFile::commit`] renames it into place.
/// Dropping it without committing removes the temporary file and leaves the target untouched.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        // Named by the target: the temporary name is ours, not the user's.
        let file = File::create(&temp).map_err(at(&target))?;
        Ok(Self {
            target,
            temp,
            writer: Some(BufWriter::new(file)),
        })
    }

    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer.into_inner().map_err(|e| FsError {
            path: self.temp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(at(&self.temp))?;
        fs::rename(&self.temp, &self.target).map_err(at(&self.target))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `path` crash-safely (temporary name, fsync, rename).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(at(path))?;
    file.commit()
}

/// Size in bytes and lowercase hex sha256 of a file, for provenance records.
pub fn size_and_sha256(path: impl AsRef<Path>) -> Result<(u64, String)> {
    let path = path.as_ref();
    let mut file = open_regular(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(at(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at(dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_target_and_drop_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        write_atomic(&path, b"first").unwrap();
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"half-written").unwrap();
            // dropped without commit, as a crash mid-write would
        }
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file removed"
        );
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        let (size, hex) = size_and_sha256(&path).unwrap();
        assert_eq!(size, 3);
        // sha256("abc") from FIPS 180-2, appendix B.1
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
